"""Sweeps through hydra/launcher=slurm on a real one-node SLURM cluster (slurmctld + slurmd +
munged from Debian's packages, started here from a temp folder: tests/helpers/slurm_cluster.py)."""

from __future__ import annotations

import glob
import os
import subprocess
import time
from pathlib import Path

import pytest

from helpers.slurm_cluster import SlurmCluster, Unavailable
from helpers.cli import TINY, cli, start, wait_logged
from helpers.tracking import all_runs, client

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        cluster = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    except Unavailable as e:
        pytest.skip(f"no SLURM cluster: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()


def slurm_env(cluster: SlurmCluster) -> dict[str, str]:
    e = cluster.env()
    return {"SLURM_CONF": e["SLURM_CONF"], "PATH": e["PATH"]}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def sweep_runs(out: Path):
    runs = all_runs(client(out))
    parents = [r for r in runs if r.data.tags.get("cnnexp.role") == "sweep"]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def test_four_job_sweep_on_slurm_all_finished_under_one_parent(slurm, tmp_path):
    out = tmp_path / "outputs"
    lrs = ["0.001", "0.005", "0.01", "0.02"]
    p = cli(["-m", "hydra/launcher=slurm", *TINY, "tracking.log_model=false", "lr=" + ",".join(lrs)], out,
            timeout=900, **slurm_env(slurm))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    (parent,), kids = sweep_runs(out)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.launcher"] == "CnnexpSlurmLauncher"
    assert sorted(r.data.params["lr"] for r in kids) == lrs
    assert all(r.info.status == "FINISHED" and "test/acc" in r.data.metrics for r in kids)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in kids)
    (sweep_dir,) = glob.glob(f"{out}/multirun/*/*")
    array_tasks = sorted(Path(d).name.split("_")[1] for d in glob.glob(f"{sweep_dir}/.submitit/*_*"))
    assert array_tasks == ["0", "1", "2", "3"]  # one SLURM array job, four tasks
    # each job's process tree is gone (its runs were logged by the sweep's follower, on this side)
    for r in kids:
        assert not alive(int(r.data.tags["cnnexp.job_pid"]))
        assert r.data.tags["cnnexp.sync_pid"] != r.data.tags["cnnexp.job_pid"]
    if slurm.proctrack == "proctrack/cgroup":  # SLURM removed each job's cgroup, killing what was in it
        array_id = Path(glob.glob(f"{sweep_dir}/.submitit/*_0")[0]).name.split("_")[0]
        ids = [f.split("=")[1] for f in slurm.run("scontrol", "show", "job", "-o", array_id).stdout.split()
               if f.startswith("JobId=")]
        assert len(ids) == 4 and not [i for i in ids if glob.glob(f"/sys/fs/cgroup/freezer/slurm*/uid_*/job_{i}")]

def test_submitit_local_preset_runs_jobs_as_local_processes(tmp_path):
    out = tmp_path / "outputs"
    p = cli(["-m", "hydra/launcher=submitit_local", *TINY, "tracking.log_model=false", "lr=0.001,0.01"], out,
            timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "validated against ConfigStore schema" not in p.stderr
    (parent,), kids = sweep_runs(out)
    assert parent.data.tags["sweep.launcher"] == "CnnexpLocalLauncher"
    assert sorted(r.data.params["lr"] for r in kids) == ["0.001", "0.01"]
    assert all(r.info.status == "FINISHED" for r in kids)


def wait_for(path_glob: str, proc: subprocess.Popen, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = glob.glob(path_glob)
        if found:
            return found[0]
        assert proc.poll() is None, f"the sweep ended early: {proc.communicate()[0][-3000:]}"
        time.sleep(0.5)
    raise TimeoutError(f"nothing matched {path_glob} within {timeout} s")


def test_scancelled_job_ends_killed_and_a_second_sweep_resumes_it(slurm, tmp_path):
    out = tmp_path / "outputs"
    args = ["-m", "hydra/launcher=slurm", "data=mnist_sample", "data.train_size=4000", "data.test_size=100",
            "epochs=4", "log_every=200", "tracking.log_model=false"]
    first = start([*args, "lr=0.005,0.01"], out, stderr=subprocess.STDOUT, **slurm_env(slurm))
    ckpt = wait_for(f"{out}/multirun/*/*/1/checkpoints/last.npz", first)  # job 1 finished an epoch
    sweep_dir = Path(ckpt).parents[2]
    (task_dir,) = glob.glob(f"{sweep_dir}/.submitit/*_1")
    r = slurm.run("scancel", Path(task_dir).name)
    assert r.returncode == 0, r.stderr
    log = first.communicate(timeout=900)[0]
    wait_logged(out)
    assert first.returncode == 1, log[-3000:]
    assert "1 job(s) ended without a result" in log and "CANCELLED" in log
    (parent,), kids = sweep_runs(out)
    status = {r.data.params["lr"]: r for r in kids}
    assert status["0.005"].info.status == "FINISHED" and status["0.01"].info.status == "KILLED"
    killed_epochs = len(client(out).get_metric_history(status["0.01"].info.run_id, "test/acc"))
    assert 1 <= killed_epochs < 4
    # the second sweep continues job 1 from the checkpoint its SLURM job wrote when it was cancelled
    p = cli([*args, "lr=0.01", f"resume={ckpt}"], out, timeout=900, **slurm_env(slurm))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    parents, kids = sweep_runs(out)
    (resumed,) = [r for r in kids if r.data.tags["mlflow.parentRunId"] != parent.info.run_id]
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed_from"] == ckpt
    steps = [m.step for m in client(out).get_metric_history(resumed.info.run_id, "test/acc")]
    assert steps == list(range(killed_epochs + 1, 5))  # only the epochs the killed job had not done
