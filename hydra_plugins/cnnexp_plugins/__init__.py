"""cnnexp's Hydra plugins: the Optuna sweeper (``optuna``) and the submitit launchers (``submitit``).

Hydra finds plugins by listing the ``hydra_plugins`` namespace; an editable install
(``pip install -e .``) hides this folder from that listing, so ``cnnexp.cli`` registers the
classes itself (``register``). Keep this module light: Hydra imports it at every start.
"""


def register() -> None:
    import warnings

    from hydra.core.plugins import Plugins

    # conf/hydra/launcher/submitit_local.yaml replaces hydra-submitit-launcher's preset of that
    # name, whose schema it matches: Hydra's notice about that is not for cnnexp's users
    warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_local' is validated against ConfigStore")

    from .optuna import OptunaSweeper
    from .submitit import CnnexpLocalLauncher, CnnexpSlurmLauncher

    for plugin in (OptunaSweeper, CnnexpSlurmLauncher, CnnexpLocalLauncher):
        Plugins.instance().register(plugin)
    if "hydra_plugins.hydra_optuna_sweeper" in Plugins.instance().stats.modules_import_time:
        import sys

        print("cnnexp: note: hydra-optuna-sweeper (no longer a dependency) is installed; its preset "
              "hides cnnexp's hydra/sweeper=optuna: pip uninstall hydra-optuna-sweeper", file=sys.stderr)
