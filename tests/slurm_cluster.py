"""A real single-node SLURM cluster owned by a test: munged, slurmctld and slurmd from Debian's slurm-wlm and munge,
run in the foreground as this test's child processes with their state, sockets and logs in one temporary folder,
and stopped by their process ids. Clients find it through SLURM_CONF in the environment the fixture returns."""

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
INSTALL = "apt-get install slurm-wlm munge (.ci/run does)"


def missing() -> str | None:
    """Why no cluster can start here (a daemon or client not installed), or None."""
    absent = [p for p in (*DAEMONS, "sbatch", "squeue", "scancel") if not shutil.which(p)
              and not Path("/usr/sbin", p).exists()]
    return f"{', '.join(absent)} not installed: {INSTALL}" if absent else None


def _free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _memory_mb() -> int:
    meminfo = Path("/proc/meminfo").read_text().split()
    return int(meminfo[meminfo.index("MemTotal:") + 1]) // 1024 // 2  # half the machine: never over-promised


def write_config(root: Path) -> Path:
    """slurm.conf for one node (this machine, as many CPUs as it has) and one default partition; no cgroups and no
    accounting database, so nothing outside `root` is touched."""
    ctld_port, slurmd_port = _free_ports(2)
    host, user = socket.gethostname(), getpass.getuser()
    lines = [
        "ClusterName=bnlabtest", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmUser={user}", f"SlurmdUser={user}",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={root}/munge.socket",
        f"SlurmctldPort={ctld_port}", f"SlurmdPort={slurmd_port}",
        f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "MpiDefault=none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "ReturnToService=2",
        "SchedulerParameters=sched_interval=1", "MinJobAge=600",
        "KillWait=2",  # scancel: SIGKILL 2 s after SIGTERM (submitit waits out a SIGTERM), not 30
        f"NodeName=bnlabnode NodeHostname={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={_memory_mb()}",
        "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    ]
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _start_munge(root: Path) -> subprocess.Popen:
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    root.chmod(0o755)  # munged refuses a socket folder others can write to
    return subprocess.Popen(["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={root}/munge.socket",
                             f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log",
                             f"--seed-file={root}/munged.seed"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def _wait_idle(env: dict, daemons: list[subprocess.Popen], root: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(d.poll() is not None for d in daemons):
            break
        state = subprocess.run(["sinfo", "--noheader", "--format=%T"], env=env, capture_output=True, text=True)
        if state.stdout.strip() == "idle":
            return
        time.sleep(0.2)
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(root.glob("*.log")))
    raise RuntimeError(f"the test SLURM cluster did not come up within {timeout:.0f} s:{logs}")


def _cancel_every_job(env: dict, timeout: float = 20.0) -> None:
    """Cancel what a test left queued or running and wait for it to end: its job steps run outside the daemons'
    process tree and would outlive them."""
    subprocess.run(["scancel", f"--user={getpass.getuser()}"], env=env, capture_output=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "--noheader", f"--user={getpass.getuser()}"], env=env, capture_output=True,
                               text=True)
        if queue.returncode != 0 or not queue.stdout.strip():
            return
        time.sleep(0.2)


@contextlib.contextmanager
def single_node_cluster(root: Path) -> Iterator[dict]:
    """Start the cluster in `root`; yield the environment its clients need; stop every daemon it started."""
    root.mkdir(parents=True, exist_ok=True)
    conf = write_config(root)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons: list[subprocess.Popen] = []
    try:
        daemons.append(_start_munge(root))
        time.sleep(0.3)  # its socket, before slurmctld authenticates anything
        for daemon in ("slurmctld", "slurmd"):
            daemons.append(subprocess.Popen([daemon, "-D", "-f", str(conf)] + (["-i"] if daemon == "slurmctld" else [])
                                            + (["-N", "bnlabnode"] if daemon == "slurmd" else []), env=env,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait_idle(env, daemons, root)
        yield env
    finally:
        if len(daemons) == len(DAEMONS):
            _cancel_every_job(env)
        for d in reversed(daemons):
            d.terminate()
        for d in reversed(daemons):
            try:
                d.wait(timeout=15)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()
