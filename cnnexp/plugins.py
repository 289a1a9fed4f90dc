"""Source files of the ``plugins=[module]`` a model needs, so a logged model carries them
(MLflow's ``code_paths``) and loads in a folder where the plugin module is not importable."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def plugin_files(modules) -> list[str]:
    """The file (or package folder) of each module; ``modules`` is a list of names or the path
    of a ``model_spec.json`` whose ``plugins`` lists them."""
    if isinstance(modules, (str, Path)):
        modules = json.loads(Path(modules).read_text()).get("plugins") or []
    out = []
    for name in modules:
        spec = importlib.util.find_spec(name.split(".")[0])
        if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
            continue
        origin = Path(spec.origin)
        out.append(str(origin.parent if origin.name == "__init__.py" else origin))
    return out
