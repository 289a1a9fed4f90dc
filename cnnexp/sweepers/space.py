"""Hydra sweep overrides -> Optuna distributions.

``lr=interval(0.001,0.1)`` a float range (Hydra parses interval bounds as floats, always),
``lr=tag(log, interval(0.001,0.1))`` the same on a log scale, ``batch_size=choice(1,4,16)`` or
``batch_size=1,4,16`` a categorical, ``epochs=range(1,6)`` / ``units=range(8,33,8)`` an int range.
Anything else (``epochs=2``) is a fixed value every trial gets.
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ..errors import ConfigError


def _distribution(override) -> BaseDistribution:
    from hydra.core.override_parser.types import Transformer

    key, value = override.get_key_element(), override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():  # range(start, stop, step): stop excluded, as in Python
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(v, int) for v in (start, stop, step)):
            last = start + (len(range(start, stop, step)) - 1) * step
            if step <= 0 or last < start:
                raise ConfigError(f"{key}=range({start}, {stop}, {step}) is empty; use start < stop and step > 0")
            return IntDistribution(start, last, step=step)
        n = int((stop - start) // step)
        return FloatDistribution(float(start), float(start + (n - 1) * step), step=float(step))
    if override.is_interval_sweep():
        lo, hi, log = value.start, value.end, "log" in value.tags
        if not lo < hi or (log and lo <= 0):
            raise ConfigError(f"{key}=interval({lo}, {hi}) is invalid: need low < high"
                              + (" and low > 0 on a log scale" if log else ""))
        return FloatDistribution(float(lo), float(hi), log=log)
    raise ConfigError(f"{key}: the optuna sweeper cannot search {override.input_line!r}; "
                      f"use interval(a,b), tag(log, interval(a,b)), choice(...), a,b,c or range(a,b,step)")


def search_space(parsed: list) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """Parsed overrides -> (distributions to sample, fixed ``key: value`` strings)."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            space[key] = _distribution(o)
            fixed.pop(key, None)
        else:
            fixed[key] = o.get_value_element_as_str()
            space.pop(key, None)
    return space, fixed


def override(key: str, value: Any) -> str:
    """One ``key=value`` override for a sampled value (repr keeps floats exact)."""
    if isinstance(value, float):
        return f"{key}={value!r}"
    return f"{key}={value}"
