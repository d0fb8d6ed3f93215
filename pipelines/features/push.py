"""Operations state into Feast as it happens: each view's rows through its PushSource.

Online, the newest row per key (the online store keeps only that). Feast's ``store.push`` costs ~45 ms a view
(it deserializes every feature view and feature service from the registry on each call, to find the views of the
push source and to precompute), which a replay pushing every minute cannot afford; :class:`OnlinePush` resolves
the push sources' views once and writes through the bulk writer of ``pipelines.features.online_writer`` (the same
stored bytes, with the same newer-wins rule, as ``store.push``; ``tests/unit/test_online_fast_paths.py`` compares
them). ``stock=True`` calls ``store.push``.

Offline, every row, as one content-named file per push in the lake partition of its day, beside the table the
daily build writes (the views' batch sources glob every Parquet file of the partitions; reads are DuckDB's). Stock
``store.push(..., to=PushMode.OFFLINE)`` cannot do it: it first reads the batch source's schema with pyarrow's
``ParquetDataset``, which cannot open that glob, then appends by rewriting the source's whole file.

:class:`OperationsPusher` is what a live message stream calls: state rows pushed online at once and offline in
batches (by count or at ``flush``), with counts of what went where.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.core.lake import Lake, open_lake, partition_key
from pipelines.core.settings import get_settings
from pipelines.features.operations import OPERATIONS_VIEWS, VIEW_KEYS

if TYPE_CHECKING:
    from feast import FeatureStore

OFFLINE_BATCH_ROWS = 20_000
PUSH_PREFIX = "push-"


class OnlinePush:
    """Pushes online to the views of the operations push sources, resolved once for ``store``."""

    def __init__(self, store: FeatureStore, *, stock: bool = False) -> None:
        from pipelines.features.online_writer import Unsupported, bulk_writer, write_batch_size

        self.store, self.stock = store, stock
        self.views = {view: store.get_feature_view(view) for view in OPERATIONS_VIEWS}
        self.batch_size = write_batch_size(store.config)
        try:
            online_store = store._get_provider().online_store  # type: ignore[attr-defined]
            self.writer = None if stock else bulk_writer(online_store, store.config)
        except Unsupported:
            self.writer = None

    def __call__(self, frames: dict[str, pd.DataFrame]) -> int:
        """The newest row per key of each view; returns the rows pushed."""
        import pyarrow as pa
        from feast.data_source import PushMode

        pushed = 0
        for view, frame in frames.items():
            if frame.empty:
                continue
            newest = frame.drop_duplicates(VIEW_KEYS[view], keep="last")  # rows come in stamp order
            if self.writer is None:
                self.store.push(f"{view}_push", newest, to=PushMode.ONLINE)
            else:
                feature_view = self.views[view]
                keys = {e.name: e.dtype.to_value_type() for e in feature_view.entity_columns}
                columns = [*keys, "event_timestamp", *(f.name for f in feature_view.features)]
                table = pa.Table.from_pandas(newest[columns], preserve_index=False)
                self.writer(table, feature_view, keys, self.batch_size)
            pushed += len(newest)
        return pushed


def push_online(store: FeatureStore, frames: dict[str, pd.DataFrame], *, stock: bool = False) -> int:
    """One push of ``frames`` online (``OnlinePush`` resolves the views: keep one for many pushes)."""
    return OnlinePush(store, stock=stock)(frames)


def push_offline(store: FeatureStore, frames: dict[str, pd.DataFrame]) -> int:
    """Every row of each view into the lake partition of its day, as one file per push and view:
    ``features/{view}/date=YYYY-MM-DD/push-{first stamp}-{content hash}.parquet``. Named by its content, so a retried
    push replaces its own file instead of adding a second copy; the daily build of the view later writes the whole
    day as ``data.parquet`` and removes these (``pipelines.features.steps.write_operations``). Returns the rows
    written."""
    written = 0
    for view, frame in frames.items():
        if frame.empty:
            continue
        feature_view = store.get_feature_view(view)
        expected = [VIEW_KEYS[view], "event_timestamp",
                    *(f.name for f in feature_view.features), "day"]
        if sorted(frame.columns) != sorted(expected):
            raise ValueError(f"push to {view}: columns {sorted(frame.columns)}, expected {sorted(expected)}")
        lake = _lake_of(feature_view.batch_source.path)  # type: ignore[union-attr]  # a FileSource (feature_repo/)
        for day, rows in frame.groupby("day", sort=True):
            table = rows[expected].reset_index(drop=True)
            lake.write_parquet(partition_key("features", view, date.fromisoformat(day), push_file_name(table)),
                               table)
        written += len(frame)
    return written


def push_file_name(rows: pd.DataFrame) -> str:
    """``push-{first event time}-{sha256 of the rows}.parquet``: in time order, the same name for the same rows."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes()).hexdigest()[:16]
    return f"{PUSH_PREFIX}{rows['event_timestamp'].min():%Y%m%dT%H%M%S}-{digest}.parquet"


def _lake_of(source_path: str) -> Lake:
    """The lake whose ``features/`` folder holds the source (``{lake}/features/{view}/*/*.parquet``): the lake of
    the store's own settings, which may not be the environment's (a test's home, the bench's scratch home)."""
    root, marker, _ = source_path.rpartition("/features/")
    if not marker:
        raise ValueError(f"push source path {source_path!r} is not under a lake's features/ folder")
    return open_lake(get_settings().model_copy(update={"lake_uri": root}))


@dataclass
class OperationsPusher:
    """Pushes state rows as a tracker makes them: online at once, offline when ``OFFLINE_BATCH_ROWS`` have
    gathered or at ``flush`` (the replay flushes at each hour's end)."""

    store: Any
    stock: bool = False
    online_rows: int = 0
    offline_rows: int = 0
    seconds: float = 0.0
    pushes: int = 0
    _buffer: dict[str, list[pd.DataFrame]] = field(default_factory=lambda: {v: [] for v in OPERATIONS_VIEWS})
    _online: OnlinePush | None = None

    def push(self, frames: dict[str, pd.DataFrame]) -> None:
        started = time.perf_counter()
        if any(not frame.empty for frame in frames.values()):
            if self._online is None:
                self._online = OnlinePush(self.store, stock=self.stock)
            self.online_rows += self._online(frames)
            self.pushes += 1
            for view, frame in frames.items():
                if not frame.empty:
                    self._buffer[view].append(frame)
        self.seconds += time.perf_counter() - started
        if sum(len(f) for parts in self._buffer.values() for f in parts) >= OFFLINE_BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        started = time.perf_counter()
        frames = {view: pd.concat(parts, ignore_index=True) for view, parts in self._buffer.items() if parts}
        self.offline_rows += push_offline(self.store, frames)
        self._buffer = {v: [] for v in OPERATIONS_VIEWS}
        self.seconds += time.perf_counter() - started

    def stats(self) -> dict[str, Any]:
        return {"pushes": self.pushes, "online_rows": self.online_rows, "offline_rows": self.offline_rows,
                "seconds": round(self.seconds, 2)}
