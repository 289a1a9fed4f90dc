"""Finite-difference checks (float64) of every registered layer's input and parameter
gradients, plus whole-model checks of ``Model.train_batch`` gradients.

Forward passes of conv and pooling are also compared with direct loop implementations, so a
layer whose backward is consistent with a *wrong* forward does not pass.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers.gradcheck import (assert_grad_close, check_layer, check_model, model_mean_loss, numeric_grad,
                       reseed_dropouts)

from cnnexp.layers import Dropout, Softmax
from cnnexp.model import build_model
from cnnexp.registry import LAYERS
from helpers.experiments import seed_spec

F64 = "float64"


def make(type_: str, input_shape, seed: int = 0, **kwargs):
    """Build one registered layer for a per-sample ``input_shape`` in float64."""
    layer = LAYERS.build(type_, kwargs)
    layer.build(tuple(input_shape), np.random.default_rng(seed), F64)
    return layer


def distinct(shape, rng):
    """Values in [-1, 1) that are pairwise at least 2/size apart (no ties, no near-ties for
    the finite differences to cross), in random order."""
    size = int(np.prod(shape))
    return (rng.permutation(size).reshape(shape) * 2.0 / size - 1.0).astype(np.float64)


def test_every_registered_layer_is_covered():
    # if someone registers a new built-in layer, this file must grow a check for it
    covered = {"conv2d", "maxpool2d", "avgpool2d", "flatten", "dense", "relu", "tanh", "sigmoid",
               "dropout", "softmax"}
    builtin = {n for n in LAYERS.names() if LAYERS.get(n).__module__.startswith("cnnexp.")}
    assert builtin == covered


# -- conv2d ------------------------------------------------------------------------------------

def _same_pads(size, k, s):
    out = -(-size // s)  # ceil
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def conv_reference(x, W, b, stride, padding):
    """Direct loop convolution (cross-correlation, as Keras/TF), NHWC, W (KH, KW, C, F)."""
    kh, kw, c, f = W.shape
    sh, sw = stride
    n, h, w, _ = x.shape
    if padding == "same":
        (pt, pb), (pl, pr) = _same_pads(h, kh, sh), _same_pads(w, kw, sw)
        x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    hp, wp = x.shape[1:3]
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    y = np.zeros((n, oh, ow, f))
    for bi in range(n):
        for i in range(oh):
            for j in range(ow):
                patch = x[bi, i * sh:i * sh + kh, j * sw:j * sw + kw, :]
                for fi in range(f):
                    y[bi, i, j, fi] = np.sum(patch * W[:, :, :, fi]) + (b[fi] if b is not None else 0.0)
    return y


CONV_CASES = [
    # (batch, H, W, C), filters, kernel, stride, padding, bias
    pytest.param((2, 6, 6, 1), 3, 3, 1, "valid", True, id="k3-s1-valid-bias-c1"),
    pytest.param((2, 7, 7, 3), 2, 3, 2, "valid", False, id="k3-s2-valid-nobias-c3"),
    pytest.param((2, 8, 8, 1), 2, 3, 2, "valid", True, id="k3-s2-valid-untiled-c1"),
    pytest.param((2, 5, 5, 3), 3, 3, 1, "same", True, id="k3-s1-same-bias-c3"),
    pytest.param((2, 6, 6, 3), 2, 3, 2, "same", True, id="k3-s2-same-asympad-c3"),
    pytest.param((2, 7, 6, 1), 3, 3, 2, "same", False, id="k3-s2-same-odd-nobias-c1"),
    pytest.param((2, 6, 7, 3), 2, (2, 3), 1, "same", True, id="k2x3-s1-same-bias-c3"),
    pytest.param((3, 7, 6, 1), 2, (2, 3), 2, "same", False, id="k2x3-s2-same-nobias-c1"),
    pytest.param((2, 5, 6, 3), 2, (2, 3), 1, "valid", False, id="k2x3-s1-valid-nobias-c3"),
    pytest.param((2, 6, 7, 1), 2, (2, 3), (2, 1), "valid", True, id="k2x3-s2x1-valid-bias-c1"),
    pytest.param((2, 4, 4, 3), 2, 1, 1, "valid", True, id="k1-pointwise-c3"),
]


@pytest.mark.parametrize("shape,filters,kernel,stride,padding,bias", CONV_CASES)
def test_conv2d(shape, filters, kernel, stride, padding, bias):
    rng = np.random.default_rng(1)
    layer = make("conv2d", shape[1:], filters=filters, kernel_size=kernel, stride=stride,
                 padding=padding, bias=bias)
    assert set(layer.params) == ({"W", "b"} if bias else {"W"})
    if bias:  # zeros by default: make the bias visible in the forward check
        layer.params["b"][...] = rng.standard_normal(filters)
    x = rng.standard_normal(shape)
    y = layer.forward(x)
    assert y.shape == (shape[0],) + layer.output_shape
    s = stride if isinstance(stride, tuple) else (stride, stride)
    np.testing.assert_allclose(y, conv_reference(x, layer.params["W"], layer.params.get("b"), s, padding),
                               rtol=1e-12, atol=1e-12)
    if padding == "same":
        assert layer.output_shape[:2] == (-(-shape[1] // s[0]), -(-shape[2] // s[1]))
    check_layer(layer, x)


def test_conv2d_skips_input_grad_when_not_needed():
    rng = np.random.default_rng(2)
    layer = make("conv2d", (5, 5, 2), filters=3)
    x = rng.standard_normal((2, 5, 5, 2))
    R = rng.standard_normal((2, 3, 3, 3))
    layer.forward(x)
    dx = layer.backward(R)
    gW = layer.grads["W"].copy()
    layer.needs_input_grad = False
    layer.forward(x)
    assert layer.backward(R) is None
    np.testing.assert_array_equal(layer.grads["W"], gW)  # parameter grads are still computed
    assert dx is not None and dx.shape == x.shape


# -- pooling -----------------------------------------------------------------------------------

def pool_reference(x, pool, stride, op):
    (ph, pw), (sh, sw) = pool, stride
    n, h, w, c = x.shape
    oh, ow = (h - ph) // sh + 1, (w - pw) // sw + 1
    y = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            y[:, i, j, :] = op(x[:, i * sh:i * sh + ph, j * sw:j * sw + pw, :], axis=(1, 2))
    return y


POOL_CASES = [
    # (batch, H, W, C), pool, stride (None = pool)
    pytest.param((2, 4, 4, 3), 2, None, id="p2-s2-tiled"),
    pytest.param((2, 5, 7, 2), 2, None, id="p2-s2-odd-untiled"),
    pytest.param((2, 7, 8, 2), 3, 3, id="p3-s3-remainder"),
    pytest.param((2, 7, 7, 2), 3, 2, id="p3-s2-overlap"),
    pytest.param((1, 6, 8, 3), 3, 2, id="p3-s2-overlap-uncovered"),
    pytest.param((2, 5, 6, 1), (2, 3), (1, 2), id="p2x3-s1x2-overlap"),
    pytest.param((2, 7, 7, 1), 2, 3, id="p2-s3-gaps"),
]


def _pool_args(pool, stride):
    p = pool if isinstance(pool, tuple) else (pool, pool)
    s = p if stride is None else (stride if isinstance(stride, tuple) else (stride, stride))
    return p, s


def _uncovered_mask(shape, p, s):
    """True where no pooling window reads the input."""
    n, h, w, c = shape
    oh, ow = (h - p[0]) // s[0] + 1, (w - p[1]) // s[1] + 1
    covered = np.zeros((h, w), bool)
    for i in range(oh):
        for j in range(ow):
            covered[i * s[0]:i * s[0] + p[0], j * s[1]:j * s[1] + p[1]] = True
    return ~covered


@pytest.mark.parametrize("shape,pool,stride", POOL_CASES)
def test_maxpool2d(shape, pool, stride):
    rng = np.random.default_rng(3)
    kw = {"pool": pool} if stride is None else {"pool": pool, "stride": stride}
    layer = make("maxpool2d", shape[1:], **kw)
    p, s = _pool_args(pool, stride)
    x = distinct(shape, rng)  # no ties: max is differentiable everywhere we probe
    y = layer.forward(x)
    assert y.shape == (shape[0],) + layer.output_shape
    np.testing.assert_array_equal(y, pool_reference(x, p, s, np.max))
    out = check_layer(layer, x)
    unc = _uncovered_mask(shape, p, s)
    assert np.all(out["dx"][:, unc, :] == 0)
    # every window routes its whole gradient to exactly one input: totals are preserved
    np.testing.assert_allclose(out["dx"].sum(), out["R"].sum(), rtol=1e-12)


@pytest.mark.parametrize("shape,pool,stride", POOL_CASES)
def test_avgpool2d(shape, pool, stride):
    rng = np.random.default_rng(4)
    kw = {"pool": pool} if stride is None else {"pool": pool, "stride": stride}
    layer = make("avgpool2d", shape[1:], **kw)
    p, s = _pool_args(pool, stride)
    x = rng.standard_normal(shape)
    y = layer.forward(x)
    assert y.shape == (shape[0],) + layer.output_shape
    np.testing.assert_allclose(y, pool_reference(x, p, s, np.mean), rtol=1e-12, atol=1e-14)
    out = check_layer(layer, x)
    unc = _uncovered_mask(shape, p, s)
    assert np.all(out["dx"][:, unc, :] == 0)
    np.testing.assert_allclose(out["dx"].sum(), out["R"].sum(), rtol=1e-12)


# -- flatten / dense ---------------------------------------------------------------------------

def test_flatten():
    rng = np.random.default_rng(5)
    layer = make("flatten", (3, 4, 5))
    x = rng.standard_normal((2, 3, 4, 5))
    y = layer.forward(x)
    assert layer.output_shape == (60,)
    np.testing.assert_array_equal(y, x.reshape(2, 60))  # C order: (h, w, c)
    assert y[1, (2 * 4 + 1) * 5 + 3] == x[1, 2, 1, 3]
    check_layer(layer, x)


@pytest.mark.parametrize("bias", [True, False])
def test_dense(bias):
    rng = np.random.default_rng(6)
    layer = make("dense", (7,), units=5, bias=bias)
    assert set(layer.params) == ({"W", "b"} if bias else {"W"})
    if bias:
        layer.params["b"][...] = rng.standard_normal(5)
    x = rng.standard_normal((3, 7))
    y = layer.forward(x)
    np.testing.assert_allclose(y, x @ layer.params["W"] + (layer.params["b"] if bias else 0), rtol=1e-13)
    check_layer(layer, x)


# -- activations -------------------------------------------------------------------------------

def test_relu():
    rng = np.random.default_rng(7)
    layer = make("relu", (4, 5, 3))
    shape = (2, 4, 5, 3)
    x = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 2.0, size=shape)  # away from the kink
    y = layer.forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    out = check_layer(layer, x)
    np.testing.assert_array_equal(out["dx"], out["R"] * (x > 0))


def test_tanh():
    rng = np.random.default_rng(8)
    layer = make("tanh", (6,))
    x = 2 * rng.standard_normal((3, 6))
    np.testing.assert_allclose(layer.forward(x), np.tanh(x), rtol=1e-15)
    check_layer(layer, x)


def test_sigmoid():
    rng = np.random.default_rng(9)
    layer = make("sigmoid", (3, 3, 2))
    x = 3 * rng.standard_normal((2, 3, 3, 2))
    np.testing.assert_allclose(layer.forward(x), 1 / (1 + np.exp(-x)), rtol=1e-14)
    check_layer(layer, x)
    # stable at extreme inputs: no overflow, exact limits
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        big = layer.forward(np.array([[-1000.0, 1000.0, 0.0]]))
    np.testing.assert_array_equal(big, [[0.0, 1.0, 0.5]])


# -- dropout -----------------------------------------------------------------------------------

def test_dropout_training_gradient_with_fixed_mask():
    rng = np.random.default_rng(10)
    layer = make("dropout", (4, 4, 3), rate=0.4)
    x = rng.standard_normal((2, 4, 4, 3))

    def same_mask():  # every forward in the check draws the identical mask
        layer.rng = np.random.default_rng(77)

    out = check_layer(layer, x, training=True, before_forward=same_mask)
    mask = out["y"] / x
    keep = 1 - 0.4
    assert np.all(np.isclose(mask, 0) | np.isclose(mask, 1 / keep))
    assert 0 < np.count_nonzero(mask) < mask.size  # some dropped, some kept
    # backward applies exactly the forward's mask
    np.testing.assert_allclose(out["dx"], out["R"] * mask, rtol=1e-15)


def test_dropout_backward_uses_mask_of_latest_forward():
    rng = np.random.default_rng(11)
    layer = make("dropout", (50,), rate=0.5)
    x = rng.uniform(0.5, 1.5, size=(4, 50))
    dy = rng.standard_normal((4, 50))
    y1 = layer.forward(x, training=True)
    d1 = layer.backward(dy)
    y2 = layer.forward(x, training=True)
    d2 = layer.backward(dy)
    m1, m2 = y1 / x, y2 / x
    assert not np.array_equal(m1, m2), "two training passes drew the same mask"
    np.testing.assert_allclose(d1, dy * m1, rtol=1e-15)
    np.testing.assert_allclose(d2, dy * m2, rtol=1e-15)


def test_dropout_rate_and_scaling():
    layer = make("dropout", (100, 100), rate=0.3)
    x = np.ones((2, 100, 100))
    y = layer.forward(x, training=True)
    dropped = np.mean(y == 0)
    assert abs(dropped - 0.3) < 0.02
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-15)
    assert abs(y.mean() - 1.0) < 0.03  # inverted dropout keeps the expectation


@pytest.mark.parametrize("rate,training", [(0.5, False), (0.0, True)])
def test_dropout_identity_in_eval_and_rate_zero(rate, training):
    rng = np.random.default_rng(12)
    layer = make("dropout", (3, 3, 2), rate=rate)
    x = rng.standard_normal((2, 3, 3, 2))
    dy = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(layer.forward(x, training=training), x)
    np.testing.assert_array_equal(layer.backward(dy), dy)
    check_layer(layer, x, training=training)


# -- softmax -----------------------------------------------------------------------------------

def test_softmax_forward_and_plain_backward():
    rng = np.random.default_rng(13)
    layer = make("softmax", (6,))
    z = 2 * rng.standard_normal((4, 6))
    p = layer.forward(z)
    e = np.exp(z)
    np.testing.assert_allclose(p, e / e.sum(axis=1, keepdims=True), rtol=1e-14)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-15)
    # Jacobian-vector product of the probabilities (mid-network use)
    out = check_layer(layer, z)
    dy = out["R"]
    jac = np.stack([np.diag(pi) - np.outer(pi, pi) for pi in p])  # dp_i/dz_j per sample
    np.testing.assert_allclose(out["dx"], np.einsum("nij,ni->nj", jac, dy), rtol=1e-12, atol=1e-15)


def test_softmax_fused_cross_entropy():
    rng = np.random.default_rng(14)
    layer = make("softmax", (6,))
    z = 3 * rng.standard_normal((5, 6))
    labels = np.array([0, 5, 2, 2, 3])
    p = layer.forward(z)
    losses = layer.loss(labels)
    assert losses.shape == (5,)
    np.testing.assert_allclose(losses, -np.log(p[np.arange(5), labels]), rtol=1e-12)
    g = layer.loss_backward()
    onehot = np.eye(6)[labels]
    np.testing.assert_allclose(g, (p - onehot) / 5, rtol=1e-12, atol=1e-16)

    def mean_ce():
        layer.forward(z)
        return layer.loss(labels).mean()

    assert_grad_close(g, numeric_grad(mean_ce, z), "softmax fused loss d/dlogits")


def test_softmax_loss_is_stable_for_extreme_logits():
    layer = make("softmax", (3,))
    z = np.array([[1000.0, 0.0, -1000.0], [0.0, 800.0, 0.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p = layer.forward(z)
        losses = layer.loss(np.array([2, 1]))
        g = layer.loss_backward()
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(g))
    np.testing.assert_allclose(losses, [2000.0, 0.0], atol=1e-12)


# -- whole models ------------------------------------------------------------------------------

SEED_NET = seed_spec(10, 10)  # the seed post's net on 10x10 inputs

LENET_NET = {
    "input_shape": [12, 12, 1],
    "layers": [
        {"type": "conv2d", "filters": 6, "kernel_size": 5, "padding": "same"},
        {"type": "tanh"},
        {"type": "avgpool2d", "pool": 2},
        {"type": "conv2d", "filters": 16, "kernel_size": 5},
        {"type": "tanh"},
        {"type": "avgpool2d", "pool": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 120},
        {"type": "tanh"},
        {"type": "dense", "units": 84},
        {"type": "tanh"},
        {"type": "dense", "units": 10},
        {"type": "softmax"},
    ],
}

KERAS_NET = {
    "input_shape": [10, 10, 1],
    "layers": [
        {"type": "conv2d", "filters": 4, "kernel_size": 3},
        {"type": "relu"},
        {"type": "conv2d", "filters": 6, "kernel_size": 3},
        {"type": "relu"},
        {"type": "maxpool2d", "pool": 2},
        {"type": "dropout", "rate": 0.25},
        {"type": "flatten"},
        {"type": "dense", "units": 16},
        {"type": "relu"},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 10},
        {"type": "softmax"},
    ],
}

NETS = {"seed": SEED_NET, "lenet5": LENET_NET, "keras_mnist": KERAS_NET}


def _model_and_batch(name, n=3, seed=0, engine="fast", threads=1):
    model = build_model(NETS[name], seed=seed, dtype=F64, engine=engine, threads=threads)
    rng = np.random.default_rng(100 + seed)
    for p in model.params.values():  # non-zero biases so their gradients are exercised fully
        if p.ndim == 1:
            p[...] = 0.1 * rng.standard_normal(p.shape)
    x = rng.uniform(-0.5, 0.5, size=(n,) + tuple(NETS[name]["input_shape"]))
    labels = rng.integers(0, 10, size=n)
    return model, x, labels


ENGINES = [("reference", 1), ("fast", 1), ("fast", 3)]


@pytest.mark.parametrize("engine,threads", ENGINES)
@pytest.mark.parametrize("name", ["seed", "lenet5", "keras_mnist"])
def test_model_param_grads(name, engine, threads, max_per_param=100):
    """Every engine's whole-model gradients against finite differences (a fixed random 100
    entries of each parameter; every entry in the slow variant below)."""
    model, x, labels = _model_and_batch(name, engine=engine, threads=threads)
    if threads > 1:
        model.engine.split_min_batch = 2  # three images, three threads
    assert all(p.dtype == np.float64 for p in model.params.values())
    check_model(model, x, labels, max_per_param=max_per_param)


@pytest.mark.slow
@pytest.mark.parametrize("engine,threads", ENGINES)
@pytest.mark.parametrize("name", ["seed", "lenet5", "keras_mnist"])
def test_model_param_grads_all_entries(name, engine, threads):
    # every entry of every parameter, except a fixed random 3000 of lenet's 120x84 dense matrix
    test_model_param_grads(name, engine, threads, max_per_param=3000)


def test_seed_model_shapes_and_param_names():
    model = build_model({**SEED_NET, "input_shape": [28, 28, 1]}, seed=0, dtype=F64)
    assert [l.output_shape for l in model.layers] == [(26, 26, 8), (13, 13, 8), (1352,), (10,), (10,)]
    assert sorted(model.params) == ["conv2d_0.W", "dense_3.W", "dense_3.b"]
    assert model.params["conv2d_0.W"].shape == (3, 3, 1, 8)
    assert model.params["dense_3.W"].shape == (1352, 10)


def test_model_dropout_is_active_in_training_only():
    model, x, labels = _model_and_batch("keras_mnist")
    reseed_dropouts(model, 1)
    a = model.forward(x, training=True)
    reseed_dropouts(model, 2)
    b = model.forward(x, training=True)
    assert not np.allclose(a, b)  # different masks, different outputs
    np.testing.assert_array_equal(model.forward(x), model.forward(x))  # evaluation is deterministic


def _model_input_grad(model, x, labels):
    """dL/dx of the batch-mean loss through the fused loss path (as train_batch does)."""
    reseed_dropouts(model)
    model.forward(x, training=True)
    model.loss_layer.loss(labels)
    dy = model.loss_layer.loss_backward()
    for layer in reversed(model.layers[:-1]):
        dy = layer.backward(dy)
    return dy


@pytest.mark.parametrize("name", ["seed", "keras_mnist"])
def test_model_input_grad(name):
    model, x, labels = _model_and_batch(name, n=2, engine="reference")
    # by default the first layer skips the data gradient
    assert model.layers[0].needs_input_grad is False
    model.train_batch(x, labels)
    assert model.layers[0].backward(np.ones((2,) + model.layers[0].output_shape)) is None

    model.layers[0].needs_input_grad = True
    dx = _model_input_grad(model, x, labels)
    assert dx.shape == x.shape
    num = numeric_grad(lambda: model_mean_loss(model, x, labels), x)
    assert_grad_close(dx, num, f"{name} model d/dx")

    # the same gradient through the plain softmax backward (Jacobian-vector product) path
    reseed_dropouts(model)
    p = model.forward(x, training=True)
    n = len(labels)
    dp = np.zeros_like(p)
    dp[np.arange(n), labels] = -1.0 / (n * p[np.arange(n), labels])
    np.testing.assert_allclose(model.backward(dp), dx, rtol=1e-9, atol=1e-14)


def test_model_grads_match_between_fused_and_plain_softmax_paths():
    # dL/dparams through loss_backward (train_batch) equal those through Softmax.backward
    model, x, labels = _model_and_batch("lenet5", n=2)
    model.train_batch(x, labels)
    fused = {k: v.copy() for k, v in model.grads.items()}
    p = model.forward(x, training=True)
    dp = np.zeros_like(p)
    dp[np.arange(2), labels] = -1.0 / (2 * p[np.arange(2), labels])
    model.backward(dp)
    assert isinstance(model.layers[-1], Softmax)
    for k, v in model.grads.items():
        np.testing.assert_allclose(v, fused[k], rtol=1e-9, atol=1e-15, err_msg=k)


def test_dropout_layers_get_independent_generators():
    model = build_model(KERAS_NET, seed=0, dtype=F64)
    drops = [l for l in model.layers if isinstance(l, Dropout)]
    assert len(drops) == 2
    assert drops[0].rng.random() != drops[1].rng.random()
    # and building with the same seed gives the same masks (reproducible runs)
    m1, m2 = build_model(KERAS_NET, seed=5, dtype=F64), build_model(KERAS_NET, seed=5, dtype=F64)
    x = np.random.default_rng(0).uniform(size=(2, 10, 10, 1))
    np.testing.assert_array_equal(m1.forward(x, training=True), m2.forward(x, training=True))
