"""Registries map short ``type`` names from configs to Python callables.

One registry per kind (layers, optimizers, initializers, data sets, lr schedules, callbacks),
each filled with its built-ins on first use: the registry imports the one module that registers
them (``builtins``) the first time it is read or written, so ``len(LAYERS)`` in a fresh process
already counts every built-in layer. Registering the same name twice is an error; an unknown
name lists the known ones with a "did you mean"; unexpected keyword arguments are named.

Register your own layer from your own module, without editing cnnexp::

    from cnnexp.registry import LAYERS
    from cnnexp.layers.base import Layer

    @LAYERS.register("swish")
    class Swish(Layer):
        ...

and make Hydra import the module before the model is built with ``plugins=[my_module]``
(see README, "Your own layers").
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from .errors import ConfigError, suggest


class Registry:
    """A name -> callable table for one kind of component."""

    def __init__(self, kind: str, builtins: str | None = None):
        self.kind = kind
        self._builtins = builtins  # the module whose import registers the built-ins
        self._items: dict[str, Callable[..., Any]] = {}

    @property
    def table(self) -> dict[str, Callable[..., Any]]:
        """The table, with the built-ins loaded on first access."""
        if self._builtins:
            module, self._builtins = self._builtins, None  # first: the import registers through here
            try:
                importlib.import_module(module)
            except BaseException:
                self._builtins = module
                raise
        return self._items

    def register(self, name: str, obj: Callable[..., Any] | None = None):
        """Register ``obj`` under ``name``; usable as a decorator."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def add(o):
            items = self.table
            if name in items:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (by {items[name].__module__}."
                    f"{getattr(items[name], '__qualname__', items[name])}); pick another name"
                )
            items[name] = o
            return o

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> None:
        self.table.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self.table)

    def __contains__(self, name: str) -> bool:
        return name in self.table

    def __len__(self) -> int:
        return len(self.table)

    def __iter__(self):
        return iter(self.names())

    def get(self, name: Any) -> Callable[..., Any]:
        if not isinstance(name, str) or name not in self.table:
            known = self.names()
            raise ConfigError(f"unknown {self.kind} {name!r}{suggest(name, known)}; known {self.kind}s: {', '.join(known)}")
        return self.table[name]

    def build(self, name: str, kwargs: dict[str, Any] | None = None, where: str = "") -> Any:
        """Call the registered object with ``kwargs``, naming unexpected or missing ones."""
        try:
            cls = self.get(name)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}" if where else str(e)) from None
        kwargs = dict(kwargs or {})
        check_kwargs(cls, kwargs, f"{where or self.kind} {name!r}")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError, ConfigError) as e:
            raise ConfigError(f"{where or self.kind} {name!r}: {e}") from None


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], what: str) -> None:
    """Raise ConfigError naming any keyword ``fn`` does not accept, or any it requires but lacks."""
    sig = inspect.signature(fn)
    params = sig.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unexpected = [k for k in kwargs if k not in accepted]
    if unexpected:
        bad = unexpected[0]
        raise ConfigError(
            f"{what} got unexpected argument {bad!r}{suggest(bad, accepted)}; it accepts: {', '.join(accepted) or 'no arguments'}"
        )
    missing = [n for n in accepted if params[n].default is inspect.Parameter.empty and n not in kwargs]
    if missing:
        raise ConfigError(f"{what} is missing required argument {missing[0]!r}")


LAYERS = Registry("layer", "cnnexp.layers")
OPTIMIZERS = Registry("optimizer", "cnnexp.optimizers")
INITIALIZERS = Registry("initializer", "cnnexp.initializers")
DATASETS = Registry("dataset", "cnnexp.data")
SCHEDULES = Registry("lr scheduler", "cnnexp.schedules")
CALLBACKS = Registry("callback", "cnnexp.callbacks")
