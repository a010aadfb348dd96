"""A real two-node SLURM cluster on this machine, for the slow tests: slurmctld and two slurmd daemons (node1,
node2) with their config, spool, state and logs in a temporary folder, munge for authentication. Needs root and
Debian's slurm-wlm and munge (`make slurm-test` installs them where apt can)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = "slurm-wlm and munge (apt-get install slurm-wlm munge, or: make slurm-test)"
HOSTS_LINE = "127.0.0.1 node1 node2  # trainwise slurm test"
NODE_CPUS = 2
NODE_MEMORY_MB = 2000


def missing() -> str | None:
    """Why the cluster cannot start here, or None."""
    tools = ("slurmctld", "slurmd", "sbatch", "squeue", "munged", "munge")
    absent = [t for t in tools if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    if absent:
        return f"{', '.join(absent)} not installed: needs {PACKAGES}"
    if os.geteuid() != 0:
        return "the test cluster's slurmd daemons run as root"
    if not Path("/etc/munge/munge.key").exists():
        return f"no /etc/munge/munge.key: needs {PACKAGES}"
    return None


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class Cluster:
    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.started_munged = False
        self.added_hosts = False

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def start(self) -> Cluster:
        host = socket.gethostname()
        ctld, node1, node2 = _free_ports(3)
        for sub in ("state", "spool", "log"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        f = self.folder
        self.conf.write_text(
            f"""ClusterName=trainwisetest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmUser=root
SlurmdUser=root
StateSaveLocation={f}/state
SlurmdSpoolDir={f}/spool/%n
SlurmctldPidFile={f}/slurmctld.pid
SlurmdPidFile={f}/slurmd-%n.pid
SlurmctldLogFile={f}/log/slurmctld.log
SlurmdLogFile={f}/log/slurmd-%n.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
KillWait=10
NodeName=node1 NodeHostname={host} NodeAddr=127.0.0.1 Port={node1} CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB}
NodeName=node2 NodeHostname={host} NodeAddr=127.0.0.1 Port={node2} CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB}
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP
"""
        )
        self._munge()
        self._hosts()
        env = os.environ | self.env
        subprocess.run([_sbin("slurmctld"), "-f", str(self.conf)], check=True, env=env, timeout=60)
        for node in ("node1", "node2"):
            subprocess.run([_sbin("slurmd"), "-N", node, "-f", str(self.conf)], check=True, env=env, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, env=env)
            states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
            if states.get("node1") == "idle" and states.get("node2") == "idle":
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the test cluster did not come up: {out.stdout} {out.stderr}; logs in {f / 'log'}")

    def _munge(self) -> None:
        if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
            return  # a munged is running already
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", _sbin("munged")], check=True, timeout=30)
        self.started_munged = True

    def _hosts(self) -> None:
        """DDP meets at the first node's name: node1 and node2 must resolve (to this machine)."""
        try:
            socket.gethostbyname("node1")
            socket.gethostbyname("node2")
        except OSError:
            with open("/etc/hosts", "a") as hosts:
                hosts.write(HOSTS_LINE + "\n")
            self.added_hosts = True

    def stop(self) -> None:
        for name in ("slurmd-node1.pid", "slurmd-node2.pid", "slurmctld.pid"):
            _kill(self.folder / name)
        if self.started_munged:
            _kill(Path("/run/munge/munged.pid"))
        if self.added_hosts:
            lines = Path("/etc/hosts").read_text().splitlines()
            Path("/etc/hosts").write_text("".join(line + "\n" for line in lines if line != HOSTS_LINE))


def _kill(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
