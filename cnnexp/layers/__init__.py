"""numpy layers; importing this package registers them all (cnnexp.registry does, on first use of LAYERS)."""

from . import activations, conv, dense, pool, softmax  # noqa: F401  (they register the layers)
from .activations import Dropout, ReLU, Sigmoid, Tanh
from .base import Layer, ShapeError
from .conv import Conv2D
from .dense import Dense, Flatten
from .pool import AvgPool2D, MaxPool2D
from .softmax import Softmax

__all__ = ["Layer", "ShapeError", "Conv2D", "MaxPool2D", "AvgPool2D", "Flatten", "Dense",
           "ReLU", "Tanh", "Sigmoid", "Dropout", "Softmax"]
