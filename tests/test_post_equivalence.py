"""The vectorised seed network reproduces the seed post's loop code (tests/helpers/post_reference.py):
same forward outputs, same gradients, same SGD update.

Weight mapping: the post's conv filters ``(F, 3, 3)`` are our ``W[kh, kw, 0, f]``; the post's
softmax weights ``(input_len, nodes)``, which multiply the post's ``input.flatten()`` of the
``(h, w, f)`` pooled volume, are our dense ``W`` unchanged, because our flatten is the C-order
flatten of NHWC ``(h, w, c)``. The post's ``image / 255 - 0.5`` is our preprocess with
``scale=1/255, shift=-0.5``.
"""

from __future__ import annotations

import numpy as np
import pytest


from cnnexp.model import build_model
from cnnexp.optimizers import build_optimizer
from helpers import post_reference as post
from helpers.experiments import seed_spec

TOL = dict(rtol=1e-10, atol=1e-13)


def build_pair(h=28, w=28, seed=0):
    """Our seed model (float64, post preprocessing) and the post's three layers holding the
    same weights. The dense bias is made non-zero so its mapping is exercised."""
    model = build_model(seed_spec(h, w), seed=seed, dtype="float64", scale=1 / 255, shift=-0.5)
    rng = np.random.default_rng(1000 + seed)
    model.params["dense_3.b"][...] = 0.1 * rng.standard_normal(10)
    conv = post.Conv3x3(8)
    pool = post.MaxPool2()
    (oh, ow, f) = model.layers[1].output_shape
    softmax = post.Softmax(oh * ow * f, 10)
    sync_post_from_ours(model, conv, softmax)
    return model, conv, pool, softmax


def sync_post_from_ours(model, conv, softmax):
    W = model.params["conv2d_0.W"]  # (3, 3, 1, 8)
    conv.filters = np.ascontiguousarray(W[:, :, 0, :].transpose(2, 0, 1)).copy()  # -> (8, 3, 3)
    softmax.weights = model.params["dense_3.W"].copy()
    softmax.biases = model.params["dense_3.b"].copy()


def ours_as_post(model):
    """Our parameters in the post's layout."""
    return (model.params["conv2d_0.W"][:, :, 0, :].transpose(2, 0, 1), model.params["dense_3.W"],
            model.params["dense_3.b"])


def random_image(h, w, rng):
    return rng.integers(0, 256, size=(h, w)).astype(np.uint8)


