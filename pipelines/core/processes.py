"""Background processes of this home: start one in its own session (so stopping it stops its children too), wait
until it answers, stop it by its process id.

Each process has a name; its process id and port are in ``$PIPELINE_HOME/run/{name}.pid`` and its output in
``$PIPELINE_HOME/logs/{name}.log``. ``start_service`` runs one BentoML model service (``bentoml serve``): the
service's source for development and tests, or a built Bento, which is what ``pipelines.deploy`` starts in its
blue and green slots behind the front door.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

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


def _alive(pid: int) -> bool:
    try:  # a child of this process that exited stays a zombie (and "alive" to kill) until it is reaped
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:  # not our child: started by another command
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(settings: Settings, name: str) -> dict[str, int] | None:
    """``{"pid", "port"}`` of the named process when it is alive, else None."""
    pid_file = _pid_file(settings, name)
    if not pid_file.exists():
        return None
    pid, port = (int(field) for field in pid_file.read_text().split()[:2])
    return {"pid": pid, "port": port} if _alive(pid) else None


def start_process(settings: Settings, name: str, command: list[str], port: int,
                  env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``command`` detached from this process: its own session, no inherited stdin/stdout, output appended to
    its log. A caller's pipe (``make run`` reading Airflow's output) is therefore never held open by it."""
    logs = settings.pipeline_home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pid_file = _pid_file(settings, name)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with (logs / f"{name}.log").open("ab") as sink:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    pid_file.write_text(f"{process.pid} {port}\n")
    return process


def stop_process(settings: Settings, name: str, timeout_s: float = 30) -> bool:
    """SIGTERM to the named process group (a model service flushes its prediction log), SIGKILL after
    ``timeout_s``; False when it was not running."""
    pid_file = _pid_file(settings, name)
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    alive = _alive(pid)
    if alive:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            log.warning("%s (pid %d) did not stop within %.0fs: killed", name, pid, timeout_s)
            os.killpg(pid, signal.SIGKILL)
        log.info("stopped %s (pid %d)", name, pid)
    pid_file.unlink(missing_ok=True)
    return alive


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
