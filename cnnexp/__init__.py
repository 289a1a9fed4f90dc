"""cnnexp: config-driven experiments with small CNNs written from scratch in numpy."""

__version__ = "0.1.0"
