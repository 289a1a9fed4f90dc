"""The pieces the sweeper and its trial jobs share: the storage URL, the sampler, the pruner.

A job reports to the study from its own process (possibly on another machine), so it opens the
study the same way the sweeper did: from the sweeper's config, which every job's Hydra config
carries (``hydra.sweeper``). Optuna keeps samplers and pruners in the process, not in storage.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError

SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "qmc": "QMCSampler"}
PRUNERS = {"median": "MedianPruner", "percentile": "PercentilePruner", "hyperband": "HyperbandPruner",
           "successive_halving": "SuccessiveHalvingPruner", "threshold": "ThresholdPruner", "none": "NopPruner"}
DB_FILE = "optuna.db"


def storage_url(storage: str | None, sweep_dir: str) -> str:
    """``storage`` as given, or a SQLite file in the sweep's folder (one study per sweep).
    Jobs must reach it too: on a cluster use ``postgresql://`` or a shared file system."""
    if storage:
        return str(storage)
    return "sqlite:///" + os.path.abspath(os.path.join(sweep_dir, DB_FILE))


def open_storage(url: str, attempts: int = 6):
    """Optuna's RDB storage for ``url``. Sweeps started at once on a new database race to create
    its tables (PostgreSQL: a duplicate type or table error for all but one): try again, the
    tables are there the next time."""
    import time

    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def _build(kind: str, table: dict[str, str], spec: dict | None, default: str):
    import optuna

    spec = dict(spec or {})
    name = str(spec.pop("type", None) or default)
    if name not in table:
        raise ConfigError(f"hydra.sweeper.{kind}.type={name!r} is unknown; valid: {', '.join(table)}")
    module = optuna.samplers if kind == "sampler" else optuna.pruners
    try:
        return getattr(module, table[name])(**{k: v for k, v in spec.items() if v is not None})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"hydra.sweeper.{kind}: cannot build {table[name]} from {spec}: {e}") from None


def make_sampler(spec: dict | None):
    """``{type: tpe, seed: 0, ...}`` -> an Optuna sampler (other keys go to its constructor)."""
    return _build("sampler", SAMPLERS, spec, "tpe")


def make_pruner(spec: dict | None):
    """``{type: median, n_startup_trials: 5, n_warmup_steps: 0}`` -> an Optuna pruner."""
    return _build("pruner", PRUNERS, spec, "median")


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def plain(node: Any) -> Any:
    """A DictConfig/ListConfig (or plain value) as plain Python values."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node
