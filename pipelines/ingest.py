"""Ingestion: a landing CSV becomes typed Parquet in ``raw/``, whatever state the file arrives in.

Ingestion never judges the data and never loses it: a field that cannot be read becomes a null and its column
name is recorded in the row's ``_parse_errors``; a row with the wrong number of fields or undecodable bytes is
flagged the same way; unknown columns are kept as text. Validation then decides what the partition is worth.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from pipelines.lake import Lake, partition_key
from pipelines.schemas import PARSE_ERRORS, Kind, TableSchema, table_schema
from pipelines.source import landing_key

log = logging.getLogger(__name__)

NULL_TOKENS = frozenset({"", "NA", "NaN", "nan", "NULL", "null"})
# Reasons recorded in _parse_errors besides column names.
FIELD_COUNT = "<field count>"
ENCODING = "<encoding>"


@dataclass(frozen=True)
class IngestResult:
    table: str
    day: date
    key: str
    rows: int
    rows_with_errors: int

    def as_dict(self) -> dict[str, object]:
        return {"table": self.table, "date": self.day.isoformat(), "key": self.key, "rows": self.rows,
                "rows_with_errors": self.rows_with_errors}


def raw_key(table: str, day: date) -> str:
    return partition_key("raw", table, day, "data.parquet")


def _decode(content: bytes) -> tuple[list[str], set[int]]:
    """Lines of the file and the indexes of lines that held bytes which are not UTF-8."""
    try:
        lines = content.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError:
        lines = content.decode("utf-8", errors="replace").splitlines()
    # NUL bytes decode "fine" but only appear when a UTF-16 (or binary) file was sent as text.
    return lines, {i for i, line in enumerate(lines) if "\ufffd" in line or "\x00" in line}


def _coerce(values: pd.Series, kind: Kind) -> pd.Series:
    if kind == "str":
        return values.astype(object)
    if kind == "timestamp":
        return pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    numbers = pd.to_numeric(values, errors="coerce")
    if kind == "float":
        return numbers.astype("float64")
    whole = numbers.where(np.isfinite(numbers) & (numbers == np.round(numbers)))
    return whole.astype("Int64")


def parse_feed_csv(content: bytes, schema: TableSchema) -> pd.DataFrame:
    """Parse feed bytes into a frame typed by ``schema`` plus ``_parse_errors``; never raises on bad content."""
    lines, bad_lines = _decode(content)
    records = list(csv.reader(lines))
    header = [name.strip() for name in records[0]] if records else []
    width = len(header)
    body = records[1:]
    errors: list[list[str]] = [[] for _ in body]
    cells: list[list[str]] = []
    for i, record in enumerate(body):
        if len(record) != width:
            errors[i].append(FIELD_COUNT)
            record = (record + [""] * width)[:width]
        if i + 1 in bad_lines:
            errors[i].append(ENCODING)
        cells.append(record)

    # Repeated header names are kept apart so no column silently shadows another.
    seen: dict[str, int] = {}
    names = []
    for name in header:
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}.{seen[name] - 1}")

    text = pd.DataFrame(cells, columns=names, dtype=object)
    frame = pd.DataFrame(index=text.index)
    for name in names:
        raw = text[name].astype(str).str.strip()
        is_null = raw.isin(NULL_TOKENS)
        kind = schema.columns.get(name)
        if kind is None:
            frame[name] = raw.where(~is_null, None)
            continue
        typed = _coerce(raw.where(~is_null, None), kind)
        for row in np.flatnonzero((~is_null & typed.isna()).to_numpy()):
            errors[row].append(name)
        frame[name] = typed
    frame[PARSE_ERRORS] = pd.Series([",".join(e) if e else None for e in errors], index=frame.index, dtype=object)
    return frame


def ingest_partition(lake: Lake, table: str, day: date) -> IngestResult:
    """Landing CSV of ``table`` for ``day`` -> ``raw/{table}/date=day/data.parquet`` (atomic overwrite)."""
    schema = table_schema(table)
    source = landing_key(table, day)
    if not lake.exists(source):
        raise FileNotFoundError(f"no landing file for {table} on {day}: expected {lake.url(source)}")
    frame = parse_feed_csv(lake.read_bytes(source), schema)
    key = raw_key(table, day)
    lake.write_parquet(key, frame)
    result = IngestResult(table, day, key, len(frame), int(frame[PARSE_ERRORS].notna().sum()))
    if result.rows_with_errors:
        log.warning("%s %s: %d of %d rows had unreadable fields", table, day, result.rows_with_errors, result.rows)
    return result
