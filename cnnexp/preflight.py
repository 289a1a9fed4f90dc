"""Check every job's config before Hydra starts any work, and turn Hydra/OmegaConf
composition errors into one line that names the bad value and what would be valid.

The config is composed with Hydra's own machinery for the same argv as ``hydra.main`` (every
flag: ``-cd``, ``-cp``, ``-cn``, ``hydra.searchpath``...), before Hydra configures logging or
instantiates anything, and goes through ``cnnexp.guard``. For a sweep, every job is checked
(``cnnexp.sweepcheck``), so a bad value in the last job stops the sweep before the first runs;
search ranges (``interval()``) are refused unless the configured sweeper is Optuna's.
"""

from __future__ import annotations

import argparse
import os
import re
from contextlib import contextmanager

from .errors import ConfigError, suggest

MAIN_MODULE = "cnnexp.cli"  # the module of the @hydra.main task function: Hydra's search path hangs on it


def _known_keys(node) -> list[str]:
    try:
        return sorted(str(k) for k in node.keys())
    except Exception:
        return []


def explain(exc: BaseException, base_cfg=None) -> str:
    """One line for a Hydra/OmegaConf composition error."""
    chain, e = [], exc
    while e is not None and len(chain) < 5:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = "\n".join(str(c) for c in chain)
    m = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if m:
        group, name = m.groups()
        opts = re.findall(r"^\t(\S+)$", text, flags=re.M)
        return (f"unknown {group} {name!r}{suggest(name, opts)}; available {group} configs: "
                f"{', '.join(sorted(opts)) or 'none'} (in conf/{group}/)")
    m = re.search(r"Key '([^']+)' (?:is not in struct|not in '\w+')", text)
    if m:
        key = m.group(1)
        fk = re.search(r"full_key: (\S+)", text)
        full = fk.group(1) if fk else key
        parent = full.rsplit(".", 1)[0] if "." in full else ""
        known: list[str] = []
        if base_cfg is not None:
            try:
                from omegaconf import OmegaConf

                node = OmegaConf.select(base_cfg, parent) if parent else base_cfg
                known = _known_keys(node)
            except Exception:
                known = []
        where = f" in {parent}" if parent else ""
        return (f"unknown config key {full!r}{suggest(key, known)}; valid keys{where}: {', '.join(known)}"
                if known else f"unknown config key {full!r}")
    m = re.search(r"Value '([^']*)' (?:of type '\w+' )?could not be converted to (\w+)", text)
    if m:
        fk = re.search(r"full_key: (\S+)", text)
        key = fk.group(1) if fk else "?"
        return f"{key}={m.group(1)} is invalid: expected {m.group(2).lower()}"
    m = re.search(r"Missing mandatory value: (\S+)", text)
    if m:
        return f"{m.group(1)} must be set (it has no default), e.g. {m.group(1)}=..."
    first = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(first[:2]) if first else type(exc).__name__


MIN_FREE_MB = 50


def check_outputs(path) -> None:
    """The outputs folder must be creatable, writable and have some free space."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from .errors import TrackingError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise TrackingError(f"outputs folder {str(path)!r} is not writable ({e.strerror or e}); "
                            f"fix its permissions or point CNNEXP_OUTPUTS at a writable folder") from None
    free_mb = shutil.disk_usage(path).free / 2**20
    if free_mb < float(os.environ.get("CNNEXP_MIN_FREE_MB", MIN_FREE_MB)):
        raise TrackingError(f"outputs folder {str(path)!r} has only {free_mb:.0f} MB free; "
                            f"free some space or point CNNEXP_OUTPUTS elsewhere")


def check_sweep_syntax(argv: list[str]) -> None:
    """``interval()`` is a search space only Optuna samples; the basic sweeper would fail with a
    traceback after the sweep's parent run was created. Say so in one line, before anything runs."""
    if not any(a in ("-m", "--multirun") for a in argv):
        return
    bad = [a for a in argv if re.search(r"=\s*(tag\(.*)?interval\(", a)]
    if not bad:
        return
    from hydra import compose, initialize_config_dir

    from .config import register_schemas
    from .paths import conf_dir

    register_schemas()
    picks = [a for a in argv if a.startswith(("hydra/sweeper=", "experiment=", "hydra.sweeper._target_="))]
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            target = str(compose(config_name="config", overrides=picks, return_hydra_config=True).hydra.sweeper._target_)
    except Exception:  # noqa: BLE001  (a sweeper config only Hydra's own launch composes: leave it to Hydra)
        return
    if "optuna" not in target.lower():
        raise ConfigError(f"{bad[0]}: interval() is a search range that only the Optuna sweeper samples; add "
                          f"hydra/sweeper=optuna_max (see conf/experiment/optuna_lr.yaml), or give values: "
                          f"{bad[0].split('=')[0]}=0.001,0.01,0.1")


COMMANDS_WITHOUT_JOBS = ("cfg", "info", "shell_completion", "help", "hydra_help")


