"""numpy layers; importing this package registers them all."""

from . import activations, conv, dense, pool, softmax  # noqa: F401  (registration side effects)
from .activations import Dropout, ReLU, Sigmoid, Tanh
from .base import Layer, ShapeError
from .conv import Conv2D
from .dense import Dense, Flatten
from .pool import AvgPool2D, MaxPool2D
from .softmax import Softmax

__all__ = ["Layer", "ShapeError", "Conv2D", "MaxPool2D", "AvgPool2D", "Flatten", "Dense",
           "ReLU", "Tanh", "Sigmoid", "Dropout", "Softmax"]
