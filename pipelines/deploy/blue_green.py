"""Deploying the model service: a Bento per model version, blue/green slots behind a HAProxy front door, a smoke
test before any traffic moves, and rollback.

The front door listens on ``127.0.0.1:{service_port}`` (3000) and forwards to one of two slots, ``blue`` on the
next port and ``green`` on the one after. ``deploy_service`` builds the Bento ``flight_delay:v{version}-{run}-{code}``
(the model version, its MLflow run, and a hash of the code it packs, so a code change is a new Bento; an existing
one is reused),
starts it in the idle slot beside the live one, smoke-tests it there (health, the model it loaded, golden
requests, a burst within a latency budget), then moves traffic through HAProxy's runtime API: the new slot is
enabled before the old one is put in maintenance, so in-flight requests finish where they started and new ones go
to the new slot; nothing is dropped. The old slot keeps running as the instant rollback. A failed smoke test stops
the new slot, leaves the live one serving, moves the registry's ``champion`` back to the version still served, and
raises ``DeployError`` saying why.

State (which slot is live, what each runs) is ``$PIPELINE_HOME/deploy/state.json``, replaced atomically (written
beside, fsynced, renamed) so a crash mid-deploy leaves the last good state; every deployment is appended to
``deploy/history.jsonl`` and recorded as ``deployment.*`` tags on the model version. Deploy, rollback and stop hold
``deploy/deploy.lock`` (shared by every process of the home): a second one at once waits for the first, up to
``DEPLOY_LOCK_TIMEOUT_S``, then fails saying which process holds it.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from pipelines.core.files import LockHeld, file_lock, write_atomically
from pipelines.core.processes import running, stop_process, wait_ready
from pipelines.core.settings import Settings, get_settings
from pipelines.deploy.bento import build_bento
from pipelines.deploy.front_door import (
    FRONT,
    SLOTS,
    deploy_dir,
    front_url,
    slot_health,
    slot_port,
    start_front,
    switch_traffic,
)
from pipelines.deploy.keeper import KEEPER, start_keeper, stop_keeper
from pipelines.deploy.service import DeployError, start_service
from pipelines.deploy.smoke import SmokePolicy, smoke_test

log = logging.getLogger(__name__)

DEPLOY_LOCK_TIMEOUT_S = 600.0
"""How long a deployment waits for another one to finish (a Bento build and a smoke test take about a minute)."""
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _holding_the_deploy_lock(step: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``step`` holding the home's deploy lock (``settings``: its first argument or keyword)."""

    @functools.wraps(step)
    def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        settings = kwargs.get("settings", args[0] if args else None) or get_settings()
        if not isinstance(settings, Settings):
            raise TypeError(f"{step.__name__} takes its settings first or as settings=, got {settings!r}")
        try:
            with file_lock(deploy_dir(settings) / "deploy.lock", DEPLOY_LOCK_TIMEOUT_S):
                return step(*args, **kwargs)
        except LockHeld as error:
            raise DeployError(f"another deployment is under way ({error}); nothing changed") from None

    return locked



# ---- state -------------------------------------------------------------------------------------------------


def read_state(settings: Settings) -> dict[str, Any]:
    path = deploy_dir(settings) / "state.json"
    state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"live": None, "slots": {}}
    for slot in list(state["slots"]):  # a slot whose process died serves nothing
        if running(settings, f"slot-{slot}") is None:
            del state["slots"][slot]
    if state["live"] not in state["slots"]:
        state["live"] = None
    return state


def _write_state(settings: Settings, state: dict[str, Any]) -> None:
    write_atomically(deploy_dir(settings) / "state.json", json.dumps(state, indent=2).encode())


def _record(settings: Settings, record: dict[str, Any]) -> None:
    with (deploy_dir(settings) / "history.jsonl").open("a") as history:
        history.write(json.dumps(record, default=str) + "\n")
    try:
        from mlflow import MlflowClient

        from pipelines.core.names import MODEL_NAME
        from pipelines.training.tracking import use_tracking

        use_tracking(settings)
        client = MlflowClient()
        for name in ("status", "bento", "slot", "at", "reason"):
            if record.get(name) is not None:
                client.set_model_version_tag(MODEL_NAME, record["model_version"], f"deployment.{name}",
                                             str(record[name])[:5000])
    except Exception:  # the record in history.jsonl is written; a registry hiccup must not undo a deployment
        log.exception("could not tag model version %s with its deployment", record["model_version"])


