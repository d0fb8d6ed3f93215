"""The front door: HAProxy on the service port in front of the blue and green slots, its configuration, and
traffic switched between slots through its runtime API with the old slot's sessions drained.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def _live_map(settings: Settings) -> Path:
    return deploy_dir(settings) / "live.map"


def _backend(slot: str) -> str:
    return f"via_{slot}"


def _front_config(settings: Settings, live: str | None) -> str:
    """HAProxy's configuration. Each slot has a backend of its own, where it is the server and the other slot its
    backup; a map entry (``live.map``, changed at runtime by ``set map``) picks the live slot's backend. Both slots
    are health-checked every second, and a connection the live slot refuses or drops marks it down at once: its
    backend then sends everything to the other slot, when that one is up (the previous version, kept for a
    rollback); the slot keeper (``pipelines.deploy.keeper``) restarts the dead one, and the backend takes it back
    after two good checks. The file is rewritten with the live slot at each switch, so a restarted front door
    comes back the same way."""
    socket_path = deploy_dir(settings) / "haproxy.sock"
    backends = []
    for slot in SLOTS:
        other = SLOTS[1 - SLOTS.index(slot)]
        backends.append(f"""backend {_backend(slot)}
    server {slot} 127.0.0.1:{slot_port(settings, slot)} check
    server {other} 127.0.0.1:{slot_port(settings, other)} check backup
""")
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
    timeout check 2s
    # A request that could not reach a slot is sent again, to the other slot once the first is marked down.
    retries 3
    retry-on conn-failure empty-response
    option redispatch 1
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 1s fastinter 500ms fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down

frontend model_service
    bind 127.0.0.1:{settings.service_port}
    use_backend %[str(live),map({_live_map(settings)},{_backend(live or SLOTS[0])})]

{chr(10).join(backends)}"""


def _write_front_config(settings: Settings, live: str | None) -> Path:
    _live_map(settings).write_text(f"live {_backend(live or SLOTS[0])}\n")
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


def _server_stats(settings: Settings) -> list[dict[str, str]]:
    """HAProxy's ``show stat``: a row per frontend, backend and server."""
    lines = haproxy(settings, "show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]


def _front_sessions(settings: Settings, slot: str) -> int:
    """Requests the front door has open to ``slot`` now (``scur`` of ``show stat``, over both backends)."""
    return sum(int(row.get("scur") or 0) for row in _server_stats(settings)
               if row.get("pxname", "").startswith("via_") and row.get("svname") == slot)


def slot_health(settings: Settings) -> dict[str, str]:
    """What the front door's health checks say of each slot now: ``UP``, ``DOWN`` (or a transition such as
    ``UP 1/2``); empty when the front door does not answer."""
    try:
        rows = _server_stats(settings)
    except OSError:
        return {}
    return {row["svname"]: row.get("status", "") for row in rows if row.get("pxname") == _backend(row["svname"])}


@contextmanager
def held_out_of_traffic(settings: Settings, slot: str, drain_s: float = 10) -> Iterator[None]:
    """``slot`` in maintenance on both backends while the block runs: the front door sends it no new request, and
    reuses none of its idle connections, so a process ended meanwhile (an orphaned worker, by the keeper) finishes
    the requests it holds and closes the rest unused; entered once those in flight have ended (at most
    ``drain_s``). Without this, a request sent on an idle connection the ending worker was closing got no answer
    (``tests/integration/test_deployment.py``, a lone slot killed under load). Nothing happens when the front
    door does not answer (stopped: nothing to hold)."""
    servers = [f"{_backend(backend_slot)}/{slot}" for backend_slot in SLOTS]
    try:
        for server in servers:
            haproxy(settings, f"set server {server} state maint")
    except OSError:
        yield
        return
    try:
        deadline = time.monotonic() + drain_s
        while _front_sessions(settings, slot) and time.monotonic() < deadline:
            time.sleep(0.02)
        yield
    finally:
        for server in servers:  # back in rotation; the health checks take it back once it answers
            haproxy(settings, f"set server {server} state ready")


def start_front(settings: Settings, live: str | None) -> dict[str, Any]:
    """The HAProxy front door on ``service_port``, started unless it runs already."""
    current = running(settings, FRONT)
    if current:
        return current
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        raise DeployError("haproxy is not installed (Debian: apt-get install haproxy; make install does it as root)")
    config = _write_front_config(settings, live)
    # bandit B603: haproxy's path, no shell
    checked = subprocess.run([binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True)  # nosec B603
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
    """Send new requests to slot ``to`` (its backend becomes the live one in ``live.map``); the requests in flight
    at ``away_from`` finish there, and this waits until it has none left. Nothing is put in maintenance: the old
    slot stays the new one's backup."""
    deadline = time.monotonic() + 15  # two good checks a second apart, once the slot answers
    while slot_health(settings).get(to) != "UP":
        if time.monotonic() > deadline:
            raise DeployError(f"the front door's health checks do not see slot {to} up: {slot_health(settings)}")
        time.sleep(0.1)
    answer = haproxy(settings, f"set map {_live_map(settings)} live {_backend(to)}")
    if answer.strip():
        raise DeployError(f"haproxy refused to switch to {to}: {answer.strip()}")
    drained_ms = 0.0
    if away_from and away_from != to:
        started = time.monotonic()
        while _front_sessions(settings, away_from) and time.monotonic() - started < drain_s:
            time.sleep(0.02)
        drained_ms = (time.monotonic() - started) * 1000
    _write_front_config(settings, to)
    return {"live": to, "drained": away_from, "drain_ms": round(drained_ms, 1)}


def front_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.service_port}"
