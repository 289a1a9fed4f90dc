"""Shared test helpers (not tests): the one CLI runner, MLflow store and server helpers, IDX data
fixtures, finite-difference gradient checks and the seed post's loop reference. Test modules
import from here, never from each other; ``pythonpath = ["tests"]`` in pyproject.toml makes
``helpers`` importable."""
