"""The helper thread of an unsplit training step (cnnexp/engine/helper.py): weight gradients
and half of SGD's update on a second thread give the same numbers as one thread, and only the
big ones go there."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from cnnexp.engine import helper
from cnnexp.engine.helper import Helper
from cnnexp.model import build_model
from cnnexp.optimizers import SGD, build_optimizer
from cnnexp.train import fit

CONF = Path(__file__).parent.parent / "conf" / "model"
SPEC = {"input_shape": [8, 8, 1], "layers": [
    {"type": "conv2d", "filters": 4, "kernel_size": 3}, {"type": "relu"}, {"type": "maxpool2d", "pool": 2},
    {"type": "flatten"}, {"type": "dense", "units": 6}, {"type": "tanh"}, {"type": "dense", "units": 3},
    {"type": "softmax"}]}


def batch(spec, n):
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (n,) + tuple(spec["input_shape"]), dtype=np.uint8), rng.integers(0, 3, n)


def loss_grads(model, x, y):
    return model.loss_and_grads(x, y)


def splits_of(x, y):
    return SimpleNamespace(train=(x, y), val=(x[:0], y[:0]), test=(x[:0], y[:0]))


def assert_close(a, b, what, rel=1e-9):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
    assert err <= rel, f"{what}: relative error {err:.3g} > {rel}"


def build(threads, dtype="float32", spec=SPEC, engine="fast"):
    return build_model(spec, seed=0, dtype=dtype, scale=1 / 255, shift=-0.5, engine=engine, threads=threads)


def trained(model, x, y):
    opt = build_optimizer({"type": "sgd"}, 0.05)
    fit(model, opt, splits_of(x, y), epochs=2, batch_size=1, seed=3, log=lambda s: None)
    return model.state_dict()


@pytest.fixture
def everything_to_the_helper(monkeypatch):
    monkeypatch.setattr(helper, "WORTH_SECONDS", 0.0)  # every weight gradient is worth it
    monkeypatch.setattr(SGD, "split_min", 1)  # every update in two halves ...
    monkeypatch.setattr(SGD, "chunk", 8)  # ... of whole pieces


def test_unsplit_steps_on_the_helper_give_the_same_numbers(everything_to_the_helper):
    x, y = batch(SPEC, n=6)
    one, two = build(1), build(2)
    assert one.engine.helper is None and two.engine.helper is not None
    for n in (1, 3):  # too few images to split across workers: the helper's case
        assert two.engine.parts(n) == 1
        l1, g1 = loss_grads(one, x[:n], y[:n])
        l2, g2 = loss_grads(two, x[:n], y[:n])
        assert l1 == l2
        for k in g1:
            np.testing.assert_array_equal(g2[k], g1[k])
    assert two.engine.helper.jobs == 2 * 3  # the conv's and both dense layers' weight gradients
    jobs = two.engine.helper.jobs
    w1, w2 = trained(one, x, y), trained(two, x, y)
    for k in w1:
        np.testing.assert_array_equal(w2[k], w1[k])
    # per step: three weight gradients and the second half of the update
    assert two.engine.helper.jobs - jobs == 2 * len(x) * 4


def test_helper_against_the_reference_in_float64(everything_to_the_helper):
    x, y = batch(SPEC, n=5)
    ref, fast = build(1, "float64", engine="reference"), build(2, "float64")
    l_r, g_r = loss_grads(ref, x[:1], y[:1])
    l_f, g_f = loss_grads(fast, x[:1], y[:1])
    assert_close(l_f, l_r, "loss")
    for k in g_r:
        assert_close(g_f[k], g_r[k], k)
    w_r, w_f = trained(ref, x, y), trained(fast, x, y)
    for k in w_r:
        assert_close(w_f[k], w_r[k], f"trained {k}")
    assert fast.engine.helper.jobs > 0


def test_only_big_weight_gradients_go_to_the_helper():
    # keras_mnist at batch 1: its second conv (576 x 289 x 64 multiply-adds) and its 9216 x 128
    # dense layer; nothing of the seed net, whose step is shorter than a hand-off
    for name, jobs in (("keras_mnist", 2), ("seed", 0)):
        spec = yaml.safe_load((CONF / f"{name}.yaml").read_text())
        model = build(2, spec=spec)
        x, y = batch(spec, n=1)
        model.train_step(x, y)
        assert model.engine.helper.jobs == jobs, name
    assert not helper.worth(196 * 301 * 24)  # same5's second conv at batch 1: lost when handed over


def test_a_helper_error_reaches_the_caller_and_the_helper_goes_on():
    h = Helper()
    h.active = True
    out = []
    with pytest.raises(ZeroDivisionError):
        h.run([lambda: out.append(1), lambda: 1 / 0])
    assert out == [1]
    h.run([lambda: out.append(2), lambda: out.append(3)])
    assert sorted(out) == [1, 2, 3] and h.jobs == 2
    h.active = False  # inactive: everything in the calling thread
    h.run([lambda: out.append(4), lambda: out.append(5)])
    assert out[-2:] == [4, 5] and h.jobs == 2
    thread = h._thread
    h.stop()  # the model's close(): the thread ends, and starts again when next needed
    assert not thread.is_alive() and h._thread is None
    h.active = True
    h.run([lambda: out.append(6), lambda: out.append(7)])
    assert h.jobs == 3 and h._thread.is_alive()
    h.stop()


def test_the_switch_interval_is_restored_after_fit(everything_to_the_helper):
    before = 0.005
    sys.setswitchinterval(before)
    x, y = batch(SPEC, n=3)
    model = build(2)
    trained(model, x, y)
    assert model.engine.helper.jobs > 0
    assert sys.getswitchinterval() == before
    model.train_step(x[:1], y[:1])  # a step outside fit: restored after it too
    assert sys.getswitchinterval() == before


def test_the_guard_keeps_the_faster_mode_and_probes_the_other():
    now = [0.0]
    h = Helper(clock=lambda: now[0])
    h.PROBE_EVERY, h.PROBE_STEPS = 4, 2

    def run(steps, cost):  # cost[mode]: a step's time with / without the helper
        modes = []
        for _ in range(steps):
            h.step(True)
            modes.append(h.active)
            now[0] += cost[h.active]
        return modes

    on, off = True, False
    # the helper faster: 4 steps with it, a probe of 2 without, and so on
    assert run(12, {on: 1.0, off: 2.0}) == [on] * 4 + [off] * 2 + [on] * 4 + [off] * 2
    # the helper slower from now on: after this cycle, steps run without it and probe it
    assert run(12, {on: 3.0, off: 1.0}) == [on] * 4 + [off] * 2 + [off] * 4 + [on] * 2
    assert h.use is False
    h.step(False)  # a split batch: never the helper, and not timed
    assert h.active is False
    now[0] += 100.0
    assert run(6, {on: 1.0, off: 2.0}) == [off] * 4 + [on] * 2
    assert run(1, {on: 1.0, off: 2.0}) == [on] and h.use is True