def parse_args(argv: list[str]):
    """Hydra's own command-line parser; None when Hydra would reject argv (it says why)."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def error(message):
        raise ValueError(message)

    parser.error = error  # type: ignore[method-assign]
    if "--version" in argv:
        return None
    try:
        return parser.parse_args(argv)
    except (ValueError, argparse.ArgumentError):
        return None


@contextmanager
def hydra_session(args, conf_dir: str):
    """A Hydra instance with the config search path ``hydra.main`` builds for the same argv
    (``--config-path``, ``--config-dir``; ``hydra.searchpath`` is applied while composing)."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path, detect_task_name
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    version.setbase("1.3")
    running = GlobalHydra.instance().hydra  # set when called from inside a running Hydra app
    GlobalHydra.instance().clear()
    config_path = args.config_path if args.config_path is not None else conf_dir
    search_path = create_automatic_config_search_path(None, MAIN_MODULE, config_path)
    if args.config_dir is not None:
        folder = os.path.abspath(args.config_dir)
        if not os.path.isdir(folder):
            raise ConfigError(f"--config-dir {args.config_dir!r}: no such folder ({folder})")
        search_path.prepend(provider="command-line", path=f"file://{folder}", anchor=SearchPathQuery(provider="schema"))
    h = Hydra.create_main_hydra2(task_name=detect_task_name(None, MAIN_MODULE), config_search_path=search_path)
    try:
        yield h
    finally:
        GlobalHydra.instance().clear()
        if running is not None:
            GlobalHydra.instance().initialize(running)


def task_config(cfg) -> dict:
    """The resolved task part of a composed config (its ``hydra`` node removed)."""
    from omegaconf import OmegaConf, open_dict

    job = cfg.copy()
    with open_dict(job):
        job.pop("hydra", None)
    return OmegaConf.to_container(job, resolve=True)


def light_check(plain: dict, model: bool) -> None:
    """One swept value: the value checks, the optimizer, the data set name, and for model keys
    the shape and memory estimate (no weights are allocated)."""
    from .config import check_values
    from .estimate import check_memory
    from .optimizers import build_optimizer
    from .registry import DATASETS

    check_values(plain)
    if model:
        check_memory(plain)
    build_optimizer(plain["optimizer"], plain["lr"])
    DATASETS.get(plain["data"]["name"])


def check(argv: list[str], conf_dir: str) -> int:
    """Compose the config exactly as ``hydra.main`` will for ``argv`` (any flags), put it through
    the guard (nothing foreign is called, logs stay in the run folder) and, when argv runs jobs,
    validate every job. Returns the number of jobs checked (0 for --cfg, --help, ...)."""
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    from . import cleanup, guard, sweepcheck
    from .app import prepare
    from .config import register_schemas

    register_schemas()
    guard.refuse_rerun(argv)
    args = parse_args(argv)
    if args is None or args.shell_completion:  # -sc query=...: Hydra answers; nothing is composed
        return 0
    cleanup.at_start()
    runs = not any(getattr(args, c) for c in COMMANDS_WITHOUT_JOBS)
    config_name = args.config_name or "config"
    with hydra_session(args, conf_dir) as h:
        overrides = list(args.overrides)
        cfg, failed = one_run(h, config_name, overrides) if runs and not args.multirun else (None, None)
        mode = RunMode.MULTIRUN if args.multirun else RunMode.RUN if cfg is not None else \
            (h.get_mode(config_name, overrides) if runs else None)
        if mode is None:
            mode = RunMode.RUN
            overrides.append("hydra.mode=RUN")
        elif args.multirun:
            overrides.append("hydra.mode=MULTIRUN")
        try:
            if cfg is None and failed is not None and mode == RunMode.RUN:
                raise failed  # composing it again, with hydra.mode=RUN, fails the same way
            cfg = cfg if cfg is not None else h.compose_config(config_name, overrides, run_mode=mode)
            guard.check_composed(cfg)
            if not runs:
                return 0
            plain = task_config(cfg)
        except (HydraException, OmegaConfBaseException) as e:
            raise ConfigError(explain(e, _base(h, config_name))) from None
        check_outputs(plain["paths"]["outputs"])
        prepare(plain, keep=mode != RunMode.MULTIRUN)  # a single run's job takes this one
        if mode != RunMode.MULTIRUN:
            return 1
        return sweepcheck.check(h, cfg, config_name, task_config, prepare, light_check,
                                lambda e: explain(e, _base(h, config_name)))


def one_run(h, config_name: str, overrides: list[str]):
    """``(config, None)`` for a single run, composed once (as ``get_mode`` then ``hydra.mode=RUN``
    give it); ``(None, error)`` or, for a config asking for a sweep, ``(None, None)``."""
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException
    try:
        cfg = h.compose_config(config_name, overrides, run_mode=RunMode.RUN)
    except (HydraException, OmegaConfBaseException) as e:
        return None, e
    if cfg.hydra.mode not in (None, RunMode.RUN):
        return None, None
    with open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.RUN
    return cfg, None


def _base(h, config_name: str):
    from hydra.types import RunMode

    try:
        return h.compose_config(config_name, [], run_mode=RunMode.RUN)
    except Exception:  # noqa: BLE001  (only for suggestions)
        return None


def check_job(dcfg) -> None:
    """First thing inside the Hydra app, in every job (joblib workers included): the job's own
    config, hydra node included, passes the guard, with log files inside the job's real run
    folder; a sweep worker is recorded so that the next start can clean up after a killed sweep.
    If the app was started without the entry point's check (``hydra_main`` called directly),
    the first job runs that check on ``sys.argv`` (every job of a sweep) before doing anything."""
    import sys

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from . import cleanup, guard
    from .errors import CnnexpError
    from .paths import conf_dir

    if cleanup.MAIN_ENV not in os.environ:  # started without cnnexp.cli.main: its check, now, once
        try:
            check(sys.argv[1:], str(conf_dir()))
        except CnnexpError as e:  # stops the whole sweep, not just this job
            print(f"cnnexp: error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(e.exit_code) from None
    hc = HydraConfig.get()
    guard.check_targets(OmegaConf.to_container(dcfg, resolve=False))
    guard.check_hydra_node(hc, str(hc.runtime.output_dir))
    cleanup.register_worker()
