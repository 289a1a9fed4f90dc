"""The fast engine computes what the reference engine computes: every preset model and random
stacks give the same loss, gradients, predictions and trained weights (float64, 1e-9 relative),
whatever the thread count (more threads than cores included), and the fast engine's plan runs
any layer list, user layers included. No timing here: speed is measured in benchmarks/."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from cnnexp.engine import FastEngine, ReferenceEngine, available_cores
from cnnexp.engine import conv as conv_stage
from cnnexp.engine import feed, fused, tiles, winograd
from cnnexp.engine.infer import chunk as infer_chunk
from cnnexp.engine.compile import crops, group
from cnnexp.errors import ConfigError
from cnnexp.layers.base import Layer
from cnnexp.model import build_model
from cnnexp.optimizers import build_optimizer
from cnnexp.registry import LAYERS
from cnnexp.train import fit
from helpers.gradcheck import check_model

REL = 1e-9
PRESETS = sorted(Path(__file__).parent.parent.glob("conf/model/*.yaml"))
CONF_SEED = Path(__file__).parent.parent / "conf" / "model" / "seed.yaml"


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)) if a.size else 0.0


def assert_close(a, b, what):
    assert rel_err(a, b) <= REL, f"{what}: relative error {rel_err(a, b):.3g} > {REL}"


def make(spec, engine, threads=1, seed=0, small_split=True):
    m = build_model(spec, seed=seed, dtype="float64", scale=1 / 255, shift=-0.5, engine=engine, threads=threads)
    if small_split and isinstance(m.engine, FastEngine):
        m.engine.split_min_batch, m.engine.chunk, m.engine.infer_chunk = 2, 3, 3  # split and chunk even small batches
    return m


def batch(spec, n=7, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n,) + tuple(spec["input_shape"]), dtype=np.uint8)
    return x, rng.integers(0, spec["layers"][-2].get("units", 10) if spec["layers"][-2]["type"] == "dense" else 10, n)


def reseed(model, seed=7):
    for i, l in enumerate(model.layers):
        if hasattr(l, "rng"):
            l.rng = np.random.default_rng(seed + i)


def loss_grads(model, x, y):
    reseed(model)
    return model.loss_and_grads(x, y)


def splits_of(x, y):
    return SimpleNamespace(train=(x, y), val=(x[:0], y[:0]), test=(x[:4], y[:4]))


def train_weights(model, x, y, batch_size):
    opt = build_optimizer({"type": "sgd"}, 0.05)
    state = fit(model, opt, splits_of(x, y), epochs=2, batch_size=batch_size, seed=3, log=lambda s: None)
    return model.state_dict(), state.history


def compare_engines(spec, n=7, threads=(1, 5), batch_size=3):
    x, y = batch(spec, n)
    ref = make(spec, "reference")
    loss_r, grads_r = loss_grads(ref, x, y)
    probs_r = ref.predict_proba(x, batch_size=4)
    ev_r = ref.evaluate(x, y, batch_size=4)
    w_r, hist_r = train_weights(ref, x, y, batch_size)
    for t in threads:
        fast = make(spec, "fast", t)
        loss_f, grads_f = loss_grads(fast, x, y)
        assert_close(loss_f, loss_r, f"loss, {t} threads")
        assert set(grads_f) == set(grads_r)
        for k in grads_r:
            assert_close(grads_f[k], grads_r[k], f"grad {k}, {t} threads")
        assert_close(fast.predict_proba(x, batch_size=4), probs_r, f"probabilities, {t} threads")
        ev_f = fast.evaluate(x, y, batch_size=4)
        assert_close(ev_f[0], ev_r[0], "evaluate loss")
        assert ev_f[1] == ev_r[1]
        w_f, hist_f = train_weights(fast, x, y, batch_size)
        for k in w_r:
            assert_close(w_f[k], w_r[k], f"trained {k}, {t} threads")
        for a, b in zip(hist_f, hist_r):
            assert_close(a["train/epoch_loss"], b["train/epoch_loss"], "epoch loss")


def preset(path, size=None) -> dict:
    spec = yaml.safe_load(Path(path).read_text())
    return {**spec, "input_shape": [size, size, 1]} if size else spec


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_presets_same_in_both_engines(path):
    # keras_mnist on 14x14 inputs: the same layers at a quarter of the reference engine's cost
    compare_engines(preset(path, 14 if path.stem == "keras_mnist" else None), n=5, threads=(1, 3))


@pytest.mark.slow
@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_presets_full_size_same_in_both_engines(path):
    compare_engines(preset(path), n=5, threads=(1, 3))


ACTS = [None, "relu", "tanh", "sigmoid"]
POOLS = [None, ("maxpool2d", 2, None), ("avgpool2d", 2, None), ("maxpool2d", 3, 2), ("avgpool2d", 2, 1),
         ("maxpool2d", 2, 3)]


def random_stack(seed: int) -> dict:
    """A random conv stack: kernel, stride, padding, bias, channels, activation and pool
    drawn from ``seed``; sometimes a dropout, a second conv, or two dense layers."""
    rng = np.random.default_rng(seed)
    h = int(rng.integers(7, 12))
    c = int(rng.integers(1, 4))
    layers = []
    for _ in range(int(rng.integers(1, 3))):
        layers.append({"type": "conv2d", "filters": int(rng.integers(1, 6)), "kernel_size": int(rng.integers(1, 4)),
                       "stride": int(rng.integers(1, 3)), "padding": str(rng.choice(["valid", "same"])),
                       "bias": bool(rng.integers(2))})
        act = ACTS[rng.integers(len(ACTS))]
        if act:
            layers.append({"type": act})
        pool = POOLS[rng.integers(len(POOLS))]
        if pool:
            layers.append({"type": pool[0], "pool": pool[1], "stride": pool[2]})
    if rng.integers(2):
        layers.append({"type": "dropout", "rate": 0.3})
    layers.append({"type": "flatten"})
    if rng.integers(2):
        layers += [{"type": "dense", "units": 6}, {"type": str(rng.choice(["relu", "tanh", "sigmoid"]))}]
    layers += [{"type": "dense", "units": 4}, {"type": "softmax"}]
    return {"input_shape": [h, h, c], "layers": layers}


def _buildable(spec) -> bool:
    try:
        build_model(spec, dtype="float64")
        return True
    except ConfigError:  # a pool larger than its input after strides: draw again
        return False


RANDOM = [s for s in range(40) if _buildable(random_stack(s))][:14]


@pytest.mark.parametrize("seed", RANDOM)
def test_random_stacks_same_in_both_engines(seed):
    compare_engines(random_stack(seed), n=6, threads=(1, 4), batch_size=6)


def test_random_stacks_cover_the_options():
    specs = [random_stack(s) for s in RANDOM]
    convs = [l for s in specs for l in s["layers"] if l["type"] == "conv2d"]
    assert {l["stride"] for l in convs} == {1, 2} and {l["padding"] for l in convs} == {"valid", "same"}
    assert {l["bias"] for l in convs} == {True, False} and {l["kernel_size"] for l in convs} == {1, 2, 3}
    types = {l["type"] for s in specs for l in s["layers"]}
    assert {"relu", "tanh", "sigmoid", "maxpool2d", "avgpool2d", "dropout"} <= types
    assert any(l.get("stride") not in (None, l.get("pool")) for s in specs for l in s["layers"]
               if l["type"].endswith("pool2d"))  # an overlapping or gapped pool


def _conv(filters, k=3, stride=1, padding="valid"):
    return {"type": "conv2d", "filters": filters, "kernel_size": k, "stride": stride, "padding": padding}


@pytest.mark.parametrize("pool,size,stride", [("maxpool2d", 3, 2), ("avgpool2d", 3, 2), ("maxpool2d", 2, 3),
                                              ("maxpool2d", 3, 1)])
def test_strided_pools_read_blocked_conv_output_as_the_reference_does(pool, size, stride):
    # conv outputs whose sides are multiples of the pool stride are laid out in blocks (phases)
    # which the second conv's input gradient puts back in plain order; the first conv's output
    # (10x10) is not a multiple of 3
    for channels in (3, 16):
        spec = {"input_shape": [12, 12, 2], "layers": [
            _conv(channels, padding="valid"), {"type": "relu"}, {"type": pool, "pool": size, "stride": stride},
            _conv(4, padding="same"), {"type": "tanh"}, {"type": pool, "pool": size, "stride": stride},
            {"type": "flatten"}, {"type": "dense", "units": 3}, {"type": "softmax"}]}
        stages = make(spec, "fast").engine._workers(1)[0][0]
        first = (stride, stride) if 10 % stride == 0 and stride > 1 else None
        second = {2: (2, 2), 3: (3, 3), 1: None}[stride]  # 4x4 (stride 2) or 3x3 (stride 3) after the pool
        assert [stages[0].blocks, stages[1].blocks] == [first, second]
        compare_engines(spec, n=5, threads=(1, 2), batch_size=2)


@pytest.mark.parametrize("pool", [None, "maxpool2d"])
def test_one_channel_convs_unroll_and_multiply_in_pieces_as_the_reference(pool, monkeypatch):
    # a one-channel conv's forward unrolls and multiplies piece by piece (here one image each):
    # the same loss, gradients, probabilities and trained weights as the reference
    monkeypatch.setattr(conv_stage, "PIECE_BYTES", 1)
    pieces, real = [], conv_stage.ConvStage._unroll_rows
    monkeypatch.setattr(conv_stage.ConvStage, "_unroll_rows", lambda self, src, cols, a, b: pieces.append((a, b)) or real(self, src, cols, a, b))
    layers = [_conv(6, 5, 2, "same"), {"type": "relu"}] + ([{"type": pool, "pool": 2}] if pool else []) + [
        _conv(4), {"type": "flatten"}, {"type": "dense", "units": 3}, {"type": "softmax"}]
    compare_engines({"input_shape": [14, 14, 1], "layers": layers}, n=5, threads=(1, 2), batch_size=2)
    assert {(0, 1), (1, 2), (2, 3)} <= set(pieces)  # forwards in pieces (training's prepared blocks: whole)


@pytest.mark.parametrize("k,stride,padding,pool,flat", [
    (3, 1, "valid", None, True), (3, 1, "same", None, True), (3, 1, "valid", "maxpool2d", True),
    (3, 1, "same", "avgpool2d", True), (5, 1, "valid", "maxpool2d", False), (3, 2, "same", None, False)])
def test_input_gradient_paths_match_the_reference(k, stride, padding, pool, flat):
    # the second conv's dx: flat shifted adds (3x3 stride 1 on 22 columns: the input is at most
    # 1.1x as wide as the output) or one add per window offset, from a dy laid out in blocks
    # (a 2x2 pool follows) or plain, with and without padding
    layers = [_conv(3), {"type": "relu"}, _conv(4, k, stride, padding), {"type": "tanh"}]
    layers += [{"type": pool, "pool": 2}] if pool else []
    spec = {"input_shape": [24, 24, 2], "layers": layers + [
        {"type": "flatten"}, {"type": "dense", "units": 3}, {"type": "softmax"}]}
    stages = make(spec, "fast").engine._workers(1)[0][0]
    assert stages[1].flat_dx is flat and (stages[1].blocks is not None) is (pool is not None and stride == 1)
    compare_engines(spec, n=5, threads=(1, 2), batch_size=2)


@pytest.mark.parametrize("size,layers,cut", [
    # the benchmark's strided stack, small: a one-channel 'same' 5x5/2 conv into a 3x3/2 'valid'
    # one, which reads 7 of the first conv's 8 rows and columns
    (16, [_conv(4, 5, 2, "same"), {"type": "relu"}, _conv(6, 3, 2)], {0: (7, 7)}),
    # a middle conv (its input gradient computed) cut in its columns only, then in both
    (16, [_conv(3), {"type": "tanh"}, _conv(4), _conv(5, 3, [1, 2])], {1: (12, 11)}),
    (16, [_conv(3), {"type": "tanh"}, _conv(4), {"type": "sigmoid"}, _conv(5, 3, 2)], {1: (11, 11)}),
    # a Winograd conv (32 -> 32, 3x3 stride 1) whose 11 columns are cut to 10 by a 4x4/2 conv
    (15, [_conv(32), {"type": "relu"}, _conv(32), {"type": "relu"}, _conv(4, 4, 2)], {1: (10, 10)}),
    # nothing cut: the next conv is padded at the bottom and right, or reads every row, or a
    # pool sits between
    (16, [_conv(3, 3, 2, "same"), _conv(4, 3, 2, "same")], {}),
    (15, [_conv(3), {"type": "relu"}, _conv(4, 3, 2)], {}),
    (16, [_conv(3), {"type": "maxpool2d", "pool": 2}, _conv(4, 2, 2)], {})])
def test_convs_compute_only_the_outputs_the_next_conv_reads(size, layers, cut):
    spec = {"input_shape": [size, size, 1], "layers": layers + [
        {"type": "flatten"}, {"type": "dense", "units": 3}, {"type": "softmax"}]}
    fast = make(spec, "fast")
    assert crops(fast.engine.groups) == cut
    stages = fast.engine._workers(1)[0][0]
    for i, (rows, cols) in cut.items():
        assert (stages[i].oh, stages[i].ow) == (rows, cols) and stages[i + 1].hw == (rows, cols)
        assert (stages[i].wino is not None) is (stages[i].c == 32)
    compare_engines(spec, n=5, threads=(1, 2), batch_size=2)


def plan_stages(model) -> list[str]:
    """The kinds of stage the fast engine's worker 0 runs raw images with."""
    return [type(s).__name__ for s in model.engine._plan(model.engine._workers(1)[0][0], 10**9)]


