"""Leases on lake partitions: one run at a time works on a day, across the tasks (and machines) of its chain.

Two ingestion runs of the same day (the scheduled one and a manual re-run, say) would otherwise interleave: one
lands the day's file while the other validates or promotes it. A lease is a small object in the lake,
``leases/{name}/date=YYYY-MM-DD.json``, created only if absent (``Lake.create``: an exclusive link on disk, a
conditional PUT on S3), holding the run's key and when it expires. The run's first task takes the leases of its days
(waiting its turn while another run holds them), the tasks after it check they still hold them, and the task that
ends the critical part gives them back. A retried task of the same run finds its own lease and goes on; a run that
died leaves a lease that expires (``LEASE_TTL``), after which the next run takes it over.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta

from pipelines.core.lake import Lake

log = logging.getLogger(__name__)

# Longer than a healthy chain (ingest and validation of a 90-day window take minutes), shorter than an operator's
# patience: a run that died holding a lease blocks its days this long at most.
LEASE_TTL = timedelta(hours=2)
WAIT_POLL_S = 5.0


class DayLeased(RuntimeError):
    """Another run holds the lease of a day (and did not give it back within the wait)."""


def lease_key(name: str, day: date) -> str:
    return f"leases/{name}/date={day.isoformat()}.json"


def _read(lake: Lake, key: str) -> dict | None:
    try:
        return json.loads(lake.read_text(key))
    except FileNotFoundError:
        return None


def _take(lake: Lake, key: str, holder: str, now: datetime, ttl: timedelta) -> dict | None:
    """Take the lease at ``key`` for ``holder``; None when taken, else the record of whoever holds it."""
    record = {"holder": holder, "taken": now.isoformat(), "expires": (now + ttl).isoformat()}
    for _ in range(3):  # a lease given back or expired between our reads: look again
        if lake.create(key, json.dumps(record).encode()):
            return None
        current = _read(lake, key)
        if current is None:
            continue
        if current.get("holder") == holder:
            return None
        if datetime.fromisoformat(current["expires"]) <= now:
            # The holder died: take over. (Two runs taking over the same expired lease in the same instant could
            # both delete and create; a lease outlives a healthy run by far, so this needs two crashes and a race.)
            log.warning("lease %s of %s expired at %s: taken over by %s", key, current.get("holder"),
                        current["expires"], holder)
            lake.delete(key)
            continue
        return current
    return _read(lake, key)


def acquire_days(lake: Lake, name: str, days: Iterable[date], holder: str, *, wait_s: float = 900.0,
                 ttl: timedelta = LEASE_TTL, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 sleep: Callable[[float], None] = time.sleep) -> list[date]:
    """Take the leases of ``days`` for ``holder``, in date order (so two runs over overlapping windows cannot hold
    each other's days), waiting up to ``wait_s`` for another run to give a day back; then ``DayLeased`` naming
    the holder. On failure, the leases taken by this call are given back."""
    taken: list[date] = []
    waited_since = time.monotonic()
    try:
        for day in sorted(set(days)):
            key = lease_key(name, day)
            while (other := _take(lake, key, holder, clock(), ttl)) is not None:
                if time.monotonic() - waited_since >= wait_s:
                    raise DayLeased(f"{day} is held by {other.get('holder')} (until {other.get('expires')}); "
                                    f"waited {wait_s:.0f} s for it: one run at a time works on a day")
                log.info("%s: %s holds the day, waiting its turn", day, other.get("holder"))
                sleep(WAIT_POLL_S)
            taken.append(day)
    except BaseException:
        release_days(lake, name, taken, holder)
        raise
    return taken


def check_days(lake: Lake, name: str, days: Iterable[date], holder: str) -> None:
    """Raise ``DayLeased`` unless ``holder`` still holds the lease of every day (one that expired and was taken
    over by another run, or was never taken, is not held)."""
    for day in sorted(set(days)):
        current = _read(lake, lease_key(name, day))
        if current is None or current.get("holder") != holder:
            owner = current.get("holder") if current else "nobody"
            raise DayLeased(f"{day}: this run ({holder}) no longer holds the day's lease ({owner} does): "
                            f"another run may be working on it; re-run this one")


def release_days(lake: Lake, name: str, days: Iterable[date], holder: str) -> None:
    """Give back the leases of ``days`` that ``holder`` holds (others' are left alone)."""
    for day in sorted(set(days)):
        key = lease_key(name, day)
        current = _read(lake, key)
        if current is not None and current.get("holder") == holder:
            lake.delete(key)
