"""Configs call only what cnnexp ships: names are resolved to objects (not matched as strings),
logging configs write only inside the run folder, and every route into the composed config is
checked: the command line, --config-dir, hydra.searchpath, experiment files, job_logging.

The end-to-end tests run the real command line against the lowest and the highest hydra-core
that pyproject.toml allows, with a marker file the attack would create."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cnnexp import guard
from cnnexp.errors import ConfigError
from cnnexp.paths import conf_dir
from cnnexp.preflight import check
from helpers.cli import cli, env_for

CONF = str(conf_dir())
ROOT = Path(__file__).resolve().parent.parent


# -- names resolve to objects ---------------------------------------------------------------
@pytest.mark.parametrize("name", [
    "cnnexp.tracking.callbacks.MlflowSweepCallback",
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra_plugins.cnnexp_plugins.optuna.OptunaSweeper",
    "hydra_plugins.cnnexp_plugins.submitit.CnnexpLocalLauncher",
    "optuna.samplers.TPESampler",
    "optuna.pruners.MedianPruner",
])
def test_shipped_objects_are_allowed(name):
    from hydra.core.plugins import Plugins

    Plugins.instance()  # Hydra's plugin scan imports hydra_plugins.* before any config is composed
    guard.check_target(name, "x._target_")


@pytest.mark.parametrize("name,resolves_to", [
    ("cnnexp.cli.os.system", "posix.system"),
    ("hydra.utils.os.system", "posix.system"),
    ("cnnexp.app.importlib.import_module", "importlib.import_module"),
    ("builtins.exec", "builtins.exec"),
    ("os.system", "posix.system"),
    ("cnnexp.tracking.callbacks.os.system", "posix.system"),
    ("optuna.samplers.os.system", None),  # only if optuna.samplers imported os: refused either way
    ("cnnexp.errors.ConfigError", "cnnexp.errors.ConfigError"),  # ours, but not a callback/launcher/sweeper
    ("logging.FileHandler", "logging.FileHandler"),  # allowed in logging configs only
    ("no_such_module_xyz.run", None),
    ("cnnexp.tracking.callbacks.MlflowSweepCallback.__init__.__globals__", None),
])
def test_other_objects_are_refused_by_what_they_resolve_to(name, resolves_to):
    with pytest.raises(ConfigError) as e:
        guard.check_target(name, "hydra.callbacks.x._target_")
    msg = str(e.value)
    assert "not allowed" in msg and "\n" not in msg
    if resolves_to:
        assert f"it names {resolves_to}" in msg, msg


def test_lookup_imports_nothing_foreign():
    assert "this_module_does_not_exist" not in sys.modules
    assert guard._lookup("this_module_does_not_exist.x") is guard._MISSING
    assert guard._lookup("cnnexp.cli.os.system") is os.system


# -- logging configs -------------------------------------------------------------------------
def log_cfg(**handler):
    return {"version": 1, "formatters": {"f": {"format": "%(message)s"}},
            "handlers": {"h": {"class": "logging.FileHandler", "formatter": "f",
                               "filename": f"{guard.RUN_DIR}/cnnexp.log", **handler}},
            "root": {"handlers": ["h"]}}


def test_shipped_logging_config_passes():
    guard.check_logging(log_cfg(), "hydra.job_logging")
    guard.check_logging({"handlers": {"c": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}}}, "x")


@pytest.mark.parametrize("change,needle", [
    ({"filename": "/home/user/.bashrc"}, "inside the run's folder"),
    ({"filename": f"{guard.RUN_DIR}/../.bashrc"}, "inside the run's folder"),
    ({"filename": f"{guard.RUN_DIR}/.bashrc"}, "*.log files"),
    ({"class": "cnnexp.cli.logging.handlers.SysLogHandler"}, "logging.StreamHandler"),
    ({"class": "cnnexp.cli.os.system"}, "not allowed"),
    ({"()": "os.system", "command": "touch x"}, "not allowed"),
    ({".": {"baseFilename": "/etc/passwd"}}, "not allowed"),
    ({"mode": "x+"}, "use 'a' or 'w'"),
    ({"class": "logging.StreamHandler", "stream": "ext://os.system"}, "ext://sys.stdout"),
])
def test_logging_routes_are_refused(change, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        guard.check_logging(log_cfg(**change), "hydra.job_logging")


def test_callables_by_name_in_plugin_settings_are_refused():
    with pytest.raises(ConfigError, match="custom_search_space"):
        guard.check_hydra({"sweeper": {"custom_search_space": "cnnexp.cli.os.system"}})
    with pytest.raises(ConfigError, match="setup"):
        guard.check_hydra({"launcher": {"setup": ["rm -rf ~"]}})


def test_formatter_factories_and_filters_are_refused():
    cfg = log_cfg()
    cfg["formatters"]["f"] = {"()": "cnnexp.cli.os.system", "command": "x"}
    with pytest.raises(ConfigError, match="logging.Formatter"):
        guard.check_logging(cfg, "hydra.job_logging")
    cfg = log_cfg()
    cfg["filters"] = {"x": {"()": "os.system"}}
    with pytest.raises(ConfigError, match="logging.Filter"):
        guard.check_logging(cfg, "hydra.job_logging")


# -- through the entry point's check (any flags) ---------------------------------------------
def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("argv,needle", [
    (["--experimental-rerun", "x.pickle"], "unpickles"),
    (["+hydra.job.env_set.LD_PRELOAD=/tmp/x.so"], "env_set.LD_PRELOAD"),
    (["+hydra.job.env_set.PYTHONPATH=/tmp"], "env_set.PYTHONPATH"),
    (["hydra.searchpath=[pkg://os]"], "pkg://os"),
    (["--cfg", "job", "+hydra.callbacks.x._target_=os.system"], "not allowed"),
    (["--help", "+hydra.callbacks.x._target_=os.system"], "not allowed"),
])
def test_other_doors_are_closed(argv, needle, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNEXP_OUTPUTS", str(tmp_path / "outputs"))
    with pytest.raises(ConfigError) as e:
        check(argv, CONF)
    assert needle in str(e.value) and "\n" not in str(e.value)


# -- end to end, with a marker file, against the lowest and highest hydra-core allowed ---------
def pinned_range() -> tuple[str, str]:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"hydra-core>=([\d.]+),<([\d.]+)"', text)
    assert m, "hydra-core is pinned as >=low,<high in pyproject.toml"
    return m.group(1), m.group(2)


@pytest.fixture(scope="session", params=["lowest", "highest"])
def hydra_path(request, tmp_path_factory):
    """A folder with that hydra-core (put first on PYTHONPATH), installed with pip --target."""
    low, high = pinned_range()
    spec = f"hydra-core=={low}" if request.param == "lowest" else f"hydra-core>={low},<{high}"
    dst = tmp_path_factory.mktemp(f"hydra-{request.param}")
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(dst), spec],
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        pytest.skip(f"cannot install {spec} (offline?): {p.stderr.strip().splitlines()[-1:]}")
    return dst


def tiny(args, tmp_path, pythonpath=None, timeout=300):
    """A one-epoch, 20-image, untracked run through the shared CLI runner."""
    extra = {"PYTHONPATH": os.pathsep.join([str(pythonpath), os.environ.get("PYTHONPATH", "")])} if pythonpath else {}
    return cli([*args, "tracking.enabled=false", "epochs=1", "data=mnist_sample", "data.train_size=20",
                "data.test_size=20"], tmp_path / "outputs", timeout=timeout, **extra)


CALLBACK = "hydra:\n  callbacks:\n    evil:\n      _target_: {target}\n      _args_: ['touch {marker}']\n"
CONFIG = "defaults:\n  - base_config\n  - _self_\n  - model: seed\n  - data: mnist\n  - optimizer: sgd\n"
FILE_LOG = ("version: 1\nformatters:\n  f:\n    format: 'echo pwned %(message)s'\nhandlers:\n  file:\n"
            "    class: logging.FileHandler\n    formatter: f\n    filename: {marker}\nroot:\n  handlers: [file]\n")
FACTORY_LOG = ("version: 1\nhandlers:\n  evil:\n    (): cnnexp.cli.os.system\n    command: 'touch {marker}'\n"
               "root:\n  handlers: [evil]\n")


def route(name: str, d: Path, marker: Path) -> list[str]:
    """argv (and files in ``d``) that would create ``marker`` if the guard let them through."""
    if name == "command line, prefix trick":
        return ["+hydra.callbacks.evil._target_=cnnexp.cli.os.system", f"+hydra.callbacks.evil._args_=['touch {marker}']"]
    if name == "command line, launcher":
        return ["-m", "hydra.launcher._target_=hydra.utils.os.system", f"+hydra.launcher._args_=['touch {marker}']"]
    if name == "command line, log file":
        return [f"hydra.job_logging.handlers.file.filename={marker}"]
    if name == "--config-dir":
        write(d / "evil.yaml", CONFIG + CALLBACK.format(target="cnnexp.cli.os.system", marker=marker))
        return ["--config-dir", str(d), "--config-name", "evil"]
    if name == "--config-dir experiment file":
        write(d / "experiment" / "evil.yaml", "# @package _global_\n" +
              CALLBACK.format(target="cnnexp.app.importlib.sys.modules.os.system", marker=marker))
        return ["-cd", str(d), "experiment=evil"]
    if name == "hydra.searchpath experiment file":
        write(d / "experiment" / "evil.yaml", "# @package _global_\n" +
              CALLBACK.format(target="hydra.utils.os.system", marker=marker))
        return [f"hydra.searchpath=[file://{d}]", "experiment=evil"]
    if name == "job_logging file handler":
        write(d / "hydra" / "job_logging" / "evil.yaml", FILE_LOG.format(marker=marker))
        return [f"hydra.searchpath=[file://{d}]", "hydra/job_logging=evil"]
    if name == "job_logging factory":
        write(d / "hydra" / "job_logging" / "evil.yaml", FACTORY_LOG.format(marker=marker))
        return [f"hydra.searchpath=[file://{d}]", "hydra/job_logging=evil"]
    if name == "hydra_logging file handler":
        write(d / "hydra" / "hydra_logging" / "evil.yaml", FILE_LOG.format(marker=marker))
        return [f"hydra.searchpath=[file://{d}]", "hydra/hydra_logging=evil"]
    if name == "sweep over an experiment file":  # the sweep's base config is clean, job 2's is not
        write(d / "experiment" / "evil.yaml", "# @package _global_\nhydra:\n  job_logging:\n    handlers:\n"
              f"      file:\n        filename: {marker}\n")
        return ["-m", f"hydra.searchpath=[file://{d}]", "experiment=lenet5,evil"]
    raise AssertionError(name)


ROUTES = ["command line, prefix trick", "command line, launcher", "command line, log file", "--config-dir",
          "--config-dir experiment file", "hydra.searchpath experiment file", "job_logging file handler",
          "job_logging factory", "hydra_logging file handler", "sweep over an experiment file"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ROUTES)
def test_injection_route_is_refused_and_runs_nothing(name, hydra_path, tmp_path):
    marker = tmp_path / "MARKER"
    p = tiny(route(name, tmp_path / "evil", marker), tmp_path, pythonpath=hydra_path)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("cnnexp: error:")]
    assert p.returncode == 2 and len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "not allowed" in errors[0], errors[0]
    assert not marker.exists()
    assert "Epoch" not in p.stdout


@pytest.mark.slow
def test_the_log_file_route_is_real_without_the_entry_check(tmp_path):
    """Control: started past the entry point's check, Hydra opens the chosen log file before
    the task function runs (so the marker tests above can fail); the job's check then refuses."""
    marker = tmp_path / "MARKER.log"
    code = ("import sys; from cnnexp import cli; sys.argv = ['x', 'hydra.job_logging.handlers.file.filename=%s', "
            "'tracking.enabled=false']; cli.hydra_main()" % marker)
    env = env_for(tmp_path / "outputs")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert marker.exists()
    assert p.returncode == 2 and "inside the run's folder" in p.stderr, p.stderr


@pytest.mark.slow
def test_injection_tests_ran_both_hydra_versions(hydra_path):
    code = "import hydra; print(hydra.__version__)"
    env = {**os.environ, "PYTHONPATH": str(hydra_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout.strip()
    low, high = pinned_range()
    assert out.startswith("1.") and tuple(map(int, out.split("."))) >= tuple(map(int, low.split(".")))
    assert tuple(map(int, out.split("."))) < tuple(map(int, high.split(".")))


@pytest.mark.slow
def test_a_sweep_started_past_the_entry_point_is_checked_whole_by_its_first_job(tmp_path):
    code = ("import sys; from cnnexp import cli; sys.argv = ['x', '-m', 'lr=0.01,-1', 'data=mnist_sample', "
            "'data.train_size=20', 'data.test_size=20', 'epochs=1', 'tracking.enabled=false']; cli.hydra_main()")
    env = env_for(tmp_path / "outputs")
    env.pop("CNNEXP_MAIN_PROCESS", None)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert p.returncode == 2 and "(job: lr=-1)" in p.stderr, p.stderr
    assert "Epoch" not in p.stdout  # the first job (lr=0.01, valid) did not train either
