"""The front door: HAProxy on the service port in front of the blue and green slots, its configuration, and
traffic switched between slots through its runtime API with the old slot's sessions drained.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from pipelines.core.processes import running, start_process
from pipelines.core.settings import Settings
from pipelines.deploy.service import DeployError

log = logging.getLogger(__name__)

SLOTS = ("blue", "green")
FRONT = "front"


# ---- the front door (HAProxy) ------------------------------------------------------------------------------


def deploy_dir(settings: Settings) -> Path:
    path = settings.pipeline_home / "deploy"
    path.mkdir(parents=True, exist_ok=True)
    return path


def slot_port(settings: Settings, slot: str) -> int:
    return settings.service_port + 1 + SLOTS.index(slot)


def _front_config(settings: Settings, live: str | None) -> str:
    """HAProxy's configuration; the runtime API changes which slot is enabled, and this file is rewritten with the
    same state so a restarted front door comes back the same way."""
    socket_path = deploy_dir(settings) / "haproxy.sock"
    servers = "\n".join(f"    server {slot} 127.0.0.1:{slot_port(settings, slot)}{'' if slot == live else ' disabled'}"
                        for slot in SLOTS)
    return f"""# Written by pipelines/deploy/front_door.py; the runtime API ({socket_path.name}) switches the live slot.
global
    nbthread 1
    maxconn 4096
    stats socket {socket_path} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-keep-alive 30s
    # A request that could not reach a slot is sent again rather than failed.
    retries 3
    retry-on conn-failure empty-response
    option redispatch

frontend model_service
    bind 127.0.0.1:{settings.service_port}
    default_backend slots

backend slots
{servers}
"""


def _write_front_config(settings: Settings, live: str | None) -> Path:
    path = deploy_dir(settings) / "haproxy.cfg"
    path.write_text(_front_config(settings, live))
    return path


def haproxy(settings: Settings, command: str) -> str:
    """One command on HAProxy's runtime API (unix socket)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(5)
        connection.connect(str(deploy_dir(settings) / "haproxy.sock"))
        connection.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def _front_sessions(settings: Settings, slot: str) -> int:
    """Requests the front door has open to ``slot`` now (``scur`` of ``show stat``)."""
    lines = haproxy(settings, "show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == "slots" and row.get("svname") == slot:
            return int(row.get("scur") or 0)
    return 0


def start_front(settings: Settings, live: str | None) -> dict[str, Any]:
    """The HAProxy front door on ``service_port``, started unless it runs already."""
    current = running(settings, FRONT)
    if current:
        return current
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        raise DeployError("haproxy is not installed (Debian: apt-get install haproxy; make install does it as root)")
    config = _write_front_config(settings, live)
    checked = subprocess.run([binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True)
    if checked.returncode != 0:
        raise DeployError(f"haproxy rejected {config}: {checked.stderr.strip()}")
    process = start_process(settings, FRONT, [binary, "-db", "-f", str(config)], settings.service_port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DeployError(f"haproxy exited with code {process.returncode}; see its log in "
                              f"{settings.pipeline_home / 'logs' / 'front.log'}")
        try:
            haproxy(settings, "show info")
            break
        except OSError:  # the socket is not there yet
            time.sleep(0.05)
    log.info("front door (HAProxy) on 127.0.0.1:%d (pid %d)", settings.service_port, process.pid)
    return {"pid": process.pid, "port": settings.service_port}


def switch_traffic(settings: Settings, to: str, away_from: str | None, drain_s: float = 30) -> dict[str, Any]:
    """Send new requests to slot ``to``: enable it first, then put ``away_from`` in maintenance (its in-flight
    requests finish there) and wait until it has none left."""
    answer = haproxy(settings, f"set server slots/{to} state ready")
    if answer.strip():
        raise DeployError(f"haproxy refused to enable {to}: {answer.strip()}")
    drained_ms = 0.0
    if away_from and away_from != to:
        haproxy(settings, f"set server slots/{away_from} state maint")
        started = time.monotonic()
        while _front_sessions(settings, away_from) and time.monotonic() - started < drain_s:
            time.sleep(0.02)
        drained_ms = (time.monotonic() - started) * 1000
    _write_front_config(settings, to)
    return {"live": to, "drained": away_from, "drain_ms": round(drained_ms, 1)}


def front_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.service_port}"
