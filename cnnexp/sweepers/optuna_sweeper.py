"""A Hydra sweeper on Optuna's ask/tell API (Optuna 4): ``hydra/sweeper=optuna``.

Each batch asks the study for ``n_jobs`` trials, launches them as one batch through the
configured launcher (basic, joblib, submitit/SLURM, ...) and tells the study each job's return
value. The study lives in ``storage`` (a SQLite file or a PostgreSQL database): any number of
sweep processes, on any machines, can search the same study at once; Optuna's storage numbers
the trials, so none is repeated or lost. Every job learns its trial through the override
``trial.number=N`` (and ``trial.study=NAME``): it reports ``val/acc`` after each epoch and
stops early when the pruner says so (``cnnexp/sweepers/trial.py``), telling the study itself.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..urls import redact
from .space import override, search_space
from .study import make_pruner, make_sampler, open_storage, plain, quiet_optuna, storage_url

log = logging.getLogger(__name__)


class OptunaSweep:
    """The sweeper's state and loop (the Hydra plugin class delegates to it)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        if cfg["direction"] not in ("maximize", "minimize"):
            raise ConfigError(f"hydra.sweeper.direction={cfg['direction']!r} is invalid: use maximize or minimize")
        for k in ("n_trials", "n_jobs"):
            if not isinstance(cfg[k], int) or cfg[k] < 1:
                raise ConfigError(f"hydra.sweeper.{k}={cfg[k]!r} is invalid: must be an integer >= 1")
        if not 0 <= float(cfg["max_failure_rate"]) <= 1:
            raise ConfigError(f"hydra.sweeper.max_failure_rate={cfg['max_failure_rate']!r} is invalid: use 0..1")
        self.job_idx = 0

    def run(self, launcher, config, hydra_context, arguments: list[str]) -> list:
        import optuna
        from hydra.core.override_parser.overrides_parser import OverridesParser

        quiet_optuna()
        cfg = self.cfg
        params = [f"{k}={v}" for k, v in (cfg.get("params") or {}).items()] + list(arguments)
        parser = OverridesParser.create(config_loader=hydra_context.config_loader)
        space, fixed = search_space(parser.parse_overrides(params))
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        url = storage_url(cfg.get("storage"), str(sweep_dir))
        name = str(cfg.get("study_name") or "cnnexp")
        try:
            study = optuna.create_study(study_name=name, storage=open_storage(url), direction=cfg["direction"],
                                        sampler=make_sampler(cfg.get("sampler")),
                                        pruner=make_pruner(cfg.get("pruner")),
                                        load_if_exists=bool(cfg.get("load_if_exists", True)))
        except optuna.exceptions.DuplicatedStudyError:
            raise ConfigError(f"hydra.sweeper.study_name={name!r} exists in the storage already; "
                              f"set hydra.sweeper.load_if_exists=true to add trials to it, or pick another name") from None
        log.info(f"Optuna study {name!r} ({cfg['direction']}) in {redact(url)}: "
                 f"{len(study.trials)} trial(s) so far; this sweep adds {cfg['n_trials']}")
        returns, failures, left = [], 0, cfg["n_trials"]
        while left > 0:
            trials = [study.ask(space) for _ in range(min(cfg["n_jobs"], left))]
            batch = [[*(f"{k}={v}" for k, v in fixed.items()), *(override(k, v) for k, v in t.params.items()),
                      f"trial.study={name}", f"trial.number={t.number}"] for t in trials]
            try:
                self.validate(hydra_context, config, batch)
                results = launcher.launch(batch, initial_job_idx=self.job_idx)
            except BaseException:  # interrupted or crashed: no trial of a shared study stays RUNNING
                for t in trials:
                    study.tell(t, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
                raise
            self.job_idx += len(results)
            failures += sum(not tell(study, t, r) for t, r in zip(trials, results))
            returns.append(results)
            left -= len(trials)
            done = cfg["n_trials"] - left
            if failures and failures / done > float(cfg["max_failure_rate"]):
                raise RuntimeError(f"{failures} of {done} trials failed, more than hydra.sweeper.max_failure_rate="
                                   f"{cfg['max_failure_rate']}; see the jobs' logs in {sweep_dir}")
        report(study, sweep_dir, url)
        return returns

    @staticmethod
    def validate(hydra_context, config, batch) -> None:
        """Compose every job's config before launching (a typo fails here, not on a node)."""
        for overrides in batch:
            hydra_context.config_loader.load_sweep_config(master_config=config, sweep_overrides=list(overrides))


def tell(study, trial, ret) -> bool:
    """Tell the study how a job ended; False for a failed job."""
    from hydra.core.utils import JobStatus
    from optuna.trial import TrialState

    value = ret.return_value if ret.status == JobStatus.COMPLETED else None
    ok = isinstance(value, (int, float)) and not math.isnan(float(value))
    if ok:  # a pruned job returns its last value too, after telling the study PRUNED: skipped here
        study.tell(trial, float(value), skip_if_finished=True)
    else:
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        why = ret._return_value if ret.status != JobStatus.COMPLETED else f"returned {value!r}"  # noqa: SLF001
        log.warning(f"Optuna trial {trial.number} failed: {why}")
    return ok


def report(study, sweep_dir: Path, url: str) -> None:
    """Log the best trial so far (of every process searching the study) and save it."""
    from omegaconf import OmegaConf
    from optuna.trial import TrialState

    counts = {s.name.lower(): n for s in TrialState
              if (n := len(study.get_trials(deepcopy=False, states=(s,))))}
    log.info(f"Study {study.study_name!r}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    try:
        best = study.best_trial
    except ValueError:
        log.warning("No trial has completed: there is no best value yet")
        return
    log.info(f"Best parameters: {best.params}")
    log.info(f"Best value: {best.value}")
    OmegaConf.save(OmegaConf.create({"name": "optuna", "study": study.study_name, "storage": redact(url),
                                     "best_trial": best.number, "best_params": best.params,
                                     "best_value": best.value, "trials": counts}),
                   sweep_dir / "optimization_results.yaml")


def from_hydra(**kwargs: Any) -> OptunaSweep:
    return OptunaSweep({k: plain(v) for k, v in kwargs.items()})
