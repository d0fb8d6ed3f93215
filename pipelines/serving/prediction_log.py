"""The prediction log: every answer buffered and written to ``{lake}/predictions/flight_delay/date=YYYY-MM-DD/``
(the flight's New York date) in batches, off the request path, and read back by day. A batch the lake does not
take is retried, then spooled to local disk and written later: never dropped. Each answer's rows are also
journaled on local disk before the answer goes out (``pipelines.serving.journal``), so a process killed outright
loses nothing it buffered.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.core.lake import Lake, LocalLake, partition_key
from pipelines.serving.journal import Journal, Segment

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (0.5, 2.0)
"""Pauses between the tries of one object's write to the lake (three tries), before it goes to the spool."""
OUTCOMES = ("written", "retried", "spooled", "drained", "recovered", "lost")
"""What ``PredictionLog.counts`` counts, in rows: written to the lake at once or after retries (``retried`` counts
tries that failed, in rows), put in the spool, written from the spool later, recovered from the journal of a
process that died (then written or spooled like any), lost (only without a journal, when the spool itself cannot
be written at shutdown: the service logs it as an error)."""


def read_prediction_log(lake: Lake, day: date) -> pd.DataFrame:
    """Every row ``PredictionLog`` wrote for ``day``'s flights (all answers, object by object); empty when none."""
    prefix = partition_key("predictions", "flight_delay", day, "")
    parts = [lake.read_parquet(key) for key in lake.list_keys(prefix) if key.endswith(".parquet")]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


