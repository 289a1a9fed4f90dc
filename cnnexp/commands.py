"""``cnnexp`` as one command: subcommands, ``--help`` for people, ``--version``, shell
completion. ``main`` calls ``dispatch`` first; what is left (``cnnexp train ...`` =
``python -m cnnexp ...``) goes to ``cnnexp.cli.main`` and Hydra.
"""

from __future__ import annotations

import sys

from .paths import conf_dir, outputs_dir

SUBCOMMANDS = {
    "train": "train one run, or a sweep with -m (the default: `cnnexp lr=0.01` = `cnnexp train lr=0.01`)",
    "runs": "the latest sweep's runs (or the latest runs), best first, with full run ids",
    "predict": "labels and probabilities for images (IDX, .npy, PNG) from a logged run's model",
    "ui": "the MLflow UI on this project's store, on 127.0.0.1",
    "sync": "log runs whose journal is not in the store yet (`cnnexp sync [folder]`)",
    "completion": "print the bash completion script (`eval \"$(cnnexp completion)\"`)",
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v("cnnexp")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def _described(group: str) -> list[str]:
    out = []
    for name in _options(group):
        lines = (conf_dir() / group / f"{name}.yaml").read_text().splitlines()
        about = next((ln.lstrip("# ").strip() for ln in lines if ln.startswith("#") and "@package" not in ln), "")
        out.append(f"    {name:<14} {about[:90]}")
    return out


def help_text() -> str:
    groups = ["model", "data", "optimizer", "lr_scheduler", "callbacks"]
    width = max(map(len, groups))
    return "\n".join([
        f"cnnexp {version()}: small CNNs in numpy, configured with Hydra, tracked in MLflow.",
        "",
        "Usage:",
        "  cnnexp [train] [key=value ...]        one run (python -m cnnexp ... is the same)",
        "  cnnexp [train] -m key=a,b ...         a sweep: one run per combination",
        *(f"  cnnexp {name:<12} {about}" for name, about in SUBCOMMANDS.items() if name != "train"),
        "",
        "Config groups (pick one with group=name):",
        *(f"  {g:<{width}}  {', '.join(_options(g))}" for g in groups),
        "",
        "Experiments (experiment=name, presets over the defaults):",
        *_described("experiment"),
        "",
        "Main knobs (defaults: the seed post's run):",
        "  lr=0.005 epochs=3 batch_size=1 seed=0 log_every=100 (optimizer steps between progress lines)",
        "  data.train_size=1000 data.val_size=0 data.test_size=1000 (null: the whole split)",
        "  verbose=0|1|2|3 (quiet | epoch lines | + live bar on a terminal | + the post's step lines)",
        "  resume=<run id | id prefix | checkpoint | run folder>  (continues with the run's own config)",
        "  model.layers.0.filters=16 ... any key; `cnnexp --cfg job` prints the composed config",
        "",
        "Sweeps:",
        "  cnnexp -m lr=0.001,0.005,0.01                     the basic sweeper: lists and range()",
        "  cnnexp -m hydra/launcher=parallel lr=0.001,0.01   jobs in parallel worker processes",
        "  cnnexp -m experiment=optuna_lr                    Optuna: interval() and choice() searches",
        "",
        "Where runs go:",
        f"  store    sqlite:///{outputs_dir() / 'mlflow.db'}  (tracking.uri= or $MLFLOW_TRACKING_URI to change)",
        f"  folders  {outputs_dir() / 'runs'}/<date>/<time>/ (checkpoints/, cnnexp.log)",
        "  how      training appends to a journal; a background follower copies it into MLflow, so a run",
        "           is complete a few seconds after the command returns. tracking.wait=true waits (exit 4",
        "           if it could not be logged); `cnnexp sync` waits for, or logs again, any journal.",
        "",
        "More: cnnexp --hydra-help (Hydra's own flags), docs/workflow.md, README.md.",
    ])


COMPLETION = r"""# cnnexp bash completion: `cnnexp ...` and `python -m cnnexp ...` (Hydra's -sc query does the work)
_cnnexp_complete() {
    local words=($COMP_LINE) run rest
    if [ "${words[0]##*/}" = "cnnexp" ]; then run="${words[0]}"; rest="${COMP_LINE#*${words[0]}}"
    elif [ "${words[1]}" = "-m" ] && [ "${words[2]}" = "cnnexp" ]; then
        run="${words[0]} -m cnnexp"; rest="${COMP_LINE#*-m cnnexp}"
    else return 0; fi
    rest="${rest# train}"
    local cur="${COMP_WORDS[COMP_CWORD]}" choices
    choices=$(COMP_LINE="cnnexp$rest" COMP_POINT=$((6 + ${#rest})) $run -sc query=bash 2>/dev/null)
    if [ "$rest" = " $cur" ] || [ -z "${rest// }" ]; then choices="train runs predict ui sync $choices"; fi
    COMPREPLY=($(compgen -o nospace -W "$choices" -- "$cur"))
}
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
complete -o nospace -o default -F _cnnexp_complete cnnexp python python3
"""


def main(argv: list[str] | None = None) -> None:
    """The ``cnnexp`` script and ``python -m cnnexp``: subcommands, help and version without
    importing Hydra (``cnnexp runs`` answers in a fraction of a second); training via ``cli.main``."""
    argv = dispatch(sys.argv[1:] if argv is None else argv, check=False)
    from .cli import main as train_main

    train_main(argv)


def dispatch(argv: list[str], check: bool = True) -> list[str]:
    """Run a subcommand or print help/version (and exit); return the arguments for training."""
    head = argv[0] if argv else ""
    if head == "train":
        argv = argv[1:]
    elif head in ("runs", "predict", "ui"):
        import importlib

        sys.exit(importlib.import_module(f"cnnexp.{'ui_cmd' if head == 'ui' else head}").main(argv[1:]))
    elif head == "sync":  # = python -m cnnexp.tracking sync [folder]
        from .tracking.follower import main as sync_main

        sys.exit(sync_main(argv))
    elif head == "completion":
        print(COMPLETION, end="")
        sys.exit(0)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        sys.exit(0)
    if argv[:1] in (["--version"], ["-V"]):
        print(f"cnnexp {version()}")
        sys.exit(0)
    if check:
        from .preflight import check_sweep_syntax

        check_sweep_syntax(argv)
    return argv

