"""The trained model as an MLflow pyfunc model.

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    probs = model.predict(images)      # raw (N, 28, 28) images, 0-255, any numeric dtype -> (N, 10)

The model's artifacts are the run's ``weights.npz`` and ``model_spec.json``; its code is the
installed ``cnnexp`` package (so serve it with ``--env-manager local`` from this environment).
The input signature is left open on purpose: MLflow enforces a tensor signature's dtype
exactly, which would reject the uint8 images the data sets store (or floats, whichever one
was declared). The output signature, an input example and the metadata describe the input.
Serving accepts ``{"inputs": [...]}`` (N x 28 x 28 nested lists) and ``dataframe_split`` /
``dataframe_records`` with one 784-column row per image.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np

from ..plugins import plugin_files
from .export import load_model_files

INPUT_DOC = ("raw images (N, H, W) or (N, H, W, C) with pixel values 0-255, any numeric dtype, "
             "or a table with one row of H*W*C pixel columns per image; the model applies its own "
             "normalisation (x * scale + shift)")


def to_images(data, input_shape) -> np.ndarray:
    """Whatever pyfunc or the scoring server hands over -> an (N, ...) numeric array."""
    if isinstance(data, dict) and len(data) == 1:  # a single named tensor
        data = next(iter(data.values()))
    if hasattr(data, "to_numpy"):  # pandas DataFrame: one row of pixels per image
        data = data.to_numpy()
    x = np.asarray(data)
    if x.dtype == object:
        x = x.astype(np.float64)
    size = math.prod(input_shape)
    if x.ndim == 2 and x.shape[1] == size:
        x = x.reshape((len(x), *input_shape))
    return x


class CnnPyfunc(mlflow.pyfunc.PythonModel):
    """Rebuilds the cnnexp Model from the run's weights and spec; predicts class probabilities."""

    def load_context(self, context):
        self.model = load_model_files(context.artifacts["weights"], context.artifacts["spec"])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        # (the ndarray hint tells MLflow not to infer or enforce a schema from type hints)
        return self.model.predict_proba(to_images(model_input, self.model.input_shape))


def log_pyfunc(run_id: str, experiment_id: str, weights: Path, spec: Path, example: np.ndarray,
               output_dtype: str, num_classes: int):
    """Log the model as ``runs:/<run_id>/model``. Requirements are given, not inferred (inference
    would re-import the model in a subprocess: seconds per run)."""
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(outputs=Schema([TensorSpec(np.dtype(output_dtype), (-1, num_classes))]))
    mlflow.set_experiment(experiment_id=experiment_id)  # where MLflow 3 puts the LoggedModel
    quiet = logging.getLogger("mlflow.pyfunc")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # not the cloudpickle warning: the class is imported by name
    try:
        return Model.log(
            artifact_path=None, name="model", flavor=mlflow.pyfunc, run_id=run_id,
            python_model=CnnPyfunc(), artifacts={"weights": str(weights), "spec": str(spec)},
            signature=signature, input_example=example, code_paths=plugin_files(spec) or None,  # plugins=[...]
            pip_requirements=[f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"],
            metadata={"input": INPUT_DOC, "code": "needs the cnnexp package installed"},
            flavor_name="python_function",
        )
    finally:
        quiet.setLevel(level)
