"""Background processes of this home: start one in its own session (so stopping it stops its children too), wait
until it answers, stop it by its process id.

Each process has a name; its process id and port are in ``$PIPELINE_HOME/run/{name}.pid`` and its output in
``$PIPELINE_HOME/logs/{name}.log``. A process id alone is not an identity: once the process ends, the system gives
the number to the next program. So the pid file also records what psutil saw of the process when it was started (its
start time in clock ticks since boot, which a step of the wall clock does not move, its create time, command line
and executable), and nothing is treated as running, nor signalled, unless a live process with that pid still has
that start time and that command line (or, for one that has rewritten its process title since, as Airflow's API
server and Celery workers do, that executable). A process is its whole tree: each start gets a marker of its own in
its environment (``PIPELINE_PROCESS``, recorded in the pid file), which whatever it spawns inherits, so stopping it
signals every process that carries the marker, also workers orphaned when it died (a BentoML worker leads a session
of its own and outlives a killed supervisor otherwise); and a start is ready only when every process listening on
its port is the one started or one of its children. A pid file that does not match, or one in the
old ``pid port`` format that records no identity, is stale: the process is reported not running, is never signalled,
and the file is removed. The model service, the mail server and the Airflow stack are started with it
(``pipelines.deploy.service``, ``pipelines.ops``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import requests

from pipelines.core.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)


EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10000


def free_port(span: int = 1) -> int:
    """A port on 127.0.0.1 that nothing listens on now, with the ``span - 1`` after it free too (a front door and
    its two slots). Drawn at random below the kernel's ephemeral range: a port from that range (what binding port 0
    gives) can be taken meanwhile as the local end of any outgoing connection, and a service started a minute later
    on it then fails with "Address already in use"."""
    try:
        first_ephemeral = int(EPHEMERAL_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768
    while True:  # bandit B311: a port number, not a secret
        port = random.randrange(LOWEST_PORT, first_ephemeral - span)  # nosec B311
        try:
            for candidate in range(port, port + span):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.pipeline_home / "run" / f"{name}.pid"


# Create times are epoch seconds computed from the boot time, which moves with the wall clock: a step of the clock
# (seen on these VMs) moves them by more than any tolerance. The start time in clock ticks since boot
# (/proc/PID/stat) does not move, so it is the identity where Linux gives it; the create time is the fallback.
CREATE_TIME_TOLERANCE_S = 1.0


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 first), None where there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _start_ticks(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None  # field 22: starttime, in clock ticks since boot


def _identity(process: psutil.Process) -> dict[str, Any]:
    """What the pid file records of a process: enough to tell it from a later one that gets the same pid."""
    with process.oneshot():
        return {"create_time": process.create_time(), "start_ticks": _start_ticks(process.pid),
                "cmdline": process.cmdline(), "exe": process.exe()}


def _write_pid_file(path: Path, pid: int, port: int, marker: str) -> None:
    try:
        record = {"pid": pid, "port": port, "marker": marker} | _identity(psutil.Process(pid))
    except psutil.Error:  # it ended already: a record no process matches
        record = {"pid": pid, "port": port, "create_time": None, "cmdline": [], "exe": ""}
    temporary = path.with_name(f".{path.name}.tmp")  # renamed into place: a reader never sees half a record
    temporary.write_text(json.dumps(record) + "\n")
    os.replace(temporary, path)


def _read_pid_file(path: Path) -> dict[str, Any] | None:
    """The pid file's record, None when there is none or it is in the old ``pid port`` format (no identity)."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("%s records no process identity (old format): treated as stale, nothing is signalled", path)
        return None
    return record if isinstance(record, dict) and {"pid", "port", "create_time"} <= record.keys() else None


def _alive(process: psutil.Process) -> bool:
    """Whether ``process`` (the very process, not another one with its pid) still runs."""
    try:  # a child of this process that exited stays a zombie until it is reaped
        os.waitpid(process.pid, os.WNOHANG)
    except ChildProcessError:  # not our child: started by another command
        pass
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _ours(record: dict[str, Any]) -> psutil.Process | None:
    """The live process the record describes, or None: dead, or its pid now belongs to another program."""
    try:
        process = psutil.Process(int(record["pid"]))
        if not _alive(process):
            return None
        ticks = _start_ticks(process.pid)
        if record.get("start_ticks") is not None and ticks is not None:
            if ticks != int(record["start_ticks"]):
                return None
        elif record["create_time"] is None or \
                abs(process.create_time() - float(record["create_time"])) > CREATE_TIME_TOLERANCE_S:
            return None
        if process.cmdline() != record.get("cmdline") and process.exe() != record.get("exe"):
            return None
    except (psutil.Error, TypeError, ValueError):  # gone, not ours to inspect, or a malformed record
        return None
    return process


def _current(settings: Settings, name: str) -> tuple[dict[str, Any], psutil.Process] | None:
    """The named process's record and process when it is ours and alive; else None, and a stale pid file is
    removed."""
    pid_file = _pid_file(settings, name)
    if not pid_file.exists():
        return None
    record = _read_pid_file(pid_file)
    process = _ours(record) if record is not None else None
    if record is not None and process is not None:
        return record, process
    if record is not None and _members(record):  # it died, its workers did not: stop_process ends them
        return None
    if record is not None:
        log.info("%s: pid %s is not the process this home started (ended, or the pid was reused): %s removed",
                 name, record.get("pid"), pid_file)
    pid_file.unlink(missing_ok=True)
    return None


