"""Check every job's config before Hydra starts any work, and turn Hydra/OmegaConf
composition errors into one line that names the bad value and what would be valid.

For a sweep (``-m lr=0.001,0.01 model=seed,lenet5``) every combination is composed and
validated first, so a bad value in the last job stops the sweep before the first job runs;
search ranges (``interval()``) are refused unless the configured sweeper is Optuna's.
"""

from __future__ import annotations

import itertools
import re
from typing import Iterable

from .errors import ConfigError, suggest

MAX_COMBOS = 256
PASSTHROUGH_FLAGS = {"-m", "--multirun"}


def user_overrides(argv: Iterable[str]) -> list[str] | None:
    """The overrides to check, or None when argv asks Hydra for something else (--help, --cfg ...)."""
    out = []
    for a in argv:
        if a.startswith("-"):
            if a in PASSTHROUGH_FLAGS:
                continue
            return None
        out.append(a)
    return out


def _known_keys(node) -> list[str]:
    try:
        return sorted(str(k) for k in node.keys())
    except Exception:
        return []


def explain(exc: BaseException, base_cfg=None) -> str:
    """One line for a Hydra/OmegaConf composition error."""
    chain, e = [], exc
    while e is not None and len(chain) < 5:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = "\n".join(str(c) for c in chain)
    m = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if m:
        group, name = m.groups()
        opts = re.findall(r"^\t(\S+)$", text, flags=re.M)
        return (f"unknown {group} {name!r}{suggest(name, opts)}; available {group} configs: "
                f"{', '.join(sorted(opts)) or 'none'} (in conf/{group}/)")
    m = re.search(r"Key '([^']+)' (?:is not in struct|not in '\w+')", text)
    if m:
        key = m.group(1)
        fk = re.search(r"full_key: (\S+)", text)
        full = fk.group(1) if fk else key
        parent = full.rsplit(".", 1)[0] if "." in full else ""
        known: list[str] = []
        if base_cfg is not None:
            try:
                from omegaconf import OmegaConf

                node = OmegaConf.select(base_cfg, parent) if parent else base_cfg
                known = _known_keys(node)
            except Exception:
                known = []
        where = f" in {parent}" if parent else ""
        return (f"unknown config key {full!r}{suggest(key, known)}; valid keys{where}: {', '.join(known)}"
                if known else f"unknown config key {full!r}")
    m = re.search(r"Value '([^']*)' (?:of type '\w+' )?could not be converted to (\w+)", text)
    if m:
        fk = re.search(r"full_key: (\S+)", text)
        key = fk.group(1) if fk else "?"
        return f"{key}={m.group(1)} is invalid: expected {m.group(2).lower()}"
    m = re.search(r"Missing mandatory value: (\S+)", text)
    if m:
        return f"{m.group(1)} must be set (it has no default), e.g. {m.group(1)}=..."
    first = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(first[:2]) if first else type(exc).__name__


ALLOWED_TARGETS = ("cnnexp.", "hydra.", "hydra_plugins.", "optuna.samplers.")  # optuna: the sweeper's sampler


def check_targets(node, where: str = "") -> None:
    """No free ``_target_``: a config may only instantiate cnnexp's own classes and Hydra's
    (launchers, sweepers). User code comes in through ``plugins=[module]`` and the registries."""
    if isinstance(node, dict):
        t = node.get("_target_")
        if t is not None and not str(t).startswith(ALLOWED_TARGETS):
            raise ConfigError(f"{where or 'config'}._target_={t!r} is not allowed: configs may only instantiate "
                              f"{', '.join(a + '*' for a in ALLOWED_TARGETS)}; register your code via plugins=[module]")
        for k, v in node.items():
            check_targets(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_targets(v, f"{where}.{i}")


def _expand(overrides: list[str]) -> list[list[str]]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    axes = []
    for o in parsed:
        if o.is_sweep_override():
            try:
                vals = list(o.sweep_string_iterator())
            except Exception:  # interval() and other sweeps only a sweeper can expand
                continue
            axes.append([f"{o.get_key_element()}={v}" for v in vals])
        else:
            axes.append([o.input_line])
    combos = []
    for c in itertools.product(*axes):
        combos.append(list(c))
        if len(combos) >= MAX_COMBOS:
            break
    return combos


MIN_FREE_MB = 50


def check_outputs(path) -> None:
    """The outputs folder must be creatable, writable and have some free space."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from .errors import TrackingError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise TrackingError(f"outputs folder {str(path)!r} is not writable ({e.strerror or e}); "
                            f"fix its permissions or point CNNEXP_OUTPUTS at a writable folder") from None
    free_mb = shutil.disk_usage(path).free / 2**20
    if free_mb < float(os.environ.get("CNNEXP_MIN_FREE_MB", MIN_FREE_MB)):
        raise TrackingError(f"outputs folder {str(path)!r} has only {free_mb:.0f} MB free; "
                            f"free some space or point CNNEXP_OUTPUTS elsewhere")


def check_sweep_syntax(argv: list[str]) -> None:
    """``interval()`` is a search space only Optuna samples; the basic sweeper would fail with a
    traceback after the sweep's parent run was created. Say so in one line, before anything runs."""
    if not any(a in ("-m", "--multirun") for a in argv):
        return
    bad = [a for a in argv if re.search(r"=\s*(tag\(.*)?interval\(", a)]
    if not bad:
        return
    from hydra import compose, initialize_config_dir

    from .config import register_schemas
    from .paths import conf_dir

    register_schemas()
    picks = [a for a in argv if a.startswith(("hydra/sweeper=", "experiment=", "hydra.sweeper._target_="))]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        target = str(compose(config_name="config", overrides=picks, return_hydra_config=True).hydra.sweeper._target_)
    if "optuna" not in target.lower():
        raise ConfigError(f"{bad[0]}: interval() is a search range that only the Optuna sweeper samples; add "
                          f"hydra/sweeper=optuna_max (see conf/experiment/optuna_lr.yaml), or give values: "
                          f"{bad[0].split('=')[0]}=0.001,0.01,0.1")


def check(argv: list[str], conf_dir: str) -> int:
    """Compose and validate every job; returns the number of jobs checked. Raises ConfigError."""
    overrides = user_overrides(argv)
    if overrides is None:
        return 0
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from .app import prepare

    try:
        combos = _expand(overrides)
    except HydraException as e:
        raise ConfigError(f"cannot parse overrides: {explain(e)}") from None
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        base = compose(config_name="config")
        for combo in combos:
            try:
                cfg = compose(config_name="config", overrides=combo, return_hydra_config=True)
                check_targets(OmegaConf.to_container(cfg, resolve=False))
                with open_dict(cfg):
                    del cfg["hydra"]
                plain = OmegaConf.to_container(cfg, resolve=True)
            except (HydraException, OmegaConfBaseException) as e:
                raise ConfigError(explain(e, base)) from None
            if combo is combos[0]:
                check_outputs(plain["paths"]["outputs"])
            try:
                prepare(plain)
            except ConfigError as e:
                job = f" (job: {' '.join(combo)})" if len(combos) > 1 else ""
                raise ConfigError(f"{e}{job}") from None
    return len(combos)
