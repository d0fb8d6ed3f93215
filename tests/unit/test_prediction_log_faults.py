"""The prediction log when the lake refuses writes: retried, spooled to local disk, written later; never dropped.

The lake's outage is injected (``DownLake`` raises as a lake that cannot be reached does: stopping a real S3 server
mid-test would make each try wait for its connect timeout); everything else is real: the local lake, the Parquet
objects, the spool on disk, the writer and ticker threads. The service's counters on /metrics:
tests/integration/test_service_http.py."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from pipelines.core.lake import Lake, LocalLake
from pipelines.serving.prediction_log import PredictionLog, read_prediction_log

DAY = "2013-07-04"


class DownLake(LocalLake):
    """A local lake whose writes fail while ``down`` (or for the next ``fail_next`` writes)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.down, self.fail_next, self.tries = False, 0, 0

    def write_bytes(self, key: str, data: bytes) -> None:
        self.tries += 1
        if self.down or self.fail_next > 0:
            self.fail_next = max(0, self.fail_next - 1)
            raise ConnectionError("lake unreachable")
        super().write_bytes(key, data)


def _rows(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"request_id": f"r{i}", "served_at": datetime(2026, 12, 4), "flight_date": DAY, "flight_id": f"f{i}",
             "probability": 0.25} for i in range(start, start + n)]


def _logged(lake: Lake) -> list[str]:
    frame = read_prediction_log(lake, datetime.fromisoformat(DAY).date())
    return sorted(frame["request_id"]) if len(frame) else []


@pytest.fixture
def lake(tmp_path: Path) -> DownLake:
    return DownLake(tmp_path / "lake")


def test_a_failed_write_is_tried_again(lake: DownLake, tmp_path: Path) -> None:
    log = PredictionLog(lake, batch_rows=5, spool=tmp_path / "spool", retry_delays_s=(0.0, 0.0))
    lake.fail_next = 2
    log.add(_rows(5))
    assert _logged(lake) == sorted(f"r{i}" for i in range(5))
    assert log.counts == {"written": 5, "retried": 10, "spooled": 0, "drained": 0, "recovered": 0, "lost": 0}
    assert log.pending() == 0


def test_a_batch_the_lake_never_takes_waits_in_the_spool_and_lands_once(lake: DownLake, tmp_path: Path) -> None:
    log = PredictionLog(lake, batch_rows=5, spool=tmp_path / "spool", retry_delays_s=(0.0, 0.0))
    lake.down = True
    log.add(_rows(5))
    assert _logged(lake) == [] and log.counts["spooled"] == 5 and log.pending() == 1
    assert list((tmp_path / "spool").rglob("*.parquet"))  # on disk: it survives the process
    tries = lake.tries
    log.add(_rows(5, start=5))  # still down: one try to drain, then straight to the spool (no retries)
    assert lake.tries == tries + 1 and log.counts["spooled"] == 10 and log.pending() == 2
    lake.down = False
    log.add(_rows(5, start=10))
    assert _logged(lake) == sorted(f"r{i}" for i in range(15))  # every row, once
    assert log.counts == {"written": 5, "retried": 15, "spooled": 10, "drained": 10, "recovered": 0, "lost": 0}
    assert log.pending() == 0 and not list((tmp_path / "spool").rglob("*.parquet"))


def test_a_spool_left_by_a_stopped_service_is_written_by_the_next(lake: DownLake, tmp_path: Path) -> None:
    lake.down = True
    first = PredictionLog(lake, batch_rows=1000, spool=tmp_path / "spool", retry_delays_s=())
    first.add(_rows(7))
    first.flush()  # shutdown with the lake down: spooled, not lost
    assert first.counts["spooled"] == 7 and first.counts["lost"] == 0
    lake.down = False
    second = PredictionLog(lake, batch_rows=1000, spool=tmp_path / "spool", retry_delays_s=())
    assert second.pending() == 1
    second.flush()
    assert _logged(lake) == sorted(f"r{i}" for i in range(7)) and second.counts["drained"] == 7


def test_without_a_spool_rows_wait_in_memory_and_only_shutdown_loses_them(lake: DownLake) -> None:
    log = PredictionLog(lake, batch_rows=3, retry_delays_s=())
    lake.down = True
    log.add(_rows(3))
    assert log.pending() == 1 and log.counts["lost"] == 0
    lake.down = False
    log.add(_rows(3, start=3))
    assert _logged(lake) == sorted(f"r{i}" for i in range(6)) and log.counts["drained"] == 3
    lake.down = True
    log.add(_rows(3, start=6))
    log.flush()
    assert log.counts["lost"] == 3  # nowhere to put them at shutdown: counted, and logged as an error


def test_the_ticker_writes_the_spool_once_the_lake_is_back_without_new_traffic(lake: DownLake,
                                                                               tmp_path: Path) -> None:
    counted: list[tuple[str, int]] = []
    log = PredictionLog(lake, batch_rows=4, max_age_s=0.8, background=True, spool=tmp_path / "spool",
                        retry_delays_s=(0.0,), on_count=lambda outcome, rows: counted.append((outcome, rows)))
    lake.down = True
    log.add(_rows(4))
    deadline = time.monotonic() + 30  # generous: the writer thread runs when the machine lets it
    while log.counts["spooled"] < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.counts["spooled"] == 4
    lake.down = False
    while not _logged(lake) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _logged(lake) == sorted(f"r{i}" for i in range(4))
    log.flush()
    assert ("spooled", 4) in counted and ("drained", 4) in counted and log.counts["lost"] == 0
