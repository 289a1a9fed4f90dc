"""A trained model as two plain files, and back:

    weights.npz      one array per parameter, keyed "<layer>.<param>" (np.load(..., allow_pickle=False))
    model_spec.json  the layer spec, dtype and the run's normalisation (x = image * scale + shift)

    model = load_model_files("weights.npz", "model_spec.json")   # rebuilt through the registry
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np

FORMAT = "cnnexp.model/1"


def model_spec(model, class_names=None, plugins=None) -> dict:
    """Everything needed to rebuild ``model`` with ``build_model`` (weights aside)."""
    return {
        "format": FORMAT,
        "model": model.spec,
        "dtype": str(model.dtype),
        "scale": float(model.scale),
        "shift": float(model.shift),
        "input_shape": list(model.input_shape),
        "output_shape": list(model.output_shape),
        "class_names": list(class_names) if class_names is not None else None,
        "plugins": list(plugins or []),
    }


def save_model_files(model, spec: dict, folder: str | Path) -> tuple[Path, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights, spec_path = folder / "weights.npz", folder / "model_spec.json"
    np.savez(weights, **model.state_dict())
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    return weights, spec_path


def load_model_files(weights: str | Path, spec_path: str | Path):
    """Rebuild the model from ``model_spec.json`` and load ``weights.npz`` into it."""
    from ..model import build_model

    spec = json.loads(Path(spec_path).read_text())
    for name in spec.get("plugins") or []:  # user layers must be registered before building
        importlib.import_module(name)
    model = build_model(spec["model"], seed=0, dtype=spec["dtype"], scale=spec["scale"], shift=spec["shift"])
    with np.load(weights, allow_pickle=False) as z:
        model.load_state_dict({k: z[k] for k in z.files})
    return model