class PredictionLog:
    """Buffers prediction records and writes them to the lake in batches (never an object per request): when the
    buffer holds ``batch_rows`` rows or is ``max_age_s`` old, and on ``flush()`` at shutdown.

    With ``background``, a due batch is written by one writer thread: written inline, a 1,000-row batch (frame,
    Parquet, the lake) held the request that filled it, and every request in flight behind the GIL, for ~10 ms,
    which was the p99 of single-flight traffic. A ticker thread also writes a batch that reached ``max_age_s``
    while no request came, so the last predictions before a quiet spell reach the lake within ``max_age_s``
    (monitoring reads them), not at the next request.

    Nothing is dropped: an object the lake refuses is tried again (``retry_delays_s``), then written to ``spool``
    (local disk, fsynced) under its lake key, and written to the lake from there before the next batch and at
    each tick until the lake takes it (a spool left by a stopped process is written by the next one). Without a
    spool, or when the spool fails too, it is held in memory until then; only what is still held at ``flush``
    (shutdown) is lost. ``counts`` (rows by outcome, ``OUTCOMES``) says what happened; ``on_count(outcome,
    rows)`` is called as it happens (the service's metrics).

    With a ``journal`` folder, ``add`` appends the rows there first, and a batch's journal segment is deleted once
    its objects are in the lake or the spool; segments a dead process left (the slot SIGKILLed, the OOM killer)
    are written at start and at each tick, under keys named after the segment, so a second try rewrites the same
    objects. What is held in memory at shutdown then stays in the journal for the next process, not lost."""

    def __init__(self, lake: Lake, batch_rows: int = 1000, max_age_s: float = 30.0, *,
                 background: bool = False, spool: Path | None = None, journal: Path | None = None,
                 retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
                 on_count: Callable[[str, int], None] | None = None) -> None:
        self.lake, self.batch_rows, self.max_age_s = lake, batch_rows, max_age_s
        self.retry_delays_s = tuple(retry_delays_s)
        # Objects the lake did not take: on local disk under the same keys, written again before each new batch.
        self.spool = LocalLake(spool, durable=True) if spool is not None else None
        self._held: list[tuple[str, bytes, int]] = []  # what neither the lake nor the spool took (in memory)
        self.journal = Journal(journal) if journal is not None else None
        self._kept: list[Segment] = []  # journal segments of held objects: deleted once those are drained
        self._waiting = self.spool is not None and bool(self._spooled_keys())  # something to write again
        self._retrying: Future[list[str]] | None = None
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self._on_count = on_count
        self._rows: list[dict[str, Any]] = []
        self._since = time.monotonic()
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prediction-log") if background \
            else None
        self._in_background(self._recover)
        if background:
            threading.Thread(target=self._tick, name="prediction-log-ticker", daemon=True).start()

    def add(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            if self.journal is not None:
                self.journal.append(rows)
            if not self._rows:
                self._since = time.monotonic()
            self._rows.extend(rows)
        self._write_if_due()

    def _take(self) -> tuple[list[dict[str, Any]], Segment | None]:
        """The buffered rows and their journal segment (call under the lock)."""
        due, self._rows = self._rows, []
        return due, self.journal.rotate() if self.journal is not None else None

    def _write_if_due(self) -> None:
        with self._lock:
            if not self._rows or (len(self._rows) < self.batch_rows
                                  and time.monotonic() - self._since < self.max_age_s):
                return
            due, segment = self._take()
        self._in_background(self._write_batch, due, segment)

    def _in_background(self, work: Callable[..., Any], *args: Any) -> None:
        """``work(*args)`` on the writer thread (in order with the batches), else now."""
        if self._writer is None:
            work(*args)
        else:
            self._writer.submit(work, *args).add_done_callback(_log_write_failure)

    def _write_batch(self, rows: list[dict[str, Any]], segment: Segment | None) -> list[str]:
        """A batch to the lake under keys named after its journal segment; the segment deleted once every object
        is in the lake or the spool, else kept until the held ones are drained."""
        held = len(self._held)
        keys = self._write(rows, segment.name if segment is not None else None)
        if segment is not None and self.journal is not None:
            if len(self._held) > held:
                self._kept.append(segment)
            else:
                self.journal.done(segment)
        return keys

    def _recover(self) -> None:
        """Write the journal segments a dead process left (on the writer thread)."""
        if self.journal is None:
            return
        for segment, rows in self.journal.take_orphans():
            log.warning("prediction log: %d rows journaled by a process that stopped (%s); writing them",
                        len(rows), segment.path.name)
            self._count("recovered", len(rows))
            self._write_batch(rows, segment)

    def _tick(self) -> None:
        while True:
            time.sleep(max(0.2, self.max_age_s / 4))
            self._write_if_due()
            if self.journal is not None:
                self._in_background(self._recover)
            # The spool waits for the lake: try it again, one try at a time (a try against a lake that is down can
            # take longer than a tick).
            if self._waiting and self._writer is not None and (self._retrying is None or self._retrying.done()):
                self._retrying = self._writer.submit(self._write, [])
                self._retrying.add_done_callback(_log_write_failure)

    def flush(self) -> list[str]:
        """Write what is buffered, after any batch the writer thread still holds; returns the keys written now.
        At shutdown: what can reach neither the lake nor the spool now is left in the journal for the next process
        (without a journal, counted ``lost``), and logged."""
        with self._lock:
            rows, segment = self._take()
        # On the writer thread, after the batches it holds: one thread touches the spool and the held objects.
        keys = (self._writer.submit(self._write_batch, rows, segment).result() if self._writer is not None
                else self._write_batch(rows, segment))
        if self._held:
            held, self._held = self._held, []
            rows_held = sum(n for _, _, n in held)
            if self.journal is not None:
                for kept in self._kept:
                    self.journal.release(kept)
                self._kept = []
                log.error("prediction log: %d rows in %d objects reached neither the lake nor the spool; left in "
                          "the journal %s for the next process", rows_held, len(held), self.journal.folder)
            else:
                self._count("lost", rows_held)
                log.error("prediction log: %d rows in %d objects reached neither the lake nor the spool; lost",
                          rows_held, len(held))
        return keys

    def pending(self) -> int:
        """Objects waiting for the lake: in the spool, or held in memory when the spool failed too."""
        return len(self._held) + (len(self._spooled_keys()) if self.spool is not None else 0)

    def _spooled_keys(self) -> list[str]:
        if self.spool is None:
            return []
        return [key for key in self.spool.list_keys("predictions/") if key.endswith(".parquet")]

    def _count(self, outcome: str, rows: int) -> None:
        self.counts[outcome] += rows
        if self._on_count is not None and rows:
            self._on_count(outcome, rows)

    def _drain(self) -> bool:
        """Write what waits (held in memory, then the spool) to the lake, oldest first; True when nothing waits.
        Stops at the first failure: the lake is still down, and the new batch will go to the spool."""
        if not self._waiting:
            return True
        while self._held:
            key, data, rows = self._held[0]
            try:
                self.lake.write_bytes(key, data)
            except Exception:
                return False
            self._held.pop(0)
            self._count("drained", rows)
        if self._kept and self.journal is not None:  # what they journaled is in the lake now
            for segment in self._kept:
                self.journal.done(segment)
            self._kept = []
        import pyarrow.parquet as pq

        if self.spool is not None:  # then the spool, oldest key first
            for key in self._spooled_keys():
                data = self.spool.read_bytes(key)
                try:
                    self.lake.write_bytes(key, data)  # the same key: a drain repeated after a crash rewrites it
                except Exception:
                    return False
                self.spool.delete(key)
                self._count("drained", pq.ParquetFile(io.BytesIO(data)).metadata.num_rows)
                log.info("prediction log: %s written from the spool", key)
        self._waiting = False
        return True

    def _put(self, key: str, data: bytes, rows: int, lake_up: bool) -> None:
        """One object to the lake, tried ``len(retry_delays_s) + 1`` times (once when the lake is known to be
        down); then to the spool; then held in memory for the next try."""
        if lake_up:
            for delay in (*self.retry_delays_s, None):
                try:
                    self.lake.write_bytes(key, data)
                except Exception as error:
                    self._count("retried", rows)
                    log.warning("prediction log: writing %s failed (%s: %s)%s", key, type(error).__name__, error,
                                f"; trying again in {delay}s" if delay is not None else "")
                    if delay is not None:
                        time.sleep(delay)
                else:
                    self._count("written", rows)
                    return
        self._waiting = True
        if self.spool is not None:
            try:
                self.spool.write_bytes(key, data)
            except Exception:
                log.exception("prediction log: %s could not be spooled either; holding it in memory", key)
            else:
                self._count("spooled", rows)
                log.warning("prediction log: %d rows spooled to %s/%s until the lake takes them", rows,
                            self.spool.root, key)
                return
        self._held.append((key, data, rows))

    def _write(self, rows: list[dict[str, Any]], name: str | None = None) -> list[str]:
        """One Parquet object per flight date (New York), so a day's traffic is one partition whenever it was
        served, named ``part-{name}`` (a new name when None); returns the keys written. Straight to Arrow (half
        the time of a pandas frame, and the Parquet encoding releases the GIL), with the columns pandas wrote:
        ``served_at`` in nanoseconds, UTC. What waits from earlier batches goes first."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        lake_up = self._drain()
        if not rows:
            return []
        table = pa.Table.from_pylist(rows)
        served_at = table.schema.get_field_index("served_at")
        table = table.set_column(served_at, "served_at", table["served_at"].cast(pa.timestamp("ns", tz="UTC")))
        keys = []
        name = name or f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        for day in sorted(set(table["flight_date"].to_pylist())):
            part = table.filter(pc.equal(table["flight_date"], day)).drop_columns(["flight_date"])
            key = partition_key("predictions", "flight_delay", date.fromisoformat(day), f"part-{name}.parquet")
            buffer = io.BytesIO()
            pq.write_table(part, buffer)
            self._put(key, buffer.getvalue(), len(part), lake_up)
            keys.append(key)
        log.info("prediction log: %d rows in %d objects", len(rows), len(keys))
        return keys


def _log_write_failure(written: Future[Any]) -> None:
    if written.exception() is not None:
        log.error("prediction log: a batch could not be written", exc_info=written.exception())


def feature_json(features: dict[str, list[Any]], row: int) -> str:
    """One flight's features as a JSON object, compact and in column order; NaN and infinities are null (JSON has
    neither), numbers keep every digit."""
    return json.dumps({name: _json_value(values[row]) for name, values in features.items()},
                      separators=(",", ":"), default=str)


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
