"""Finite-difference gradient checking for cnnexp layers and models (tests only).

Everything runs in float64. A layer is checked through the scalar projection loss
``L = sum(y * R)`` with a fixed random ``R`` of the output's shape, so ``dL/dy = R`` and the
analytic gradients are simply ``layer.backward(R)`` (input) and ``layer.grads`` (parameters).
Numeric gradients are central differences ``(L(a + eps) - L(a - eps)) / (2 eps)`` taken one
element at a time, in place.

The comparison is normwise, ``|a - n| / max(|a| + |n|, tiny)``, plus an element-wise bound
scaled by the largest gradient. With eps = 1e-6 the finite-difference error is ~1e-9 relative
for these smooth functions, so a tolerance of 1e-6 is robust, while any real mistake (a wrong
index, a missing term, a factor of 2) gives errors of order 1e-2 .. 1.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-6
TOL = 1e-6


def numeric_grad(f, arr: np.ndarray, eps: float = EPS, indices=None) -> np.ndarray:
    """Central-difference gradient of the scalar ``f()`` with respect to ``arr`` (float64),
    perturbing ``arr`` in place and restoring it. ``indices`` (a list of index tuples) limits the
    check to some elements; the others are left at 0 in the result."""
    assert arr.dtype == np.float64, f"gradient checks need float64, got {arr.dtype}"
    g = np.zeros_like(arr)
    if indices is None:
        indices = list(np.ndindex(arr.shape))
    for idx in indices:
        old = arr[idx]
        arr[idx] = old + eps
        fp = float(f())
        arr[idx] = old - eps
        fm = float(f())
        arr[idx] = old
        g[idx] = (fp - fm) / (2 * eps)
    return g


def rel_error(a: np.ndarray, n: np.ndarray) -> float:
    """Normwise relative error between analytic ``a`` and numeric ``n``."""
    a, n = np.asarray(a, np.float64), np.asarray(n, np.float64)
    denom = max(np.linalg.norm(a) + np.linalg.norm(n), 1e-12)
    return float(np.linalg.norm(a - n) / denom)


def assert_grad_close(analytic, numeric, what: str = "gradient", tol: float = TOL, indices=None) -> None:
    """Fail with a readable message unless ``analytic`` matches ``numeric``."""
    assert analytic is not None, f"{what}: analytic gradient is None"
    a = np.asarray(analytic, np.float64)
    n = np.asarray(numeric, np.float64)
    assert a.shape == n.shape, f"{what}: analytic shape {a.shape} != numeric shape {n.shape}"
    if indices is not None:  # compare only the elements that were differenced
        sel = tuple(np.array(ix) for ix in zip(*indices))
        a, n = a[sel], n[sel]
    assert np.all(np.isfinite(a)), f"{what}: analytic gradient has non-finite values"
    err = rel_error(a, n)
    scale = max(float(np.abs(n).max(initial=0.0)), 1e-3)
    worst = float(np.abs(a - n).max(initial=0.0))
    assert err < tol and worst <= 10 * tol * scale, (
        f"{what}: relative error {err:.3e} (tol {tol:g}), worst element diff {worst:.3e} "
        f"(max |grad| {scale:.3e})")


def sample_indices(shape, k: int, rng: np.random.Generator):
    """Up to ``k`` distinct index tuples of ``shape`` (all of them if there are fewer)."""
    size = int(np.prod(shape))
    if size <= k:
        return list(np.ndindex(shape))
    flat = rng.choice(size, size=k, replace=False)
    return [tuple(int(i) for i in np.unravel_index(f, shape)) for f in flat]


def check_layer(layer, x: np.ndarray, training: bool = False, seed: int = 0, eps: float = EPS,
                tol: float = TOL, before_forward=None, check_input: bool = True) -> dict:
    """Check ``layer.backward`` (input gradient) and every ``layer.grads[k]`` against central
    differences of ``L = sum(layer.forward(x) * R)``. The layer must already be built in
    float64. ``before_forward()``, if given, is called before every forward pass (e.g. to
    reseed a dropout generator so each pass uses the same mask). Returns the analytic and
    numeric gradients for further assertions."""
    x = np.array(x, dtype=np.float64)
    for k, p in layer.params.items():
        assert p.dtype == np.float64, f"param {k} is {p.dtype}; build the layer in float64"
    rng = np.random.default_rng(seed)

    def fwd():
        if before_forward is not None:
            before_forward()
        return layer.forward(x, training)

    y = fwd()
    assert y.dtype == np.float64, f"{type(layer).__name__} output is {y.dtype}, expected float64"
    R = rng.standard_normal(y.shape)
    dx = layer.backward(R.copy())
    grads = {k: np.array(v, copy=True) for k, v in layer.grads.items()}
    assert set(grads) == set(layer.params), f"grads keys {sorted(grads)} != params keys {sorted(layer.params)}"

    def loss():
        return float(np.sum(fwd() * R))

    out = {"R": R, "y": y, "dx": dx, "grads": grads, "num": {}}
    name = type(layer).__name__
    if check_input:
        assert dx is not None, f"{name}.backward returned None although needs_input_grad is {layer.needs_input_grad}"
        assert dx.shape == x.shape, f"{name}: input gradient shape {dx.shape} != input shape {x.shape}"
        num_dx = numeric_grad(loss, x, eps)
        assert_grad_close(dx, num_dx, f"{name} d/dx", tol)
        out["num"]["x"] = num_dx
    for k, p in layer.params.items():
        assert grads[k].shape == p.shape, f"{name}: grad {k} shape {grads[k].shape} != param shape {p.shape}"
        num = numeric_grad(loss, p, eps)
        assert_grad_close(grads[k], num, f"{name} d/d{k}", tol)
        out["num"][k] = num
    return out


# -- whole models -----------------------------------------------------------------------------

def reseed_dropouts(model, seed: int = 1234) -> None:
    """Give every dropout layer a fresh generator with a fixed seed, so the next training
    forward draws the same masks each time it is called."""
    from cnnexp.layers import Dropout

    for i, layer in enumerate(model.layers):
        if isinstance(layer, Dropout):
            layer.rng = np.random.default_rng(seed + i)


def model_mean_loss(model, x, labels, training: bool = True, dropout_seed: int = 1234) -> float:
    reseed_dropouts(model, dropout_seed)
    model.forward(x, training=training)
    return float(model.loss_layer.loss(labels).mean())


def check_model(model, x, labels, tol: float = TOL, eps: float = EPS, max_per_param: int | None = None,
                seed: int = 0, dropout_seed: int = 1234) -> dict:
    """Compare ``model.train_batch`` gradients (``model.grads``) with central differences of
    the batch-mean cross-entropy. Dropout layers are reseeded identically before every
    forward. Parameters with more than ``max_per_param`` elements are checked on a fixed
    random subset of that many elements."""
    rng = np.random.default_rng(seed)
    reseed_dropouts(model, dropout_seed)
    losses, probs = model.train_batch(x, labels)
    # the reported losses are the cross-entropies of the reported probabilities
    np.testing.assert_allclose(losses, -np.log(probs[np.arange(len(labels)), labels]), rtol=1e-10, atol=1e-12)
    grads = {k: np.array(v, copy=True) for k, v in model.grads.items()}
    assert set(grads) == set(model.params), f"grads keys {sorted(grads)} != params keys {sorted(model.params)}"

    def f():
        return model_mean_loss(model, x, labels, True, dropout_seed)

    nums = {}
    for k, p in model.params.items():
        idx = sample_indices(p.shape, max_per_param, rng) if max_per_param else None
        num = numeric_grad(f, p, eps, idx)
        assert_grad_close(grads[k], num, f"model param {k}", tol, indices=idx)
        nums[k] = num
    return {"grads": grads, "num": nums, "losses": losses, "probs": probs}