def running(settings: Settings, name: str) -> dict[str, int] | None:
    """``{"pid", "port"}`` of the named process when it is alive and is the process this home started, else None."""
    current = _current(settings, name)
    return None if current is None else {"pid": current[1].pid, "port": int(current[0]["port"])}


MARKER = "PIPELINE_PROCESS"
"""An environment variable each started process gets, with a value unique to that start (recorded in its pid file):
every process it spawns inherits it, whatever session or process group it puts itself in."""


def start_process(settings: Settings, name: str, command: list[str], port: int,
                  env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``command`` detached from this process: its own session, no inherited stdin/stdout, output appended to
    its log. A caller's pipe (``make run`` reading Airflow's output) is therefore never held open by it."""
    logs = settings.pipeline_home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pid_file = _pid_file(settings, name)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    marker = f"{name}-{uuid.uuid4().hex}"
    with (logs / f"{name}.log").open("ab") as sink:
        # Popen returns once the command has been exec'd, so psutil sees its command line, not this Python's.
        # bandit B603: argv of our own binaries, no shell
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=dict(os.environ if env is None else env,  # nosec B603
                                                                       **{MARKER: marker}),
                                   stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    _write_pid_file(pid_file, process.pid, port, marker)
    return process


def _members(record: dict[str, Any]) -> list[psutil.Process]:
    """Every live process of the recorded start: itself and whatever it spawned, also once it died and its children
    were re-parented (a BentoML worker, which leads a session of its own, outlives a killed supervisor), found by
    the start's marker in their environment."""
    leader = _ours(record)
    found: list[psutil.Process] = []
    if leader is not None:  # the process and its children as the kernel links them (setproctitle, which Airflow's
        try:               # processes use, overwrites the environment /proc shows)
            found = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            found = [leader]
    marker = record.get("marker")
    if not marker:  # an identity from before markers were recorded
        return found
    needle = f"{MARKER}={marker}".encode()
    seen = {process.pid for process in found}
    for pid in psutil.pids():
        if pid in seen:
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:  # ended, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            try:
                found.append(psutil.Process(pid))
            except psutil.Error:
                pass
    return found


def _signal_all(processes: list[psutil.Process], signum: signal.Signals) -> None:
    for process in processes:
        try:
            process.send_signal(signum)  # psutil checks the process is still the one it saw first
        except psutil.Error:  # ended since
            pass


def stop_process(settings: Settings, name: str, timeout_s: float = 30) -> bool:
    """Stop the named process and every process it spawned (its workers, also ones orphaned when it died):
    SIGTERM (a model service flushes its prediction log), SIGKILL after ``timeout_s``. False when nothing of it
    was running. Only processes of the start this home recorded are signalled (see the module's docstring)."""
    pid_file = _pid_file(settings, name)
    record = _read_pid_file(pid_file) if pid_file.exists() else None
    members = _members(record) if record else []
    if record is None or not members:
        _current(settings, name)  # removes a stale pid file, saying so
        return False
    _signal_all(members, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in members) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [p for p in members if _alive(p)]
    if survivors:
        log.warning("%s: %s did not stop within %.0fs: killed", name, [p.pid for p in survivors], timeout_s)
        _signal_all(survivors, signal.SIGKILL)
    log.info("stopped %s (pid %s%s)", name, record["pid"],
             f" and {len(members) - 1} more it spawned" if len(members) > 1 else "")
    pid_file.unlink(missing_ok=True)
    return True


def _listeners(port: int) -> set[int | None]:
    """The processes listening on 127.0.0.1:``port`` (None: one this user may not inspect)."""
    return {c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}


def wait_ready(url: str, process: subprocess.Popen[bytes] | None = None, timeout_s: float = 120) -> None:
    """Wait until ``url`` answers ``/readyz``. With ``process``: the answer must come from it, so every process
    listening on the port must be ``process`` or one it spawned; another (an orphan of an earlier start) fails the
    start, naming it, rather than being taken for the new one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the model service exited with code {process.returncode}")
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                if process is not None:
                    _check_listeners(url, process)
                return
        except requests.RequestException:  # not listening yet, or still loading the model
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the model service at {url} was not ready within {timeout_s:.0f}s")


def _check_listeners(url: str, process: subprocess.Popen[bytes]) -> None:
    port = urlsplit(url).port
    if port is None:
        return
    try:
        tree = {process.pid} | {child.pid for child in psutil.Process(process.pid).children(recursive=True)}
    except psutil.Error:
        raise RuntimeError(f"the model service (pid {process.pid}) ended while starting") from None
    strangers = _listeners(port) - tree
    if strangers:
        described = ", ".join(_describe(pid) for pid in sorted(strangers, key=lambda pid: pid or 0))
        raise RuntimeError(f"port {port} answers, but not (only) from the process started (pid {process.pid}): "
                           f"also listening: {described}")


def _describe(pid: int | None) -> str:
    if pid is None:
        return "a process this user cannot inspect"
    try:
        return f"pid {pid} ({' '.join(psutil.Process(pid).cmdline())[:120]})"
    except psutil.Error:
        return f"pid {pid}"
