"""hydra/sweeper=optuna (cnnexp/sweepers): the search space, and pruning end to end on the
default study (a SQLite file in the sweep folder). The shared PostgreSQL study: test_scaling_postgres.py."""

from __future__ import annotations

import glob

import pytest

from helpers.cli import cli
from helpers.tracking import all_runs, client

optuna = pytest.importorskip("optuna")
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")


def space_of(*overrides: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cnnexp.sweepers.space import search_space

    return search_space(OverridesParser.create().parse_overrides(list(overrides)))


def test_search_space_from_hydra_sweep_syntax():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space, fixed = space_of("lr=interval(0.001,0.1)", "momentum=tag(log, interval(0.01, 0.5))",
                            "batch_size=choice(1,4,16)", "epochs=range(1,6,2)", "seed=1,2", "data.val_size=500")
    assert space == {"lr": FloatDistribution(0.001, 0.1), "momentum": FloatDistribution(0.01, 0.5, log=True),
                     "batch_size": CategoricalDistribution([1, 4, 16]), "epochs": IntDistribution(1, 5, step=2),
                     "seed": CategoricalDistribution([1, 2])}
    assert fixed == {"data.val_size": "500"}
    assert space_of("epochs=interval(1,5)")[0] == {"epochs": FloatDistribution(1.0, 5.0)}  # Hydra: floats


@pytest.mark.parametrize("bad, message", [("lr=interval(0.1,0.01)", "need low < high"),
                                          ("lr=tag(log, interval(0, 0.1))", "low > 0 on a log scale"),
                                          ("epochs=range(5,1)", "is empty")])
def test_bad_search_space_is_one_line_error(bad, message):
    from cnnexp.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        space_of(bad)


def test_sampler_and_pruner_by_name():
    from cnnexp.errors import ConfigError
    from cnnexp.sweepers.study import make_pruner, make_sampler

    assert isinstance(make_sampler({"type": "random", "seed": 3}), optuna.samplers.RandomSampler)
    assert isinstance(make_pruner(None), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner({"type": "none"}), optuna.pruners.NopPruner)
    with pytest.raises(ConfigError, match="hydra.sweeper.pruner.type='mean' is unknown; valid: median"):
        make_pruner({"type": "mean"})
    with pytest.raises(ConfigError, match="cannot build MedianPruner"):
        make_pruner({"n_startup": 2})


@pytest.mark.slow
def test_trials_report_each_epoch_and_pruned_ones_end_finished_tagged_pruned(tmp_path):
    out = tmp_path / "outputs"
    # random sampler, seed 0: lr 1e-05, 0.02, 1e-05, 1e-05. After the first two, a trial stuck
    # at chance (1e-05) is below the median after epoch 1: pruned there.
    p = cli(["-m", "hydra/sweeper=optuna", "data=mnist_sample", "data.train_size=200", "data.val_size=100",
             "data.test_size=100", "epochs=2", "log_every=100", "tracking.log_model=false",
             "lr=choice(0.02,0.00001)", "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.type=random",
             "hydra.sweeper.sampler.seed=0", "hydra.sweeper.pruner.n_startup_trials=1"], out)
    assert p.returncode == 0, p.stderr[-3000:]
    (db,) = glob.glob(f"{out}/multirun/*/*/optuna.db")
    study = optuna.load_study(study_name="cnnexp", storage=f"sqlite:///{db}")
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "PRUNED", 3: "PRUNED"}
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert all(t.params["lr"] == 1e-05 and list(t.intermediate_values) == [1] for t in pruned)
    assert all(list(t.intermediate_values) == [1, 2] for t in study.trials if t.state.name == "COMPLETE")
    c = client(out)
    jobs = {int(r.data.params["trial.number"]): r for r in all_runs(c) if "mlflow.parentRunId" in r.data.tags}
    assert sorted(jobs) == [0, 1, 2, 3] and all(r.info.status == "FINISHED" for r in jobs.values())
    for n, r in jobs.items():
        val = [m.value for m in c.get_metric_history(r.info.run_id, "val/acc")]
        if states[n] == "PRUNED":
            assert r.data.tags["cnnexp.outcome"] == "pruned" and len(val) == 1
            assert f"trial {n} pruned after epoch 1" in r.data.tags["mlflow.note.content"]
        else:
            assert "cnnexp.outcome" not in r.data.tags and len(val) == 2
            assert study.trials[n].value == val[-1]
    assert f"Best value: {study.best_value}" in p.stdout + p.stderr


@pytest.mark.slow
def test_bad_sweeper_setting_is_a_one_line_error(tmp_path):
    p = cli(["-m", "hydra/sweeper=optuna", "data=mnist_sample", "hydra.sweeper.direction=up",
             "lr=interval(0.001,0.1)"], tmp_path / "outputs")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "cnnexp: error: hydra.sweeper.direction='up' is invalid: use maximize or minimize" in p.stderr
