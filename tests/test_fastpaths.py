"""The fast path (``Model.train_batch`` / ``train_step`` / ``evaluate`` / ``predict_proba``)
against the reference path (layers one by one through ``Model.forward`` / ``Model.backward``),
and finite-difference checks of the fused stages in float64.

Fast-path pieces covered: the fused ``conv2d [-> relu] -> maxpool2d`` stage (pooled row order
of the unrolled input, bias/ReLU after pooling, the all-maxima tie rule), the single-channel
``np.take`` unrolling, chunked thin weight-gradient products, the fused softmax + loss (numpy
and batch-1 Python paths), the two-thread batch split (gradients summed; dropout masks drawn
for the whole batch), chunked two-thread inference, flat parameter/gradient buffers and the
flat SGD update; the batch-innermost stages' column-pieced conv product, raw uint8 images
preprocessed by the first stage (bit-identical to ``Model.preprocess``), the permuted dense
weights kept per inference call, whole-batch softmax/loss in inference (identical for one
and two threads) and the ``conv2d -> relu`` stage with its output buffer and in-place ReLU.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from gradcheck import assert_grad_close, numeric_grad

from cnnexp.layers import conv as conv_mod
from cnnexp.layers.fused import ConvMaxPool
from cnnexp.model import build_model, make_plan
from cnnexp.optimizers import build_optimizer

F64 = "float64"


def conv_pool_spec(c=1, h=10, w=12, relu=False, bias=False, filters=3, kernel=3, padding="valid", pool=2,
                   extra_pool=False):
    layers = [{"type": "conv2d", "filters": filters, "kernel_size": kernel, "bias": bias, "padding": padding}]
    if relu:
        layers.append({"type": "relu"})
    layers.append({"type": "maxpool2d", "pool": pool})
    layers += [{"type": "flatten"}, {"type": "dense", "units": 5}, {"type": "softmax"}]
    return {"input_shape": [h, w, c], "layers": layers}


def model_with_bias_noise(spec, seed=0, dtype=F64):
    m = build_model(spec, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 50)
    for p in m.params.values():
        if p.ndim == 1:
            p[...] = 0.1 * rng.standard_normal(p.shape)
    return m


def reference_grads(model, x, labels):
    """Gradients through the layers one by one (Model.forward + per-layer backward)."""
    model.forward(x, training=True)
    model.loss_layer.loss(labels)
    dy = model.loss_layer.loss_backward()
    for layer in reversed(model.layers[:-1]):
        dy = layer.backward(dy)
    return {k: v.copy() for k, v in model.grads.items()}


def check_against_reference(m, x, labels, calls: int = 1, losses: bool = False):
    """``train_batch`` gives the layer-by-layer path's probabilities (and, with ``losses``,
    per-sample losses) and gradients; ``calls`` > 1 repeats it on the reused buffers."""
    ref = reference_grads(m, x, labels)
    ref_p = m.forward(x)
    for _ in range(calls):
        got_losses, probs = m.train_batch(x, labels)
        np.testing.assert_allclose(probs, ref_p, rtol=1e-12, atol=1e-15)
        if losses:
            np.testing.assert_allclose(got_losses, -np.log(ref_p[np.arange(len(x)), labels]), rtol=1e-10)
        for k, v in m.grads.items():
            np.testing.assert_allclose(v, ref[k], rtol=1e-10, atol=1e-14, err_msg=k)


CASES = [
    dict(),                                   # the seed net's shape: conv (no bias) -> pool
    dict(c=3),                                # several channels: strided-copy unrolling
    dict(bias=True, relu=True, c=2),          # keras_mnist's conv -> relu -> pool
    dict(bias=True),                          # bias without relu
    dict(relu=True, padding="same", h=8, w=6),  # padded input
    dict(kernel=2, h=9, w=7, c=2, pool=2),    # even kernel, odd input
    dict(pool=3, h=11, w=8, filters=2),       # 3x3 tiles
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_plan_fuses_conv_pool(case):
    m = build_model(conv_pool_spec(**case), seed=0, dtype=F64)
    assert isinstance(m._plan[0], ConvMaxPool)
    assert (m._plan[0].relu is not None) == case.get("relu", False)
    # the layers stay visible, with their own names and parameters
    assert [l.name.split("_")[0] for l in m.layers][:2] == ["conv2d", "relu" if case.get("relu") else "maxpool2d"]


def test_plan_does_not_fuse_when_pool_does_not_tile_the_conv_output():
    m = build_model(conv_pool_spec(h=11, w=12), seed=0, dtype=F64)  # conv 9x10: pool 2 drops a row
    assert not any(isinstance(s, ConvMaxPool) for s in m._plan)
    spec = conv_pool_spec()
    spec["layers"][1]["stride"] = 1  # overlapping windows
    assert not any(isinstance(s, ConvMaxPool) for s in build_model(spec, seed=0, dtype=F64)._plan)


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("n", [1, 3])
def test_fused_train_batch_matches_reference(case, n):
    m = model_with_bias_noise(conv_pool_spec(**case))
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, (n,) + m.input_shape)
    labels = rng.integers(0, 5, n)
    check_against_reference(m, x, labels, losses=True)


def test_fused_ties_send_gradient_to_every_max():
    # constant input: every conv output inside a tile is equal (the MNIST background case)
    for case in (dict(), dict(bias=True, relu=True)):
        m = model_with_bias_noise(conv_pool_spec(**case))
        x = np.full((2,) + m.input_shape, 0.25)
        labels = np.array([1, 3])
        ref = reference_grads(m, x, labels)
        m.train_batch(x, labels)
        for k, v in m.grads.items():
            np.testing.assert_allclose(v, ref[k], rtol=1e-12, atol=1e-15, err_msg=k)


def check_first_stage_finite_differences(m, seed: int, what: str):
    """dL/dx and dL/dW of model ``m``'s first plan stage alone, L = sum(stage(x) * R), in float64."""
    stage = m._plan[0]
    stage.conv.needs_input_grad = True
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (2,) + m.input_shape)
    y = stage.forward(x, True)
    R = rng.standard_normal(y.shape)
    dx = stage.backward(R.copy())
    grads = {k: v.copy() for k, v in stage.conv.grads.items()}

    def loss():
        return float(np.sum(stage.forward(x, True) * R))

    assert_grad_close(dx, numeric_grad(loss, x), f"{what} d/dx")
    for k, p in stage.conv.params.items():
        assert_grad_close(grads[k], numeric_grad(loss, p), f"{what} d/d{k}")


