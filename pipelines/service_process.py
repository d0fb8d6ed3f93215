"""The model service as a background process on this machine: start it, wait until it is ready, stop it by its
process id. ``make run`` ends with it running; ``make stop`` stops it.

The process is ``bentoml serve services.flight_delay_service:FlightDelayService`` in its own session (so stopping it
stops its workers too), with the settings passed through the environment, its output in
``$PIPELINE_HOME/logs/service.log`` and its process id in ``$PIPELINE_HOME/service.pid``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from pipelines.settings import PROJECT_ROOT, Settings, get_settings

log = logging.getLogger(__name__)

DEFAULT_PORT = 3000
SERVICE = "services.flight_delay_service:FlightDelayService"


def _pid_file(settings: Settings) -> Path:
    return settings.pipeline_home / "service.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_service(settings: Settings | None = None, timeout_s: float = 30) -> bool:
    """Stop the service this home started (SIGTERM to its process group, so it flushes its prediction log)."""
    settings = settings or get_settings()
    pid_file = _pid_file(settings)
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    if _alive(pid):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    log.info("stopped the model service (pid %d)", pid)
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
        time.sleep(0.5)
    raise TimeoutError(f"the model service at {url} was not ready within {timeout_s:.0f}s")


def start_service(settings: Settings | None = None, port: int = DEFAULT_PORT) -> dict[str, Any]:
    """(Re)start the service of this home on 127.0.0.1:``port`` and wait until it answers."""
    settings = settings or get_settings()
    stop_service(settings)
    logs = settings.pipeline_home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # The service reads its settings from the environment: pass on every one that is set here.
    env = dict(os.environ, BENTOML_HOME=str(settings.pipeline_home / "bentoml"))
    env.update({name.upper(): str(value) for name, value in settings.model_dump().items() if value is not None})
    command = [str(Path(sys.executable).parent / "bentoml"), "serve", SERVICE, "--host", "127.0.0.1",
               "--port", str(port)]
    with (logs / "service.log").open("ab") as sink:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    _pid_file(settings).write_text(f"{process.pid} {port}\n")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
    except Exception:
        stop_service(settings)
        raise
    log.info("model service ready at %s (pid %d)", url, process.pid)
    return {"url": url, "pid": process.pid, "log": str(logs / "service.log")}


def restart_if_running(settings: Settings | None = None) -> dict[str, Any] | None:
    """Restart the service this home runs (it resolves ``champion`` when it starts); None when none runs."""
    settings = settings or get_settings()
    pid_file = _pid_file(settings)
    if not pid_file.exists() or not _alive(int(pid_file.read_text().split()[0])):
        return None
    return start_service(settings, port=int(pid_file.read_text().split()[1]))
