"""Ingestion: a landing CSV becomes typed Parquet in ``raw/``, whatever state the file arrives in.

Ingestion never judges the data and never loses it: a field that cannot be read becomes a null and its column
name is recorded in the row's ``_parse_errors``; a row with the wrong number of fields or undecodable bytes is
flagged the same way; unknown columns are kept as text. Validation then decides what the partition is worth.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from pipelines.core.lake import Lake, landing_key, partition_key
from pipelines.ingest.schemas import PARSE_ERRORS, Kind, TableSchema, table_schema

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


def _decode(content: bytes) -> str:
    """The file as text; bytes that are not UTF-8 become U+FFFD (flagged per record later)."""
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError:
        return content.decode("utf-8-sig", errors="replace")


# U+FFFD marks bytes that were not UTF-8; NUL bytes decode "fine" but only appear when a UTF-16 (or binary) file
# was sent as text.
_UNDECODABLE = ("\ufffd", "\x00")


def _records(text: str) -> list[list[str]]:
    """CSV records, blank lines skipped; a record the csv module rejects (e.g. an unclosed quote) becomes one
    bad field, so the rest of the file is still read."""
    # newline="" so only real line endings split records (not form feeds or U+2028 inside a field).
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[list[str]] = []
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return records
        except csv.Error as error:
            record = [f"<csv error: {error}>"]
        if record:
            records.append(record)


def _column_names(header: list[str]) -> list[str]:
    """Header names made unique (``a``, ``a.1``, ...) without colliding with any name the file already uses or
    with ``_parse_errors``, so no column silently shadows another."""
    originals = set(header)
    used = {PARSE_ERRORS}
    names: list[str] = []
    for name in header:
        candidate, n = name, 0
        while candidate in used or (candidate != name and candidate in originals):
            n += 1
            candidate = f"{name}.{n}"
        used.add(candidate)
        names.append(candidate)
    return names


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
    records = _records(_decode(content))
    header = [name.strip() for name in records[0]] if records else []
    width = len(header)
    body = records[1:]
    errors: list[list[str]] = [[] for _ in body]
    cells: list[list[str]] = []
    for i, record in enumerate(body):
        if len(record) != width:
            errors[i].append(FIELD_COUNT)
            record = (record + [""] * width)[:width]
        if any(mark in field for field in record for mark in _UNDECODABLE):
            errors[i].append(ENCODING)
        cells.append(record)
    names = _column_names(header)

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
