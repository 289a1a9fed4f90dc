"""Every job of a sweep, checked before the first one starts, in time linear in the values swept.

The entry point has composed and checked the sweep's base config (every fixed override
applied, the hydra node through the guard). Here the swept keys, as the sweeper will see them
(``hydra.sweeper.params`` plus the command line, the last override of a key winning):

* a swept config group (``model=seed,lenet5``): one composition per value (per combination of
  the swept groups, up to MAX_GROUP_COMBOS, else per value), checked like a single run;
* any other swept key (``lr=0.1,1``): each value is set on that composed config (OmegaConf
  checks its type) and the values checked; ``hydra.*`` keys go through the guard;
* keys that interact, the model's (``model.*``, ``batch_size``, ``eval_batch_size``): every
  combination of their values through the shape and memory estimate (no weights allocated),
  up to MAX_MODEL_COMBOS combinations, else each value alone.

Interval sweeps (Optuna's ``interval(a, b)``) are checked at both ends.
"""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager
from typing import Any, Callable

from .errors import ConfigError

MAX_GROUP_COMBOS = 64
MAX_MODEL_COMBOS = 100_000
MODEL_KEYS = ("batch_size", "eval_batch_size")
_ABSENT = object()


def is_model_key(key: str) -> bool:
    return key.startswith("model.") or key in MODEL_KEYS


def sweep_args(cfg) -> list[str]:
    from omegaconf import OmegaConf

    params = OmegaConf.select(cfg, "hydra.sweeper.params")
    params = OmegaConf.to_container(params, resolve=False) if params else {}
    return [f"{k}={v}" for k, v in params.items()] + list(cfg.hydra.overrides.task)


def values(o, h) -> list[Any]:
    """The values a sweep override takes (typed); an interval's two ends."""
    from hydra.core.override_parser.types import Glob, IntervalSweep

    v = o.value()
    if isinstance(v, Glob):
        return v.filter(h.config_loader.get_group_options(o.key_or_group))
    if isinstance(v, IntervalSweep):
        return [v.start, v.end]
    return list(o.sweep_iterator()) if o.is_discrete_sweep() else []


def patched(plain: dict, key: str, value: Any) -> dict:
    """A copy of ``plain`` with ``key`` (dotted, list indices allowed) set; copies only the path."""
    parts = key.lstrip("+~").split(".")
    root = dict(plain)
    node = root
    for p in parts[:-1]:
        idx = int(p) if isinstance(node, list) else p
        child = node[idx]
        child = dict(child) if isinstance(child, dict) else list(child)
        node[idx] = child
        node = child
    node[int(parts[-1]) if isinstance(node, list) else parts[-1]] = value
    return root


@contextmanager
def applied(job, o, value):
    """Set ``value`` on the DictConfig ``job`` as Hydra would (type-checked); yield it as a plain
    value; restore the old value."""
    from omegaconf import OmegaConf, open_dict

    key = o.key_or_group
    old = OmegaConf.select(job, key, default=_ABSENT)
    if old is not _ABSENT and OmegaConf.is_config(old):
        old = OmegaConf.to_container(old, resolve=False)
    try:
        with open_dict(job) if o.is_add() or o.is_force_add() else _nothing():
            OmegaConf.update(job, key, value, merge=False, force_add=o.is_force_add() or o.is_add())
        new = OmegaConf.select(job, key)
        yield OmegaConf.to_container(new, resolve=True) if OmegaConf.is_config(new) else new
    finally:
        with open_dict(job):
            if old is _ABSENT:
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(job, parent) if parent else job
                if node is not None and leaf in node:
                    node.pop(leaf)
            else:
                OmegaConf.update(job, key, old, merge=False)


@contextmanager
def _nothing():
    yield


def check(h, cfg, config_name: str, task: Callable, prepare: Callable, light: Callable, explain: Callable) -> int:
    """Check every job of the sweep ``cfg`` (the composed base); return the number of jobs
    (interval sweeps count once). ``task(dcfg)`` -> the plain task config; ``prepare`` the full
    single-run check; ``light(plain, model)`` the per-value check; ``explain`` words errors."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    from . import guard

    try:
        parsed = OverridesParser.create(config_loader=h.config_loader).parse_overrides(sweep_args(cfg))
    except HydraException as e:
        raise ConfigError(f"cannot parse the sweep: {explain(e)}") from None
    last = {o.get_key_element(): o for o in parsed}
    fixed = [o.input_line for o in last.values() if not o.is_sweep_override()]
    swept = [(o, values(o, h)) for o in last.values() if o.is_sweep_override()]
    is_group = [bool(o.package is not None or h.config_loader.get_group_options(o.key_or_group)) for o, _ in swept]
    groups = [s for s, g in zip(swept, is_group) if g]
    keys = [s for s, g in zip(swept, is_group) if not g]
    n_jobs = math.prod(len(vals) for o, vals in swept if o.is_discrete_sweep()) if swept else 1

    lists = [[f"{o.get_key_element()}={v}" for v in vals] for o, vals in groups]
    combos = list(itertools.islice(itertools.product(*lists), MAX_GROUP_COMBOS + 1))
    if len(combos) > MAX_GROUP_COMBOS:
        combos = [(x,) for lst in lists for x in lst]
    for combo in combos:
        label = " ".join(combo)
        job = cfg
        try:
            if combo:
                # as Hydra's load_sweep_config: the hydra overrides, then the job's
                hydra_overrides = list(cfg.hydra.overrides.hydra)
                job = h.compose_config(config_name, hydra_overrides + fixed + list(combo), run_mode=RunMode.MULTIRUN)
                guard.check_composed(job)
                prepare(task(job))
            check_keys(job, keys, task(job), light, label)
        except (HydraException, OmegaConfBaseException) as e:
            raise ConfigError(f"{explain(e)} (job: {label})" if label else explain(e)) from None
        except ConfigError as e:
            raise ConfigError(f"{e} (job: {label})" if label and "(job:" not in str(e) else str(e)) from None
    return n_jobs


def check_keys(job, keys, plain: dict, light: Callable, label: str) -> None:
    from . import guard

    model_axes = []
    for o, vals in keys:
        key = o.key_or_group
        axis = []
        for v in vals:
            where = f"(job: {' '.join(filter(None, (label, f'{o.get_key_element()}={v}')))})"
            try:
                with applied(job, o, v) as conv:
                    if key.startswith("hydra."):
                        guard.check_composed(job)
                        continue
                light(patched(plain, key, conv), is_model_key(key))
            except ConfigError as e:
                raise ConfigError(f"{e} {where}") from None
            axis.append((key, conv, f"{o.get_key_element()}={v}"))
        if is_model_key(key) and axis:
            model_axes.append(axis)
    if len(model_axes) < 2 or math.prod(map(len, model_axes)) > MAX_MODEL_COMBOS:
        return
    from .estimate import check_memory

    for combo in itertools.product(*model_axes):
        p = plain
        for key, conv, _ in combo:
            p = patched(p, key, conv)
        try:
            check_memory(p)
        except ConfigError as e:
            raise ConfigError(f"{e} (job: {' '.join(filter(None, [label] + [s for _, _, s in combo]))})") from None
