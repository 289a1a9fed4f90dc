"""The job side of an Optuna trial: report the validation accuracy after each epoch, stop when
the study's pruner says so.

The sweeper hands each job ``trial.study=NAME trial.number=N``; the job opens the same storage
(``hydra.sweeper.storage``, which every job's Hydra config carries) with the same pruner, so
this works from any process on any machine that reaches the storage. A pruned trial tells the
study PRUNED itself, and its run ends FINISHED with the tag ``cnnexp.outcome=pruned``.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError

METRICS = ("val/acc", "test/acc")  # what the job returns to the sweeper: val/acc, else test/acc


class TrialPruned(Exception):
    """The pruner stopped this trial after an epoch; ``value`` is the last reported value."""

    def __init__(self, message: str, value: float):
        super().__init__(message)
        self.value = value


class PruningHook:
    """``on_epoch_end`` callback: report the epoch's value, raise TrialPruned when pruned."""

    def __init__(self, study, trial):
        self.study, self.trial = study, trial

    @property
    def number(self) -> int:
        return self.trial.number

    def __call__(self, state) -> None:
        metrics = state.history[-1] if state.history else {}
        value = next((metrics[k] for k in METRICS if k in metrics), None)
        if value is None or math.isnan(float(value)):
            return
        self.trial.report(float(value), step=state.epoch)
        if self.trial.should_prune():
            from optuna.trial import TrialState

            self.study.tell(self.trial, state=TrialState.PRUNED, skip_if_finished=True)
            raise TrialPruned(f"Optuna trial {self.trial.number} pruned after epoch {state.epoch} "
                              f"({value:.4f}; pruner {type(self.study.pruner).__name__})", float(value))


def open_trial(trial: dict, sweeper: dict[str, Any], sweep_dir: str) -> PruningHook | None:
    """The hook for this job's trial, or None when the job is not an Optuna trial."""
    if trial.get("number") is None:
        return None
    import optuna

    from .study import make_pruner, quiet_optuna, storage_url

    quiet_optuna()
    url = storage_url(sweeper.get("storage"), sweep_dir)
    try:
        study = optuna.load_study(study_name=trial["study"], storage=url, pruner=make_pruner(sweeper.get("pruner")),
                                  sampler=optuna.samplers.RandomSampler())  # samples nothing: cheap
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(  # noqa: SLF001  (Optuna has no
            study._study_id, int(trial["number"]))                          # public lookup by number)
    except KeyError as e:
        raise ConfigError(f"trial.study={trial['study']!r} trial.number={trial['number']}: no such trial "
                          f"in the sweeper's storage ({e}); these keys are set by hydra/sweeper=optuna") from None
    return PruningHook(study, optuna.trial.Trial(study, trial_id))