@pytest.mark.parametrize("kernel,padding,bias,act,pool,dense_act", [
    (3, "valid", True, None, ("maxpool2d", 2), None), (3, "valid", False, "relu", ("maxpool2d", 2), "tanh"),
    (5, "same", True, "tanh", ("avgpool2d", 2), None), ([2, 3], "same", True, "sigmoid", ("maxpool2d", 3), "relu"),
    (1, "valid", False, "relu", ("avgpool2d", 3), None), (4, "valid", True, None, ("maxpool2d", [2, 3]), "sigmoid"),
    (5, "same", True, "tanh", ("avgpool2d", 2), "conv"), (3, "valid", False, "relu", ("maxpool2d", 2), "conv"),
    ([2, 3], "same", True, "sigmoid", ("maxpool2d", 3), "conv")])
def test_tiled_first_stage_matches_the_reference(kernel, padding, bias, act, pool, dense_act, monkeypatch):
    # a first one-channel stride-1 conv into a tiling pool runs as pool-window tiles,
    # channel-first (tiles.py), as a head with the flatten and dense after it ("conv": as a stage
    # whose output goes back to NHWC for a conv), in inference and in training on raw batches: any kernel,
    # padding, bias, activation and pool, conv outputs that the pool does not cover exactly
    # (13 - 4 + 1 = 10 rows, 3x3 pools) included; and it passes the finite-difference check
    layers = [{**_conv(5, kernel, 1, padding), "bias": bias}] + ([{"type": act}] if act else [])
    layers += [{"type": pool[0], "pool": pool[1]}]
    if dense_act == "conv":  # a conv after the pool: the stage's output goes back to NHWC
        layers += [{**_conv(3, 2), "padding": "same"}, {"type": "relu"}, {"type": "flatten"}]
    else:
        layers += [{"type": "flatten"}, {"type": "dense", "units": 6}] + ([{"type": dense_act}] if dense_act else [])
    spec = {"input_shape": [13, 13, 1], "layers": layers + [{"type": "dense", "units": 3}, {"type": "softmax"}]}
    monkeypatch.setattr(tiles, "MIN_MACS", 0)  # every chunk and piece: 3, 3 and 1 images
    fast = make(spec, "fast")
    backward, original = [], tiles.TiledConv.conv_backward
    monkeypatch.setattr(tiles.TiledConv, "conv_backward", lambda self, dp: backward.append(1) or original(self, dp))
    x, y = batch(spec)
    fast.engine.train(x, y, raw=True)
    assert backward and plan_stages(fast)[:2] == (["TiledConv", "ConvStage"] if dense_act == "conv" else
                                                  ["TiledHead", "DenseStage"])
    compare_engines(spec, n=7, threads=(1, 2), batch_size=3)
    for p in fast.params.values():  # non-zero biases
        if p.ndim == 1:
            p[...] = 0.1 * np.random.default_rng(0).standard_normal(p.shape)
    check_model(fast, fast.preprocess(x[:4]), y[:4], max_per_param=100)


