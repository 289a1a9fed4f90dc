"""Compile a layer list into the stages one worker runs.

Any layer list the registry can build compiles: a ``conv2d`` (any kernel, stride, padding,
bias, channels) takes the built-in activation and the pool that follow it into one
``ConvStage``; a ``dense`` takes the activation that follows it; other built-in layers get
their own stage; anything else (a user-registered layer, a subclass that changes the maths)
runs as itself in a ``LayerStage``. Only exact built-in types are fused.
"""

from __future__ import annotations

from ..layers.activations import Dropout
from ..layers.conv import Conv2D
from ..layers.dense import Dense, Flatten
from .conv import ConvStage
from .ops import ActOp, PoolOp
from .stages import DenseStage, DropoutStage, FlattenStage, LayerStage, OpStage
from .tiles import TiledConv, TiledHead


def group(layers: list) -> list[tuple]:
    """The stages as ``(kind, layers)`` groups, in order: what a plan will run."""
    out, i = [], 0
    while i < len(layers):
        l = layers[i]
        if type(l) in (Conv2D, Dense):
            g = [l]
            if i + 1 < len(layers) and ActOp.of(layers[i + 1]) is not None:
                g.append(layers[i + 1])
            if type(l) is Conv2D and i + len(g) < len(layers) and PoolOp.accepts(layers[i + len(g)]):
                g.append(layers[i + len(g)])
            out.append(("conv" if type(l) is Conv2D else "dense", g))
        elif ActOp.of(l) is not None or PoolOp.accepts(l):
            out.append(("op", [l]))
        elif type(l) is Dropout:
            out.append(("dropout", [l]))
        elif type(l) is Flatten:
            out.append(("flatten", [l]))
        else:
            out.append(("layer", [l]))
        i += len(out[-1][1])
    return out


def build_stages(groups: list[tuple], grads: dict, count: int | None = None) -> list:
    """Fresh stages (own buffers and forward state) for one worker writing into ``grads``
    (of the first ``count`` groups when given)."""
    stages, cut = [], crops(groups)
    for n, (kind, g) in enumerate(groups[:count]):
        first = n == 0
        if kind == "conv":
            act = next((ActOp.of(l) for l in g[1:] if ActOp.of(l) is not None), None)
            pool = next((PoolOp(l) for l in g[1:] if PoolOp.accepts(l)), None)
            stages.append(ConvStage(g[0], grads, act, pool, first, cut.get(n), cut.get(n - 1)))
        elif kind == "dense":
            stages.append(DenseStage(g[0], grads, ActOp.of(g[1]) if len(g) > 1 else None, first))
        elif kind == "op":
            stages.append(OpStage(ActOp.of(g[0]) or PoolOp(g[0]), first))
        elif kind == "dropout":
            stages.append(DropoutStage(g[0]))
        elif kind == "flatten":
            stages.append(FlattenStage())
        else:
            stages.append(LayerStage(g[0], grads, first))
    return stages


def crops(groups: list[tuple]) -> dict:
    """``{group: (rows, cols)}`` for each conv (with no pool) whose next stage is a conv that
    never reads its last output rows or columns (a strided 'valid' conv whose windows stop
    short of the edge): only the part read is computed (the same values and gradients: the
    rest would get no gradient)."""
    out = {}
    for n in range(len(groups) - 1):
        (kind, g), (nkind, ng) = groups[n], groups[n + 1]
        if kind != "conv" or nkind != "conv" or any(PoolOp.accepts(l) for l in g):
            continue
        nxt = ng[0]
        h, w, _ = nxt.input_shape
        (pt, pb), (pl, pr) = nxt.pads(h, w)
        oh, ow, _ = nxt.output_shape
        rows = h if pb else min(h, (oh - 1) * nxt.sh + nxt.kh - pt)
        cols = w if pr else min(w, (ow - 1) * nxt.sw + nxt.kw - pl)
        if (rows, cols) != (h, w):
            out[n] = (rows, cols)
    return out


def tiled(stages: list) -> list:
    """The stages with a head of conv stage, flatten and dense stage replaced by a
    ``TiledHead``, or else a first conv stage by a ``TiledConv``, where that applies (``tiles.py``)."""
    if TiledHead.applies(stages):
        return [TiledHead(stages[0], stages[2])] + stages[3:]
    if TiledConv.applies(stages):
        return [TiledConv(stages[0])] + stages[1:]
    return stages


def train_flops(layers: list) -> int:
    """Approximate training FLOP per image of the conv and dense layers (forward product and
    the two backward ones): decides when a batch is worth splitting across threads."""
    total = 0
    for l in layers:
        if isinstance(l, Conv2D):
            oh, ow, f = l.output_shape
            total += 6 * oh * ow * f * l.kh * l.kw * l.input_shape[2]
        elif isinstance(l, Dense):
            total += 6 * l.input_shape[0] * l.units
    return total
