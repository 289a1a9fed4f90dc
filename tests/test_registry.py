"""Registry behaviour and the errors build_model gives for bad layer stacks."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cnnexp.errors import CnnexpError, ConfigError
from cnnexp.layers import Conv2D, Layer
from cnnexp.model import build_model
from cnnexp.registry import LAYERS, OPTIMIZERS, Registry
from helpers.gradcheck import check_layer, check_model


def build_error(layers, input_shape=(8, 8, 1), **kw) -> str:
    with pytest.raises(ConfigError) as ei:
        build_model({"input_shape": list(input_shape), "layers": layers}, **kw)
    msg = str(ei.value)
    assert "\n" not in msg  # shown as one line
    return msg


# -- the Registry itself ------------------------------------------------------------------------

def test_register_get_and_decorator():
    reg = Registry("widget")

    @reg.register("spanner")
    class Spanner:
        pass

    def hammer():
        return "bang"

    assert reg.register("hammer", hammer) is hammer
    assert reg.get("spanner") is Spanner and reg.get("hammer")() == "bang"
    assert reg.names() == ["hammer", "spanner"]
    assert "spanner" in reg and "wrench" not in reg


def test_duplicate_registration_raises_and_keeps_the_original():
    reg = Registry("widget")
    reg.register("a", dict)
    with pytest.raises(ValueError, match=r"widget 'a' is already registered"):
        reg.register("a", list)
    assert reg.get("a") is dict

    with pytest.raises(ValueError, match="already registered"):
        @LAYERS.register("conv2d")
        class MyConv:  # noqa: F811
            pass
    assert LAYERS.get("conv2d") is Conv2D


@pytest.mark.parametrize("bad", ["", None, 3])
def test_register_needs_a_nonempty_string(bad):
    with pytest.raises(ValueError, match="non-empty string"):
        Registry("widget").register(bad, dict)


def test_unknown_name_lists_known_names_with_did_you_mean():
    with pytest.raises(ConfigError) as ei:
        LAYERS.get("conv2")
    msg = str(ei.value)
    assert "unknown layer 'conv2'" in msg
    assert "did you mean 'conv2d'?" in msg
    for name in ("conv2d", "maxpool2d", "avgpool2d", "dense", "flatten", "relu", "softmax", "dropout"):
        assert name in msg.split("known layers:")[1]

    msg = build_error([{"type": "maxpol2d"}])
    assert "unknown layer 'maxpol2d'" in msg and "did you mean 'maxpool2d'?" in msg

    # nothing close: no suggestion, still the list
    with pytest.raises(ConfigError) as ei:
        OPTIMIZERS.get("zzzzzz")
    assert "did you mean" not in str(ei.value) and "adam" in str(ei.value)


def test_unexpected_kwarg_is_named_with_suggestion():
    msg = build_error([{"type": "conv2d", "filter": 8}])
    assert "model.layers.0 'conv2d'" in msg
    assert "unexpected argument 'filter'" in msg
    assert "did you mean 'filters'?" in msg
    assert "kernel_size" in msg  # lists what it accepts

    msg = build_error([{"type": "conv2d", "filters": 4}, {"type": "maxpool2d", "pool_size": 2}])
    assert "model.layers.1 'maxpool2d'" in msg and "'pool_size'" in msg and "did you mean 'pool'?" in msg

    msg = build_error([{"type": "flatten", "units": 3}])
    assert "'units'" in msg and "no arguments" in msg


@pytest.mark.parametrize("layer,missing", [({"type": "conv2d", "kernel_size": 3}, "filters"),
                                           ({"type": "dense"}, "units")])
def test_missing_required_kwarg(layer, missing):
    layers = [layer] if layer["type"] == "conv2d" else [{"type": "flatten"}, layer]
    msg = build_error(layers)
    assert f"missing required argument '{missing}'" in msg
    assert f"'{layer['type']}'" in msg


# -- a user's own layer, registered from their own module ---------------------------------------

PLUGIN_SRC = textwrap.dedent('''
    """A user's module: registers a layer the way the README tells users to."""
    import numpy as np

    from cnnexp.layers.base import Layer
    from cnnexp.registry import LAYERS


    @LAYERS.register("swish_test")
    class Swish(Layer):
        """y = x * sigmoid(beta * x) with one learnable beta per channel."""

        def __init__(self, beta: float = 1.0):
            super().__init__()
            self.beta0 = float(beta)

        def init_params(self, rng, dtype):
            self.params["beta"] = np.full(self.input_shape[-1:], self.beta0, dtype)

        def forward(self, x, training=False):
            self._x = x
            self._s = 1 / (1 + np.exp(-self.params["beta"] * x))
            return x * self._s

        def backward(self, dy):
            x, s, b = self._x, self._s, self.params["beta"]
            ds = s * (1 - s)
            self.grads["beta"] = (dy * x * x * ds).reshape(-1, x.shape[-1]).sum(axis=0)
            return dy * (s + b * x * ds)
