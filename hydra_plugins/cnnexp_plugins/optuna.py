"""Hydra's handle on cnnexp's Optuna sweeper (conf/hydra/sweeper/optuna.yaml names this class).

Hydra imports every module under ``hydra_plugins`` at start-up, so this one stays light: Optuna
is imported when a sweep starts. The sweeper itself: ``cnnexp/sweepers/optuna_sweeper.py``.
"""

from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper


class OptunaSweeper(Sweeper):
    def __init__(self, direction: str = "maximize", storage: Optional[str] = None, study_name: str = "cnnexp",
                 load_if_exists: bool = True, n_trials: int = 10, n_jobs: int = 1, max_failure_rate: float = 0.0,
                 sampler: Any = None, pruner: Any = None, params: Any = None) -> None:
        self.kwargs = dict(direction=direction, storage=storage, study_name=study_name, load_if_exists=load_if_exists,
                           n_trials=n_trials, n_jobs=n_jobs, max_failure_rate=max_failure_rate, sampler=sampler,
                           pruner=pruner, params=params)
        self.config = self.launcher = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        from cnnexp.sweepers.optuna_sweeper import from_hydra

        self.impl = one_line_errors(from_hydra, **self.kwargs)
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        return one_line_errors(self.impl.run, self.launcher, self.config, self.hydra_context, arguments)


def one_line_errors(fn, *args, **kwargs):
    """A bad sweeper setting or search space: ``cnnexp: error: ...`` and a non-zero exit (a
    SystemExit passes Hydra's own error report), not a traceback."""
    from cnnexp.cli import debug, fail
    from cnnexp.errors import CnnexpError

    try:
        return fn(*args, **kwargs)
    except CnnexpError as e:
        if debug():
            raise
        fail(e)
        raise SystemExit(e.exit_code) from None
