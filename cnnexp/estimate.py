"""Memory a model will need, from its layer specs, before a single array is allocated.

Each layer is constructed through the registry (constructors only check arguments) and asked
for its output shape (``output_shape_for``); parameter counts come from the layer's sizes
(``filters`` x kernel x input channels for convolutions, inputs x ``units`` for dense layers).
The estimate counts, at the larger of ``batch_size`` and ``eval_batch_size``: each layer's
output and its gradient, a convolution's unrolled input, and four copies of the parameters
(weights, gradients, two optimizer slots). A model whose estimate exceeds the limit
(``memory_limit_mb``, default: the machine's MemAvailable) is refused in one line naming the
largest layer and the sizes.
"""

from __future__ import annotations

import math

from .errors import ConfigError

PARAM_COPIES = 4  # weights, gradients, up to two optimizer slots (adam)


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, or None where there is no such file."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_limit(limit_mb=None) -> tuple[int | None, str]:
    """(bytes, where the figure comes from): ``memory_limit_mb`` if set, else MemAvailable."""
    if limit_mb is not None:
        return int(limit_mb * 2**20), f"memory_limit_mb={limit_mb}"
    avail = available_bytes()
    return avail, "the machine's available memory; set memory_limit_mb to change"


def fmt(n: float) -> str:
    for unit, size in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 2**10:,.1f} KB"


def layer_params(layer, input_shape: tuple[int, ...]) -> int:
    bias = bool(getattr(layer, "use_bias", False))
    if hasattr(layer, "filters") and hasattr(layer, "kh"):
        c = input_shape[-1]
        return layer.kh * layer.kw * c * layer.filters + (layer.filters if bias else 0)
    if hasattr(layer, "units"):
        d = math.prod(input_shape)
        return d * layer.units + (layer.units if bias else 0)
    return 0


def layer_activations(layer, out_shape: tuple[int, ...]) -> int:
    """Elements per image: output + its gradient, plus a convolution's unrolled input."""
    n = 2 * math.prod(out_shape)
    if hasattr(layer, "filters") and hasattr(layer, "kh") and getattr(layer, "input_shape", None):
        n += out_shape[0] * out_shape[1] * layer.kh * layer.kw * layer.input_shape[-1]
    return n


def estimate(cfg: dict) -> list[tuple[int, str, tuple, int, int]] | None:
    """Per layer: (index, type, output shape, parameters, activation elements per image).
    Bad arguments or shapes raise ConfigError worded as the model builder words them; None
    when a layer type is not registered (yet: ``plugins`` are imported later)."""
    from .layers.base import ShapeError
    from .registry import LAYERS

    spec = cfg["model"]
    shape = spec.get("input_shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    rows, cur = [], tuple(shape)
    for i, ls in enumerate(spec.get("layers") or []):
        if not isinstance(ls, dict) or not isinstance(ls.get("type"), str) or ls["type"] not in LAYERS:
            return None
        kwargs = {k: v for k, v in ls.items() if k != "type"}
        key = (ls["type"], id(LAYERS.get(ls["type"])), repr(sorted(kwargs.items())), cur)
        if key not in _MEMO:  # a sweep walks the same layers many times
            if len(_MEMO) > 100_000:
                _MEMO.clear()
            _MEMO[key] = _walk(LAYERS, ShapeError, i, ls["type"], kwargs, cur)
        out, params, acts = _MEMO[key]
        rows.append((i, ls["type"], out, params, acts))
        cur = out
    return rows


_MEMO: dict = {}


def _walk(layers, shape_error, i: int, kind: str, kwargs: dict, cur: tuple) -> tuple[tuple, int, int]:
    at = f"model.layers.{i}"
    layer = layers.build(kind, kwargs, where=at)
    layer.input_shape = cur
    try:
        out = tuple(int(d) for d in layer.output_shape_for(cur))
    except shape_error as e:
        raise ConfigError(f"{at} ({kind}): {e} (input shape {cur})") from None
    return out, layer_params(layer, cur), layer_activations(layer, out)


def check_memory(cfg: dict) -> None:
    """ConfigError (one line) when the model's estimate exceeds the memory limit."""
    rows = estimate(cfg)
    limit, source = memory_limit(cfg.get("memory_limit_mb"))
    if not rows or limit is None:
        return
    item = 8 if cfg["model"].get("dtype") == "float64" else 4
    batch = max(cfg["batch_size"], cfg["eval_batch_size"])
    per_layer = [(PARAM_COPIES * p + batch * a) * item for (_, _, _, p, a) in rows]
    total = sum(per_layer)
    if total <= limit:
        return
    k = max(range(len(rows)), key=per_layer.__getitem__)
    i, kind, out, params, _ = rows[k]
    raise ConfigError(f"model.layers.{i} ({kind}) needs {fmt(per_layer[k])} (output {list(out)} per image at batch "
                      f"{batch}, {params:,} parameters); the model needs {fmt(total)}, more than the {fmt(limit)} "
                      f"limit ({source}); make the layer or batch_size/eval_batch_size smaller")
