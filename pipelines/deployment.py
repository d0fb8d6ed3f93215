"""Deploying the model service: a Bento per model version, blue/green slots behind a HAProxy front door, a smoke
test before any traffic moves, and rollback.

The front door listens on ``127.0.0.1:{service_port}`` (3000) and forwards to one of two slots, ``blue`` on the
next port and ``green`` on the one after. ``deploy_service`` builds the Bento ``flight_delay:v{version}-{code}``
(the model version, and a hash of the code it packs, so a code change is a new Bento; an existing one is reused),
starts it in the idle slot beside the live one, smoke-tests it there (health, the model it loaded, golden
requests, a burst within a latency budget), then moves traffic through HAProxy's runtime API: the new slot is
enabled before the old one is put in maintenance, so in-flight requests finish where they started and new ones go
to the new slot; nothing is dropped. The old slot keeps running as the instant rollback. A failed smoke test stops
the new slot, leaves the live one serving, moves the registry's ``champion`` back to the version still served, and
raises ``DeployError`` saying why.

State (which slot is live, what each runs) is ``$PIPELINE_HOME/deploy/state.json``; every deployment is appended
to ``deploy/history.jsonl`` and recorded as ``deployment.*`` tags on the model version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from pipelines.service_process import (
    running,
    service_env,
    start_process,
    start_service,
    stop_process,
    wait_ready,
)
from pipelines.serving import SMOKE_TEST_HEADER
from pipelines.settings import PROJECT_ROOT, Settings, get_settings

log = logging.getLogger(__name__)

SLOTS = ("blue", "green")
FRONT = "front"
BENTOFILE = PROJECT_ROOT / "services" / "bentofile.yaml"
BENTO_NAME = "flight_delay"
# What the bentofile packs: its code hash is part of the Bento's tag.
BENTO_SOURCES = ("services/*.py", "services/README.md", "services/requirements.txt", "services/bentofile.yaml",
                 "pipelines/*.py", "feature_repo/*.py", "feature_repo/*.yaml", "feature_repo/profiles/*.yaml")


class DeployError(RuntimeError):
    """A deployment that did not go live; the message says why and what is serving now."""


@dataclass(frozen=True)
class SmokePolicy:
    """What a new slot must show before it gets traffic."""

    golden_flights: int = 20
    """Real flights of the latest validated day, scored by the slot and by the registry's model in this process
    on the same online features; the answers must agree within ``tolerance``."""
    tolerance: float = 1e-4
    burst_requests: int = 200
    burst_concurrency: int = 8
    p99_budget_ms: float = 250.0
    """Single-flight p99 during the burst. Loose on purpose: the old slot is serving beside it on the same cores."""


# ---- Bento -------------------------------------------------------------------------------------------------


def code_hash() -> str:
    """sha256 over the files the Bento packs (names and contents), first 10 hex digits."""
    digest = hashlib.sha256()
    for pattern in BENTO_SOURCES:
        for path in sorted(PROJECT_ROOT.glob(pattern)):
            digest.update(str(path.relative_to(PROJECT_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:10]


def bento_tag(version: str) -> str:
    return f"{BENTO_NAME}:v{version}-{code_hash()}"


def build_bento(settings: Settings, version: str) -> str:
    """The Bento of model ``version`` and the current code, built once (``bentoml build``; about 4 s)."""
    tag = bento_tag(version)
    store = settings.pipeline_home / "bentoml" / "bentos" / BENTO_NAME / tag.split(":", 1)[1]
    if (store / "bento.yaml").exists():
        log.info("bento %s already built", tag)
        return tag
    command = [str(Path(sys.executable).parent / "bentoml"), "build", "-f", str(BENTOFILE), "--version",
               tag.split(":", 1)[1], "--arg", f"model_version={version}", "--label", f"model_version={version}",
               "--output", "tag", str(PROJECT_ROOT)]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=service_env(settings), capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
        raise DeployError(f"bentoml build failed: {(result.stderr or result.stdout).strip()[-2000:]}")
    log.info("built bento %s", tag)
    return tag


# ---- the front door (HAProxy) ------------------------------------------------------------------------------


def _deploy_dir(settings: Settings) -> Path:
    path = settings.pipeline_home / "deploy"
    path.mkdir(parents=True, exist_ok=True)
    return path


def slot_port(settings: Settings, slot: str) -> int:
    return settings.service_port + 1 + SLOTS.index(slot)


def _front_config(settings: Settings, live: str | None) -> str:
    """HAProxy's configuration; the runtime API changes which slot is enabled, and this file is rewritten with the
    same state so a restarted front door comes back the same way."""
    socket_path = _deploy_dir(settings) / "haproxy.sock"
    servers = "\n".join(f"    server {slot} 127.0.0.1:{slot_port(settings, slot)}{'' if slot == live else ' disabled'}"
                        for slot in SLOTS)
    return f"""# Written by pipelines/deployment.py; the runtime API ({socket_path.name}) switches the live slot.
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
    path = _deploy_dir(settings) / "haproxy.cfg"
    path.write_text(_front_config(settings, live))
    return path


