"""Leases on days: two runs of the same day cannot interleave; a retried task of the same run goes on; a dead
run's lease expires. On a real local lake (and, for ``Lake.create``, S3 in tests/integration/test_s3_lake.py)."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from pipelines.core.lake import LocalLake
from pipelines.core.leases import DayLeased, acquire_days, check_days, lease_key, release_days

DAYS = [date(2013, 4, 2), date(2013, 4, 1)]
SCHEDULED = "flights_ingest/2013-04-02T00:00:00-04:00/scheduled__2013-04-02"
MANUAL = "flights_ingest/2013-04-01T00:00:00-04:00/manual__2026-12-04"


@pytest.fixture
def lake(tmp_path: Path) -> LocalLake:
    return LocalLake(tmp_path / "lake")


def test_create_writes_only_a_missing_key(lake: LocalLake) -> None:
    assert lake.create("leases/x/date=2013-04-01.json", b"first")
    assert not lake.create("leases/x/date=2013-04-01.json", b"second")
    assert lake.read_bytes("leases/x/date=2013-04-01.json") == b"first"
    assert lake.list_keys("leases/") == ["leases/x/date=2013-04-01.json"]  # no temporary file left behind


def test_a_second_run_of_the_same_day_waits_then_is_refused_naming_the_holder(lake: LocalLake) -> None:
    assert acquire_days(lake, "ingest", DAYS, SCHEDULED) == sorted(DAYS)
    waits: list[float] = []
    with pytest.raises(DayLeased, match="2013-04-01 is held by flights_ingest/.*scheduled__2013-04-02"):
        acquire_days(lake, "ingest", [date(2013, 4, 1)], MANUAL, wait_s=0.0, sleep=waits.append)
    with pytest.raises(DayLeased, match="no longer holds"):
        check_days(lake, "ingest", DAYS, MANUAL)
    check_days(lake, "ingest", DAYS, SCHEDULED)


def test_the_waiting_run_goes_on_once_the_day_is_given_back(lake: LocalLake) -> None:
    acquire_days(lake, "ingest", DAYS, SCHEDULED)
    polls: list[float] = []

    def give_back_after_a_poll(seconds: float) -> None:
        polls.append(seconds)
        release_days(lake, "ingest", DAYS, SCHEDULED)

    assert acquire_days(lake, "ingest", DAYS, MANUAL, wait_s=60, sleep=give_back_after_a_poll) == sorted(DAYS)
    assert len(polls) == 1
    check_days(lake, "ingest", DAYS, MANUAL)


def test_a_retried_task_of_the_same_run_keeps_its_lease(lake: LocalLake) -> None:
    acquire_days(lake, "ingest", DAYS, SCHEDULED)
    assert acquire_days(lake, "ingest", DAYS, SCHEDULED, wait_s=0.0) == sorted(DAYS)


def test_a_failed_acquisition_gives_back_what_it_took(lake: LocalLake) -> None:
    acquire_days(lake, "ingest", [date(2013, 4, 2)], SCHEDULED)
    with pytest.raises(DayLeased):
        acquire_days(lake, "ingest", DAYS, MANUAL, wait_s=0.0, sleep=lambda s: None)
    assert not lake.exists(lease_key("ingest", date(2013, 4, 1)))  # taken first, then given back


def test_release_leaves_other_runs_leases_alone(lake: LocalLake) -> None:
    acquire_days(lake, "ingest", DAYS, SCHEDULED)
    release_days(lake, "ingest", DAYS, MANUAL)
    check_days(lake, "ingest", DAYS, SCHEDULED)
    release_days(lake, "ingest", DAYS, SCHEDULED)
    assert lake.list_keys("leases/") == []


def test_a_dead_runs_lease_expires_and_is_taken_over(lake: LocalLake) -> None:
    start = datetime(2026, 12, 4, 12, tzinfo=UTC)
    acquire_days(lake, "ingest", DAYS, SCHEDULED, ttl=timedelta(hours=2), clock=lambda: start)
    later = start + timedelta(hours=2, seconds=1)
    assert acquire_days(lake, "ingest", DAYS, MANUAL, wait_s=0.0, clock=lambda: later) == sorted(DAYS)
    with pytest.raises(DayLeased):
        check_days(lake, "ingest", DAYS, SCHEDULED)


def _contend(root: str, holder: str, start: multiprocessing.synchronize.Event,
             results: multiprocessing.Queue) -> None:
    start.wait()
    try:
        acquire_days(LocalLake(root), "ingest", DAYS, holder, wait_s=0.0, sleep=lambda s: None)
        results.put(holder)
    except DayLeased:
        results.put(None)


def test_of_runs_racing_for_a_day_in_separate_processes_exactly_one_wins(lake: LocalLake) -> None:
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    holders = [f"flights_ingest/2013-04-01/manual__{n}" for n in range(4)]
    processes = [context.Process(target=_contend, args=(lake.uri, h, start, results)) for h in holders]
    for process in processes:
        process.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    winners = [o for o in outcomes if o is not None]
    assert len(winners) == 1
    check_days(lake, "ingest", DAYS, winners[0])