''')

PLUGIN_MODULE = "cnnexp_test_user_plugin"


@pytest.fixture
def user_plugin(tmp_path, monkeypatch):
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "swish_test" not in LAYERS
    try:
        yield importlib.import_module(PLUGIN_MODULE)
    finally:
        LAYERS.unregister("swish_test")
        sys.modules.pop(PLUGIN_MODULE, None)


def test_user_layer_builds_and_gradient_checks(user_plugin):
    assert LAYERS.get("swish_test") is user_plugin.Swish
    spec = {"input_shape": [6, 6, 1], "layers": [
        {"type": "conv2d", "filters": 3, "kernel_size": 3},
        {"type": "swish_test", "beta": 1.5},
        {"type": "maxpool2d", "pool": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 4},
        {"type": "softmax"},
    ]}
    model = build_model(spec, seed=0, dtype="float64")
    swish = model.layers[1]
    assert isinstance(swish, user_plugin.Swish)
    assert swish.name == "swish_test_1" and swish.output_shape == (4, 4, 3)
    np.testing.assert_array_equal(model.params["swish_test_1.beta"], [1.5, 1.5, 1.5])

    rng = np.random.default_rng(0)
    swish.params["beta"][...] = [0.5, 1.0, 2.0]
    check_layer(swish, rng.standard_normal((2, 4, 4, 3)))
    x = rng.uniform(-0.5, 0.5, size=(3, 6, 6, 1))
    check_model(model, x, np.array([0, 3, 1]))

    # its kwargs are checked like a built-in's
    msg = build_error([{"type": "swish_test", "betta": 2.0}])
    assert "unexpected argument 'betta'" in msg and "did you mean 'beta'?" in msg

    # importing the module a second time would register the name twice
    with pytest.raises(ValueError, match="'swish_test' is already registered"):
        importlib.reload(user_plugin)


def test_unregister_removes_the_name():
    reg_name = "tmp_identity_test"

    class Identity(Layer):
        def forward(self, x, training=False):
            return x

        def backward(self, dy):
            return dy

    LAYERS.register(reg_name, Identity)
    try:
        model = build_model({"input_shape": [3, 3, 1], "layers": [{"type": reg_name}]}, dtype="float64")
        assert isinstance(model.layers[0], Identity)
    finally:
        LAYERS.unregister(reg_name)
    assert reg_name not in LAYERS
    assert reg_name not in LAYERS.names()
    assert f"unknown layer {reg_name!r}" in build_error([{"type": reg_name}], input_shape=(3, 3, 1))
    LAYERS.unregister(reg_name)  # unregistering an absent name is a no-op


def test_a_non_layer_is_rejected():
    LAYERS.register("not_a_layer_test", lambda: object())
    try:
        msg = build_error([{"type": "not_a_layer_test"}])
        assert "model.layers.0" in msg and "did not build a cnnexp Layer" in msg
    finally:
        LAYERS.unregister("not_a_layer_test")


# -- shapes that do not fit ---------------------------------------------------------------------

def test_dense_without_flatten():
    msg = build_error([{"type": "conv2d", "filters": 2, "kernel_size": 3}, {"type": "dense", "units": 10}])
    assert "model.layers.1 (dense)" in msg
    assert "(6, 6, 2)" in msg and "flatten" in msg


def test_kernel_larger_than_input():
    msg = build_error([{"type": "conv2d", "filters": 2, "kernel_size": 5}], input_shape=(4, 4, 1))
    assert "model.layers.0 (conv2d)" in msg and "5x5" in msg and "4x4" in msg and "(4, 4, 1)" in msg

    msg = build_error([{"type": "conv2d", "filters": 2, "kernel_size": 3},
                       {"type": "conv2d", "filters": 2, "kernel_size": (1, 5)}], input_shape=(6, 6, 1))
    assert "model.layers.1 (conv2d)" in msg and "1x5" in msg and "4x4" in msg


@pytest.mark.parametrize("pool_type", ["maxpool2d", "avgpool2d"])
def test_pool_larger_than_input(pool_type):
    msg = build_error([{"type": "conv2d", "filters": 2, "kernel_size": 3}, {"type": pool_type, "pool": 5}],
                      input_shape=(6, 6, 1))
    assert f"model.layers.1 ({pool_type})" in msg
    assert "5x5" in msg and "4x4" in msg and "(4, 4, 2)" in msg


def test_image_layer_after_flatten_and_softmax_on_images():
    msg = build_error([{"type": "flatten"}, {"type": "conv2d", "filters": 2}])
    assert "model.layers.1 (conv2d)" in msg and "(64,)" in msg
    msg = build_error([{"type": "softmax"}])
    assert "model.layers.0 (softmax)" in msg and "(8, 8, 1)" in msg


def test_shape_error_is_raised_at_build_time_for_a_deep_layer():
    layers = [{"type": "conv2d", "filters": 2, "kernel_size": 3}, {"type": "maxpool2d", "pool": 2},
              {"type": "conv2d", "filters": 2, "kernel_size": 3}, {"type": "maxpool2d", "pool": 2},
              {"type": "conv2d", "filters": 2, "kernel_size": 3}]
    msg = build_error(layers, input_shape=(12, 12, 1))
    # 12 -> 10 -> 5 -> 3 -> 1 -> kernel 3 does not fit
    assert "model.layers.4 (conv2d)" in msg and "(1, 1, 2)" in msg


# -- bad hyperparameters ------------------------------------------------------------------------

@pytest.mark.parametrize("layer,needles", [
    ({"type": "conv2d", "filters": 0}, ["model.layers.0 'conv2d'", "filters", "0"]),
    ({"type": "conv2d", "filters": -3}, ["filters", "-3"]),
    ({"type": "conv2d", "filters": 2.5}, ["filters", "2.5"]),
    ({"type": "conv2d", "filters": 4, "padding": "full"}, ["padding", "'full'", "'valid'", "'same'"]),
    ({"type": "conv2d", "filters": 4, "kernel_size": 0}, ["kernel_size", "0"]),
    ({"type": "conv2d", "filters": 4, "stride": "two"}, ["stride", "'two'"]),
    ({"type": "conv2d", "filters": 4, "bias": "yes"}, ["bias", "'yes'"]),
    ({"type": "conv2d", "filters": 4, "init": "he_normall"}, ["initializer", "'he_normall'", "he_normal"]),
    ({"type": "dropout", "rate": 1.5}, ["model.layers.0 'dropout'", "rate", "1.5"]),
    ({"type": "dropout", "rate": 1}, ["rate", "1"]),
    ({"type": "dropout", "rate": -0.1}, ["rate", "-0.1"]),
    ({"type": "maxpool2d", "pool": 0}, ["pool", "0"]),
    ({"type": "avgpool2d", "pool": 2, "stride": (2, 0)}, ["stride", "2, 0"]),
])
def test_bad_hyperparameters_name_the_value(layer, needles):
    msg = build_error([layer])
    for s in needles:
        assert s in msg, f"{s!r} not in {msg!r}"


def test_dense_bad_units():
    msg = build_error([{"type": "flatten"}, {"type": "dense", "units": 0}])
    assert "model.layers.1 'dense'" in msg and "units" in msg and "0" in msg


@pytest.mark.parametrize("spec,needle", [
    ({"input_shape": [8, 8], "layers": []}, "layers"),
    ({"input_shape": [8, 0, 1], "layers": [{"type": "flatten"}]}, "input_shape"),
    ({"input_shape": "28x28", "layers": [{"type": "flatten"}]}, "input_shape"),
    ({"input_shape": [8, 8, 1], "layers": [{"filters": 3}]}, "'type'"),
    ({"input_shape": [8, 8, 1], "dtype": "float16", "layers": [{"type": "flatten"}]}, "float16"),
])
def test_bad_model_spec(spec, needle):
    with pytest.raises(ConfigError) as ei:
        build_model(spec)
    assert needle in str(ei.value)


def test_config_errors_are_cnnexp_errors():
    assert issubclass(ConfigError, CnnexpError)


def test_a_fresh_process_sees_every_builtin_on_first_use():
    """No other import needed: each registry loads the module that registers its built-ins."""
    code = textwrap.dedent("""
        import sys
        from cnnexp import registry as r
        assert not any(m in sys.modules for m in ("cnnexp.layers", "cnnexp.optimizers", "cnnexp.data"))
        print({name: sorted(reg) for name, reg in (("layers", r.LAYERS), ("optimizers", r.OPTIMIZERS),
               ("initializers", r.INITIALIZERS), ("datasets", r.DATASETS), ("schedules", r.SCHEDULES),
               ("callbacks", r.CALLBACKS))})
        print(len(r.LAYERS), "conv2d" in r.LAYERS, r.OPTIMIZERS.get("adam").__name__)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    seen = eval(lines[0])  # noqa: S307  (our own repr of a dict of lists of names)
    assert {"conv2d", "maxpool2d", "avgpool2d", "flatten", "dense", "dropout", "relu", "softmax"} <= set(seen["layers"])
    assert {"sgd", "momentum", "adam"} <= set(seen["optimizers"])
    assert {"mnist", "fashion_mnist", "mnist_sample", "idx"} <= set(seen["datasets"])
    assert {"early_stopping", "model_checkpoint"} <= set(seen["callbacks"])
    assert seen["initializers"] and {"none", "step", "cosine"} <= set(seen["schedules"])
    assert lines[1] == f"{len(seen['layers'])} True Adam"
