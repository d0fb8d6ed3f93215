"""The slot keeper: restarts a model-service slot whose process died, within seconds.

The front door moves traffic off a dead live slot by itself when the other slot runs (its backup); when there is
no other slot (after a first deploy) nothing would serve until someone ran ``make serve``. The keeper is a small
process started with the front door (``python -m pipelines.deploy.keeper``, the process ``keeper`` of the home).
Every ``CHECK_INTERVAL_S`` it reads ``deploy/state.json`` and restarts, in the same slot and port and from the same
Bento, every slot the state lists whose process is gone, so the service comes back as it was deployed; each
restart is appended to ``deploy/history.jsonl`` (``status: restarted``). It holds the deploy lock while it does
(it never races a deployment, rollback or stop, which change the slots on purpose) and skips a round while
another holds it. ``stop_all`` stops it first; it ends by itself when the front door no longer runs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

from pipelines.core.files import LockHeld, file_lock
from pipelines.core.processes import running, start_process, stop_process
from pipelines.core.settings import Settings, get_settings
from pipelines.deploy.front_door import FRONT, deploy_dir, held_out_of_traffic
from pipelines.deploy.service import service_env, start_service

log = logging.getLogger(__name__)

KEEPER = "keeper"
CHECK_INTERVAL_S = 1.0


def restart_dead_slots(settings: Settings) -> list[dict[str, Any]]:
    """One round: restart each slot the deploy state lists whose process is gone; what was restarted (none while
    a deployment holds the lock)."""
    state_file = deploy_dir(settings) / "state.json"
    restarted: list[dict[str, Any]] = []
    try:
        with file_lock(deploy_dir(settings) / "deploy.lock", timeout_s=0):
            if not state_file.exists():
                return restarted
            state = json.loads(state_file.read_text())
            for slot, info in sorted(state.get("slots", {}).items()):
                if running(settings, f"slot-{slot}") is not None:
                    continue
                log.warning("slot %s (%s) is not running: restarting it", slot, info.get("bento"))
                started = time.perf_counter()
                record: dict[str, Any] = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "slot": slot,
                                          "model_version": info.get("model_version"), "bento": info.get("bento"),
                                          "live": slot == state.get("live")}
                try:
                    with held_out_of_traffic(settings, slot):  # a worker orphaned by a dead supervisor ends cleanly
                        start_service(settings, int(info["port"]), name=f"slot-{slot}", target=str(info["bento"]))
                    record.update(status="restarted", restart_s=round(time.perf_counter() - started, 2))
                except Exception as error:  # tried again next round; the log and the history say why
                    record.update(status="restart_failed", reason=str(error))
                    log.exception("slot %s did not restart", slot)
                with (deploy_dir(settings) / "history.jsonl").open("a") as history:
                    history.write(json.dumps(record) + "\n")
                restarted.append(record)
    except LockHeld:  # a deployment is changing the slots on purpose
        pass
    return restarted


def keep_slots(settings: Settings, interval_s: float = CHECK_INTERVAL_S) -> None:
    """Restart dead slots forever (until SIGTERM)."""
    log.info("slot keeper for %s: checking every %.1f s", deploy_dir(settings) / "state.json", interval_s)
    while True:
        if running(settings, FRONT) is None:  # stopped (or its home deleted): nothing left to keep
            log.info("no front door runs: the slot keeper ends")
            return
        try:
            restart_dead_slots(settings)
        except Exception:  # a bad state file or a full disk must not end the keeper: said, tried again
            log.exception("slot keeper round failed")
        time.sleep(interval_s)


def start_keeper(settings: Settings) -> dict[str, int]:
    """The home's keeper, started unless it runs already."""
    current = running(settings, KEEPER)
    if current:
        return current
    process = start_process(settings, KEEPER, [sys.executable, "-m", "pipelines.deploy.keeper"], 0,
                            service_env(settings))
    log.info("slot keeper started (pid %d)", process.pid)
    return {"pid": process.pid, "port": 0}


def stop_keeper(settings: Settings) -> bool:
    return stop_process(settings, KEEPER, timeout_s=10)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keep_slots(get_settings())
