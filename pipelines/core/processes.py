"""Background processes of this home: start one in its own session (so stopping it stops its children too), wait
until it answers, stop it by its process id.

Each process has a name; its process id and port are in ``$PIPELINE_HOME/run/{name}.pid`` and its output in
``$PIPELINE_HOME/logs/{name}.log``. A process id alone is not an identity: once the process ends, the system gives
the number to the next program. So the pid file also records what psutil saw of the process when it was started (its
create time, command line and executable), and nothing is treated as running, nor signalled, unless a live process
with that pid still has that create time and that command line (or, for one that has rewritten its process title
since, as Airflow's API server and Celery workers do, that executable). A pid file that does not match, or one in the
old ``pid port`` format that records no identity, is stale: the process is reported not running, is never signalled,
and the file is removed. The model service, the mail server and the Airflow stack are started with it
(``pipelines.deploy.service``, ``pipelines.ops``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import requests

from pipelines.core.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)


def free_port(span: int = 1) -> int:
    """A port on 127.0.0.1 that nothing listens on now, with the ``span - 1`` after it free too (a front door and
    its two slots)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        try:
            for other in range(port + 1, port + span):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", other))
        except OSError:
            continue
        return port


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.pipeline_home / "run" / f"{name}.pid"


# Create times are epoch seconds computed from the boot time, which moves a little with the wall clock.
CREATE_TIME_TOLERANCE_S = 1.0


def _identity(process: psutil.Process) -> dict[str, Any]:
    """What the pid file records of a process: enough to tell it from a later one that gets the same pid."""
    with process.oneshot():
        return {"create_time": process.create_time(), "cmdline": process.cmdline(), "exe": process.exe()}


def _write_pid_file(path: Path, pid: int, port: int) -> None:
    try:
        record = {"pid": pid, "port": port} | _identity(psutil.Process(pid))
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
        started = process.create_time()
        if record["create_time"] is None or abs(started - float(record["create_time"])) > CREATE_TIME_TOLERANCE_S:
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
    if record is not None:
        log.info("%s: pid %s is not the process this home started (ended, or the pid was reused): %s removed",
                 name, record.get("pid"), pid_file)
    pid_file.unlink(missing_ok=True)
    return None


def running(settings: Settings, name: str) -> dict[str, int] | None:
    """``{"pid", "port"}`` of the named process when it is alive and is the process this home started, else None."""
    current = _current(settings, name)
    return None if current is None else {"pid": current[1].pid, "port": int(current[0]["port"])}


def start_process(settings: Settings, name: str, command: list[str], port: int,
                  env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``command`` detached from this process: its own session, no inherited stdin/stdout, output appended to
    its log. A caller's pipe (``make run`` reading Airflow's output) is therefore never held open by it."""
    logs = settings.pipeline_home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pid_file = _pid_file(settings, name)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with (logs / f"{name}.log").open("ab") as sink:
        # Popen returns once the command has been exec'd, so psutil sees its command line, not this Python's.
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    _write_pid_file(pid_file, process.pid, port)
    return process


def _signal_group(process: psutil.Process, signum: signal.Signals) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:  # ended since the check
        pass


def stop_process(settings: Settings, name: str, timeout_s: float = 30) -> bool:
    """SIGTERM to the named process group (a model service flushes its prediction log), SIGKILL after
    ``timeout_s``; False when it was not running. Only a process that is still the one this home started is
    signalled (see the module's docstring)."""
    current = _current(settings, name)
    if current is None:
        return False
    process = current[1]
    _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(process) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(process):  # is_running() checks the create time again: never a pid reused meanwhile
        log.warning("%s (pid %d) did not stop within %.0fs: killed", name, process.pid, timeout_s)
        _signal_group(process, signal.SIGKILL)
    log.info("stopped %s (pid %d)", name, process.pid)
    _pid_file(settings, name).unlink(missing_ok=True)
    return True


def wait_ready(url: str, process: subprocess.Popen[bytes] | None = None, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the model service exited with code {process.returncode}")
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or still loading the model
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the model service at {url} was not ready within {timeout_s:.0f}s")
