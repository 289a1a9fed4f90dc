"""Typed schemas for the Hydra config, and the value checks Hydra's types cannot express.

The schemas make Hydra reject a typo'd key (``lrr=0.1``) or a wrong type (``epochs=five``);
``validate`` rejects invalid values (``lr=-1``, ``epochs=0``) with one line naming the value and
what would be valid. Both run before any data is loaded or any run is logged.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING, OmegaConf

from .errors import ConfigError, suggest
from .paths import outputs_dir


@dataclass
class ModelConfig:
    name: str = "seed"
    input_shape: List[int] = field(default_factory=lambda: [28, 28, 1])
    dtype: str = "float32"  # float64 for gradient checks
    layers: List[Any] = field(default_factory=list)  # [{type: conv2d, filters: 8, ...}, ...]


@dataclass
class DataConfig:
    name: str = "mnist"  # a registered data set: mnist | mnist_sample | fashion_mnist | idx
    dir: Optional[str] = None  # folder with the four IDX .gz files; null = cache/download
    download: bool = True
    train_size: Optional[int] = 1000  # null = the whole split
    val_size: int = 0  # carved out of the training split
    test_size: Optional[int] = 1000
    scale: float = 0.00392156862745098  # x = image * scale + shift (image/255 - 0.5)
    shift: float = -0.5


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: Optional[str] = None  # null = $MLFLOW_TRACKING_URI, else sqlite under outputs/
    experiment: str = "cnnexp"
    log_artifacts: bool = True
    log_model: bool = True
    background: bool = True  # log from a background process (sqlite and http stores)
    wait: bool = False  # wait for the background logger before exiting


@dataclass
class ClusterConfig:  # set by hydra/launcher=slurm | submitit_local (conf/hydra/launcher/): job resources
    partition: Optional[str] = None
    timeout_min: int = 60
    cpus_per_task: int = 1
    mem_gb: int = 2
    array_parallelism: int = 64
    max_num_timeout: int = 3


@dataclass
class TrialConfig:  # set by hydra/sweeper=optuna for each job (cnnexp/sweepers): not for users
    study: Optional[str] = None  # the Optuna study the job reports val/acc to
    number: Optional[int] = None  # the trial's number in that study


@dataclass
class PathsConfig:
    outputs: str = MISSING  # conf/paths/default.yaml


@dataclass
class Config:
    lr: float = 0.005
    epochs: int = 3
    batch_size: int = 1
    seed: int = 0
    log_every: int = 100  # optimizer steps between progress lines / train metrics
    eval_batch_size: int = 500
    resume: Optional[str] = None  # run id or checkpoint path to continue from
    plugins: List[str] = field(default_factory=list)  # modules to import: register your own layers
    engine: str = "fast"  # how the layers run: fast (compiled plan, all cores) | reference (layer by layer)
    threads: Any = "auto"  # fast engine worker threads: auto (the cores this process may use) | N
    # workflow (cnnexp/progress.py, schedules.py, callbacks/): what prints, lr schedule, callbacks
    verbose: Optional[int] = None  # 0 quiet, 1 epoch lines, 2 + live bar (terminal), 3 + the post's step lines
    lr_scheduler: Any = field(default_factory=lambda: {"type": "none"})
    callbacks: Any = field(default_factory=dict)  # {name: {type: early_stopping, monitor: ...}}
    memory_limit_mb: Optional[int] = None  # refuse models estimated to need more; null = MemAvailable
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: Any = field(default_factory=lambda: {"type": "sgd"})
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    cluster: Optional[ClusterConfig] = None


def register_schemas() -> None:
    """Make ``base_config`` (the schema) and the ``${cnnexp_outputs:}`` resolver of
    conf/paths/default.yaml known to Hydra; call before composing the config."""
    from hydra.core.config_store import ConfigStore

    OmegaConf.register_new_resolver("cnnexp_outputs", lambda: str(outputs_dir()), replace=True)
    ConfigStore.instance().store(name="base_config", node=Config)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_keys(cfg: dict, schema, where: str = "") -> None:
    """Reject keys the schema does not define (``+foo=1`` slips past Hydra's struct mode)."""
    from dataclasses import fields, is_dataclass

    known = {f.name: f for f in fields(schema)}
    for k, v in cfg.items():
        if k not in known:
            dym = suggest(k, known, prefix=where)
            inside = f" in {where.rstrip('.')}" if where else ""
            raise ConfigError(f"unknown config key {where + k!r}{dym}; valid keys{inside}: {', '.join(sorted(known))}")
        default = known[k].default_factory() if callable(known[k].default_factory) else None
        if is_dataclass(default) and isinstance(v, dict):
            _check_keys(v, type(default), f"{where}{k}.")


def need(ok: bool, key: str, value, valid: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {valid}")


def check_finite(node, where: str = "") -> None:
    """Every float in the config is finite: NaN/inf never reach the arithmetic."""
    if isinstance(node, dict):
        for k, v in node.items():
            check_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_finite(v, f"{where}.{i}")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{where}={node!r} is invalid: must be a finite number")


# optimizer hyperparameters: (test, what is valid)
OPTIMIZER_RANGES = {
    "momentum": (lambda v: 0 <= v < 1, "must be a number in [0, 1)"),
    "beta1": (lambda v: 0 <= v < 1, "must be a number in [0, 1)"),
    "beta2": (lambda v: 0 <= v < 1, "must be a number in [0, 1)"),
    "eps": (lambda v: 0 < v < 1, "must be a number in (0, 1)"),
    "weight_decay": (lambda v: v >= 0, "must be a finite number >= 0"),
}


def check_optimizer(opt) -> None:
    need(isinstance(opt, dict) and "type" in opt, "optimizer", opt, "must be a mapping with a 'type' key, e.g. optimizer=sgd")
    for k, (ok, valid) in OPTIMIZER_RANGES.items():
        if k in opt:
            need(_num(opt[k]) and ok(opt[k]), f"optimizer.{k}", opt[k], valid)


def check_tracking(t: dict) -> None:
    """An experiment name that stays a folder name under mlartifacts/; a sqlite:/// store whose
    folder exists (a typo is not silently created), except the default outputs folder."""
    import os

    name = t["experiment"]
    need(isinstance(name, str) and name.strip() and not re.search(r"[/\\\x00-\x1f]", name)
         and re.sub(r"[^\w.-]+", "_", name).strip(".") != "", "tracking.experiment", name,
         "use a name without path separators, control characters or only dots, e.g. tracking.experiment=lenet_study")
    uri = t.get("uri") or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if uri.startswith("sqlite:///"):
        from .errors import TrackingError

        folder = Path(uri[len("sqlite:///"):]).expanduser().absolute().parent
        try:
            missing = not folder.exists() and folder != outputs_dir()
        except OSError:  # not ours to judge: the store check reports it
            missing = False
        if missing:
            key = "tracking.uri" if t.get("uri") else "$MLFLOW_TRACKING_URI"
            raise TrackingError(f"{key}={uri!r} is invalid: folder {str(folder)!r} does not exist; "
                                f"create it or fix the path")


def check_values(cfg: dict) -> None:
    """Raise ConfigError (one line) for the first invalid value in a resolved config dict."""
    _check_keys({k: v for k, v in cfg.items() if k != "hydra"}, Config)
    check_finite({k: v for k, v in cfg.items() if k != "hydra"})
    need(_num(cfg["lr"]) and cfg["lr"] > 0, "lr", cfg["lr"], "must be a number > 0 (the post uses lr=0.005)")
    for k in ("epochs", "batch_size", "log_every", "eval_batch_size"):
        need(isinstance(cfg[k], int) and cfg[k] >= 1, k, cfg[k], "must be an integer >= 1")
    need(cfg.get("engine", "fast") in ("fast", "reference"), "engine", cfg.get("engine"), "use fast or reference")
    th = cfg.get("threads", "auto")
    need(th == "auto" or (isinstance(th, int) and not isinstance(th, bool) and th >= 1), "threads", th,
         "use auto or an integer >= 1")
    need(isinstance(cfg["seed"], int) and cfg["seed"] >= 0, "seed", cfg["seed"], "must be an integer >= 0")
    need(cfg.get("verbose") in (None, 0, 1, 2, 3), "verbose", cfg.get("verbose"),
         "use 0 (quiet), 1 (epoch lines), 2 (live bar on a terminal), 3 (the post's step lines) or null (auto)")
    mem = cfg.get("memory_limit_mb")
    need(mem is None or (isinstance(mem, int) and mem >= 1), "memory_limit_mb", mem, "must be an integer >= 1 or null")
    d = cfg["data"]
    for k in ("train_size", "test_size"):
        need(d[k] is None or (isinstance(d[k], int) and d[k] >= 1), f"data.{k}", d[k],
             "must be an integer >= 1, or null for the whole split")
    need(isinstance(d["val_size"], int) and d["val_size"] >= 0, "data.val_size", d["val_size"],
         "must be an integer >= 0")
    need(_num(d["scale"]) and d["scale"] != 0, "data.scale", d["scale"], "must be a finite non-zero number")
    need(_num(d["shift"]), "data.shift", d["shift"], "must be a finite number")
    m = cfg["model"]
    need(m["dtype"] in ("float32", "float64"), "model.dtype", m["dtype"], "use float32 or float64")
    check_optimizer(cfg["optimizer"])
    check_tracking(cfg["tracking"])


def validate(cfg: dict) -> None:
    """``check_values``, then the model's memory estimate (before any weights exist)."""
    from .estimate import check_memory

    check_values(cfg)
    check_memory(cfg)