# ---- deploy, rollback, stop --------------------------------------------------------------------------------


def _champion_version(settings: Settings) -> str:
    from pipelines.core.names import CHAMPION, MODEL_NAME
    from pipelines.registry.register import alias_version

    version = alias_version(CHAMPION, settings)
    if version is None:
        raise DeployError(f"{MODEL_NAME} has no champion to deploy: train and promote a model first")
    return version


@_holding_the_deploy_lock
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
        _start_front_door(settings, live)  # a no-op unless the front door or its keeper died
        log.info("deploy_service: %s already live in slot %s", tag, live)
        return {"status": "unchanged", "model_version": version, "bento": tag, "slot": live,
                "url": front_url(settings)}
    _start_front_door(settings, live)
    target = "green" if live == "blue" else "blue"
    record: dict[str, Any] = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "model_version": version,
                              "bento": tag, "slot": target, "previous": state["slots"].get(live) if live else None}
    stop_process(settings, f"slot-{target}")  # what it ran was kept only for a rollback; that is now the live one
    state["slots"].pop(target, None)
    _write_state(settings, state)  # the keeper restarts what the state lists: not the slot being replaced
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


def _start_front_door(settings: Settings, live: str | None) -> None:
    """HAProxy and the slot keeper beside it, each started unless it runs."""
    start_front(settings, live)
    start_keeper(settings)


def _serving_now(state: dict[str, Any]) -> str:
    live = state["live"]
    if not live:
        return "nothing is serving"
    return f"version {state['slots'][live]['model_version']} is still serving (slot {live})"


def _restore_champion(settings: Settings, served: str, failed: str) -> dict[str, Any] | None:
    """After a failed deployment of ``failed``, make the registry say what is served: ``champion`` back to
    ``served`` when that is the previous champion."""
    from pipelines.core.names import CHAMPION, PREVIOUS_CHAMPION
    from pipelines.registry.register import alias_version, rollback_champion

    if alias_version(PREVIOUS_CHAMPION, settings) != served or alias_version(CHAMPION, settings) != failed:
        return None
    return rollback_champion(settings)


@_holding_the_deploy_lock
def rollback_deployment(settings: Settings | None = None) -> dict[str, Any]:
    """By hand (``make rollback``): ``previous_champion`` becomes ``champion`` again, and the front door serves it:
    at once when the standby slot still runs it, else by a blue/green deployment of it."""
    from pipelines.registry.register import rollback_champion

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


@_holding_the_deploy_lock
def stop_all(settings: Settings | None = None) -> dict[str, bool]:
    """Stop the front door and both slots (each flushes its prediction log)."""
    settings = settings or get_settings()
    stopped = {KEEPER: stop_keeper(settings)}  # first: it would restart the slots stopped below
    stopped |= {FRONT: stop_process(settings, FRONT)}
    stopped |= {slot: stop_process(settings, f"slot-{slot}") for slot in SLOTS}
    state_file = deploy_dir(settings) / "state.json"
    if state_file.exists():
        _write_state(settings, {"live": None, "slots": {}})
    return stopped


def status(settings: Settings | None = None) -> dict[str, Any]:
    """What the front door serves now, what its health checks say of each slot, and ``degraded`` (why, or None)
    when the live slot is not up: its backup (the previous version) serves meanwhile, or nothing does."""
    settings = settings or get_settings()
    state_file = deploy_dir(settings) / "state.json"
    deployed = json.loads(state_file.read_text()) if state_file.exists() else {"live": None, "slots": {}}
    state = read_state(settings)
    front = running(settings, FRONT)
    health = slot_health(settings) if front else {}
    keeper = running(settings, KEEPER)
    live = deployed["live"]
    degraded = None
    if live and health.get(live) != "UP":
        standby = next((slot for slot in deployed["slots"] if slot != live and health.get(slot) == "UP"), None)
        degraded = (f"live slot {live} is {health.get(live) or 'not running'}: "
                    + (f"slot {standby} (version {deployed['slots'][standby]['model_version']}) serves meanwhile"
                       if standby else "nothing serves")
                    + ("; the keeper restarts it" if keeper else "; no keeper runs"))
    return {"url": front_url(settings) if state["live"] and front else None, "front": front,
            "keeper": keeper, "health": health, "degraded": degraded, **state}
