"""A real single-node SLURM cluster for the pipeline tests.

The pipeline tests submit the repository's sbatch scripts to an actual
scheduler (job arrays, ``%N`` throttles, ``afterok`` chains, failed
dependencies), because setting SLURM_* variables by hand cannot show that
those features are used correctly.  On a developer's cluster we use what is
there; on a bare Debian machine where we are root (CI) we install Debian's
Slurm 22.05 and run it as a one-node cluster without systemd or cgroups.

Usage::

    cluster = ensure_cluster()      # raises ClusterUnavailable(reason)
    ...                             # sbatch / squeue / scontrol
    cluster.stop()                  # only stops what ensure_cluster started
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
STATE_DIR = Path("/var/tmp/miniplm-slurm")
SLURM_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN = Path("/run/munge")
PARTITION = "debug"
START_TIMEOUT_S = 30.0
CONF_MARKER = "# Written by tests/pipeline/slurm_cluster.py"


class ClusterUnavailable(RuntimeError):
    """No cluster answers and we cannot (or failed to) start one; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Cluster:
    """A SLURM cluster that answers `sinfo`.

    started: True when ensure_cluster() started the daemons (then stop() stops
        them), False when an already running cluster is used as it is.
    state_dir: where our daemons keep spool, state, logs and pid files (None
        for a cluster we did not start).
    partition: the default partition jobs land in without `-p`.
    cpus: CPUs of one node of that partition (what one job can get at most).
    """

    started: bool
    state_dir: Path | None
    partition: str
    cpus: int
    _pid_files: list[Path] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Stop the daemons ensure_cluster() started (newest first); no-op otherwise.

        Jobs still queued or running are cancelled first, so that no job step
        outlives the daemons and a later start begins from an empty queue.
        """
        if not self.started:
            return
        _cancel_all_jobs()
        for pid_file in reversed(self._pid_files):
            _stop_pid_file(pid_file)
        self._pid_files = []
        self.started = False


def ensure_cluster() -> Cluster:
    """Return a cluster that answers `sinfo`, starting a local one if none does.

    An answering cluster is used as it is.  Otherwise, as root on Debian only:
    install the packages when missing, write /etc/slurm/slurm.conf, create a
    munge key if missing, start munged, slurmctld and slurmd, and wait until
    the node is idle.  Raises ClusterUnavailable with the reason otherwise.
    """
    existing = None if _own_cluster_is_down() else _answering_cluster()
    if existing is not None:
        return existing
    if os.geteuid() != 0:
        raise ClusterUnavailable("no controller answers `sinfo` and not root, so cannot start one")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable("no controller answers `sinfo` and no apt-get (not Debian) to install Slurm")
    _install_packages()
    return _start_local_cluster()


# --- using an existing cluster -------------------------------------------------


def _run(cmd: list[str], timeout: float = 10.0, **kw) -> subprocess.CompletedProcess:
    """Run a command capturing text output; a missing program or a hang reads as failure (rc 127/124)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError as e:
        return subprocess.CompletedProcess(cmd, 127, "", str(e))
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"timed out after {timeout}s")


def _node_states() -> list[str] | None:
    """Node states from `sinfo`, or None when there is no sinfo or no controller answers quickly."""
    if shutil.which("sinfo") is None:
        return None
    out = _run(["sinfo", "-h", "-o", "%T"], timeout=5)
    states = out.stdout.split()
    return states if out.returncode == 0 and states else None


def _own_cluster_is_down() -> bool:
    """True when /etc/slurm/slurm.conf is one we wrote and our slurmctld is not running.

    Then `sinfo` cannot answer, and asking it anyway costs ~9 s of retries
    before it gives up ("Unable to contact slurm controller").
    """
    if "SLURM_CONF" in os.environ:
        return False
    try:
        ours = SLURM_CONF.read_text().startswith(CONF_MARKER)
    except OSError:
        return False
    return ours and _daemon_pid(STATE_DIR / "pid" / "slurmctld.pid") is None


def _answering_cluster() -> Cluster | None:
    """The running cluster as a Cluster(started=False), or None when none answers."""
    if _node_states() is None:
        return None
    # %P marks the default partition with '*'; %c is CPUs per node.
    out = _run(["sinfo", "-h", "-o", "%P %c"], timeout=5)
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()]
    default = next((r for r in rows if r[0].endswith("*")), rows[0] if rows else ["", "1"])
    cpus = int(default[1].rstrip("+")) if default[1].rstrip("+").isdigit() else 1
    return Cluster(started=False, state_dir=None, partition=default[0].rstrip("*"), cpus=cpus)