@pytest.mark.parametrize("case", [dict(), dict(bias=True, relu=True, c=2), dict(padding="same", h=8, w=6, c=2)])
def test_fused_stage_finite_differences(case):
    check_first_stage_finite_differences(model_with_bias_noise(conv_pool_spec(**case), seed=2), 3, "fused")


def check_conv_backward_after_fused_forward(n: int, seed: int):
    """After a fused forward the conv layer's own backward still gives its true gradients."""
    m = model_with_bias_noise(conv_pool_spec(c=2, bias=True), seed=4)
    conv = m.layers[0]
    conv.needs_input_grad = True
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n,) + m.input_shape)
    dy = rng.standard_normal((n,) + conv.output_shape)
    conv.forward(x, True)
    dx_ref = conv.backward(dy)
    ref = {k: v.copy() for k, v in conv.grads.items()}
    m._plan[0].forward(x, True)
    dx = conv.backward(dy)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-14)
    for k, v in conv.grads.items():
        np.testing.assert_allclose(v, ref[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_conv_backward_after_fused_forward_reorders_dy():
    check_conv_backward_after_fused_forward(n=2, seed=5)


def test_chunked_thin_weight_gradient(monkeypatch):
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((1000, 9)), rng.standard_normal((1000, 8))
    out = np.empty((9, 8))
    conv_mod.thin_matmul_tn(a, b, out, chunk=128)
    np.testing.assert_allclose(out, a.T @ b, rtol=1e-12, atol=1e-12)
    # and a model whose conv runs through several chunks
    monkeypatch.setattr(conv_mod, "CHUNK_ROWS", 50)
    m = model_with_bias_noise(conv_pool_spec())
    x = rng.uniform(-0.5, 0.5, (4,) + m.input_shape)
    labels = rng.integers(0, 5, 4)
    ref = reference_grads(m, x, labels)
    m.train_batch(x, labels)
    for k, v in m.grads.items():
        np.testing.assert_allclose(v, ref[k], rtol=1e-10, atol=1e-14, err_msg=k)


KERAS_SMALL = {"input_shape": [10, 10, 1], "layers": [
    {"type": "conv2d", "filters": 4, "kernel_size": 3}, {"type": "relu"},
    {"type": "conv2d", "filters": 5, "kernel_size": 3}, {"type": "relu"},
    {"type": "maxpool2d", "pool": 2}, {"type": "dropout", "rate": 0.25}, {"type": "flatten"},
    {"type": "dense", "units": 8}, {"type": "relu"}, {"type": "dropout", "rate": 0.5},
    {"type": "dense", "units": 10}, {"type": "softmax"}]}
SEED_SMALL = {"input_shape": [12, 12, 1], "layers": [
    {"type": "conv2d", "filters": 8, "kernel_size": 3, "bias": False, "init": "randn_fan_in"},
    {"type": "maxpool2d", "pool": 2}, {"type": "flatten"},
    {"type": "dense", "units": 10, "init": "randn_fan_in"}, {"type": "softmax"}]}


@pytest.mark.parametrize("spec", [SEED_SMALL, KERAS_SMALL], ids=["seed", "keras"])
def test_two_thread_split_matches_one_thread(spec):
    n = 9
    rng = np.random.default_rng(7)
    x = rng.uniform(-0.5, 0.5, (n,) + tuple(spec["input_shape"]))
    labels = rng.integers(0, 10, n)
    out = {}
    for threads in (1, 2):
        m = model_with_bias_noise(spec, seed=1)
        m.threads, m.split_min_batch = threads, 4
        for i, l in enumerate(m.layers):  # same dropout streams in both runs
            if hasattr(l, "rng"):
                l.rng = np.random.default_rng(100 + i)
        losses, probs = m.train_batch(x, labels)
        losses2, probs2 = m.train_batch(x, labels)  # the second batch draws new masks
        out[threads] = (losses, probs, losses2, {k: v.copy() for k, v in m.grads.items()})
    a, b = out[1], out[2]
    for i in range(3):
        np.testing.assert_allclose(b[i], a[i], rtol=1e-12, atol=1e-15)
    for k in a[3]:
        np.testing.assert_allclose(b[3][k], a[3][k], rtol=1e-10, atol=1e-14, err_msg=k)


def test_split_switches_threads_finely_and_restores_the_interval(monkeypatch):
    """A split batch runs with SPLIT_SWITCH_INTERVAL; the process's own interval comes back."""
    from cnnexp import plan

    seen = []
    real = plan.FastPath._train_part
    monkeypatch.setattr(plan.FastPath, "_train_part",
                        staticmethod(lambda *a: (seen.append(sys.getswitchinterval()), real(*a))[1]))
    before = sys.getswitchinterval()
    m = model_with_bias_noise(SEED_SMALL, seed=1)
    m.threads, m.split_min_batch = 2, 4
    rng = np.random.default_rng(0)
    m.train_batch(rng.uniform(-0.5, 0.5, (8, 12, 12, 1)), rng.integers(0, 10, 8))
    assert seen == pytest.approx([plan.SPLIT_SWITCH_INTERVAL] * 2)  # (stored in microseconds)
    assert sys.getswitchinterval() == before and before != pytest.approx(plan.SPLIT_SWITCH_INTERVAL)


def test_split_model_gradients_pass_finite_differences():
    m = model_with_bias_noise(SEED_SMALL, seed=3)
    m.threads, m.split_min_batch = 2, 2
    rng = np.random.default_rng(8)
    x = rng.uniform(-0.5, 0.5, (5,) + m.input_shape)
    labels = rng.integers(0, 10, 5)
    m.train_batch(x, labels)
    grads = {k: v.copy() for k, v in m.grads.items()}

    def f():
        m.forward(x)
        return float(m.loss_layer.loss(labels).mean())

    for k, p in m.params.items():
        assert_grad_close(grads[k], numeric_grad(f, p), f"split {k}")


@pytest.mark.parametrize("threads", [1, 2])
def test_inference_chunks_and_threads_match_forward(threads):
    m = model_with_bias_noise(KERAS_SMALL, seed=2)
    m.threads, m.infer_chunk = threads, 7
    rng = np.random.default_rng(9)
    images = rng.integers(0, 256, (40, 10, 10), dtype=np.uint8)
    labels = rng.integers(0, 10, 40)
    ref = m.forward(m.preprocess(images))
    np.testing.assert_allclose(m.predict_proba(images), ref, rtol=1e-12, atol=1e-15)
    loss, acc = m.evaluate(images, labels)
    np.testing.assert_allclose(loss, -np.log(ref[np.arange(40), labels]).mean(), rtol=1e-12)
    assert acc == np.mean(ref.argmax(1) == labels)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_uint8_table_preprocess_is_bit_identical(dtype):
    m = build_model(SEED_SMALL, seed=0, dtype=dtype, scale=1 / 255, shift=-0.5)
    img = np.arange(256, dtype=np.uint8).repeat(2)[:288].reshape(2, 12, 12)
    x = img.astype(m.dtype)[..., None]
    x *= m.scale
    x += m.shift
    got = m.preprocess(img)
    assert got.dtype == m.dtype and got.shape == (2, 12, 12, 1)
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch1_python_softmax_matches_numpy(dtype):
    m = build_model(SEED_SMALL, seed=0, dtype=dtype)
    sm = m.loss_layer
    rng = np.random.default_rng(10)
    x = rng.standard_normal((1, 10)).astype(dtype) * 5
    label = np.array([3])
    losses, p, g, loss_sum, correct = sm.forward_loss(x, label)
    p_ref = sm.forward(x)
    l_ref = sm.loss(label)
    g_ref = sm.loss_backward()
    tol = dict(rtol=1e-12, atol=1e-15) if dtype == "float64" else dict(rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(p, p_ref, **tol)
    np.testing.assert_allclose(g, g_ref, **tol)
    np.testing.assert_allclose(losses, l_ref, **tol)
    assert abs(loss_sum - float(l_ref[0])) < 1e-5 and correct == int(p_ref.argmax() == 3)


def test_params_and_grads_are_views_of_flat_buffers_and_sgd_uses_them():
    m = model_with_bias_noise(SEED_SMALL)
    pf, gf = m.params.flat, m.grads.flat
    assert pf is not None and gf is not None and pf.size == m.num_params
    for k, p in m.params.items():
        assert np.shares_memory(p, pf) and np.shares_memory(m.grads[k], gf)
    rng = np.random.default_rng(11)
    x = rng.uniform(-0.5, 0.5, (3,) + m.input_shape)
    m.train_batch(x, rng.integers(0, 10, 3))
    before = {k: v.copy() for k, v in m.params.items()}
    grads = {k: v.copy() for k, v in m.grads.items()}
    build_optimizer({"type": "sgd", "weight_decay": 0.01}, 0.1).step(m.params, m.grads)
    for k, p in m.params.items():
        np.testing.assert_allclose(p, before[k] - 0.1 * (grads[k] + 0.01 * before[k]), rtol=1e-13, atol=1e-16)


def test_make_plan_keeps_unfusable_layers_in_order():
    m = build_model(KERAS_SMALL, seed=0, dtype=F64)
    kinds = [type(s).__name__ for s in m._plan]
    assert kinds == ["ConvReLU", "ConvMaxPool", "Dropout", "Flatten", "Dense", "ReLU", "Dropout", "Dense"]
    assert make_plan(m.layers[:1]) == [m.layers[0]]


# -- conv2d -> relu without a pool (ConvReLU) -------------------------------------------------
from cnnexp.layers.fused import ConvReLU  # noqa: E402

CONV_RELU_SPEC = {"input_shape": [9, 8, 2], "layers": [
    {"type": "conv2d", "filters": 3, "kernel_size": 3, "padding": "same"}, {"type": "relu"},
    {"type": "conv2d", "filters": 4, "kernel_size": 2, "stride": 2}, {"type": "relu"},
    {"type": "flatten"}, {"type": "dense", "units": 5}, {"type": "softmax"}]}


@pytest.mark.parametrize("n", [1, 4])
def test_conv_relu_stages_match_reference(n):
    """Two ConvReLU stages (the second one needs its input gradient) against the layers."""
    m = model_with_bias_noise(CONV_RELU_SPEC, seed=5)
    assert [type(s) for s in m._plan[:2]] == [ConvReLU, ConvReLU]
    rng = np.random.default_rng(9)
    x = rng.uniform(-0.5, 0.5, (n,) + m.input_shape)
    labels = rng.integers(0, 5, n)
    check_against_reference(m, x, labels, calls=2)  # the second call runs on the reused buffers


def test_conv_relu_stage_finite_differences():
    check_first_stage_finite_differences(model_with_bias_noise(CONV_RELU_SPEC, seed=6), 10, "conv-relu")


# -- batch-innermost one-channel stages (ConvMaxPoolT, ConvPoolDenseT) ----------------------
from cnnexp.layers.fused import ConvMaxPoolT, ConvPoolDenseT  # noqa: E402

ONE_CHANNEL_CASES = [
    dict(),                                       # the seed net's shape
    dict(bias=True, relu=True),                   # bias and ReLU after pooling
    dict(relu=True, padding="same", h=8, w=6),    # padded input
    dict(pool=3, h=11, w=8, filters=2),           # 3x3 tiles
    dict(kernel=2, h=9, w=7, bias=True),          # even kernel, odd input
]


def test_plan_uses_batch_innermost_stage_for_one_channel_conv_into_dense():
    assert type(build_model(conv_pool_spec(), seed=0, dtype=F64)._plan[0]) is ConvPoolDenseT
    assert type(build_model(conv_pool_spec(c=2), seed=0, dtype=F64)._plan[0]) is ConvMaxPool
    spec = conv_pool_spec()
    spec["layers"].insert(2, {"type": "dropout", "rate": 0.5})  # not straight into flatten -> dense
    assert type(build_model(spec, seed=0, dtype=F64)._plan[0]) is ConvMaxPoolT


@pytest.mark.parametrize("case", ONE_CHANNEL_CASES, ids=[str(c) for c in ONE_CHANNEL_CASES])
@pytest.mark.parametrize("n", [2, 17])  # 2: under min_batch (plain order); 17: batch-innermost
def test_batch_innermost_train_batch_matches_reference(case, n):
    m = model_with_bias_noise(conv_pool_spec(**case))
    assert isinstance(m._plan[0], ConvPoolDenseT)
    rng = np.random.default_rng(21)
    x = rng.uniform(-0.5, 0.5, (n,) + m.input_shape)
    labels = rng.integers(0, 5, n)
    check_against_reference(m, x, labels, losses=True)
    assert m._plan[0]._transposed == (n >= ConvMaxPoolT.min_batch)


def test_batch_innermost_ties_send_gradient_to_every_max():
    for case in (dict(), dict(bias=True, relu=True)):
        m = model_with_bias_noise(conv_pool_spec(**case))
        x = np.full((20,) + m.input_shape, 0.25)
        labels = np.arange(20) % 5
        ref = reference_grads(m, x, labels)
        m.train_batch(x, labels)
        for k, v in m.grads.items():
            np.testing.assert_allclose(v, ref[k], rtol=1e-12, atol=1e-15, err_msg=k)


@pytest.mark.parametrize("case", [dict(), dict(bias=True, relu=True), dict(padding="same", h=8, w=6)])
def test_batch_innermost_conv_pool_stage_finite_differences(case, monkeypatch):
    """ConvMaxPoolT alone (its (N, OH/ph, OW/pw, F) output, dL/dx included), in float64."""
    monkeypatch.setattr(ConvMaxPoolT, "min_batch", 1)
    m = model_with_bias_noise(conv_pool_spec(**case), seed=2)
    conv, pool = m.layers[0], m.layers[2 if case.get("relu") else 1]
    stage = ConvMaxPoolT(conv, pool, m.layers[1] if case.get("relu") else None)
    conv.needs_input_grad = True
    rng = np.random.default_rng(22)
    x = rng.uniform(-1, 1, (3,) + m.input_shape)
    y = stage.forward(x, True)
    assert stage._transposed
    R = rng.standard_normal(y.shape)
    dx = stage.backward(R.copy())
    grads = {k: v.copy() for k, v in conv.grads.items()}

    def loss():
        return float(np.sum(stage.forward(x, True) * R))

    assert_grad_close(dx, numeric_grad(loss, x), "T stage d/dx")
    for k, p in conv.params.items():
        assert_grad_close(grads[k], numeric_grad(loss, p), f"T stage d/d{k}")


@pytest.mark.parametrize("case", [dict(), dict(bias=True, relu=True)])
def test_conv_pool_dense_stage_finite_differences(case, monkeypatch):
    """ConvPoolDenseT (conv, pool and dense parameters, dL/dx), L = sum(logits * R), float64."""
    monkeypatch.setattr(ConvMaxPoolT, "min_batch", 1)
    m = model_with_bias_noise(conv_pool_spec(**case), seed=5)
    stage = m._plan[0]
    stage.conv.needs_input_grad = True
    rng = np.random.default_rng(23)
    x = rng.uniform(-1, 1, (3,) + m.input_shape)
    y = stage.forward(x, True)
    R = rng.standard_normal(y.shape)
    dx = stage.backward(R.copy())
    grads = {k: v.copy() for k, v in m.grads.items()}

    def loss():
        return float(np.sum(stage.forward(x, True) * R))

    assert_grad_close(dx, numeric_grad(loss, x), "fused dense d/dx")
    for k, p in m.params.items():
        assert_grad_close(grads[k], numeric_grad(loss, p), f"fused dense d/d{k}")


def test_conv_backward_after_batch_innermost_forward():
    """After a ConvMaxPoolT forward the conv layer's own backward still gives its true gradients."""
    m = model_with_bias_noise(conv_pool_spec(bias=True), seed=4)
    conv, pool = m.layers[0], m.layers[1]
    conv.needs_input_grad = True
    rng = np.random.default_rng(24)
    x = rng.uniform(-1, 1, (20,) + m.input_shape)
    dy = rng.standard_normal((20,) + conv.output_shape)
    conv.forward(x, True)
    dx_ref = conv.backward(dy)
    ref = {k: v.copy() for k, v in conv.grads.items()}
    ConvMaxPoolT(conv, pool).forward(x, True)
    dx = conv.backward(dy)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-14)
    for k, v in conv.grads.items():
        np.testing.assert_allclose(v, ref[k], rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_innermost_inference_and_split_match(threads):
    m = model_with_bias_noise(SEED_SMALL, seed=6)
    m.threads, m.infer_chunk, m.split_min_batch = threads, 16, 32
    rng = np.random.default_rng(25)
    images = rng.integers(0, 256, (70, 12, 12), dtype=np.uint8)
    labels = rng.integers(0, 10, 70)
    x = m.preprocess(images)
    ref = m.forward(x)
    np.testing.assert_allclose(m.predict_proba(images), ref, rtol=1e-12, atol=1e-15)
    ref_g = reference_grads(m, x[:40], labels[:40])
    m.train_batch(x[:40], labels[:40])  # split across threads when threads == 2, 20 per half
    for k, v in m.grads.items():
        np.testing.assert_allclose(v, ref_g[k], rtol=1e-10, atol=1e-14, err_msg=k)


# -- sub-batched (cache-blocked) ConvMaxPool ----------------------------------------------------

def _force_chunks(monkeypatch, nbytes=1):
    monkeypatch.setattr(ConvMaxPool, "chunk_bytes", nbytes)
    monkeypatch.setattr(ConvMaxPool, "chunk_min_cols_bytes", 0)


CHUNK_CASES = [dict(c=3), dict(bias=True, relu=True, c=2), dict(padding="same", h=8, w=6, c=2, bias=True)]


@pytest.mark.parametrize("case", CHUNK_CASES, ids=[str(c) for c in CHUNK_CASES])
@pytest.mark.parametrize("nbytes", [1, 3000])  # one image per sub-batch; uneven sub-batches
def test_chunked_conv_pool_matches_reference(case, nbytes, monkeypatch):
    _force_chunks(monkeypatch, nbytes)
    spec = conv_pool_spec(**case)
    spec["layers"].insert(0, {"type": "conv2d", "filters": case["c"], "kernel_size": 1})  # needs dL/dx
    spec["input_shape"][2] = 1
    m = model_with_bias_noise(spec)
    rng = np.random.default_rng(26)
    n = 5
    x = rng.uniform(-0.5, 0.5, (n,) + m.input_shape)
    labels = rng.integers(0, 5, n)
    check_against_reference(m, x, labels)
    assert next(s for s in m._plan if type(s) is ConvMaxPool)._chunk < n


def test_chunked_conv_pool_ties(monkeypatch):
    _force_chunks(monkeypatch)
    m = model_with_bias_noise(conv_pool_spec(c=2, bias=True, relu=True))
    x = np.full((3,) + m.input_shape, 0.25)
    labels = np.array([1, 3, 0])
    ref = reference_grads(m, x, labels)
    m.train_batch(x, labels)
    for k, v in m.grads.items():
        np.testing.assert_allclose(v, ref[k], rtol=1e-12, atol=1e-15, err_msg=k)


@pytest.mark.parametrize("case", CHUNK_CASES, ids=[str(c) for c in CHUNK_CASES])
def test_chunked_conv_pool_finite_differences(case, monkeypatch):
    _force_chunks(monkeypatch)
    m = model_with_bias_noise(conv_pool_spec(**case), seed=2)
    stage = m._plan[0]
    stage.conv.needs_input_grad = True
    rng = np.random.default_rng(27)
    x = rng.uniform(-1, 1, (3,) + m.input_shape)
    y = stage.forward(x, True)
    assert stage._chunk == 1
    R = rng.standard_normal(y.shape)
    dx = stage.backward(R.copy())
    grads = {k: v.copy() for k, v in stage.conv.grads.items()}

    def loss():
        return float(np.sum(stage.forward(x, True) * R))

    assert_grad_close(dx, numeric_grad(loss, x), "chunked d/dx")
    for k, p in stage.conv.params.items():
        assert_grad_close(grads[k], numeric_grad(loss, p), f"chunked d/d{k}")


def test_conv_backward_after_chunked_fused_forward(monkeypatch):
    _force_chunks(monkeypatch)
    check_conv_backward_after_fused_forward(n=3, seed=28)


def test_split_threshold_counts_work_per_image():
    heavy = build_model(KERAS_SMALL, seed=0, dtype=F64)
    heavy.threads = 2
    flops = heavy.train_flops
    assert flops > 0
    heavy.split_min_flops = 4 * flops
    assert not heavy._split(3) and heavy._split(4) and heavy._split(heavy.split_min_batch)
    heavy.threads = 1
    assert not heavy._split(1000)


def test_keras_like_split_on_work_matches_one_thread():
    """A batch split because of its work (below split_min_batch), dropout included."""
    n = 6
    rng = np.random.default_rng(29)
    x = rng.uniform(-0.5, 0.5, (n,) + tuple(KERAS_SMALL["input_shape"]))
    labels = rng.integers(0, 10, n)
    out = {}
    for threads in (1, 2):
        m = model_with_bias_noise(KERAS_SMALL, seed=1)
        m.threads, m.split_min_flops = threads, 1.0
        assert m._split(n) == (threads == 2)
        for i, l in enumerate(m.layers):
            if hasattr(l, "rng"):
                l.rng = np.random.default_rng(200 + i)
        losses, probs = m.train_batch(x, labels)
        out[threads] = (losses, probs, {k: v.copy() for k, v in m.grads.items()})
    for i in range(2):
        np.testing.assert_allclose(out[2][i], out[1][i], rtol=1e-12, atol=1e-15)
    for k in out[1][2]:
        np.testing.assert_allclose(out[2][2][k], out[1][2][k], rtol=1e-10, atol=1e-14, err_msg=k)


# -- column-pieced conv product, raw-image first stage, whole-batch inference loss -----------

BT_CASES = [dict(), dict(bias=True, relu=True), dict(bias=True, pool=3, h=11, w=11)]


@pytest.mark.parametrize("case", BT_CASES, ids=[str(c) for c in BT_CASES])
@pytest.mark.parametrize("max_cols", [7, 50, 10**9])  # tiny / uneven pieces; one piece
def test_batch_innermost_column_pieces_match_reference(case, max_cols, monkeypatch):
    """``ConvMaxPoolT._conv_pool_t`` in column pieces: same forward and gradients as the layers."""
    monkeypatch.setattr(ConvMaxPoolT, "max_cols", max_cols)
    m = model_with_bias_noise(conv_pool_spec(**case), seed=11)
    assert isinstance(m._plan[0], ConvMaxPoolT)
    rng = np.random.default_rng(31)
    x = rng.standard_normal((20,) + m.input_shape)
    labels = rng.integers(0, 5, 20)
    ref = reference_grads(m, x, labels)
    p_ref = m.forward(x)
    _, p = m.train_batch(x, labels)
    np.testing.assert_allclose(p, p_ref, rtol=1e-12, atol=1e-15)
    for k, v in m.grads.items():
        np.testing.assert_allclose(v, ref[k], rtol=1e-10, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("max_cols", [7, 10**9])
def test_column_pieced_stage_finite_differences(max_cols, monkeypatch):
    monkeypatch.setattr(ConvMaxPoolT, "max_cols", max_cols)
    m = model_with_bias_noise(SEED_SMALL, seed=12)
    rng = np.random.default_rng(32)
    x = rng.standard_normal((17,) + m.input_shape)
    labels = rng.integers(0, 10, 17)
    m.threads = 1
    m.train_batch(x, labels)
    grads = {k: v.copy() for k, v in m.grads.items()}

    def f():
        m.train_batch(x, labels)
        return float(m.loss_layer.loss(labels).mean())

    for k, p in m.params.items():
        assert_grad_close(grads[k], numeric_grad(f, p), f"pieced {k}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [16, 40, 64, 70])  # unsplit / split, raw first stage
def test_train_step_on_raw_images_matches_preprocessed(dtype, threads, n):
    """``train_step`` hands raw uint8 images to the first ``ConvMaxPoolT`` stage, which
    preprocesses them into its own buffer: bit-identical to ``train_batch(preprocess(...))``."""
    spec = {**SEED_SMALL}
    a = build_model(spec, seed=3, dtype=dtype, scale=1 / 255, shift=-0.5)
    b = build_model(spec, seed=3, dtype=dtype, scale=1 / 255, shift=-0.5)
    assert a._raw_first()
    for mdl in (a, b):
        mdl.threads, mdl.split_min_batch = threads, 32
    rng = np.random.default_rng(40 + n)
    images = rng.integers(0, 256, (n, 12, 12), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    loss_a, corr_a = a.train_step(images, labels)
    losses_b, probs_b = b.train_batch(b.preprocess(images), labels)
    assert corr_a == int(np.count_nonzero(probs_b.argmax(1) == labels))
    np.testing.assert_allclose(loss_a, float(losses_b.astype(np.float64).sum()), rtol=1e-6)
    for k in a.grads:
        np.testing.assert_array_equal(a.grads[k], b.grads[k], err_msg=k)
    # and the raw path with a channel axis
    a.train_step(images[..., None], labels)
    for k in a.grads:
        np.testing.assert_array_equal(a.grads[k], b.grads[k], err_msg=k)


def test_train_step_raw_path_rejects_wrong_shape():
    m = build_model(SEED_SMALL, seed=0)
    with pytest.raises(ValueError):
        m.train_step(np.zeros((32, 11, 12), np.uint8), np.zeros(32, int))


@pytest.mark.parametrize("chunk", [16, 20, 33])
def test_seed_like_inference_is_independent_of_threads_and_matches_forward(chunk):
    """Raw-image inference (first stage preprocesses, permuted dense weights kept across
    chunks, softmax/loss of the whole batch at once): equal to ``forward`` and bit-identical
    between one and two threads."""
    rng = np.random.default_rng(50)
    images = rng.integers(0, 256, (101, 12, 12), dtype=np.uint8)
    labels = rng.integers(0, 10, 101)
    out = {}
    for threads in (1, 2):
        m = build_model(SEED_SMALL, seed=4, dtype=F64, scale=1 / 255, shift=-0.5)
        m.threads, m.infer_chunk = threads, chunk
        out[threads] = (m.predict_proba(images), m.evaluate(images, labels))
    ref = m.forward(m.preprocess(images))
    np.testing.assert_allclose(out[1][0], ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(out[1][0], out[2][0])
    assert out[1][1] == out[2][1]
    np.testing.assert_allclose(out[1][1][0], -np.log(ref[np.arange(101), labels]).mean(), rtol=1e-12)
    assert out[1][1][1] == np.mean(ref.argmax(1) == labels)


def test_inference_sees_weights_changed_between_calls():
    """The permuted dense weights kept during one inference call are rebuilt on the next."""
    m = build_model(SEED_SMALL, seed=5, dtype=F64)
    m.infer_chunk = 16
    images = np.random.default_rng(51).integers(0, 256, (40, 12, 12), dtype=np.uint8)
    m.predict_proba(images)
    m.params["dense_3.W"][...] *= -2.0
    np.testing.assert_allclose(m.predict_proba(images), m.forward(m.preprocess(images)), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("n", [3, 16, 20])  # under / at / over ConvMaxPoolT.min_batch
@pytest.mark.parametrize("dense", [False, True])  # ConvMaxPoolT alone / ConvPoolDenseT
def test_raw_image_stage_forward_matches_preprocessed(n, dense):
    """A first-stage forward on raw images (``pre=(scale, shift)``) gives exactly the output
    and gradients of the same forward on ``Model.preprocess``-ed images, at every batch size."""
    spec = SEED_SMALL if dense else {"input_shape": [12, 12, 1], "layers": [
        {"type": "conv2d", "filters": 3, "bias": True}, {"type": "maxpool2d", "pool": 2}, {"type": "relu"},
        {"type": "flatten"}, {"type": "dense", "units": 4}, {"type": "softmax"}]}
    res = []
    for raw in (False, True):
        m = build_model(spec, seed=8, dtype=F64, scale=1 / 255, shift=-0.5)
        st = m._plan[0]
        assert type(st) is (ConvPoolDenseT if dense else ConvMaxPoolT) and st.accepts_raw()
        images = np.random.default_rng(60 + n).integers(0, 256, (n, 12, 12), dtype=np.uint8)
        out = st.forward(images, True, pre=(m.scale, m.shift)) if raw else st.forward(m.preprocess(images), True)
        out = np.array(out)
        st.backward(np.ones_like(out))
        res.append((out, {k: v.copy() for k, v in m.grads.items()}))
    np.testing.assert_array_equal(res[0][0], res[1][0])
    for k in res[0][1]:
        np.testing.assert_array_equal(res[0][1][k], res[1][1][k], err_msg=k)


def test_accepts_raw_is_false_with_padding():
    m = build_model(conv_pool_spec(h=8, w=6, padding="same"), seed=0)
    assert isinstance(m._plan[0], ConvMaxPoolT) and not m._plan[0].accepts_raw()
    assert not m._raw_first()
