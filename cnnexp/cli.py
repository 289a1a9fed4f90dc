"""The entry point: the only module that knows Hydra.

``python -m cnnexp [overrides]`` runs one experiment; ``python -m cnnexp -m a=1,2`` a sweep.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from . import resume
from .config import register_schemas
from .errors import CnnexpError
from .paths import conf_dir

logger = logging.getLogger("cnnexp")
register_schemas()
CONF_DIR = str(conf_dir())
FAILED_JOBS: list[str] = []


def debug() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("CNNEXP_DEBUG") == "1"


def fail(e: CnnexpError) -> None:
    print(f"cnnexp: error: {e}", file=sys.stderr, flush=True)


def job_info() -> dict:
    """What Hydra knows about this job, as plain values (for tags and run names)."""
    hc = HydraConfig.get()
    multirun = str(hc.mode) == "RunMode.MULTIRUN"
    return {
        "overrides": list(hc.overrides.task),
        "output_dir": hc.runtime.output_dir,
        "multirun": multirun,
        "job_num": int(hc.job.num) if multirun else None,
        "sweep_dir": str(hc.sweep.dir) if multirun else None,
        "job_name": hc.job.name,
    }


def make_tracker(cfg: dict, info: dict):
    """NullTracker, JournalTracker (a background process logs to MLflow) or MlflowTracker."""
    from .tracking import store
    from .tracking.base import NullTracker

    tcfg = cfg["tracking"]
    if not tcfg["enabled"]:
        return NullTracker()
    if tcfg["background"] and store.precheck(store.resolve_uri(tcfg.get("uri"))):
        from .tracking.journal import JournalTracker

        return JournalTracker.start(cfg, info, os.path.join(info["output_dir"], "tracking"), wait=tcfg["wait"])
    from .tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker.start(cfg, info)


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (in the main thread), so runs end KILLED, not RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def default_config() -> dict:
    """The config without command-line overrides (resume= compares an experiment= with it)."""
    from hydra import compose

    return OmegaConf.to_container(compose(config_name="config"), resolve=True)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_main(dcfg: DictConfig) -> float | None:
    from .app import load_checked_data, prepare, run

    cfg = OmegaConf.to_container(dcfg, resolve=True)
    info = job_info()
    tracker = None
    status, error = "FAILED", "the run ended without reporting why"
    try:  # the tracker's run always ends (finally): FINISHED, FAILED or KILLED, never RUNNING
        with sigterm_as_interrupt():
            cfg, ckpt = resume.apply(cfg, info["overrides"], logger.info, default_config,  # resume=: its own config
                                     os.path.join(info["output_dir"], "resume"))
            exp = prepare(cfg)  # config, data and checkpoint errors all come before the MLflow run
            data = load_checked_data(cfg, exp)
            tracker = make_tracker(cfg, info)
            result = run(cfg, tracker=tracker, exp=exp, resume=ckpt, data=data,
                         checkpoint_dir=os.path.join(info["output_dir"], "checkpoints"))
            tracker.log_results(result)  # weights, model, plots: needs the trained model
        status, error = "FINISHED", None
        m = result["metrics"]
        return float(m.get("val/acc", m.get("test/acc", float("nan"))))
    except CnnexpError as e:
        error = f"{type(e).__name__}: {e}"
        if debug():
            raise
        fail(e)
        if info["multirun"]:  # let the other jobs of the sweep run; exit non-zero at the end
            FAILED_JOBS.append(" ".join(info["overrides"]))
            return None
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        status, error = "KILLED", "interrupted (SIGINT/SIGTERM)"
        print("cnnexp: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except BaseException as e:
        import traceback

        error = "".join(traceback.format_exception(e))[-5000:]
        raise
    finally:
        if tracker is not None:
            tracker.finish(status, error)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    from . import commands, preflight

    try:
        argv = commands.dispatch(argv)  # subcommands (runs, predict, ui), --help, --version: they exit
        preflight.check(argv, CONF_DIR)
    except CnnexpError as e:
        if debug():
            raise
        fail(e)
        sys.exit(e.exit_code)
    sys.argv = [sys.argv[0]] + list(argv)
    try:
        with sigterm_as_interrupt():
            hydra_main()
    except BaseException as e:  # a sweep cut short: end its parent run KILLED / FAILED
        if "cnnexp.tracking.callbacks" in sys.modules:
            sys.modules["cnnexp.tracking.callbacks"].close_open_sweeps(e)
        if isinstance(e, KeyboardInterrupt):  # Ctrl-C in a parallel sweep: no traceback
            print("cnnexp: interrupted", file=sys.stderr, flush=True)
            sys.exit(130)
        raise
    callbacks = sys.modules.get("cnnexp.tracking.callbacks")  # knows the jobs of parallel workers too
    failed = list(dict.fromkeys(FAILED_JOBS + (callbacks.FAILED_JOBS if callbacks else [])))
    if failed:
        print(f"cnnexp: {len(failed)} job(s) failed: " + "; ".join(failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
