"""A one-node SLURM cluster for tests: Debian's slurm-wlm and munge, started from a temp folder.

``SlurmCluster.start(folder)`` writes munge's key, slurm.conf and cgroup.conf, starts munged,
slurmctld and slurmd on 127.0.0.1 (free ports), waits until ``sinfo`` shows the node idle and
returns the cluster; ``env()`` is what a client (sbatch, squeue, submitit) needs
(``SLURM_CONF``); ``stop()`` ends the daemons it started. Raises ``Unavailable`` (the tests
skip with that reason) when the daemons are missing, the process is not root, or they fail.

Process tracking: ``proctrack/cgroup`` (SLURM kills a job's whole cgroup when the job ends)
when the machine lets us create cgroups under /sys/fs/cgroup/freezer (cgroup v1), else
``proctrack/linuxproc`` (SLURM kills every process descended from the job's step, by walking
/proc). ``cluster.proctrack`` says which one is in use.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel")
FREEZER = Path("/sys/fs/cgroup/freezer")


class Unavailable(Exception):
    pass


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cgroup_v1_usable() -> bool:
    probe = FREEZER / f"cnnexp_probe_{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
        return (Path("/sys/fs/cgroup/memory").is_dir() and Path("/sys/fs/cgroup/cpuset").is_dir())
    except OSError:
        return False


class SlurmCluster:
    def __init__(self, folder: Path):
        self.folder = folder
        self.node = socket.gethostname().split(".")[0]
        self.procs: list[subprocess.Popen] = []
        self.proctrack = "proctrack/cgroup" if cgroup_v1_usable() else "proctrack/linuxproc"
        self.munge_socket = folder / "munge" / "munge.socket"

    def env(self) -> dict[str, str]:
        path = str(self.folder / "bin") + os.pathsep + os.environ.get("PATH", "")
        return {**os.environ, "SLURM_CONF": str(self.folder / "slurm.conf"), "PATH": path}

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), capture_output=True, text=True, env=self.env(), timeout=timeout)

    @classmethod
    def start(cls, folder: Path, cpus: int | None = None, timeout: float = 90) -> "SlurmCluster":
        missing = [d for d in DAEMONS if not shutil.which(d) and not Path("/usr/sbin", d).exists()]
        if missing:
            raise Unavailable(f"SLURM/munge not installed (missing {', '.join(missing)}; "
                              f"apt-get install slurm-wlm munge)")
        if os.geteuid() != 0:
            raise Unavailable("slurmd must run as root to start jobs as their users; run the tests as root")
        self = cls(folder)
        try:
            self._munge()
            self._write_conf(cpus or os.cpu_count() or 1)
            self._write_sacct()
            for d in ("state", "spool", "jobs"):
                (folder / d).mkdir(exist_ok=True)
            self._spawn(["slurmctld", "-D", "-i", "-f", str(folder / "slurm.conf")], "slurmctld.out")
            self._spawn(["slurmd", "-D", "-N", self.node, "-f", str(folder / "slurm.conf")], "slurmd.out")
            self.wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _munge(self) -> None:
        d = self.folder / "munge"
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        key = d / "munge.key"
        subprocess.run([_which("mungekey"), "--create", "--keyfile", str(key)], check=True, capture_output=True)
        key.chmod(0o400)
        self._spawn([_which("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
                     f"--pid-file={d / 'munged.pid'}", f"--log-file={d / 'munged.log'}",
                     f"--seed-file={d / 'munged.seed'}"], "munged.out")
        deadline = time.monotonic() + 20
        while not self.munge_socket.exists():
            if time.monotonic() > deadline or self.procs[-1].poll() is not None:
                raise Unavailable(f"munged did not start: {self._tail('munged.out')} {self._tail('munge/munged.log')}")
            time.sleep(0.2)

    def _write_conf(self, cpus: int) -> None:
        f = self.folder
        ctld_port, d_port = free_ports(2)
        cgroup = self.proctrack == "proctrack/cgroup"
        mem = _mem_mb()
        first_job = random.randrange(10_000, 60_000_000, 10_000)  # job cgroups of two test clusters never collide
        (f / "slurm.conf").write_text(f"""\
ClusterName=cnnexp-test
FirstJobId={first_job}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={f / 'state'}
SlurmdSpoolDir={f / 'spool'}
SlurmctldPidFile={f / 'slurmctld.pid'}
SlurmdPidFile={f / 'slurmd.pid'}
SlurmctldLogFile={f / 'slurmctld.log'}
SlurmdLogFile={f / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType={self.proctrack}
TaskPlugin={'task/cgroup' if cgroup else 'task/none'}
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=30
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=60
JobRequeue=1
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")
        (f / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\n"
                                       "ConstrainCores=no\nConstrainRAMSpace=no\nConstrainDevices=no\n")

    def _write_sacct(self) -> None:
        """sacct answers from the accounting database (slurmdbd + MySQL), which this test cluster
        does not run; submitit asks it for job states. This stand-in answers the same question
        (``sacct -o JobID,State --parsable2 -j ID...``) from slurmctld's own records (scontrol),
        which keep finished jobs for MinJobAge seconds."""
        b = self.folder / "bin"
        b.mkdir(exist_ok=True)
        (b / "sacct").write_text(SACCT)
        (b / "sacct").chmod(0o755)

    def _spawn(self, cmd: list[str], out: str) -> None:
        log = open(self.folder / out, "ab")
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                           start_new_session=True))

    def _tail(self, name: str) -> str:
        p = self.folder / name
        return p.read_text(errors="replace")[-600:] if p.exists() else ""

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for p, name in zip(self.procs, ("munged", "slurmctld", "slurmd")):
                if p.poll() is not None:
                    raise Unavailable(f"{name} exited ({p.returncode}): {self._tail(name + '.out')} "
                                      f"{self._tail(name + '.log')}")
            r = self.run("sinfo", "-h", "-N", "-o", "%T")
            state = r.stdout.strip() or r.stderr.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise Unavailable(f"the SLURM node is not idle after {timeout:.0f} s (sinfo: {state!r}); "
                          f"slurmd log: {self._tail('slurmd.log')}")

    def stop(self) -> None:
        """Cancel what is left, then stop slurmd, slurmctld and munged (in that order)."""
        if any(p.poll() is None for p in self.procs[1:]):
            try:
                self.run("scancel", "--full", "--quiet", "-p", "debug", timeout=10)
            except (subprocess.TimeoutExpired, OSError):
                pass
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self.procs.clear()


SACCT = """#!/usr/bin/env python3
import subprocess, sys
args = sys.argv[1:]
print("JobID|State")
for jid in [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-j"]:
    out = subprocess.run(["scontrol", "show", "job", "-o", jid], capture_output=True, text=True).stdout
    for line in out.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        task = f.get("ArrayTaskId")
        name = f.get("JobId") if not task else f.get("ArrayJobId") + "_" + (task if task.isdigit() else "[" + task + "]")
        print(name + "|" + f.get("JobState", "UNKNOWN"))
"""


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _mem_mb() -> int:
    with open("/proc/meminfo") as f:
        total_kb = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1])
    return max(256, total_kb // 1024 - 512)
