"""resume= restores the run's own config: overrides apply on top and are listed; by run id
prefix with no overrides the resumed run ends exactly as the uninterrupted one."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from cnnexp.resume import changes, merge
from helpers.cli import RESUMABLE, cli, final, start, wait_for, wait_logged
from helpers.experiments import composed, last_ckpt, weights
from helpers.tracking import all_runs, client


def test_merge_keeps_the_saved_config_under_the_overrides():
    saved = composed(["experiment=keras_mnist", "epochs=3", "model.layers.0.filters=4"])
    now = composed(["resume=abc", "epochs=20"])  # the default (seed) config with epochs=20
    cfg = merge(saved, now, ["resume=abc", "epochs=20"])
    assert cfg["epochs"] == 20 and cfg["model"] == saved["model"] and cfg["optimizer"] == saved["optimizer"]
    assert changes(saved, cfg) == ["epochs=20 instead of 3"]
    cfg = merge(saved, composed(["model=lenet5", "lr=0.1"]), ["model=lenet5", "lr=0.1"])  # a group: the whole node
    assert cfg["model"] == composed(["model=lenet5"])["model"] and cfg["lr"] == 0.1 and cfg["batch_size"] == 32
    cur = composed(["experiment=lenet5"])  # experiment=: the keys it changes against the defaults
    cfg = merge(saved, cur, ["experiment=lenet5"], defaults=composed())
    assert cfg["model"]["name"] == "lenet5" and cfg["optimizer"] == cur["optimizer"] and cfg["epochs"] == 5


def test_merge_fills_keys_newer_than_the_checkpoint():
    saved = composed()
    for k in ("verbose", "callbacks", "lr_scheduler"):
        del saved[k]
    cfg = merge(saved, composed(["callbacks=early_stopping", "data.val_size=100"]),
                ["callbacks=early_stopping", "data.val_size=100"])
    assert cfg["callbacks"]["early_stopping"]["patience"] == 3 and cfg["verbose"] == 3
    assert cfg["data"]["val_size"] == 100


@pytest.mark.slow
def test_resume_by_id_prefix_without_overrides_is_exact(tmp_path, uninterrupted):
    out = tmp_path / "outputs"
    p = start(RESUMABLE, out)
    wait_for(p, r"^\[Step 1000\]")  # inside epoch 1
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    assert p.returncode == 130
    wait_logged(out)
    run_id = all_runs(client(out))[0].info.run_id
    q = cli([f"resume={run_id[:7]}"], out)  # nothing else: the run's own config
    assert q.returncode == 0, q.stderr
    assert f"Resuming {run_id[:7]} with its own config (no overrides)" in q.stdout
    ref_final, ref_w = uninterrupted
    assert final(q.stdout) == ref_final
    w = weights(last_ckpt(out))
    assert all(np.array_equal(w[k], ref_w[k]) for k in ref_w)
    done = next(r.info.run_id for r in all_runs(client(out)) if r.info.status == "FINISHED")
    q = cli([f"resume={done[:7]}", "epochs=4"], out)  # a finished run: epochs= extends it
    assert q.returncode == 0, q.stderr
    assert q.stdout.startswith(f"Resuming {done[:7]} with its own config: epochs=4 instead of 3\n")
    assert "epochs=4 instead of 3" in q.stdout and "--- Epoch 4 ---" in q.stdout and "--- Epoch 3 ---" not in q.stdout


def test_the_typed_id_prefix_is_used_even_when_hydra_reads_it_as_a_number(monkeypatch):
    seen = []

    def fake_locate(target, uri, workdir):
        seen.append(target)
        from cnnexp.checkpoint import Checkpoint

        return Checkpoint({}, {}, {"path": "x", "config": composed(["epochs=2"])})

    monkeypatch.setattr("cnnexp.resume.locate", fake_locate)
    from cnnexp.resume import apply

    cfg, _ = apply({**composed(), "resume": "inf"}, ["resume=86e5951"], lambda s: None)  # 86e5951: a float to Hydra
    assert seen == ["86e5951"] and cfg["resume"] == "86e5951" and cfg["epochs"] == 2