def haproxy(settings: Settings, command: str) -> str:
    """One command on HAProxy's runtime API (unix socket)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(5)
        connection.connect(str(_deploy_dir(settings) / "haproxy.sock"))
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


# ---- state -------------------------------------------------------------------------------------------------


def read_state(settings: Settings) -> dict[str, Any]:
    path = _deploy_dir(settings) / "state.json"
    state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"live": None, "slots": {}}
    for slot in list(state["slots"]):  # a slot whose process died serves nothing
        if running(settings, f"slot-{slot}") is None:
            del state["slots"][slot]
    if state["live"] not in state["slots"]:
        state["live"] = None
    return state


def _write_state(settings: Settings, state: dict[str, Any]) -> None:
    path = _deploy_dir(settings) / "state.json"
    path.write_text(json.dumps(state, indent=2))


def _record(settings: Settings, record: dict[str, Any]) -> None:
    with (_deploy_dir(settings) / "history.jsonl").open("a") as history:
        history.write(json.dumps(record, default=str) + "\n")
    try:
        from mlflow import MlflowClient

        from pipelines.registry import MODEL_NAME
        from pipelines.tracking import use_tracking

        use_tracking(settings)
        client = MlflowClient()
        for name in ("status", "bento", "slot", "at", "reason"):
            if record.get(name) is not None:
                client.set_model_version_tag(MODEL_NAME, record["model_version"], f"deployment.{name}",
                                             str(record[name])[:5000])
    except Exception:  # the record in history.jsonl is written; a registry hiccup must not undo a deployment
        log.exception("could not tag model version %s with its deployment", record["model_version"])


# ---- smoke test --------------------------------------------------------------------------------------------


def golden_requests(settings: Settings, count: int) -> list[dict[str, Any]]:
    """Real flights of the latest validated day, as callers send them."""
    from pipelines.lake import open_lake, partition_key
    from pipelines.serving import requests_from_flights

    lake = open_lake(settings)
    days = lake.partitions("validated", "flights")
    if not days:
        raise DeployError("no validated flights in the lake to smoke-test with")
    flights = lake.read_parquet(partition_key("validated", "flights", days[-1], "data.parquet"))
    return requests_from_flights(flights.sample(n=min(count, len(flights)), random_state=0).sort_index())


def _expected(settings: Settings, version: str, flights: list[dict[str, Any]]) -> list[float]:
    """What the registry's model ``version`` answers for ``flights`` on the online store's features, computed in
    this process: the slot must agree, or it runs other code, another model or other features."""
    from pipelines.feature_store import online_features
    from pipelines.serving import FlightRequest, flight_entities, load_champion

    model = load_champion(settings, version).model
    features = online_features(flight_entities([FlightRequest(**flight) for flight in flights]), settings)
    return [float(p) for p in model.predict_proba(features)]


def smoke_test(settings: Settings, url: str, version: str, policy: SmokePolicy | None = None) -> dict[str, Any]:
    """Checks on a slot before it gets traffic; ``failures`` lists each one that failed, in words."""
    policy = policy or SmokePolicy()
    failures: list[str] = []
    checks: dict[str, Any] = {}
    with requests.Session() as http:
        http.headers[SMOKE_TEST_HEADER] = "1"  # answered, not logged as traffic
        for path in ("/healthz", "/readyz"):
            status = http.get(f"{url}{path}", timeout=10).status_code
            checks[path] = status
            if status != 200:
                failures.append(f"GET {path} answered {status}")
        served = http.post(f"{url}/model", json={}, timeout=10).json().get("version")
        checks["model_version"] = served
        if served != version:
            failures.append(f"/model says version {served}, expected {version}")

        flights = golden_requests(settings, policy.golden_flights)
        response = http.post(f"{url}/predict", json={"flights": flights}, timeout=30)
        if response.status_code != 200:
            failures.append(f"golden request answered {response.status_code}: {response.text[:300]}")
        else:
            answers = response.json()
            got = [a["probability"] for a in answers]
            expected = _expected(settings, version, flights)
            worst = max(abs(g - e) for g, e in zip(got, expected, strict=True))
            checks["golden"] = {"flights": len(flights), "max_abs_difference": worst,
                                "mean_probability": round(statistics.fmean(got), 4)}
            if not all(0.0 <= p <= 1.0 and math.isfinite(p) for p in got):
                failures.append("golden answers include probabilities outside [0, 1]")
            if worst > policy.tolerance:
                failures.append(f"golden answers differ from the registry model by up to {worst:.6f} "
                                f"(tolerance {policy.tolerance})")
            if any(a["model_version"] != version for a in answers):
                failures.append("golden answers name another model version")
        bad = http.post(f"{url}/predict", json={"flights": [flights[0] | {"dest": "XXX"}]}, timeout=10)
        checks["bad_request"] = bad.status_code
        if bad.status_code != 400 or "dest" not in bad.text:
            failures.append(f"an unknown airport answered {bad.status_code}, expected a 400 naming 'dest'")

    burst = _burst(url, flights, policy)
    checks["burst"] = burst
    if burst["errors"]:
        failures.append(f"{burst['errors']} of {policy.burst_requests} burst requests failed")
    if burst["p99_ms"] > policy.p99_budget_ms:
        failures.append(f"burst p99 {burst['p99_ms']:.1f} ms is over the budget of {policy.p99_budget_ms:.1f} ms")
    return {"passed": not failures, "failures": failures, "checks": checks, "policy": asdict(policy)}


def _burst(url: str, flights: list[dict[str, Any]], policy: SmokePolicy) -> dict[str, Any]:
    """``burst_requests`` single-flight requests from ``burst_concurrency`` clients: latency and errors."""
    bodies = [{"flights": [flights[i % len(flights)]]} for i in range(policy.burst_requests)]
    per_client = [bodies[i::policy.burst_concurrency] for i in range(policy.burst_concurrency)]

    def client(batch: list[dict[str, Any]]) -> tuple[list[float], int]:
        latencies, errors = [], 0
        with requests.Session() as http:
            http.headers[SMOKE_TEST_HEADER] = "1"
            for body in batch:
                started = time.perf_counter()
                try:
                    ok = http.post(f"{url}/predict", json=body, timeout=10).status_code == 200
                except requests.RequestException:
                    ok = False
                latencies.append((time.perf_counter() - started) * 1000)
                errors += not ok
        return latencies, errors

    with ThreadPoolExecutor(policy.burst_concurrency) as pool:
        results = list(pool.map(client, per_client))
    latencies = sorted(ms for batch, _ in results for ms in batch)
    return {"requests": len(latencies), "errors": sum(errors for _, errors in results),
            "p50_ms": round(latencies[len(latencies) // 2], 2),
            "p99_ms": round(latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)], 2)}


# ---- deploy, rollback, stop --------------------------------------------------------------------------------


def _champion_version(settings: Settings) -> str:
    from pipelines.registry import CHAMPION, MODEL_NAME, alias_version

    version = alias_version(CHAMPION, settings)
    if version is None:
        raise DeployError(f"{MODEL_NAME} has no champion to deploy: train and promote a model first")
    return version


def deploy_service(settings: Settings | None = None, version: str | None = None, force: bool = False,
                   policy: SmokePolicy | None = None, restore_aliases: bool = True) -> dict[str, Any]:
    """Serve model ``version`` (default: the ``champion``) at the front door, blue/green. Nothing happens when the
    live slot already serves that version with the current code, unless ``force``."""
    settings = settings or get_settings()
    version = str(version or _champion_version(settings))
    state = read_state(settings)
    live = state["live"]
    tag = build_bento(settings, version)
    if live and state["slots"][live]["bento"] == tag and not force:
        start_front(settings, live)  # a no-op unless the front door died
        log.info("deploy_service: %s already live in slot %s", tag, live)
        return {"status": "unchanged", "model_version": version, "bento": tag, "slot": live,
                "url": front_url(settings)}
    start_front(settings, live)
    target = "green" if live == "blue" else "blue"
    record: dict[str, Any] = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "model_version": version,
                              "bento": tag, "slot": target, "previous": state["slots"].get(live) if live else None}
    stop_process(settings, f"slot-{target}")  # what it ran was kept only for a rollback; that is now the live one
    started = time.perf_counter()
    try:
        start_service(settings, slot_port(settings, target), name=f"slot-{target}", target=tag)
    except Exception as error:
        record.update(status="failed", reason=f"the new slot did not start: {error}")
        _record(settings, record)
        raise DeployError(f"{tag} did not start in slot {target}: {error}; "
                          f"{_serving_now(state)} (log: {settings.pipeline_home / 'logs' / f'slot-{target}.log'})"
                          ) from error
    record["start_s"] = round(time.perf_counter() - started, 2)
    smoke = smoke_test(settings, f"http://127.0.0.1:{slot_port(settings, target)}", version, policy)
    record["smoke_test"] = smoke
    if not smoke["passed"]:
        stop_process(settings, f"slot-{target}")
        record.update(status="rolled_back", reason="smoke test failed: " + "; ".join(smoke["failures"]))
        if live and restore_aliases:
            record["aliases"] = _restore_champion(settings, state["slots"][live]["model_version"], version)
        _record(settings, record)
        raise DeployError(f"{tag} failed its smoke test ({'; '.join(smoke['failures'])}); {_serving_now(state)}")
    record["switch"] = switch_traffic(settings, target, live)
    state["slots"][target] = {"model_version": version, "bento": tag, "port": slot_port(settings, target),
                              "since": record["at"]}
    state["live"] = target
    _write_state(settings, state)
    record.update(status="live", url=front_url(settings))
    _record(settings, record)
    log.info("deploy_service: %s live in slot %s at %s (smoke test p99 %.1f ms; previous kept in slot %s)", tag,
             target, front_url(settings), smoke["checks"]["burst"]["p99_ms"], live or "none")
    return record


def _serving_now(state: dict[str, Any]) -> str:
    live = state["live"]
    if not live:
        return "nothing is serving"
    return f"version {state['slots'][live]['model_version']} is still serving (slot {live})"


def _restore_champion(settings: Settings, served: str, failed: str) -> dict[str, Any] | None:
    """After a failed deployment of ``failed``, make the registry say what is served: ``champion`` back to
    ``served`` when that is the previous champion."""
    from pipelines.registry import CHAMPION, PREVIOUS, alias_version, rollback_champion

    if alias_version(PREVIOUS, settings) != served or alias_version(CHAMPION, settings) != failed:
        return None
    return rollback_champion(settings)


def front_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.service_port}"


def rollback_deployment(settings: Settings | None = None) -> dict[str, Any]:
    """By hand (``make rollback``): ``previous_champion`` becomes ``champion`` again, and the front door serves it:
    at once when the standby slot still runs it, else by a blue/green deployment of it."""
    from pipelines.registry import rollback_champion

    settings = settings or get_settings()
    aliases = rollback_champion(settings)
    state = read_state(settings)
    if state["live"] is None:
        return {"aliases": aliases, "service": "not running: nothing to switch"}
    standby = next((slot for slot, info in state["slots"].items()
                    if slot != state["live"] and info["model_version"] == aliases["champion"]), None)
    if standby is None:
        return {"aliases": aliases, "service": deploy_service(settings, aliases["champion"], restore_aliases=False)}
    wait_ready(f"http://127.0.0.1:{slot_port(settings, standby)}", timeout_s=10)
    switch = switch_traffic(settings, standby, state["live"])
    state["live"] = standby
    _write_state(settings, state)
    record = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "model_version": aliases["champion"],
              "bento": state["slots"][standby]["bento"], "slot": standby, "status": "live",
              "reason": f"rollback by hand from version {aliases['rolled_back']}", "switch": switch}
    _record(settings, record)
    return {"aliases": aliases, "service": record}


def stop_all(settings: Settings | None = None) -> dict[str, bool]:
    """Stop the front door and both slots (each flushes its prediction log)."""
    settings = settings or get_settings()
    stopped = {FRONT: stop_process(settings, FRONT)}
    stopped |= {slot: stop_process(settings, f"slot-{slot}") for slot in SLOTS}
    state_file = _deploy_dir(settings) / "state.json"
    if state_file.exists():
        _write_state(settings, {"live": None, "slots": {}})
    return stopped


def status(settings: Settings | None = None) -> dict[str, Any]:
    """What the front door serves now."""
    settings = settings or get_settings()
    state = read_state(settings)
    front = running(settings, FRONT)
    return {"url": front_url(settings) if state["live"] and front else None, "front": front, **state}
