"""The entry point: ``@hydra.main`` composes the config and runs one job. Hydra is known only
here and in the other entry modules (``preflight.py`` checks overrides, ``config.py`` holds the
schemas, ``commands.py`` the subcommands); the training core never sees it.

``python -m cnnexp [overrides]`` runs one experiment; ``python -m cnnexp -m a=1,2`` a sweep.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from . import resume
from .config import register_schemas
from .errors import CnnexpError, TrackingError
from .paths import conf_dir

logger = logging.getLogger("cnnexp")
register_schemas()
CONF_DIR = str(conf_dir())


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
    """The run's journal and who sends it to MLflow: ``"sweep"`` (the sweep's follower),
    ``"follower"`` (a background process started here) or ``"here"`` (this process, at the end:
    ``tracking.wait=true``, ``tracking.background=false``, stores other than sqlite/http).
    Returns ``(tracker, mode)``; a store that cannot work fails here, before training."""
    from pathlib import Path

    from .paths import outputs_dir
    from .tracking import follower, store
    from .tracking.base import NullTracker
    from .tracking.journal import SWEEP_FILE, JournalTracker

    tcfg = cfg["tracking"]
    if not tcfg["enabled"]:
        return NullTracker(), None
    uri = store.resolve_uri(tcfg.get("uri"))
    checked = store.precheck(uri)
    sweep_dir = Path(info["sweep_dir"]) if info.get("sweep_dir") else None
    in_sweep = sweep_dir is not None and (sweep_dir / SWEEP_FILE).is_file()
    if not in_sweep:
        for folder, error in follower.unsynced()[:1]:
            logger.warning(f"cnnexp: warning: an earlier run is not in the store yet ({error})")
    tracker = JournalTracker.start(cfg, info, (sweep_dir if in_sweep else outputs_dir()) / "journals", uri)
    mode = "sweep" if in_sweep else "follower" if checked and tcfg["background"] and not tcfg["wait"] else "here"
    if mode == "follower" and not tracker.broken:
        follower.spawn(tracker.folder)
    return tracker, mode


def deliver(tracker, mode: str | None) -> bool:
    """After ``finish``: say where the run is (id and link), or what went wrong and the command
    that logs it later. False when the run could not be logged here."""
    from .tracking.journal import STATE, read_json
    from .tracking.sync import describe, replay_command, sync

    if mode is None or mode == "sweep" or tracker.broken:  # (a broken journal was reported when it broke)
        return True
    folder = tracker.folder
    if mode == "here":
        try:
            logger.info(describe(sync(folder)))
        except CnnexpError as e:
            fail(e)
            return False
        return True
    state = read_json(folder / STATE)
    if state.get("error"):
        print(f"cnnexp: error: {state['error']}", file=sys.stderr, flush=True)
    elif state.get("run_id"):
        from .tracking.store import link

        logger.info(f"MLflow run {state['run_id']} (being logged in the background): "
                    f"{link(state['uri'], state['experiment_id'], state['run_id'])}")
    else:
        logger.info(f"MLflow: the run is being logged in the background; to wait for it and see its id and "
                    f"link: {replay_command(folder)}")
    return True


def default_config() -> dict:
    """The config without command-line overrides (resume= compares an experiment= with it)."""
    from hydra import compose

    return OmegaConf.to_container(compose(config_name="config"), resolve=True)


def optuna_trial(cfg: dict):
    """The pruning hook when this job is a trial of hydra/sweeper=optuna (cnnexp/sweepers), else None."""
    if cfg["trial"]["number"] is None:
        return None
    from .sweepers.trial import open_trial

    hc = HydraConfig.get()
    return open_trial(cfg["trial"], OmegaConf.to_container(hc.sweeper, resolve=True), str(hc.sweep.dir))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_main(dcfg: DictConfig) -> float | None:
    from .app import load_checked_data, prepare, run
    from .checkpoint import check_fits
    from .preflight import check_job
    from .sweepers.trial import TrialPruned

    cfg = OmegaConf.to_container(dcfg, resolve=True)
    info = job_info()
    tracker, mode, value, logged, exp = None, None, None, True, None
    status, error = "FAILED", "the run ended without reporting why"
    try:  # the journal always gets its end (finally): FINISHED, FAILED or KILLED
        check_job(dcfg)  # cnnexp.preflight: the guard again, inside every job
        cfg, ckpt = resume.apply(cfg, info["overrides"], logger.info, default_config,  # resume=: its own config
                                 os.path.join(info["output_dir"], "resume"))
        exp = prepare(cfg)  # config, data and checkpoint errors all come before the journal
        data = load_checked_data(cfg, exp)
        check_fits(ckpt, exp, data[1], cfg)  # cnnexp.checkpoint: mismatches before the run
        trial = optuna_trial(cfg)
        tracker, mode = make_tracker(cfg, info)
        result = run(cfg, tracker=tracker, exp=exp, resume=ckpt, data=data, on_epoch_end=trial,
                     checkpoint_dir=os.path.join(info["output_dir"], "checkpoints"))
        tracker.log_results(result)  # weights, plot data: needs the trained model
        status, error = "FINISHED", None
        m = result["metrics"]
        value = float(m.get("val/acc", m.get("test/acc", float("nan"))))
    except TrialPruned as e:  # stopped early on purpose: FINISHED, tagged pruned (not FAILED)
        logger.info(str(e))
        tracker.set_tags({"cnnexp.outcome": "pruned", "mlflow.note.content": str(e)})
        status, error, value = "FINISHED", None, e.value
    except CnnexpError as e:
        error = f"{type(e).__name__}: {e}"
        if debug():
            raise
        fail(e)
        if not info["multirun"]:  # a sweep's other jobs go on; the sweep exits non-zero at the end
            sys.exit(e.exit_code)
    except SystemExit:  # from a signal handler around the job (submitit: preempted or timed out, requeued)
        status, error = "KILLED", "the job was stopped from outside (preempted or timed out?)"
        raise
    except KeyboardInterrupt:
        status, error = "KILLED", "interrupted (SIGINT/SIGTERM)"
        print("cnnexp: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except BaseException as e:
        import traceback

        error = "".join(traceback.format_exception(e))[-5000:]
        raise
    finally:
        if exp is not None:
            exp.model.close()  # the engine's worker processes, if any (a sweep's next job forks its own)
        if tracker is not None:
            tracker.finish(status, error)
            logged = deliver(tracker, mode)
    if not logged:
        sys.exit(TrackingError.exit_code)
    return value


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    from hydra_plugins.cnnexp_plugins import register

    from . import preflight
    from .app import stop_on_signals

    try:  # cnnexp.commands.main has run the subcommands (runs, predict, ui), --help and --version
        preflight.check_sweep_syntax(argv)
        register()  # cnnexp's sweeper and launchers (an editable install hides them from Hydra's scan)
        preflight.check(argv, CONF_DIR)
    except CnnexpError as e:
        if debug():
            raise
        fail(e)
        sys.exit(e.exit_code)
    sys.argv = [sys.argv[0]] + list(argv)
    try:
        with stop_on_signals():
            hydra_main()
    except KeyboardInterrupt:  # Ctrl-C outside training, or in a parallel sweep: no traceback
        print("cnnexp: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    lost = sys.modules.get("cnnexp.launchers.submitit")  # jobs a cluster ended without a result
    if lost is not None and lost.LOST:
        print(f"cnnexp: {len(lost.LOST)} job(s) ended without a result: " + "; ".join(lost.LOST), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
