"""The prediction log: every answer buffered and written to ``{lake}/predictions/flight_delay/date=YYYY-MM-DD/``
(the flight's New York date) in batches, off the request path, and read back by day.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, date, datetime
from typing import Any

import pandas as pd

from pipelines.core.lake import Lake, partition_key

log = logging.getLogger(__name__)


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
    which was the p99 of single-flight traffic. A batch the writer cannot write is logged as an error. A ticker
    thread also writes a batch that reached ``max_age_s`` while no request came, so the last predictions before a
    quiet spell reach the lake within ``max_age_s`` (monitoring reads them), not at the next request."""

    def __init__(self, lake: Lake, batch_rows: int = 1000, max_age_s: float = 30.0, *,
                 background: bool = False) -> None:
        self.lake, self.batch_rows, self.max_age_s = lake, batch_rows, max_age_s
        self._rows: list[dict[str, Any]] = []
        self._since = time.monotonic()
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prediction-log") if background \
            else None
        if background:
            threading.Thread(target=self._tick, name="prediction-log-ticker", daemon=True).start()

    def add(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            if not self._rows:
                self._since = time.monotonic()
            self._rows.extend(rows)
        self._write_if_due()

    def _write_if_due(self) -> None:
        with self._lock:
            if not self._rows or (len(self._rows) < self.batch_rows
                                  and time.monotonic() - self._since < self.max_age_s):
                return
            due, self._rows = self._rows, []
        if self._writer is None:
            self._write(due)
        else:
            self._writer.submit(self._write, due).add_done_callback(_log_write_failure)

    def _tick(self) -> None:
        while True:
            time.sleep(max(0.2, self.max_age_s / 4))
            self._write_if_due()

    def flush(self) -> list[str]:
        """Write what is buffered, after any batch the writer thread still holds; returns the keys written now."""
        with self._lock:
            rows, self._rows = self._rows, []
        if self._writer is not None:
            self._writer.submit(lambda: None).result()  # one writer thread: earlier batches are done after this
        return self._write(rows)

    def _write(self, rows: list[dict[str, Any]]) -> list[str]:
        """One Parquet object per flight date (New York), so a day's traffic is one partition whenever it was
        served; returns the keys written. Straight to Arrow (half the time of a pandas frame, and the Parquet
        encoding releases the GIL), with the columns pandas wrote: ``served_at`` in nanoseconds, UTC."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if not rows:
            return []
        table = pa.Table.from_pylist(rows)
        served_at = table.schema.get_field_index("served_at")
        table = table.set_column(served_at, "served_at", table["served_at"].cast(pa.timestamp("ns", tz="UTC")))
        keys = []
        for day in sorted(set(table["flight_date"].to_pylist())):
            part = table.filter(pc.equal(table["flight_date"], day)).drop_columns(["flight_date"])
            key = partition_key("predictions", "flight_delay", date.fromisoformat(day),
                                f"part-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.parquet")
            buffer = io.BytesIO()
            pq.write_table(part, buffer)
            self.lake.write_bytes(key, buffer.getvalue())
            keys.append(key)
        log.info("prediction log: %d rows in %d objects", len(rows), len(keys))
        return keys


def _log_write_failure(written: Future[list[str]]) -> None:
    if written.exception() is not None:
        log.error("prediction log: a batch could not be written", exc_info=written.exception())


def feature_json(features: dict[str, list[Any]], row: int) -> str:
    """One flight's features as a JSON object, compact and in column order; NaN and infinities are null (JSON has
    neither), numbers keep every digit."""
    return json.dumps({name: _json_value(values[row]) for name, values in features.items()},
                      separators=(",", ":"), default=str)


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value
