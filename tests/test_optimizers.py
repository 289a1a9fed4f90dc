"""Optimizers: convergence on a quadratic, hand-computed updates, config errors, state round trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnexp.errors import ConfigError
from cnnexp.optimizers import build_optimizer

ROOT = Path(__file__).resolve().parent.parent

# f(p) = 0.5 * sum(A * (p - C)**2) over two parameter arrays, gradient A * (p - C)
A = {"l0.W": np.array([[1.0, 3.0], [10.0, 0.5]]), "l0.b": np.array([2.0, 0.2, 5.0])}
C = {"l0.W": np.array([[1.0, -2.0], [0.5, 3.0]]), "l0.b": np.array([-1.0, 4.0, 0.0])}


def fresh_params(dtype=np.float64):
    return {"l0.W": np.zeros((2, 2), dtype), "l0.b": np.array([3.0, -3.0, 1.0], dtype)}


def quad(params):
    return sum(0.5 * float(np.sum(A[k] * (p - C[k]) ** 2)) for k, p in params.items())


def quad_grads(params):
    return {k: (A[k] * (p - C[k])).astype(p.dtype) for k, p in params.items()}


@pytest.mark.parametrize("spec,lr,steps", [
    ({"type": "sgd"}, 0.1, 300),
    ({"type": "momentum"}, 0.02, 300),
    ({"type": "momentum", "nesterov": True}, 0.02, 300),
    ({"type": "adam"}, 0.05, 600),
])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reduces_a_quadratic(spec, lr, steps, dtype):
    params = fresh_params(dtype)
    ids = {k: id(p) for k, p in params.items()}
    opt = build_optimizer(spec, lr)
    start = quad(params)
    for _ in range(steps):
        opt.step(params, quad_grads(params))
    assert quad(params) < 1e-3 * start
    for k, p in params.items():  # updated in place, dtype kept (model.params are the layers' arrays)
        assert id(p) == ids[k] and p.dtype == dtype
        np.testing.assert_allclose(p, C[k], atol=0.05)
    assert opt.t == steps


def test_sgd_step_by_hand():
    p0 = fresh_params()
    g = quad_grads(p0)
    params = {k: v.copy() for k, v in p0.items()}
    build_optimizer({"type": "sgd"}, 0.1).step(params, g)
    for k in params:
        np.testing.assert_allclose(params[k], p0[k] - 0.1 * g[k], rtol=1e-15)

    params = {k: v.copy() for k, v in p0.items()}
    build_optimizer({"type": "sgd", "weight_decay": 0.01}, 0.1).step(params, g)
    for k in params:
        np.testing.assert_allclose(params[k], p0[k] - 0.1 * (g[k] + 0.01 * p0[k]), rtol=1e-15)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_two_steps_by_hand(nesterov):
    lr, m = 0.1, 0.8
    rng = np.random.default_rng(0)
    p = rng.standard_normal(5)
    g1, g2 = rng.standard_normal(5), rng.standard_normal(5)
    params = {"x": p.copy()}
    opt = build_optimizer({"type": "momentum", "momentum": m, "nesterov": nesterov}, lr)
    opt.step(params, {"x": g1})
    v1 = -lr * g1
    p1 = p + (m * v1 - lr * g1 if nesterov else v1)
    np.testing.assert_allclose(params["x"], p1, rtol=1e-14)
    opt.step(params, {"x": g2})
    v2 = m * v1 - lr * g2
    p2 = p1 + (m * v2 - lr * g2 if nesterov else v2)
    np.testing.assert_allclose(params["x"], p2, rtol=1e-14)
    np.testing.assert_allclose(opt.state_dict()["state.x"], v2, rtol=1e-14)


def test_momentum_weight_decay_by_hand():
    params = {"x": np.array([1.0, -2.0])}
    g = np.array([0.5, 0.5])
    build_optimizer({"type": "momentum", "momentum": 0.9, "weight_decay": 0.1}, 0.1).step(params, {"x": g})
    np.testing.assert_allclose(params["x"], [1.0, -2.0] - 0.1 * (g + 0.1 * np.array([1.0, -2.0])), rtol=1e-15)


def test_adam_two_steps_by_hand():
    # Kingma & Ba, Algorithm 1 with the bias corrections folded into the step size
    # (end of their section 2): a_t = lr * sqrt(1 - b2^t) / (1 - b1^t); p -= a_t * m / (sqrt(v) + eps)
    lr, b1, b2, eps = 0.01, 0.8, 0.99, 1e-3  # non-default values, eps large enough to matter
    rng = np.random.default_rng(1)
    p = {"a": rng.standard_normal(4), "b": rng.standard_normal((2, 3))}
    g1 = {k: rng.standard_normal(v.shape) for k, v in p.items()}
    g2 = {k: rng.standard_normal(v.shape) for k, v in p.items()}
    params = {k: v.copy() for k, v in p.items()}
    opt = build_optimizer({"type": "adam", "beta1": b1, "beta2": b2, "eps": eps}, lr)

    opt.step(params, g1)
    assert opt.t == 1  # one step for all parameters, not one per array
    expect1 = {}
    for k in p:
        m1, v1 = (1 - b1) * g1[k], (1 - b2) * g1[k] ** 2
        a1 = lr * np.sqrt(1 - b2) / (1 - b1)
        expect1[k] = p[k] - a1 * m1 / (np.sqrt(v1) + eps)
        np.testing.assert_allclose(params[k], expect1[k], rtol=1e-13)

    opt.step(params, g2)
    for k in p:
        m1, v1 = (1 - b1) * g1[k], (1 - b2) * g1[k] ** 2
        m2, v2 = b1 * m1 + (1 - b1) * g2[k], b2 * v1 + (1 - b2) * g2[k] ** 2
        a2 = lr * np.sqrt(1 - b2 ** 2) / (1 - b1 ** 2)
        np.testing.assert_allclose(params[k], expect1[k] - a2 * m2 / (np.sqrt(v2) + eps), rtol=1e-13)
        sd = opt.state_dict()
        np.testing.assert_allclose(sd[f"state.{k}.m"], m2, rtol=1e-14)
        np.testing.assert_allclose(sd[f"state.{k}.v"], v2, rtol=1e-14)


def test_adam_first_step_is_lr_times_sign():
    # with bias correction, m_hat = g and v_hat = g^2 on step 1: the step is lr * sign(g), up to
    # eps / sqrt(1 - beta2) = 3.2e-7 relative to |g| (eps is added to the uncorrected sqrt(v))
    g = np.array([0.1, -2.0, 50.0, -0.5])
    params = {"x": np.zeros(4)}
    build_optimizer({"type": "adam"}, 0.01).step(params, {"x": g})
    np.testing.assert_allclose(params["x"], -0.01 * np.sign(g), rtol=1e-5)


def test_adam_weight_decay_adds_to_the_gradient():
    g = np.array([0.3, -0.2])
    p0 = np.array([1.0, 2.0])
    a = {"x": p0.copy()}
    b = {"x": p0.copy()}
    build_optimizer({"type": "adam", "weight_decay": 0.5}, 0.01).step(a, {"x": g})
    build_optimizer({"type": "adam"}, 0.01).step(b, {"x": g + 0.5 * p0})
    np.testing.assert_allclose(a["x"], b["x"], rtol=1e-15)


# -- config errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,lr,needles", [
    ({"type": "sgd", "momentum": 0.9}, 0.1, ["optimizer 'sgd'", "unexpected argument 'momentum'"]),
    ({"type": "adam", "beta_1": 0.9}, 0.1, ["'beta_1'", "did you mean 'beta1'?"]),
    ({"type": "momentum", "nestrov": True}, 0.1, ["'nestrov'", "did you mean 'nesterov'?"]),
    ({"type": "adm"}, 0.1, ["unknown optimizer 'adm'", "did you mean 'adam'?", "momentum", "sgd"]),
    ({}, 0.1, ["unknown optimizer None"]),
    ({"type": "sgd"}, 0, ["lr", "got 0"]),
    ({"type": "sgd"}, -0.1, ["lr", "-0.1"]),
    ({"type": "adam"}, "0.1", ["lr", "must be a number", "'0.1'"]),
    ({"type": "sgd"}, True, ["lr", "True"]),
    ({"type": "sgd", "weight_decay": -1e-4}, 0.1, ["weight_decay", "-0.0001"]),
    ({"type": "momentum", "momentum": 1.0}, 0.1, ["momentum", "< 1.0", "1.0"]),
    ({"type": "momentum", "momentum": -0.5}, 0.1, ["momentum", "-0.5"]),
    ({"type": "momentum", "nesterov": "yes"}, 0.1, ["nesterov", "'yes'"]),
    ({"type": "adam", "beta1": 1.0}, 0.1, ["beta1", "1.0"]),
    ({"type": "adam", "beta2": 1.5}, 0.1, ["beta2", "1.5"]),
    ({"type": "adam", "eps": 0.0}, 0.1, ["eps", "> 0"]),
])
def test_bad_optimizer_config(spec, lr, needles):
    with pytest.raises(ConfigError) as ei:
        build_optimizer(spec, lr)
    msg = str(ei.value)
    assert "\n" not in msg
    for s in needles:
        assert s in msg, f"{s!r} not in {msg!r}"


def test_build_optimizer_does_not_mutate_the_spec():
    spec = {"type": "adam", "beta1": 0.8}
    build_optimizer(spec, 0.1)
    assert spec == {"type": "adam", "beta1": 0.8}


# -- state ------------------------------------------------------------------------------------

SPECS = [{"type": "sgd"}, {"type": "momentum", "momentum": 0.9}, {"type": "momentum", "nesterov": True},
         {"type": "adam"}, {"type": "adam", "weight_decay": 1e-3}]


def _run(opt, params, n):
    for _ in range(n):
        opt.step(params, quad_grads(params))


@pytest.mark.parametrize("spec", SPECS)
def test_state_dict_round_trip_through_npz(spec, tmp_path):
    a = build_optimizer(spec, 0.01)
    pa = fresh_params()
    _run(a, pa, 3)
    path = tmp_path / "opt.npz"
    np.savez(path, **a.state_dict())  # checkpoints are plain .npz data
    with np.load(path) as z:
        loaded = {k: z[k] for k in z.files}
    b = build_optimizer(spec, 0.01)
    b.load_state_dict(loaded)
    assert b.t == a.t == 3
    pb = {k: v.copy() for k, v in pa.items()}
    for _ in range(4):
        a.step(pa, quad_grads(pa))
        b.step(pb, quad_grads(pb))
        for k in pa:
            np.testing.assert_array_equal(pa[k], pb[k])
    if spec["type"] != "sgd":  # stateful optimizers really carry state across the checkpoint
        c = build_optimizer(spec, 0.01)
        pc = {k: v.copy() for k, v in pb.items()}
        c.step(pc, quad_grads(pc))
        b.step(pb, quad_grads(pb))
        assert not all(np.array_equal(pb[k], pc[k]) for k in pb)


@pytest.mark.parametrize("spec", SPECS)
def test_state_dict_is_a_snapshot(spec):
    """A state dict kept in memory (e.g. the best checkpoint so far) must not change when
    training goes on, and loading it must give the steps the saved optimizer would have made."""
    a = build_optimizer(spec, 0.01)
    pa = fresh_params()
    _run(a, pa, 2)
    snap = a.state_dict()
    frozen = {k: np.array(v, copy=True) for k, v in snap.items()}
    p_snap = {k: v.copy() for k, v in pa.items()}
    ref = {k: v.copy() for k, v in pa.items()}
    ref_opt = build_optimizer(spec, 0.01)
    ref_opt.load_state_dict(frozen)
    _run(a, pa, 3)  # training continues after the snapshot
    for k in snap:
        np.testing.assert_array_equal(snap[k], frozen[k], err_msg=f"state_dict entry {k} changed after more steps")
    b = build_optimizer(spec, 0.01)
    b.load_state_dict(snap)
    _run(b, p_snap, 3)
    _run(ref_opt, ref, 3)
    for k in p_snap:
        np.testing.assert_array_equal(p_snap[k], ref[k])
        np.testing.assert_array_equal(p_snap[k], pa[k])


def test_load_state_dict_does_not_alias_the_given_arrays():
    a = build_optimizer({"type": "adam"}, 0.01)
    pa = fresh_params()
    _run(a, pa, 1)
    sd = a.state_dict()
    frozen = {k: np.array(v, copy=True) for k, v in sd.items()}
    b = build_optimizer({"type": "adam"}, 0.01)
    b.load_state_dict(sd)
    _run(b, pa, 2)
    for k in sd:
        np.testing.assert_array_equal(sd[k], frozen[k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("size", [1, 1000, (1 << 16) * 3 + 5])
def test_sgd_flat_update_compiled_gives_numpys_numbers(dtype, weight_decay, size, monkeypatch):
    # a model's params and grads are views of two flat arrays: SGD updates them in one compiled
    # pass when the engine's loops are there, bit for bit what its numpy passes give (in pieces)
    from cnnexp import optimizers
    from cnnexp.engine import fused
    from cnnexp.model import ParamDict

    if fused.kernels() is None:
        pytest.skip("numba is not installed: only the numpy passes run")
    rng = np.random.default_rng(size)
    p0, g = rng.standard_normal(size).astype(dtype), rng.standard_normal(size).astype(dtype)
    got = {}
    for name, kernels in (("compiled", fused.kernels()), ("numpy", None)):
        monkeypatch.setattr(optimizers, "_kernels", lambda load, kernels=kernels: kernels)
        flat, h = p0.copy(), size // 2
        params, grads = ParamDict(w=flat[:h], b=flat[h:]), ParamDict(w=g[:h], b=g[h:])
        params.flat, grads.flat = flat, g
        opt = build_optimizer({"type": "sgd", "weight_decay": weight_decay}, 0.0137)
        for _ in range(3):
            opt.step(params, grads, run=lambda fns: [fn() for fn in fns])
        got[name] = params.flat
    assert not np.array_equal(got["numpy"], p0)
    np.testing.assert_array_equal(got["compiled"], got["numpy"])


def _flat_sgd(size, dtype=np.float32):
    from cnnexp.model import ParamDict

    rng = np.random.default_rng(size)
    flat, g = rng.standard_normal(size).astype(dtype), rng.standard_normal(size).astype(dtype)
    params, grads = ParamDict(w=flat), ParamDict(w=g)
    params.flat, grads.flat = flat, g
    return params, grads, build_optimizer({"type": "sgd"}, 0.01)


def test_sgd_small_update_waits_for_the_engine_to_load_the_compiled_loops(monkeypatch):
    # numba's first compiled call in a process has a fixed cost; a small model (the seed net)
    # whose engine loads no loop keeps numpy's passes and never pays it, and switches to the
    # compiled update once the engine has loaded its loops (the same numbers either way)
    from cnnexp.engine import fused

    if fused.kernels() is None:
        pytest.skip("numba is not installed: only the numpy passes run")
    monkeypatch.setattr(fused, "_KERNELS", [])  # as in a fresh process
    params, grads, opt = _flat_sgd(13_602)
    for _ in range(3):
        opt.step(params, grads)
    assert fused._KERNELS == [] and opt._kernel is None
    kernels = fused.kernels()  # what the engine does before its first compiled call
    opt.step(params, grads)
    assert opt._kernel is kernels["sgd"]


def test_sgd_large_update_loads_the_compiled_loops_itself(monkeypatch):
    from cnnexp.engine import fused
    from cnnexp.optimizers import SGD

    if fused.kernels() is None:
        pytest.skip("numba is not installed: only the numpy passes run")
    monkeypatch.setattr(fused, "_KERNELS", [])
    params, grads, opt = _flat_sgd(SGD.load_min)
    opt.step(params, grads)
    assert fused.loaded() and opt._kernel is fused.kernels()["sgd"]


def test_seed_net_training_does_not_import_numba(tmp_path):
    # the seed net at batch 1 runs no compiled loop: numba is not imported at all (its import
    # and first call cost a fixed load and tens of MB the post's experiment would not repay)
    code = (
        "import sys, numpy as np\n"
        "from types import SimpleNamespace\n"
        "from cnnexp.model import build_model\n"
        "from cnnexp.optimizers import build_optimizer\n"
        "from cnnexp.train import fit\n"
        "from omegaconf import OmegaConf\n"
        f"spec = OmegaConf.to_container(OmegaConf.load({str(ROOT / 'conf' / 'model' / 'seed.yaml')!r}))\n"
        "m = build_model(spec, seed=0, scale=1/255, shift=-0.5)\n"
        "rng = np.random.default_rng(0)\n"
        "x, y = rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), rng.integers(0, 10, 64)\n"
        "e = (x[:0], y[:0])\n"
        "st = fit(m, build_optimizer({'type': 'sgd'}, 0.005), SimpleNamespace(train=(x, y), val=e, test=e),\n"
        "         epochs=1, batch_size=1, log=lambda s: None, log_every=10**9)\n"
        "m.close()\n"
        "print(len(st.history), 'numba' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "False"]
