"""The benchmark's models: the three presets (conf/model/) and three stacks that are none of
them, written for the engine benchmark (strided convs, 'same' 5x5 with sigmoid and average
pooling, an overlapping max-pool into two dense layers)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("seed", "lenet5", "keras_mnist")


def _conv(filters, k, stride=1, padding="valid", bias=True):
    return {"type": "conv2d", "filters": filters, "kernel_size": k, "stride": stride, "padding": padding,
            "bias": bias, "init": "glorot_uniform"}


def _dense(units):
    return {"type": "dense", "units": units, "init": "glorot_uniform"}


CUSTOM = {
    # two stride-2 convs ('same' then 'valid'), no pooling
    "strided": [_conv(16, 5, 2, "same"), {"type": "relu"}, _conv(32, 3, 2), {"type": "relu"},
                {"type": "flatten"}, _dense(64), {"type": "relu"}, _dense(10), {"type": "softmax"}],
    # 'same' 5x5 convs with sigmoid and average pooling
    "same5_sigmoid_avg": [_conv(12, 5, 1, "same"), {"type": "sigmoid"}, {"type": "avgpool2d", "pool": 2},
                          _conv(24, 5, 1, "same"), {"type": "sigmoid"}, {"type": "avgpool2d", "pool": 2},
                          {"type": "flatten"}, _dense(10), {"type": "softmax"}],
    # a bias-free tanh conv, an overlapping 3x3/2 max-pool, two dense layers and dropout
    "overlap_two_dense": [_conv(10, 3, 1, "valid", bias=False), {"type": "tanh"},
                          {"type": "maxpool2d", "pool": 3, "stride": 2}, {"type": "flatten"}, _dense(100),
                          {"type": "tanh"}, {"type": "dropout", "rate": 0.2}, _dense(50), {"type": "relu"},
                          _dense(10), {"type": "softmax"}],
}
MODELS = PRESETS + tuple(CUSTOM)


def model_spec(name: str) -> dict:
    if name in CUSTOM:
        return {"name": name, "input_shape": [28, 28, 1], "dtype": "float32", "layers": CUSTOM[name]}
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"))
