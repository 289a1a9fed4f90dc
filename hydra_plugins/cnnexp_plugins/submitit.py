"""hydra/launcher=slurm and hydra/launcher=submitit_local: hydra-submitit-launcher's launchers
with what cnnexp needs on a cluster (the logic: cnnexp/launchers/submitit.py):

- a job that ends without a result (scancel, time limit, preemption without requeue, node
  failure, out of memory) does not abort the sweep: it is reported with the state SLURM gives
  and counted as a failed job (the sweep exits non-zero). A job's own outcome comes from its
  result, never from SLURM's accounting, which says COMPLETED for a job whose run failed;
- a job that starts again (requeued after preemption or a time limit) resumes from the
  checkpoint its earlier attempt left in its run folder (``resume=<run dir>/checkpoints/last.npz``).

Keep this module light: Hydra imports it at every start.
"""

from typing import Any, Dict, List, Sequence

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher


class _Cnnexp:
    def __call__(self, sweep_overrides: List[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: Dict[type, Any]):
        from cnnexp.launchers.submitit import resume_overrides

        overrides = resume_overrides(self.config, self.hydra_context.config_loader, list(sweep_overrides), job_num,
                                     singleton_state)
        return super().__call__(overrides, job_dir_key, job_num, job_id, singleton_state)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        from cnnexp.launchers.submitit import launch

        return launch(self, job_overrides, initial_job_idx)


class CnnexpSlurmLauncher(_Cnnexp, SlurmLauncher):
    pass


class CnnexpLocalLauncher(_Cnnexp, LocalLauncher):
    pass
