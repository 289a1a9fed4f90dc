"""cnnexp's Hydra plugins: the Optuna sweeper (``optuna``) and the submitit launchers (``submitit``).

Hydra finds plugins by listing the ``hydra_plugins`` namespace; an editable install
(``pip install -e .``) hides this folder from that listing, so ``cnnexp.cli`` registers the
classes itself (``register``). Keep this module light: Hydra imports it at every start.
"""


def register() -> None:
    from hydra.core.plugins import Plugins

    from .optuna import OptunaSweeper
    from .submitit import CnnexpLocalLauncher, CnnexpSlurmLauncher

    for plugin in (OptunaSweeper, CnnexpSlurmLauncher, CnnexpLocalLauncher):
        Plugins.instance().register(plugin)
