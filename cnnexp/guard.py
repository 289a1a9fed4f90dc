"""What a config may make Python call: an allow-list of objects, not of spellings.

Every ``_target_`` in the composed config (the ``hydra`` node included) and every ``class`` /
``()`` of the logging configs is resolved to the object Hydra or ``logging.config`` would call,
without importing anything new: the name is walked through modules already imported
(``cnnexp.cli.os.system`` is ``os.system``). The object must then be one cnnexp ships or presets:

* classes defined in cnnexp (and its ``hydra_plugins.cnnexp_*`` shims) that are Hydra
  callbacks, launchers or sweepers, and everything in ``cnnexp.sweepers``;
* Hydra's basic launcher and sweeper, the joblib and submitit launchers, the Optuna sweeper
  plugin, Optuna's samplers and pruners;
* in logging configs: ``logging.StreamHandler`` (to stdout/stderr), ``logging.FileHandler``
  (a ``*.log`` file inside the run's folder), ``logging.NullHandler``, ``logging.Formatter``,
  ``logging.Filter``.

Other doors Hydra opens are closed here too: ``ext://`` references other than
``sys.stdout``/``sys.stderr``, the Optuna plugin's ``custom_search_space`` (a callable by
name), the submitit ``setup`` lines, ``hydra.job.env_set`` of variables that change what a
child process loads (``LD_*``, ``PYTHON*``, ``PATH``...), ``pkg://`` search paths outside
cnnexp and ``--experimental-rerun`` (unpickles a file). User code comes in by one door:
``plugins=[module]``, named by the user.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import sys
import types
from typing import Any

from .errors import ConfigError

_MISSING = object()
# launcher / sweeper classes cnnexp presets, by their canonical names (imported if installed)
PRESET_NAMES = (
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
    "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
)
OWN_MODULES = ("cnnexp.", "hydra_plugins.cnnexp_")  # classes of ours: Hydra callbacks/launchers/sweepers
OWN_ANY = ("cnnexp.sweepers",)  # anything defined here
OPTUNA = {"optuna.samplers": "BaseSampler", "optuna.pruners": "BasePruner"}
HANDLERS = (logging.StreamHandler, logging.FileHandler, logging.NullHandler)
FORMATTERS = (logging.Formatter,)
FILTERS = (logging.Filter,)
STREAMS = ("ext://sys.stdout", "ext://sys.stderr")
HANDLER_KEYS = {"class", "level", "formatter", "filters", "stream", "filename", "mode", "encoding", "delay", "errors"}
FORMATTER_KEYS = {"format", "datefmt", "style", "validate", "defaults", "class", "()"}
SAFE_ENV = re.compile(r"^(OMP|MKL|OPENBLAS|NUMEXPR|VECLIB|BLIS|MLFLOW|CNNEXP|HYDRA)_[A-Z0-9_]*$|^CUDA_VISIBLE_DEVICES$|^TZ$")
RUN_DIR = "/cnnexp-run-folder"  # stands in for hydra.runtime.output_dir while checking


def _lookup(path: str) -> Any:
    """The object ``path`` names, walking only modules already imported (own ones: imported)."""
    parts = path.split(".")
    if not all(p.isidentifier() for p in parts):
        return _MISSING
    obj: Any = sys.modules.get(parts[0])
    if obj is None:
        return _MISSING
    for i, part in enumerate(parts[1:], 1):
        if isinstance(obj, types.ModuleType):
            name = ".".join(parts[: i + 1])
            if part in vars(obj):
                obj = vars(obj)[part]
            elif name in sys.modules:
                obj = sys.modules[name]
            elif parts[0] == "cnnexp" and importlib.util.find_spec(name) is not None:
                obj = importlib.import_module(name)  # our own code: importing it is safe
            else:
                return _MISSING
        else:
            try:
                obj = inspect.getattr_static(obj, part)
            except AttributeError:
                return _MISSING
    return obj


def _preset_objects() -> set[int]:
    out = set()
    for name in PRESET_NAMES:
        mod, _, attr = name.rpartition(".")
        try:
            out.add(id(getattr(importlib.import_module(mod), attr)))
        except (ImportError, AttributeError):  # plugin not installed
            continue
    return out


def _genuine(obj) -> bool:
    """Defined where it says it is (not an alias of something else)."""
    mod = sys.modules.get(getattr(obj, "__module__", None) or "")
    return mod is not None and vars(mod).get(getattr(obj, "__name__", "")) is obj


def allowed_target(obj) -> bool:
    if not (inspect.isclass(obj) or inspect.isfunction(obj)) or not _genuine(obj):
        return False
    module = obj.__module__
    if id(obj) in _preset_objects() or module.startswith(OWN_ANY):
        return True
    if inspect.isclass(obj) and module.startswith(OWN_MODULES):
        from hydra.experimental.callback import Callback
        from hydra.plugins.launcher import Launcher
        from hydra.plugins.sweeper import Sweeper

        return issubclass(obj, (Callback, Launcher, Sweeper))
    for pkg, base in OPTUNA.items():
        if inspect.isclass(obj) and module.startswith(pkg) and pkg in sys.modules:
            return issubclass(obj, getattr(sys.modules[pkg], base)) and not inspect.isabstract(obj)
    return False


def _canonical(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _import_optuna(name: str) -> None:
    """Optuna's samplers and pruners are allowed: import those two modules (not the name given)."""
    if name.startswith("optuna."):
        for pkg in OPTUNA:
            try:
                importlib.import_module(pkg)
            except ImportError:
                pass


