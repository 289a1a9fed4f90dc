"""In-process experiments: compose the shipped config, the seed post's net, a tracker that
requests a stop, and readers for a run's results and checkpoints."""

from __future__ import annotations

from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cnnexp import checkpoint
from cnnexp.config import register_schemas
from cnnexp.paths import conf_dir
from cnnexp.tracking.base import MemoryTracker
from cnnexp.train import request_stop

CONF = conf_dir()
register_schemas()


def composed(overrides=()) -> dict:
    """The shipped config composed with ``overrides``, resolved to plain containers."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=list(overrides)), resolve=True)


def seed_spec(h=28, w=28) -> dict:
    """The seed post's net as shipped (conf/model/seed.yaml: conv 3x3x8, max-pool 2, dense 10,
    softmax) on ``h`` x ``w`` inputs."""
    spec = yaml.safe_load((CONF / "model" / "seed.yaml").read_text())
    return {**spec, "input_shape": [h, w, 1]}


class StopAt(MemoryTracker):
    """Requests a stop when the train/loss metric reaches a given image count."""

    def __init__(self, at):
        super().__init__()
        self.at, self.fired = at, False

    def log_metrics(self, metrics, step):
        super().log_metrics(metrics, step)
        if "train/loss" in metrics and step >= self.at and not self.fired:
            self.fired = True
            request_stop()


def quiet(_):
    pass


def final_of(result):
    """A run result's metrics (without perf/) and final weights."""
    return {k: v for k, v in result["metrics"].items() if not k.startswith("perf/")}, result["model"].state_dict()


def weights(ckpt_path) -> dict:
    return checkpoint.load(ckpt_path).weights


def last_ckpt(out: Path) -> Path:
    """The newest ``last.npz`` of the runs under ``out``."""
    paths = sorted(out.glob("runs/*/*/checkpoints/last.npz"), key=lambda p: p.stat().st_mtime)
    return paths[-1]