def digit_like_image(h, w, rng):
    """Mostly blank background (like MNIST) with a bright stroke: the conv output is
    constant over the background, so the max pool sees exact ties there."""
    img = np.zeros((h, w), np.uint8)
    r = rng.integers(3, h - 6)
    img[r:r + 3, 2:w - 2] = rng.integers(100, 256, size=(3, w - 4))
    img[2:h - 2, w // 2] = 255
    return img


def our_forward_backward(model, x, labels):
    """What Model.train_batch does, keeping every layer's output and input gradient (the first
    layer's input gradient is computed because tests switch needs_input_grad on)."""
    outs = []
    a = x
    for layer in model.layers:
        a = layer.forward(a, True)
        outs.append(a)
    losses = model.loss_layer.loss(labels)
    dy = model.loss_layer.loss_backward()
    dins = [None] * len(model.layers)
    for i in reversed(range(len(model.layers) - 1)):
        dy = model.layers[i].backward(dy)
        dins[i] = dy
    return outs, losses, dins


@pytest.mark.parametrize("h,w", [(28, 28), (13, 12), (11, 14)])
def test_forward_matches_post(h, w):
    rng = np.random.default_rng(h * 100 + w)
    model, conv, pool, softmax = build_pair(h, w)
    img = random_image(h, w, rng)
    label = int(rng.integers(10))

    p_conv = conv.forward(img / 255 - 0.5)
    p_pool = pool.forward(p_conv)
    p_out = softmax.forward(p_pool)
    p_out2, p_loss, p_acc = post.forward(conv, pool, softmax, img, label)

    x = model.preprocess(img[None])
    assert x.shape == (1, h, w, 1) and x.dtype == np.float64
    np.testing.assert_allclose(x[0, :, :, 0], img / 255 - 0.5, **TOL)
    outs, losses, _ = our_forward_backward(model, x, np.array([label]))
    np.testing.assert_allclose(outs[0][0], p_conv, **TOL)
    np.testing.assert_allclose(outs[1][0], p_pool, **TOL)
    np.testing.assert_allclose(outs[2][0], softmax.last_input, **TOL)  # same flatten order
    np.testing.assert_allclose(outs[4][0], p_out, **TOL)
    np.testing.assert_allclose(p_out2, p_out, **TOL)
    np.testing.assert_allclose(losses[0], p_loss, **TOL)
    assert int(outs[4][0].argmax() == label) == p_acc


@pytest.mark.parametrize("h,w,image", [(28, 28, "random"), (28, 28, "digit"), (11, 14, "random")])
def test_gradients_match_post(h, w, image):
    rng = np.random.default_rng(7 + h + w)
    model, conv, pool, softmax = build_pair(h, w, seed=1)
    img = (random_image if image == "random" else digit_like_image)(h, w, rng)
    label = int(rng.integers(10))
    before = [a.copy() for a in (conv.filters, softmax.weights, softmax.biases)]

    post.train(conv, pool, softmax, img, label, lr=0)  # lr=0: gradients only
    for a, b in zip(before, (conv.filters, softmax.weights, softmax.biases)):
        np.testing.assert_array_equal(a, b)

    model.layers[0].needs_input_grad = True
    x = model.preprocess(img[None])
    _, _, dins = our_forward_backward(model, x, np.array([label]))
    g = model.grads
    np.testing.assert_allclose(g["conv2d_0.W"][:, :, 0, :].transpose(2, 0, 1), conv.last_d_L_d_filters, **TOL)
    np.testing.assert_allclose(g["dense_3.W"], softmax.last_d_L_d_w, **TOL)
    np.testing.assert_allclose(g["dense_3.b"], softmax.last_d_L_d_b, **TOL)
    np.testing.assert_allclose(dins[3][0], softmax.last_d_L_d_inputs, **TOL)  # d/d(flattened pool output)
    np.testing.assert_allclose(dins[0][0, :, :, 0], conv.last_d_L_d_input, **TOL)  # d/d(normalised image)

    # and Model.train_batch (first layer's input gradient off again) gives the same grads
    model.layers[0].needs_input_grad = False
    model.train_batch(x, np.array([label]))
    for k, v in model.grads.items():
        np.testing.assert_allclose(v, g[k], rtol=1e-14, atol=0, err_msg=k)


def test_digit_like_image_has_pool_ties():
    # guard for the test above: the blank background really produces tied maxima
    rng = np.random.default_rng(7 + 56)
    model, conv, pool, _ = build_pair(28, 28, seed=1)
    img = digit_like_image(28, 28, rng)
    for out in (conv.forward(img / 255 - 0.5), model.layers[0].forward(model.preprocess(img[None]))[0]):
        blocks = out.reshape(13, 2, 13, 2, 8)
        n_max = (blocks == blocks.max(axis=(1, 3), keepdims=True)).sum(axis=(1, 3))
        assert (n_max > 1).sum() > 100


def test_sgd_steps_match_post():
    """One step of the post's train(lr=0.005) equals train_batch + sgd(0.005), and a few
    consecutive single-image steps stay equal."""
    rng = np.random.default_rng(42)
    model, conv, pool, softmax = build_pair(28, 28, seed=2)
    opt = build_optimizer({"type": "sgd"}, 0.005)
    for step in range(4):
        img = (random_image if step % 2 == 0 else digit_like_image)(28, 28, rng)
        label = int(rng.integers(10))
        p_loss, _ = post.train(conv, pool, softmax, img, label, lr=0.005)
        before = {k: v.copy() for k, v in model.params.items()}
        losses, _ = model.train_batch(model.preprocess(img[None]), np.array([label]))
        opt.step(model.params, model.grads)
        np.testing.assert_allclose(losses[0], p_loss, **TOL)
        f, W, b = ours_as_post(model)
        np.testing.assert_allclose(f, conv.filters, **TOL)
        np.testing.assert_allclose(W, softmax.weights, **TOL)
        np.testing.assert_allclose(b, softmax.biases, **TOL)
        # the update is exactly -lr * grad
        for k, v in model.params.items():
            np.testing.assert_allclose(v - before[k], -0.005 * model.grads[k], rtol=1e-9, atol=1e-18)
            assert not np.array_equal(v, before[k]), f"{k} was not updated"


def test_maxpool_matches_post_on_odd_sizes():
    rng = np.random.default_rng(5)
    model = build_model({"input_shape": [9, 11, 3], "layers": [{"type": "maxpool2d", "pool": 2}]},
                        dtype="float64")
    layer = model.layers[0]
    x = rng.standard_normal((9, 11, 3))
    p = post.MaxPool2()
    np.testing.assert_array_equal(layer.forward(x[None])[0], p.forward(x))
    d = rng.standard_normal((4, 5, 3))
    np.testing.assert_array_equal(layer.backward(d[None])[0], p.backprop(d))


def test_maxpool_ties_pass_gradient_to_every_max_like_post():
    x = np.zeros((4, 4, 2))
    # channel 0: window (0, 0) has a three-way tie, window (0, 1) a single max,
    # window (1, 0) is constant (four-way tie), window (1, 1) a two-way tie
    x[:, :, 0] = [[1, 1, 2, 5],
                  [0, 1, 3, 4],
                  [7, 7, 2, 9],
                  [7, 7, 9, 1]]
    # channel 1: all equal: every input is a max of its window
    x[:, :, 1] = 0.25
    d = np.array([[[1.0, 10.0], [2.0, 20.0]],
                  [[3.0, 30.0], [4.0, 40.0]]])
    expected = np.zeros_like(x)
    expected[:, :, 0] = [[1, 1, 0, 2],
                         [0, 1, 0, 0],
                         [3, 3, 0, 4],
                         [3, 3, 4, 0]]
    expected[:, :, 1] = [[10, 10, 20, 20],
                         [10, 10, 20, 20],
                         [30, 30, 40, 40],
                         [30, 30, 40, 40]]

    p = post.MaxPool2()
    p.forward(x)
    np.testing.assert_array_equal(p.backprop(d), expected)

    model = build_model({"input_shape": [4, 4, 2], "layers": [{"type": "maxpool2d", "pool": 2}]},
                        dtype="float64")
    layer = model.layers[0]
    y = layer.forward(x[None])
    np.testing.assert_array_equal(y[0], [[[1, 0.25], [5, 0.25]], [[7, 0.25], [9, 0.25]]])
    np.testing.assert_array_equal(layer.backward(d[None])[0], expected)


def test_randn_fan_in_follows_post_init_rule():
    # post: filters = randn(8, 3, 3) / 9, weights = randn(1352, 10) / 1352, biases = 0
    model = build_model(seed_spec(), seed=3, dtype="float64")
    W = model.params["dense_3.W"]
    assert abs(W.std() * 1352 - 1) < 0.05 and abs(W.mean() * 1352) < 0.05
    assert np.all(model.params["dense_3.b"] == 0)
    f = model.params["conv2d_0.W"] * 9
    assert 0.6 < f.std() < 1.4  # only 72 draws: a loose check that the scale is 1/9


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_fit_reproduces_post_training_loop(engine):
    """``fit`` (batch 1, SGD lr=0.005, the post's loop) with ``engine=reference`` trains the
    same weights as the post's code run over the images in fit's shuffled order; so does the
    fast engine."""
    from types import SimpleNamespace

    from cnnexp.train import epoch_rng, fit

    rng = np.random.default_rng(11)
    model, conv, pool, softmax = build_pair(28, 28, seed=4)
    model.set_engine(engine)
    images = np.stack([(random_image if i % 2 else digit_like_image)(28, 28, rng) for i in range(6)])
    labels = rng.integers(0, 10, size=6)
    splits = SimpleNamespace(train=(images, labels), val=(images[:0], labels[:0]), test=(images[:0], labels[:0]))
    fit(model, build_optimizer({"type": "sgd"}, 0.005), splits, epochs=2, batch_size=1, seed=9, log=lambda s: None)
    for epoch in range(2):
        for i in epoch_rng(9, epoch).permutation(6):
            post.train(conv, pool, softmax, images[i], int(labels[i]), lr=0.005)
    f, W, b = ours_as_post(model)
    np.testing.assert_allclose(f, conv.filters, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(W, softmax.weights, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b, softmax.biases, rtol=1e-9, atol=1e-12)