# --- installing --------------------------------------------------------------


def _missing_packages() -> list[str]:
    """The PACKAGES that dpkg does not report as installed."""
    missing = []
    for pkg in PACKAGES:
        out = _run(["dpkg-query", "-W", "-f=${Status}", pkg])
        if out.returncode != 0 or "install ok installed" not in out.stdout:
            missing.append(pkg)
    return missing


def _install_packages() -> None:
    """apt-get install the missing packages; `apt-get update` only if the first try fails."""
    missing = _missing_packages()
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    out = _run(install, timeout=600, env=env)
    if out.returncode != 0:
        _run(["apt-get", "update"], timeout=600, env=env)
        out = _run(install, timeout=600, env=env)
    if out.returncode != 0:
        raise ClusterUnavailable(
            f"`{' '.join(install)}` failed (rc {out.returncode}): {_tail(out.stdout + out.stderr)}"
        )


# --- configuring and starting --------------------------------------------------


def _memory_mb() -> int:
    """RealMemory for the node: MemTotal less 5%, so slurmd never finds less than configured
    (a node with less memory than slurm.conf says is drained)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.95)
    return 1024


def slurm_conf(state_dir: Path, node: str, cpus: int, memory_mb: int) -> str:
    """slurm.conf for one node at 127.0.0.1, all paths under state_dir.

    No systemd/cgroups here, hence proctrack/linuxproc and task/none; no
    slurmdbd, hence no accounting (read job states with `scontrol show job`
    or from the jobcomp file).  kill_invalid_depend cancels a job whose
    dependency can never be met (it must be under DependencyParameters, not
    SchedulerParameters); otherwise it would stay pending forever.
    EnforcePartLimits=ALL makes sbatch reject a job bigger than the node
    (`-c`/`-n` over its CPUs, `-N 2`) instead of queueing it forever.
    bf_interval=1 (default 30) is what lets a job start within ~1 s of
    submission or of its dependency ending; sched_interval=2 (default 60)
    retries the whole queue often.  22.05 accepts unknown
    SchedulerParameters silently, so check names against `man slurm.conf`.
    MailProg=/bin/true: there is no /bin/mail, and slurmctld logs an error.
    """
    return f"""\
{CONF_MARKER}: a one-node test cluster.
ClusterName=miniplm
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={state_dir}/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
DependencyParameters=kill_invalid_depend
EnforcePartLimits=ALL
ReturnToService=2
MinJobAge=3600
KillWait=5
StateSaveLocation={state_dir}/state
SlurmdSpoolDir={state_dir}/spool
SlurmctldPidFile={state_dir}/pid/slurmctld.pid
SlurmdPidFile={state_dir}/pid/slurmd.pid
SlurmctldLogFile={state_dir}/log/slurmctld.log
SlurmdLogFile={state_dir}/log/slurmd.log
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _munge_answers() -> bool:
    """True when a munged answers on the default socket (a credential round-trips)."""
    if shutil.which("munge") is None or shutil.which("unmunge") is None:
        return False
    cred = _run(["munge", "-n"], timeout=5)
    return cred.returncode == 0 and _run(["unmunge"], timeout=5, input=cred.stdout).returncode == 0


def _start_munge() -> Path | None:
    """Start munged as the munge user unless one answers; return its pid file when we started it.

    munged refuses to run as root and needs /run/munge owned by munge (its
    socket and pid file live there); the key must be 0400 and owned by munge.
    """
    if _munge_answers():
        return None
    munge = pwd.getpwnam("munge")
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        MUNGE_KEY.write_bytes(os.urandom(1024))
    os.chown(MUNGE_KEY, munge.pw_uid, munge.pw_gid)
    MUNGE_KEY.chmod(0o400)
    for folder in (MUNGE_RUN, Path("/var/log/munge"), Path("/var/lib/munge")):
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, munge.pw_uid, munge.pw_gid)
    pid_file = MUNGE_RUN / "munged.pid"
    out = _run(["runuser", "-u", "munge", "--", "munged", "--force"], timeout=20)
    if out.returncode != 0:
        raise ClusterUnavailable(f"munged did not start (rc {out.returncode}): {_tail(out.stdout + out.stderr)}")
    deadline = time.monotonic() + 10
    while not _munge_answers():
        if time.monotonic() > deadline:
            raise ClusterUnavailable(
                f"munged started but does not answer: {_tail_file(Path('/var/log/munge/munged.log'))}"
            )
        time.sleep(0.2)
    return pid_file


