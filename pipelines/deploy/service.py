"""The model service as a process of the home: its environment, started from source (``bentoml serve``) or from a
built Bento, stopped by pid; and ``DeployError``, what every deployment step raises with the reason.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from pipelines.core.processes import start_process, stop_process, wait_ready
from pipelines.core.settings import Settings, get_settings

log = logging.getLogger(__name__)

SERVICE = "services.flight_delay_service:FlightDelayService"


def smoke_token(settings: Settings) -> str:
    """The home's smoke-test token (``deploy/smoke_token``, made once, readable by its owner only). A request
    whose ``X-Smoke-Test`` header carries it is answered but not logged as traffic; any other value of the header
    changes nothing, so a client cannot hide its requests from the prediction log."""
    path = settings.pipeline_home / "deploy" / "smoke_token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def service_env(settings: Settings) -> dict[str, str]:
    """The environment a service process needs: every setting that is set here, the home's BentoML store and its
    smoke-test token."""
    env = dict(os.environ, BENTOML_HOME=str(settings.pipeline_home / "bentoml"), BENTOML_DO_NOT_TRACK="True",
               SMOKE_TEST_TOKEN=smoke_token(settings))
    env.update({name.upper(): value.get_secret_value() if isinstance(value, SecretStr) else str(value)
                for name, value in settings.model_dump().items() if value is not None})
    return env


def start_service(settings: Settings | None = None, port: int | None = None, name: str = "service",
                  target: str = SERVICE) -> dict[str, Any]:
    """(Re)start the named model service on 127.0.0.1:``port`` and wait until it answers. ``target`` is the
    service's import path (it resolves ``champion``) or a Bento tag (it serves the version it was built for)."""
    settings = settings or get_settings()
    port = port or settings.service_port
    stop_process(settings, name)
    command = [str(Path(sys.executable).parent / "bentoml"), "serve", target, "--host", "127.0.0.1",
               "--port", str(port)]
    process = start_process(settings, name, command, port, service_env(settings))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
    except Exception:
        stop_process(settings, name)
        raise
    log.info("%s ready at %s (pid %d, %s)", name, url, process.pid, target)
    return {"url": url, "pid": process.pid, "target": target,
            "log": str(settings.pipeline_home / "logs" / f"{name}.log")}


def stop_service(settings: Settings | None = None, name: str = "service") -> bool:
    return stop_process(settings or get_settings(), name)


class DeployError(RuntimeError):
    """A deployment that did not go live; the message says why and what is serving now."""