def check_target(name: Any, where: str) -> None:
    if isinstance(name, str):
        _import_optuna(name)
    obj = _lookup(name) if isinstance(name, str) else _MISSING
    if obj is not _MISSING and allowed_target(obj):
        return
    what = (f"it names {_canonical(obj)}" if obj is not _MISSING else
            "it does not name an object cnnexp has loaded")
    raise ConfigError(f"{where}={name!r} is not allowed: {what}; configs may only instantiate cnnexp's callbacks "
                      f"and sweepers, Hydra's basic/joblib/submitit launchers and basic/Optuna sweepers, Optuna "
                      f"samplers and pruners (bring your own code in with plugins=[module])")


def check_targets(node, where: str = "") -> None:
    """Every ``_target_`` in a plain container."""
    if isinstance(node, dict):
        if "_target_" in node:
            check_target(node["_target_"], f"{where + '.' if where else ''}_target_")
        for k, v in node.items():
            check_targets(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_targets(v, f"{where}.{i}")


def _one_of(name: Any, kinds: tuple, where: str) -> None:
    obj = _lookup(name) if isinstance(name, str) else _MISSING
    if obj is _MISSING or obj not in kinds:
        allowed = ", ".join(f"logging.{k.__name__}" for k in kinds)
        raise ConfigError(f"{where}={name!r} is not allowed: logging configs may only use {allowed}")


def _check_refs(node, where: str) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _check_refs(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_refs(v, f"{where}.{i}")
    elif isinstance(node, str) and node.startswith("ext://") and node not in STREAMS:
        raise ConfigError(f"{where}={node!r} is not allowed: logging configs may only refer to "
                          f"{' or '.join(STREAMS)}")


def check_logging(log: dict | None, where: str, run_dir: str = RUN_DIR) -> None:
    """A ``logging.config.dictConfig`` mapping: allowed classes; files only inside ``run_dir``."""
    if not log:
        return
    _check_refs(log, where)
    for kind, kinds in (("formatters", FORMATTERS), ("filters", FILTERS)):
        for name, spec in (log.get(kind) or {}).items():
            at = f"{where}.{kind}.{name}"
            for key in ("()", "class"):
                if isinstance(spec, dict) and key in spec:
                    _one_of(spec[key], kinds, f"{at}.{key}")
            extra = sorted(set(spec or {}) - FORMATTER_KEYS) if kind == "formatters" else []
            if extra:
                raise ConfigError(f"{at}.{extra[0]} is not allowed: formatters take {', '.join(sorted(FORMATTER_KEYS))}")
    for name, spec in (log.get("handlers") or {}).items():
        at = f"{where}.handlers.{name}"
        spec = spec or {}
        extra = sorted(set(spec) - HANDLER_KEYS)
        if extra:
            raise ConfigError(f"{at}.{extra[0]} is not allowed: handlers take {', '.join(sorted(HANDLER_KEYS))}")
        _one_of(spec.get("class"), HANDLERS, f"{at}.class")
        if _lookup(spec["class"]) is logging.FileHandler:
            check_log_file(spec.get("filename"), f"{at}.filename", run_dir)
            if spec.get("mode", "a") not in ("a", "w"):
                raise ConfigError(f"{at}.mode={spec['mode']!r} is invalid: use 'a' or 'w'")
        elif "stream" in spec and spec["stream"] not in STREAMS:
            raise ConfigError(f"{at}.stream={spec['stream']!r} is not allowed: use {' or '.join(STREAMS)}")


def check_log_file(filename: Any, where: str, run_dir: str) -> None:
    ok = isinstance(filename, str) and ".." not in filename.split("/")
    path = os.path.normpath(filename) if ok else ""
    if not (ok and path.startswith(run_dir.rstrip("/") + "/") and path.endswith(".log")):
        raise ConfigError(f"{where}={filename!r} is not allowed: log files must be *.log files inside the run's "
                          f"folder, e.g. ${{hydra.runtime.output_dir}}/${{hydra.job.name}}.log")


def check_hydra(hydra: dict) -> None:
    """The other doors of a composed (and resolved) ``hydra`` node."""
    for k in (hydra.get("job") or {}).get("env_set") or {}:
        if not SAFE_ENV.match(str(k)):
            raise ConfigError(f"hydra.job.env_set.{k} is not allowed: a job may only set OMP_*, MKL_*, OPENBLAS_*, "
                              f"MLFLOW_*, CNNEXP_*, CUDA_VISIBLE_DEVICES or TZ (others can load foreign code)")
    sweeper = hydra.get("sweeper") or {}
    if sweeper.get("custom_search_space"):
        raise ConfigError(f"hydra.sweeper.custom_search_space={sweeper['custom_search_space']!r} is not allowed: "
                          f"it calls code by name; describe the search space in hydra.sweeper.params")
    if (hydra.get("launcher") or {}).get("setup"):
        raise ConfigError("hydra.launcher.setup is not allowed: it runs shell lines before each job")
    for p in hydra.get("searchpath") or []:
        if str(p).startswith("pkg://") and not re.match(r"^pkg://(cnnexp|hydra_plugins)(\.|/|$)", str(p)):
            raise ConfigError(f"hydra.searchpath entry {p!r} is not allowed: pkg:// imports that package; "
                              f"use a file:// folder, or plugins=[module] for code")


HYDRA_PARTS = ("job.env_set", "sweeper", "launcher", "searchpath", "job_logging", "hydra_logging")


def hydra_parts(hydra_node) -> dict:
    """The parts of a ``hydra`` DictConfig this module checks, resolved (others may refer to
    values Hydra fills in per job)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    out: dict = {}
    for key in HYDRA_PARTS:
        try:
            node = OmegaConf.select(hydra_node, key)
            value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        except OmegaConfBaseException as e:
            raise ConfigError(f"hydra.{key} cannot be resolved: {str(e).splitlines()[0]}") from None
        parent, _, leaf = key.rpartition(".")
        (out.setdefault(parent, {}) if parent else out)[leaf] = value
    return out


def check_hydra_node(hydra_node, run_dir: str) -> None:
    """Targets, the other doors and the logging configs of a ``hydra`` DictConfig."""
    from omegaconf import OmegaConf

    check_targets(OmegaConf.to_container(hydra_node, resolve=False), "hydra")
    parts = hydra_parts(hydra_node)
    check_hydra(parts)
    for key in ("job_logging", "hydra_logging"):
        check_logging(parts.get(key), f"hydra.{key}", run_dir=run_dir)


def check_composed(cfg) -> None:
    """Check a composed DictConfig (with its ``hydra`` node) before Hydra acts on any of it;
    ``${hydra.runtime.output_dir}`` stands for the run folder."""
    from omegaconf import OmegaConf, open_dict

    check_targets({k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"})
    probe = cfg.copy()
    with open_dict(probe):
        probe.hydra.runtime.output_dir = RUN_DIR
    check_hydra_node(probe.hydra, RUN_DIR)


def refuse_rerun(argv: list[str]) -> None:
    if any(a == "--experimental-rerun" or a.startswith("--experimental-rerun=") for a in argv):
        raise ConfigError("--experimental-rerun is not allowed: it unpickles a file (which can run any code); "
                          "rerun with the overrides in the run's .hydra/overrides.yaml instead")