def test_seed_net_runs_tiled_from_min_macs_on_and_matches_the_reference():
    spec = preset(CONF_SEED)
    ref, fast = make(spec, "reference"), make(spec, "fast", small_split=False)
    stages = fast.engine._workers(1)[0][0]
    head = fast.engine._plan(stages, 10**9)[0]
    least = -int(-tiles.MIN_MACS // head.macs)  # fewest images run tiled
    assert type(head) is tiles.TiledHead and 16 < least <= 32
    assert fast.engine._plan(stages, least - 1) is stages and fast.engine._plan(stages, least)[0] is head
    x, y = batch(spec, n=least + 3)
    assert_close(fast.predict_proba(x), ref.predict_proba(x), "probabilities")
    (loss_f, grads_f), (loss_r, grads_r) = loss_grads(fast, x, y), loss_grads(ref, x, y)
    assert_close(loss_f, loss_r, "loss")
    for k in grads_r:
        assert_close(grads_f[k], grads_r[k], k)


def test_tiled_buffers_do_not_pile_up_over_image_counts(monkeypatch):
    monkeypatch.setattr(tiles, "MIN_MACS", 0)
    spec = preset(CONF_SEED, 12)
    fast = make(spec, "fast", small_split=False)
    x, y = batch(spec, n=9)
    kept = []
    for n in (9, 4, 7, 1, 9):
        fast.engine.train(x[:n], y[:n], raw=True)
        fast.predict_proba(x[:n])
        head = fast.engine._plan(fast.engine.workers[0][0], n)[0]
        kept.append(sorted((k, a.size) for k, a in head.bufs._d.items()))
    assert type(head) is tiles.TiledHead and kept[1:] == kept[:1] * 4


@pytest.mark.parametrize("conv,channels,pool", [
    (_conv(4, 3, 2), 1, (2, 2)), (_conv(4), 2, (2, 2)), (_conv(4, 3, 1, "same"), 1, (3, 2)), (_conv(4), 1, None),
    (_conv(12, 5, 1, "same"), 1, (2, 2))])
def test_tiles_only_for_a_first_one_channel_stride_1_conv_into_a_tiling_pool(conv, channels, pool):
    # not for stride 2, two input channels, a pool that overlaps (3 with stride 2), no pool, 12
    # filters (tiles.MAX_FILTERS);
    # nor for a second conv (after a first one with one filter)
    pool = [{"type": "maxpool2d", "pool": pool[0], "stride": pool[1]}] if pool else [{"type": "relu"}]
    for first in ([], [_conv(1, 1), {"type": "relu"}]):
        spec = {"input_shape": [20, 20, channels], "layers": first + [conv] + pool + [
            {"type": "flatten"}, {"type": "dense", "units": 3}, {"type": "softmax"}]}
        assert not any(k.startswith("Tiled") for k in plan_stages(make(spec, "fast")))


@pytest.mark.parametrize("kernel,padding,pool,bias,act,m", [
    (3, "valid", "maxpool2d", True, "relu", 2), (3, "same", None, False, "relu", 4), (3, "valid", "avgpool2d", True, "tanh", 2),
    ([5, 3], "same", None, True, "sigmoid", 4), ([1, 3], "valid", "maxpool2d", False, "relu", 2),
    (3, "same", "maxpool2d", True, "relu", 4), (3, "same", "avgpool2d", False, "sigmoid", 4),
    (5, "same", "avgpool2d", True, "sigmoid", 2), ([3, 5], "valid", None, False, "relu", 2), (5, "valid", "maxpool2d", True, "tanh", 2)])
def test_winograd_convs_match_the_reference(kernel, padding, pool, bias, act, m, monkeypatch):
    # the second conv (32 -> 32 channels, three or five kernel columns, stride 1) runs all three
    # products by Winograd: F(4, 3) where the output width (8 here) is a multiple of 4, F(2, 3)
    # (width 6) and F(2, 5); one image per chunk, so batches and pieces span several chunks
    monkeypatch.setattr(winograd, "CHUNK_ROWS", 1)
    conv2 = {**_conv(32, kernel, 1, padding), "bias": bias}
    layers = [_conv(32), {"type": "relu"}, conv2, {"type": act}] + ([{"type": pool, "pool": 2}] if pool else [])
    spec = {"input_shape": [10, 10, 1], "layers": layers + [
        {"type": "flatten"}, {"type": "dense", "units": 3}, {"type": "softmax"}]}
    fast = make(spec, "fast")
    stages = fast.engine._workers(1)[0][0]
    assert stages[0].wino is None and stages[1].wino is not None and stages[1].wino.chunk == 1
    assert stages[1].wino.blocked is (pool is not None) and (stages[1].fold or not bias) and stages[1].wino.m == m
    x, y = batch(spec, n=2)
    for n, used in ((2, True), (1, False)):  # one image: the unrolled product (MIN_IMAGES)
        fast.engine.train(x[:n], y[:n], raw=True)
        assert stages[1].winograd is used
    compare_engines(spec, n=5, threads=(1, 2), batch_size=2)


@pytest.mark.parametrize("kernel,padding,pool,bias,dtype", [
    (3, "same", "maxpool2d", True, "float32"), (3, "same", None, False, "float64"), ([5, 3], "same", None, True, "float32"),
    (3, "same", "avgpool2d", False, "float32"), ([1, 3], "valid", "maxpool2d", True, "float32"),
    ([1, 3], "valid", None, False, "float64"), (5, "same", "avgpool2d", True, "float32"), (5, "same", None, False, "float64"),
    ([3, 5], "same", "maxpool2d", True, "float32")])
def test_fused_winograd_passes_give_the_numpy_passes_numbers(kernel, padding, pool, bias, dtype, monkeypatch):
    # the compiled loops (fused.py) against the numpy passes they replace: bit for bit, in the
    # conv's output, its weight and bias gradients and its input gradient (plain and 2x2-pool
    # blocked outputs, F(4, 3) (8 output columns), F(2, 3) (6) and F(2, 5), three and five kernel
    # rows, both float types); two images per chunk
    if fused.kernels() is None:
        pytest.skip("numba is not installed: only the numpy passes run")
    monkeypatch.setattr(winograd, "CHUNK_ROWS", 2 * 8 * 4)  # 2 * CHUNK_ROWS // (8 x 8 or 8 x 6 outputs)
    conv2 = {**_conv(32, kernel, 1, padding), "bias": bias}
    spec = {"input_shape": [10, 10, 1], "layers": [_conv(32), {"type": "relu"}, conv2, {"type": "tanh"}] + (
        [{"type": pool, "pool": 2}] if pool else []) + [{"type": "flatten"}, {"type": "dense", "units": 3},
                                                          {"type": "softmax"}]}
    x, y = batch(spec, n=5)
    out = {}
    for mode in ("fused", "numpy"):
        if mode == "numpy":
            monkeypatch.setattr(fused, "_KERNELS", [None])
        m = build_model(spec, seed=0, dtype=dtype, scale=1 / 255, shift=-0.5, engine="fast", threads=1)
        st = m.engine._workers(1)[0][0][1]
        assert st.wino is not None and st.wino.chunk == 2
        loss, grads = m.loss_and_grads(x, y)
        out[mode] = (loss, {k: v.copy() for k, v in grads.items()}, m.predict_proba(x))
    assert out["fused"][0] == out["numpy"][0]
    for k in out["numpy"][1]:
        np.testing.assert_array_equal(out["fused"][1][k], out["numpy"][1][k], err_msg=k)
    np.testing.assert_array_equal(out["fused"][2], out["numpy"][2])


@pytest.mark.parametrize("k,stride,padding", [(5, 1, "same"), (3, 2, "valid"), ([3, 5], [2, 1], "same")])
def test_fused_shifted_adds_give_the_numpy_adds_numbers(k, stride, padding, monkeypatch):
    # a conv stage's input gradient (one add per kernel offset) as one compiled loop, bit for bit
    if fused.kernels() is None:
        pytest.skip("numba is not installed: only the numpy passes run")
    spec = {"input_shape": [12, 12, 1], "layers": [_conv(6), {"type": "sigmoid"}, _conv(5, k, stride, padding),
                                                   {"type": "flatten"}, {"type": "dense", "units": 3}, {"type": "softmax"}]}
    x, y = batch(spec, n=4)
    out = {}
    for mode in ("fused", "numpy"):
        if mode == "numpy":
            monkeypatch.setattr(fused, "_KERNELS", [None])
        m = build_model(spec, seed=0, dtype="float32", scale=1 / 255, shift=-0.5, engine="fast", threads=1)
        assert not m.engine._workers(1)[0][0][1].flat_dx
        out[mode] = {k: v.copy() for k, v in m.loss_and_grads(x, y)[1].items()}
    for name in out["numpy"]:
        np.testing.assert_array_equal(out["fused"][name], out["numpy"][name], err_msg=name)


def fused_and_numpy_grads(spec, dtype, x, y, monkeypatch):
    """The gradients of ``spec`` with the compiled loops (recording which ran) and with numpy's
    passes: ``(loop names called, {"fused": grads, "numpy": grads}, the last model)``."""
    calls, real = [], fused.kernels()
    out = {}
    for mode in ("fused", "numpy"):
        if mode == "numpy":
            monkeypatch.setattr(fused, "_KERNELS", [None])
        else:
            monkeypatch.setattr(fused, "_KERNELS", [{k: (lambda k: lambda *a: calls.append(k) or real[k](*a))(k)
                                                     for k in real}])
        m = build_model(spec, seed=0, dtype=dtype, scale=1 / 255, shift=-0.5, engine="fast", threads=1)
        out[mode] = {k: v.copy() for k, v in m.loss_and_grads(x, y)[1].items()}
    return calls, out, m


@pytest.mark.parametrize("act,dtype", [("relu", "float32"), ("relu", "float64"), ("tanh", "float32")])
def test_fused_relu_and_max_pool_gradients_give_the_numpy_numbers(act, dtype, monkeypatch):
    # relu's and the max-pool's gradients (ops.py) as compiled loops for arrays of >= MIN_SIZE
    # values, bit for bit (tanh keeps numpy's passes); the relu after a max-pool runs on the
    # pooled values, so a relu conv with no pool after it gets the loop
    if fused.kernels() is None:
        pytest.skip("numba is not installed: only the numpy passes run")
    monkeypatch.setattr(fused, "MIN_SIZE", 1000)
    spec = {"input_shape": [12, 12, 1], "layers": [_conv(8), {"type": act}, _conv(8), {"type": act},
                                                   {"type": "maxpool2d", "pool": 2}, {"type": "flatten"},
                                                   {"type": "dense", "units": 3}, {"type": "softmax"}]}
    x, y = batch(spec, n=4)  # 4 x 10x10x8 values before the pool, 4 x 8x8x8 of the second conv
    calls, out, m = fused_and_numpy_grads(spec, dtype, x, y, monkeypatch)
    ops_calls = set(calls) & {"relu", "relu_backward", "max_pool_backward"}
    assert ops_calls == {"max_pool_backward"} | ({"relu", "relu_backward"} if act == "relu" else set())
    for name in out["numpy"]:
        np.testing.assert_array_equal(out["fused"][name], out["numpy"][name], err_msg=name)


@pytest.mark.parametrize("act,dtype,tiled", [("sigmoid", "float32", False), ("tanh", "float64", False),
                                              ("relu", "float32", False), ("tanh", "float32", True)])
def test_fused_average_pool_and_activation_gradients_give_the_numpy_numbers(act, dtype, tiled, monkeypatch):
    # an average pool's gradient and the tanh's or sigmoid's before it as one compiled pass, bit for
    # bit; the first conv's gradient arrives as a cut view of the second's padded one ('same'); or
    # the first conv runs tiled (tiles.py)
    if fused.kernels() is None:
        pytest.skip("numba is not installed: only the numpy passes run")
    monkeypatch.setattr(fused, "MIN_SIZE", 1000)
    monkeypatch.setattr(tiles, "MIN_MACS", 0 if tiled else float("inf"))
    spec = {"input_shape": [12, 12, 1], "layers": [_conv(8, 3, 1, "same"), {"type": act}, {"type": "avgpool2d", "pool": 2},
                                                   _conv(8, 3, 1, "same"), {"type": act}, {"type": "avgpool2d", "pool": 2},
                                                   {"type": "flatten"}, {"type": "dense", "units": 3}, {"type": "softmax"}]}
    x, y = batch(spec, n=4)
    calls, out, m = fused_and_numpy_grads(spec, dtype, x, y, monkeypatch)
    assert calls.count("avg_act_backward") == (0 if act == "relu" else 2)
    assert (plan_stages(m)[0] == "TiledConv") == tiled
    for name in out["numpy"]:
        np.testing.assert_array_equal(out["fused"][name], out["numpy"][name], err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_relu_gives_np_maximum_bit_for_bit(dtype):
    # the compiled relu keeps NaN and infinities and turns -0.0 into +0.0, as np.maximum(y, 0)
    if fused.kernels() is None:
        pytest.skip("numba is not installed: only the numpy passes run")
    y = np.random.default_rng(0).standard_normal(5000).astype(dtype)
    y[:6] = [-0.0, 0.0, np.nan, -np.inf, np.inf, -1e-45]
    want, got = np.maximum(y, 0), y.copy()
    fused.kernels()["relu"](got, got.dtype.type(1))
    np.testing.assert_array_equal(got, want)
    assert not np.signbit(got).any()


def test_a_bad_fused_switch_names_the_value_and_the_valid_ones(monkeypatch):
    monkeypatch.setenv("CNNEXP_FUSED", "off")
    with pytest.raises(ConfigError, match=r"CNNEXP_FUSED='off' is invalid: use 1 \(compiled loops, the default\) or 0"):
        build_model(preset(CONF_SEED), engine="fast")
    monkeypatch.setenv("CNNEXP_FUSED", "0")
    assert fused.enabled() is False and build_model(preset(CONF_SEED), engine="fast").engine is not None


@pytest.mark.parametrize("c,f,k,size,first", [(16, 32, 3, 10, False), (32, 32, 2, 10, False), (32, 32, 3, 11, False),
                                              (32, 32, 3, 10, True), (2, 48, 5, 10, False), (6, 8, 5, 10, False),
                                              (12, 4, 5, 10, False), (16, 16, 5, 11, False), (8, 16, 3, 12, False),
                                              (4, 64, 3, 12, False)])
def test_winograd_only_where_it_was_measured_to_win(c, f, k, size, first):
    # 3 columns, F(2, 3) (6 output columns): fewer than 16 x 64 / 32 x 32 channels x filters;
    # F(4, 3) (8 output columns): fewer than 8 channels or 256 channels x filters; 5 columns:
    # fewer than 4 channels, 8 filters or 64 channels x filters (benchmarks/NOTES.md, session 10); two kernel
    # columns, an odd output width, a first conv (its input may come unrolled ahead): the unrolled product
    layers = [] if first else [_conv(c), {"type": "relu"}]
    spec = {"input_shape": [size, size, c if first else 1], "layers": layers + [_conv(f, k), {"type": "relu"},
            {"type": "flatten"}, {"type": "dense", "units": 3}, {"type": "softmax"}]}
    stages = make(spec, "fast").engine._workers(1)[0][0]
    assert stages[0 if first else 1].wino is None
    assert winograd.applies(3, (1, 1), 8, 32, 32, None) and winograd.applies(3, (1, 1), 8, 16, 64, (2, 2))
    assert winograd.applies(5, (1, 1), 8, 4, 16, None) and winograd.applies(5, (1, 1), 8, 12, 8, (2, 2))
    assert winograd.applies(3, (1, 1), 8, 8, 32, None) and not winograd.applies(3, (1, 1), 6, 8, 32, None)


def test_relu_after_a_max_pool_gives_windows_with_max_0_no_gradient():
    # the fast engine runs relu after the max-pool; a window whose max is exactly 0 from nonzero
    # inputs (x0 + x1 = 1 - 1) must get no gradient, as relu before the pool gives it (all four
    # tie at 0, each times relu'(0) = 0)
    spec = {"input_shape": [4, 4, 2], "layers": [
        {"type": "conv2d", "filters": 2, "kernel_size": 1, "bias": False}, {"type": "relu"},
        {"type": "maxpool2d", "pool": 2}, {"type": "flatten"}, {"type": "dense", "units": 3}, {"type": "softmax"}]}
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (3, 4, 4, 2), dtype=np.uint8)
    x[:, :2, :2] = [2, 0]  # x0 + x1 = 0 in every pixel of the first window (shift -1)
    y = np.array([0, 1, 2])
    grads = []
    for engine in ("reference", "fast"):
        m = build_model(spec, seed=0, dtype="float64", scale=1, shift=-1, engine=engine, threads=1)
        m.layers[0].params["W"][...] = [[[[1.0, 0.5], [1.0, -0.5]]]]
        assert engine == "reference" or m.engine._workers(1)[0][0][0].act_last
        grads.append(loss_grads(m, x, y)[1])
    for k in grads[0]:
        assert_close(grads[1][k], grads[0][k], k)


@pytest.mark.parametrize("seed", RANDOM[:4])
def test_inputs_prepared_in_blocks_same_as_reference(seed, monkeypatch):
    # blocks of 4 images: several per epoch, batches that straddle none, a short last block
    monkeypatch.setattr(feed, "BLOCK_IMAGES", 4)
    spec = random_stack(seed)
    fast = make(spec, "fast")
    assert fast.engine.block_images(2) == 4
    compare_engines(spec, n=11, threads=(1,), batch_size=2)


def test_dense_first_plan_prepares_preprocessed_images(monkeypatch):
    monkeypatch.setattr(feed, "BLOCK_IMAGES", 3)
    spec = {"input_shape": [5, 5, 1], "layers": [{"type": "flatten"}, {"type": "dense", "units": 6},
                                                  {"type": "tanh"}, {"type": "dense", "units": 3},
                                                  {"type": "softmax"}]}
    x, _ = batch(spec, n=3)
    data, rows, cols = make(spec, "fast").engine.prepare(x)
    assert (rows, cols) == (1, False) and data.shape == (3, 5, 5, 1)
    compare_engines(spec, n=10, threads=(1,), batch_size=1)


def test_more_threads_than_cores_same_result_and_deterministic():
    spec = preset(Path(__file__).parent.parent / "conf/model/keras_mnist.yaml", 12)
    x, y = batch(spec, n=11)
    threads = available_cores() + 3
    one, many = make(spec, "fast", 1), make(spec, "fast", threads)
    assert many.threads == threads and many.engine.parts(11) == threads
    l1, g1 = loss_grads(one, x, y)
    l2, g2 = loss_grads(many, x, y)
    l3, g3 = loss_grads(many, x, y)
    assert_close(l2, l1, "loss")
    for k in g1:
        assert_close(g2[k], g1[k], k)
        np.testing.assert_array_equal(g3[k], g2[k])  # the same split sums in the same order
    np.testing.assert_array_equal(many.predict_proba(x), many.predict_proba(x))


def test_plan_fuses_any_conv_activation_pool_and_dense_activation():
    spec = {"input_shape": [9, 9, 2], "layers": [
        {"type": "conv2d", "filters": 3, "kernel_size": 2, "stride": 2, "padding": "same"}, {"type": "sigmoid"},
        {"type": "avgpool2d", "pool": 2, "stride": 1}, {"type": "conv2d", "filters": 2}, {"type": "maxpool2d"},
        {"type": "dropout", "rate": 0.1}, {"type": "flatten"}, {"type": "dense", "units": 5}, {"type": "tanh"},
        {"type": "relu"}, {"type": "dense", "units": 3}, {"type": "softmax"}]}
    m = build_model(spec, dtype="float64")
    kinds = [(k, len(g)) for k, g in group(m.layers[:-1])]
    assert kinds == [("conv", 3), ("conv", 2), ("dropout", 1), ("flatten", 1), ("dense", 2), ("op", 1), ("dense", 1)]
    compare_engines(spec, n=5, threads=(2,))


@pytest.fixture
def swish():
    @LAYERS.register("test_swish")
    class Swish(Layer):
        """A user layer with a parameter: y = x * sigmoid(beta * x)."""

        def init_params(self, rng, dtype):
            self.params["beta"] = np.ones(1, dtype)

        def forward(self, x, training=False):
            self._x, self._s = x, 1 / (1 + np.exp(-self.params["beta"][0] * x))
            return x * self._s

        def backward(self, dy):
            x, s, b = self._x, self._s, self.params["beta"][0]
            ds = s * (1 - s)
            self.grads["beta"] = np.array([np.sum(dy * x * x * ds)])
            return dy * (s + x * b * ds)

    yield "test_swish"
    LAYERS.unregister("test_swish")


def test_user_layer_runs_as_itself_inside_the_plan(swish):
    spec = {"input_shape": [8, 8, 1], "layers": [
        {"type": "conv2d", "filters": 3}, {"type": swish}, {"type": "maxpool2d"}, {"type": "flatten"},
        {"type": "dense", "units": 4}, {"type": swish}, {"type": "dense", "units": 3}, {"type": "softmax"}]}
    m = build_model(spec, dtype="float64")
    assert [k for k, _ in group(m.layers[:-1])] == ["conv", "layer", "op", "flatten", "dense", "layer", "dense"]
    compare_engines(spec, n=6, threads=(1, 3))


def test_engine_and_threads_are_chosen_and_recorded(tmp_path):
    spec = yaml.safe_load(PRESETS[-1].read_text())
    m = build_model(spec, engine="reference")
    assert isinstance(m.engine, ReferenceEngine) and m.spec["engine"] == "reference"
    assert isinstance(build_model(m.spec).engine, ReferenceEngine)  # a saved spec keeps its engine
    f = build_model(spec, threads=3)
    assert isinstance(f.engine, FastEngine) and f.threads == 3
    assert build_model(spec).threads == available_cores() or "CNNEXP_THREADS" in __import__("os").environ
    with pytest.raises(ConfigError, match="engine='turbo' is invalid"):
        build_model(spec, engine="turbo")
    with pytest.raises(ConfigError, match="threads=0 is invalid"):
        build_model(spec, threads=0)


def test_params_and_grads_are_views_of_flat_buffers():
    spec = preset(PRESETS[0], 12)
    m = make(spec, "fast", 3)
    x, y = batch(spec, 6)
    m.loss_and_grads(x, y)
    for k, g in m.grads.items():
        assert np.shares_memory(g, m.grads.flat) and np.shares_memory(m.params[k], m.params.flat)
    assert np.any(m.grads.flat != 0)


@pytest.mark.parametrize("seed", RANDOM[:6])
def test_fast_engine_random_stacks_pass_finite_differences(seed):
    spec = random_stack(seed)
    m = make(spec, "fast", 2)
    rng = np.random.default_rng(seed)
    for p in m.params.values():  # non-zero biases
        if p.ndim == 1:
            p[...] = 0.1 * rng.standard_normal(p.shape)
    x, y = batch(spec, 4)
    check_model(m, m.preprocess(x), y, max_per_param=200)



def test_buffers_reuse_rows_and_remake_on_growth():
    from cnnexp.engine.buffers import Buffers

    made = []
    b = Buffers()
    a = b.get("k", (4, 3), np.float32, fill=made.append)
    a[...] = 5
    short = b.get("k", (2, 3), np.float32, fill=made.append)
    assert short.shape == (2, 3) and np.shares_memory(short, a) and len(made) == 1
    assert np.all(b.get("k", (3, 3), np.float32, zero=True) == 0) and a[3, 0] == 5  # only the rows asked for
    big = b.get("k", (6, 3), np.float32, fill=made.append)
    assert big.shape == (6, 3) and not np.shares_memory(big, a) and len(made) == 2
    assert b.get("k", (6, 4), np.float32).shape == (6, 4)


@pytest.mark.parametrize("mode", ["processes", "threads"])
def test_which_batches_split_across_workers(monkeypatch, mode):
    """A rule on images and work (``train_flops``), fixed per batch size (so results are
    reproducible); worker processes hand off for less than threads, so they split smaller
    batches."""
    monkeypatch.setenv("CNNEXP_PARALLEL", mode)
    keras = build_model(preset(Path(__file__).parent.parent / "conf/model/keras_mnist.yaml"), threads=2).engine
    seed = build_model(preset(Path(__file__).parent.parent / "conf/model/seed.yaml"), threads=2).engine
    if mode == "threads":
        assert [keras.parts(n) for n in (1, 4, 7, 8, 32)] == [1, 1, 1, 2, 2]  # >= 8 images and >= 7e7 FLOP
        assert [seed.parts(n) for n in (8, 32, 63, 64)] == [1, 1, 1, 2]  # too little work below 64 images
    else:
        assert [keras.parts(n) for n in (1, 2, 4)] == [1, 2, 2]  # >= 2 images and >= 1e7 FLOP
        assert [seed.parts(n) for n in (8, 15, 16)] == [1, 1, 2]  # too little work below 16 images


def test_chunks_shrink_for_convs_with_few_filters():
    """Chunks (inference) and pieces (of a training part) of at most 64 images, halved (down to
    8) while a conv with < 32 filters would unroll more than 2 MB per chunk; the rule, not a
    timing, so results are reproducible."""
    root = Path(__file__).parent.parent / "conf/model"
    chunks = {name: build_model(preset(root / f"{name}.yaml")).engine.chunk
              for name in ("seed", "lenet5", "keras_mnist")}
    # seed: 26x26 x (3*3*1 + 1) x 4 bytes = 27 KB an image; lenet5's first conv 28x28 x 26 x 4 = 82 KB;
    # keras_mnist's convs have 32 and 64 filters
    assert chunks == {"seed": 64, "lenet5": 16, "keras_mnist": 64}
    wide5 = {"input_shape": [28, 28, 1], "layers": [{"type": "conv2d", "filters": 12, "kernel_size": 5, "padding": "same"},
                                                     {"type": "conv2d", "filters": 24, "kernel_size": 5, "padding": "same"},
                                                     {"type": "flatten"}, {"type": "dense", "units": 10}, {"type": "softmax"}]}
    assert build_model(wide5).engine.chunk == 8  # 28x28 x (5*5*12 + 1) x 4 = 944 KB an image: the floor


def test_inference_chunks_keep_the_largest_unrolled_input_within_4_mb():
    """Inference chunks of at most 128 images, halved (down to 8) while the largest input a
    stage of the plan unrolls would exceed 4 MB per chunk."""
    root = Path(__file__).parent.parent / "conf/model"
    chunks = {name: infer_chunk(build_model(preset(root / f"{name}.yaml")).engine)
              for name in ("seed", "lenet5", "keras_mnist")}
    # seed: tiled, (4*4 + 1) x 13 x 14 values = 12 KB an image; lenet5's second conv 10x10 x
    # (5*5*6 + 1) x 4 bytes = 60 KB; keras_mnist's first conv 26x26 x 10 x 4 = 27 KB (its second
    # runs by Winograd and unrolls nothing)
    assert chunks == {"seed": 128, "lenet5": 64, "keras_mnist": 128}
    wide5 = {"input_shape": [28, 28, 1], "layers": [{"type": "conv2d", "filters": 12, "kernel_size": 5, "padding": "same"},
                                                     {"type": "conv2d", "filters": 24, "kernel_size": [5, 4], "padding": "same"},
                                                     {"type": "flatten"}, {"type": "dense", "units": 10}, {"type": "softmax"}]}
    # (a 5x4 kernel: no Winograd) 28x28 x (5*4*12 + 1) x 4 = 756 KB an image: the floor
    assert infer_chunk(build_model(wide5).engine) == 8
    m = build_model(wide5)
    m.engine.infer_chunk = 5  # a caller's setting is kept
    assert infer_chunk(m.engine) == 5


def test_training_parts_run_in_pieces_of_the_chunk(monkeypatch):
    # a part of more than `chunk` images runs in pieces; the values are checked against the
    # reference engine by every compare_engines test (make() sets chunk = 3)
    spec = preset(Path(__file__).parent.parent / "conf/model/lenet5.yaml", 12)
    model = make(spec, "fast")
    calls = []
    piece = FastEngine._train_piece
    monkeypatch.setattr(FastEngine, "_train_piece", lambda self, w, x, *a: calls.append(len(x)) or piece(self, w, x, *a))
    x, y = batch(spec, 7)
    loss_grads(model, x, y)
    assert calls == [3, 3, 1]
