"""Real infrastructure for the slow deployment tests (tests/test_infra_*.py).

- ``ensure_packages``: the Debian packages a test needs, installed with apt-get when missing and when we
  may (root, apt-get present: CI runs as root); otherwise the test is skipped and says why.
- ``SingleNodeSlurm``: a SLURM cluster of one node, this machine, started from a temporary folder: munged,
  slurmctld and slurmd in the foreground as our own child processes, their configuration, keys, sockets,
  state and logs in that folder, on free ports. Nothing of the system's own SLURM or munge configuration is
  used or changed, and every daemon is ended by its process id.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

SYSTEM_PATHS = ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/local/bin"]
_APT_UPDATED = False


def which(command: str) -> str | None:
    """A command on PATH or in the system folders (daemons live in /usr/sbin, not always on PATH)."""
    return shutil.which(command) or shutil.which(command, path=os.pathsep.join(SYSTEM_PATHS))


def ensure_packages(packages: dict[str, str], purpose: str) -> None:
    """Make sure each command exists, installing the Debian package that provides it when missing.

    packages: {command: Debian package}. Skips the calling test (with the reason) when they cannot be
    installed here: not root, no apt-get, or the package archive unreachable.
    """
    global _APT_UPDATED
    missing = sorted({package for command, package in packages.items() if which(command) is None})
    if not missing:
        return
    needed = f"{purpose} needs {' '.join(missing)} (apt-get install {' '.join(missing)})"
    if os.geteuid() != 0:
        pytest.skip(f"{needed}: not installed, and installing needs root")
    if which("apt-get") is None:
        pytest.skip(f"{needed}: not installed, and there is no apt-get here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _APT_UPDATED:
        update = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, env=env)
        if update.returncode != 0:
            pytest.skip(f"{needed}: apt-get update failed: {update.stderr.strip()[-500:]}")
        _APT_UPDATED = True
    install = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                             capture_output=True, text=True, env=env)
    if install.returncode != 0:
        pytest.skip(f"{needed}: apt-get install failed: {install.stderr.strip()[-500:]}")
    still = sorted(command for command in packages if which(command) is None)
    if still:
        pytest.skip(f"{needed}: still missing after apt-get install: {' '.join(still)}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    """End one child process by its pid: SIGTERM, then SIGKILL if it does not exit."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


class SingleNodeSlurm:
    """munge + slurmctld + slurmd for this host, declared with ``cpus`` CPUs and its real memory.

    Use as a context manager; ``env`` is the environment for sbatch/squeue/scontrol (SLURM_CONF). Jobs run as
    the user who submits them (root here, as slurmd must be root to start jobs).
    """

    PACKAGES = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client"}

    def __init__(self, cpus: int = 2):
        self.cpus = cpus
        self.processes: list[subprocess.Popen] = []
        # Short path: the munge socket's path must fit a Unix socket name (108 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="m2i-slurm-", dir="/tmp"))
        self.root.chmod(0o755)
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.host = socket.gethostname().split(".")[0]
        self.memory_mb = 0

    # -- start ---------------------------------------------------------------------------------------------

    def __enter__(self) -> SingleNodeSlurm:
        try:
            self._start_munge()
            self._write_config()
            self._start("slurmctld", [which("slurmctld"), "-D", "-f", str(self.conf)])
            self._start("slurmd", [which("slurmd"), "-D", "-f", str(self.conf)])
            self._wait_for_idle_node()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name}.out", "w")  # noqa: SIM115 - the daemon's output, kept open
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def _start_munge(self) -> None:
        for name, mode in [("log", 0o755), ("munge", 0o755), ("key", 0o700), ("state", 0o700),
                           ("spool", 0o755)]:
            (self.root / name).mkdir(mode=mode)
        key = self.root / "key" / "munge.key"
        key.write_bytes(os.urandom(1024))  # a key of our own: the system's /etc/munge is left alone
        key.chmod(0o600)
        self.munge_socket = self.root / "munge" / "munge.socket"
        # --force: munged refuses to run as root otherwise; it stays in the foreground (-F) as our child.
        self._start("munged", [
            which("munged"), "-F", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
            f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--seed-file={self.root / 'key' / 'seed'}",
            f"--log-file={self.root / 'log' / 'munged.log'}",
        ])
        self._wait(lambda: self.munge_socket.exists(), 30, "munged did not create its socket")

    def _real_memory_mb(self) -> int:
        """What slurmd itself measures (slurmd -C), so that the node is not drained for too little memory."""
        found = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True, env=self.env)
        match = re.search(r"RealMemory=(\d+)", found.stdout)
        if not match:
            raise RuntimeError(f"slurmd -C printed no RealMemory: {found.stdout} {found.stderr}")
        return int(match.group(1))

    def _write_config(self) -> None:
        self.memory_mb = self._real_memory_mb()
        root = self.root
        self.conf.write_text("\n".join([
            "ClusterName=m2itest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            "MailProg=/bin/true",
            # no cgroups: the jobs are plain processes of slurmd (works in containers and VMs alike)
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            # cores and memory are both consumable: a job asking for more than the node has never starts
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "ReturnToService=2",
            "MinJobAge=3600",  # finished jobs stay visible to scontrol (there is no accounting database)
            "SlurmdParameters=config_overrides",  # trust the CPUs declared below whatever the hardware
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _wait_for_idle_node(self) -> None:
        def idle() -> bool:
            state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                                   env=self.env)
            return state.returncode == 0 and state.stdout.strip() == "idle"

        self._wait(idle, 90, "the node did not become idle")

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p for p in self.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{what}: {dead[0].args[0]} exited ({dead[0].returncode})\n{self.logs()}")
            if condition():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{what} within {timeout:.0f} s\n{self.logs()}")

    # -- use -----------------------------------------------------------------------------------------------

    def run(self, *command: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(list(command), capture_output=True, text=True, env=kwargs.pop("env", self.env),
                              **kwargs)

    def job_states(self, job_id: str) -> list[str]:
        """The state of a job, or of every task of a job array (scontrol keeps finished jobs: MinJobAge)."""
        shown = self.run("scontrol", "-o", "show", "job", job_id)
        return re.findall(r"JobState=(\S+)", shown.stdout)

    def wait_for_jobs(self, job_ids: list[str], timeout: float) -> dict[str, list[str]]:
        """Wait until no job of the list is pending or running; return their final states."""
        deadline = time.monotonic() + timeout
        while True:
            states = {job: self.job_states(job) for job in job_ids}
            if all(states.values()) and not any(
                    s in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING") for v in states.values() for s in v):
                return states
            if time.monotonic() > deadline:
                return states
            time.sleep(5)

    def logs(self, tail: int = 3000) -> str:
        texts = []
        for path in sorted((self.root / "log").glob("*")):
            texts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(texts)

    # -- stop ----------------------------------------------------------------------------------------------

    def __exit__(self, *exc) -> None:
        if any(p.args[0] == which("slurmctld") and p.poll() is None for p in self.processes):
            # End the jobs through SLURM, so that no job process outlives its daemons.
            self.run("scancel", "--full", "--user", str(os.getuid()))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                queue = self.run("squeue", "-h", "-o", "%i")
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(1)
        for process in reversed(self.processes):
            stop_process(process)
        shutil.rmtree(self.root, ignore_errors=True)
