"""Sweepers of this package: ``hydra/sweeper=optuna`` (Optuna 4 ask/tell, shared studies, pruning).

The Hydra plugin class lives in ``hydra_plugins.cnnexp_plugins`` (Hydra only instantiates
sweepers from that namespace); the work is done here.
"""