def _start_local_cluster() -> Cluster:
    """Write slurm.conf, start munged, slurmctld and slurmd, and wait for an idle node."""
    state_dir = STATE_DIR
    for sub in ("state", "spool", "log", "pid"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    for pid_file in (state_dir / "pid" / "slurmd.pid", state_dir / "pid" / "slurmctld.pid"):
        _stop_pid_file(pid_file)  # left over from a run that never stopped them
    node = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(slurm_conf(state_dir, node, cpus, _memory_mb()))

    pid_files: list[Path] = []
    cluster = Cluster(started=True, state_dir=state_dir, partition=PARTITION, cpus=cpus, _pid_files=pid_files)
    try:
        munge_pid = _start_munge()
        if munge_pid is not None:
            pid_files.append(munge_pid)
        # -c: forget jobs and node states saved by an earlier test session.
        for daemon, args in (("slurmctld", ["-c"]), ("slurmd", [])):
            out = _run([daemon, *args], timeout=20)
            pid_files.append(state_dir / "pid" / f"{daemon}.pid")
            if out.returncode != 0:
                raise ClusterUnavailable(
                    f"{daemon} exited with rc {out.returncode}: {_tail(out.stdout + out.stderr)}{_logs(state_dir)}"
                )
        started_at = time.monotonic()
        while (_node_states() or [""])[0] != "idle":
            dead = [p.stem for p in pid_files[-2:] if _daemon_pid(p) is None]
            if dead and time.monotonic() > started_at + 3:  # pid files are written just after the fork
                raise ClusterUnavailable(f"{', '.join(dead)} exited after starting{_logs(state_dir)}")
            if time.monotonic() > started_at + START_TIMEOUT_S:
                raise ClusterUnavailable(
                    f"node not idle within {START_TIMEOUT_S:.0f}s (sinfo: {_node_states()}){_logs(state_dir)}"
                )
            time.sleep(0.2)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# --- stopping and reporting ----------------------------------------------------


def _cancel_all_jobs() -> None:
    """scancel every job in the queue and wait (KillWait=5, so briefly) until none runs.

    Array jobs are cancelled by their array job id (%F): squeue's %i form of
    a throttled array, `24_[1-5%1]`, is rejected by scancel, which then
    cancels nothing at all.
    """
    ids = sorted(set(_run(["squeue", "-h", "-o", "%F"], timeout=10).stdout.split()))
    if not ids:
        return
    _run(["scancel", *ids], timeout=10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _run(["squeue", "-h", "-t", "R,CG", "-o", "%i"], timeout=10).stdout.strip():
        time.sleep(0.5)


def _alive(pid: int) -> bool:
    """True while pid runs; a zombie counts as gone (PID 1 here reaps only every ~2 s)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _daemon_pid(pid_file: Path) -> int | None:
    """The pid in pid_file if that process is alive and is the daemon the file is named
    after (slurmd.pid -> slurmd); None for a missing or stale file (pid gone or reused)."""
    try:
        pid = int(pid_file.read_text().split()[0])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    return pid if comm == pid_file.stem and _alive(pid) else None


def _stop_pid_file(pid_file: Path, timeout: float = 15.0) -> None:
    """SIGTERM the daemon named in pid_file, SIGKILL it if it outlives timeout; a stale file is only removed."""
    pid = _daemon_pid(pid_file)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    pid_file.unlink(missing_ok=True)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _tail_file(path: Path, lines: int = 15) -> str:
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError as e:
        return f"({path}: {e.strerror})"


def _logs(state_dir: Path) -> str:
    """The end of both daemons' logs, for ClusterUnavailable reasons."""
    return "".join(
        f"\n--- {name} ---\n{_tail_file(state_dir / 'log' / name)}" for name in ("slurmctld.log", "slurmd.log")
    )
