"""Every shipped config composes and builds; bad values are rejected before any work."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

from cnnexp.app import prepare
from cnnexp.errors import ConfigError
from cnnexp.preflight import check
from helpers.cli import TINY, env_for
from helpers.experiments import CONF, composed



def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_exist():
    for group in ("model", "data", "optimizer", "experiment"):
        assert options(group), group
    assert {"seed", "lenet5", "keras_mnist"} <= set(options("model"))
    assert {"sgd", "momentum", "adam"} <= set(options("optimizer"))


def test_default_is_the_seed_post_experiment():
    cfg = composed()
    assert (cfg["lr"], cfg["epochs"], cfg["batch_size"]) == (0.005, 3, 1)
    assert (cfg["data"]["train_size"], cfg["data"]["test_size"]) == (1000, 1000)
    assert cfg["data"]["scale"] == pytest.approx(1 / 255) and cfg["data"]["shift"] == -0.5
    assert cfg["optimizer"]["type"] == "sgd"
    exp = prepare(cfg)
    assert [l.name for l in exp.model.layers] == ["conv2d_0", "maxpool2d_1", "flatten_2", "dense_3", "softmax_4"]
    conv = exp.model.layers[0]
    assert exp.model.params["conv2d_0.W"].shape == (3, 3, 1, 8) and not conv.use_bias
    assert exp.model.params["dense_3.W"].shape == (1352, 10)
    assert (exp.model.params["dense_3.b"] == 0).all()
    assert exp.model.num_params == 13_602


@pytest.mark.parametrize("model,optimizer,data", list(itertools.product(
    options("model"), options("optimizer"), ["mnist", "mnist_sample", "fashion_mnist"])))
def test_every_model_optimizer_data_combination_builds(model, optimizer, data):
    cfg = composed([f"model={model}", f"optimizer={optimizer}", f"data={data}"])
    exp = prepare(cfg)
    assert exp.model.output_shape == (10,)
    assert exp.model.num_params > 0


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_builds(experiment):
    cfg = composed([f"experiment={experiment}"])
    exp = prepare(cfg)
    assert exp.cfg is cfg and exp.model.output_shape == (10,) and exp.model.num_params > 0
    assert [l.name.rsplit("_", 1)[0] for l in exp.model.layers] == [l["type"] for l in cfg["model"]["layers"]]
    assert exp.model.dtype == cfg["model"]["dtype"] and exp.optimizer.lr == cfg["lr"]


def test_layer_hyperparameters_override_from_the_command_line():
    cfg = composed(["model.layers.0.filters=16", "model.layers.0.kernel_size=5", "model.layers.0.padding=same"])
    exp = prepare(cfg)
    assert exp.model.params["conv2d_0.W"].shape == (5, 5, 1, 16)
    assert exp.model.layers[0].output_shape == (28, 28, 16)
    assert exp.model.params["dense_3.W"].shape == (14 * 14 * 16, 10)


@pytest.mark.parametrize("engine,threads", [("reference", "auto"), ("fast", 3)])
def test_engine_and_threads_reach_the_model(engine, threads):
    exp = prepare(composed([f"engine={engine}", f"threads={threads}"]))
    assert exp.model.engine.name == engine and exp.model.spec["engine"] == engine
    if engine == "fast":
        assert exp.model.threads == 3


def test_float64_is_selectable():
    exp = prepare(composed(["model.dtype=float64"]))
    assert all(p.dtype.name == "float64" for p in exp.model.params.values())


@pytest.mark.parametrize("argv,needle", [
    (["lrr=0.1"], "did you mean 'lr'"),
    (["epochs=five"], "epochs=five"),
    (["lr=-1"], "lr=-1.0 is invalid"),
    (["lr=0"], "must be a number > 0"),
    (["epochs=0"], "epochs=0 is invalid"),
    (["batch_size=0"], "batch_size=0 is invalid"),
    (["engine=turbo"], "engine='turbo' is invalid: use fast or reference"),
    (["threads=0"], "threads=0 is invalid: use auto or an integer >= 1"),
    (["log_every=0"], "log_every=0"),
    (["data.train_size=0"], "data.train_size=0"),
    (["data.val_size=-1"], "data.val_size=-1"),
    (["model=lenet"], "did you mean 'lenet5'"),
    (["optimizer=adamw"], "did you mean 'adam'"),
    (["data=mnist_samp"], "did you mean 'mnist_sample'"),
    (["model.layers.0.type=conv2"], "did you mean 'conv2d'"),
    (["model.layers.0.filters=0"], "filters must be a positive int, got 0"),
    (["model.layers.0.padding=full"], "padding must be 'valid' or 'same'"),
    (["model.layers.0.kernel_size=40"], "kernel 40x40 is larger than its input 28x28"),
    (["model.layers.1.pool=30"], "pool 30x30 is larger than its input 26x26"),
    (["model.layers.2.type=relu"], "model.layers.3 (dense): expects a flat input"),
    (["model.layers.0.init=he"], "model.layers.0"),
    (["model.layers.0.filter=3"], "did you mean 'filters'"),
    (["+model.layers.0.foo=1"], "unexpected argument 'foo'"),
    (["+foo=1"], "unknown config key 'foo'"),
    (["model.dtype=float16"], "use float32 or float64"),
    (["optimizer.momentum=0.9"], "momentum"),
    (["optimizer=momentum", "optimizer.momentum=1.5"], "optimizer.momentum=1.5 is invalid"),
    (["data.name=cifar"], "unknown dataset 'cifar'"),
    (["plugins=[no_such_module_xyz]"], "no_such_module_xyz"),
    (["-m", "lr=0.1,0.01,-1"], "(job: lr=-1)"),
])
def test_bad_config_is_one_clear_error(argv, needle):
    with pytest.raises(ConfigError) as e:
        check(argv, str(CONF))
    msg = str(e.value)
    assert needle in msg, msg
    assert "\n" not in msg


def test_good_sweep_checks_every_job():
    assert check(["-m", "lr=0.001,0.01", "model=seed,lenet5"], str(CONF)) == 4


def test_help_flags_are_not_checked():
    assert check(["--cfg", "job"], str(CONF)) == 0


def test_experiment_overrides_top_level_defaults():
    cfg = composed(["experiment=fashion_seed"])
    assert cfg["epochs"] == 1 and cfg["log_every"] == 10000
    assert cfg["data"]["name"] == "fashion_mnist" and cfg["data"]["train_size"] is None
    # and the command line still wins over the experiment
    assert composed(["experiment=fashion_seed", "epochs=2"])["epochs"] == 2


def test_paths_is_a_visible_config_group(monkeypatch, tmp_path):
    from cnnexp.paths import outputs_dir

    assert options("paths") == ["default"]
    assert composed()["paths"]["outputs"] == str(outputs_dir())
    monkeypatch.setenv("CNNEXP_OUTPUTS", str(tmp_path / "elsewhere"))
    assert composed()["paths"]["outputs"] == str(tmp_path / "elsewhere")
    assert composed(["paths.outputs=/data/runs"])["paths"]["outputs"] == "/data/runs"


BUILDS = """
import json, sys
import cnnexp.app as app
from cnnexp.cli import main
built = []
real = app._prepare
app._prepare = lambda cfg: built.append(cfg["lr"]) or real(cfg)
try:
    main(sys.argv[1:])
except SystemExit as e:
    assert not e.code, e.code
print("BUILT", json.dumps(built))
"""


@pytest.mark.parametrize("flags,lr,builds,jobs", [
    ([], "0.02", [0.02], 1),  # the entry point's check builds it, the job takes it
    # a sweep: the check builds the base config (swept values that change no layer are checked
    # without a build), then each job builds its own
    (["-m"], "0.01,0.02", [0.005, 0.01, 0.02], 2),
])
def test_a_single_run_builds_its_experiment_once(tmp_path, flags, lr, builds, jobs):
    args = [*flags, *TINY, f"lr={lr}", "tracking.enabled=false"]
    p = subprocess.run([sys.executable, "-c", BUILDS, *args], capture_output=True, text=True,
                       env=env_for(tmp_path / "out"), cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.split("BUILT ")[-1]) == builds
    assert p.stdout.count("Test Accuracy:") == jobs  # every job trained
