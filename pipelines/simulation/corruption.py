"""Known ways a daily feed file arrives broken, made from a real day's file.

The source step can land any of these instead of the clean file (``python -m pipelines land --corrupt KIND``);
``tests/data/landing_corpus/`` holds one file of each kind, generated from 2013-01-02, with the outcome each must
get. Every function takes the clean CSV bytes and returns the broken bytes; all are deterministic.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Outcome = Literal["quarantined", "warned"]


def _rows(content: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(content.decode("utf-8"))))


def _csv(rows: list[list[str]], delimiter: str = ",") -> bytes:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return out.getvalue().encode("utf-8")


def _set(content: bytes, column: str, value: str, every: int = 50) -> bytes:
    rows = _rows(content)
    index = rows[0].index(column)
    for i, row in enumerate(rows[1:]):
        if i % every == 0:
            row[index] = value
    return _csv(rows)


def truncated(content: bytes) -> bytes:
    """The transfer stopped mid-row: the last row lost its tail."""
    cut = content.rstrip(b"\n")
    return cut[: cut.rfind(b"\n") + 40]


def wrong_delimiter(content: bytes) -> bytes:
    return _csv(_rows(content), delimiter=";")


def missing_columns(content: bytes) -> bytes:
    rows = _rows(content)
    drop = {rows[0].index(c) for c in ("arr_delay", "tailnum")}
    return _csv([[v for i, v in enumerate(r) if i not in drop] for r in rows])


def extra_columns(content: bytes) -> bytes:
    rows = _rows(content)
    return _csv([rows[0] + ["gate"]] + [r + [f"B{i % 40}"] for i, r in enumerate(rows[1:])])


def garbage_numeric(content: bytes) -> bytes:
    return _set(content, "dep_delay", "#VALUE!", every=40)


def impossible_values(content: bytes) -> bytes:
    return _set(_set(content, "distance", "-250", every=60), "minute", "75", every=70)


def duplicated_flights(content: bytes) -> bytes:
    rows = _rows(content)
    return _csv(rows + rows[1:21])


def empty_file(content: bytes) -> bytes:
    return b""


def wrong_encoding(content: bytes) -> bytes:
    """Sent as UTF-16 by a misconfigured exporter."""
    return content.decode("utf-8").encode("utf-16")


def null_keys(content: bytes) -> bytes:
    return _set(content, "carrier", "NA", every=30)


def future_dates(content: bytes) -> bytes:
    """Rows stamped with a date years after the partition they were delivered in."""
    return _set(_set(content, "year", "2031", every=25), "time_hour", "2031-01-02T10:00:00Z", every=25)


def unknown_airport(content: bytes) -> bytes:
    return _set(content, "origin", "XNY", every=35)


def header_only(content: bytes) -> bytes:
    return content.split(b"\n", 1)[0] + b"\n"


def unknown_carrier(content: bytes) -> bytes:
    return _set(content, "carrier", "ZZ", every=45)


def short_day(content: bytes) -> bytes:
    """Only the first half of the day's flights arrived (complete rows, so the data itself is fine)."""
    rows = _rows(content)
    return _csv(rows[: 1 + (len(rows) - 1) // 2])


def extreme_delays(content: bytes) -> bytes:
    """A few delays over a day: possible in principle, implausible enough to tell the owners."""
    return _set(content, "dep_delay", "1600", every=200)


def blank_delays(content: bytes) -> bytes:
    """The delay columns exported empty while the departure and arrival times are there: read as they are, every
    flight of the day would look cancelled, i.e. disrupted."""
    rows = _rows(content)
    columns = [rows[0].index(c) for c in ("dep_delay", "arr_delay")]
    for row in rows[1:]:
        for column in columns:
            row[column] = ""
    return _csv(rows)


def delays_in_hours(content: bytes) -> bytes:
    """The delay columns exported in hours instead of minutes (an upstream unit change): every value is plausible
    on its own, only the clock times beside them say it is wrong; read as is, no flight would look disrupted."""
    rows = _rows(content)
    columns = [rows[0].index(c) for c in ("dep_delay", "arr_delay")]
    for row in rows[1:]:
        for column in columns:
            if row[column] not in ("", "NA"):
                row[column] = f"{float(row[column]) / 60:.2f}"
    return _csv(rows)


def tenth_of_day(content: bytes) -> bytes:
    """A partial delivery: a tenth of the day's flights, complete rows."""
    rows = _rows(content)
    return _csv(rows[: 1 + (len(rows) - 1) // 10])


@dataclass(frozen=True)
class Corruption:
    make: Callable[[bytes], bytes]
    outcome: Outcome
    reason: str  # the failed expectation(s) that must be named


CORRUPTIONS: dict[str, Corruption] = {
    "truncated": Corruption(truncated, "quarantined", "expect_column_values_to_be_null(_parse_errors)"),
    "wrong_delimiter": Corruption(wrong_delimiter, "quarantined", "expect_table_columns_to_match_set"),
    "missing_columns": Corruption(missing_columns, "quarantined", "expect_table_columns_to_match_set"),
    "extra_columns": Corruption(extra_columns, "warned", "expect_table_columns_to_match_set"),
    "garbage_numeric": Corruption(garbage_numeric, "quarantined", "expect_column_values_to_be_null(_parse_errors)"),
    "impossible_values": Corruption(impossible_values, "quarantined", "expect_column_values_to_be_between(distance)"),
    "duplicated_flights": Corruption(duplicated_flights, "quarantined",
                                     "expect_compound_columns_to_be_unique(carrier,flight,origin)"),
    "empty_file": Corruption(empty_file, "quarantined", "expect_table_row_count_to_be_between"),
    "wrong_encoding": Corruption(wrong_encoding, "quarantined", "expect_table_columns_to_match_set"),
    "null_keys": Corruption(null_keys, "quarantined", "expect_column_values_to_not_be_null(carrier)"),
    "future_dates": Corruption(future_dates, "quarantined", "expect_column_values_to_be_between(year)"),
    "unknown_airport": Corruption(unknown_airport, "quarantined", "expect_column_values_to_be_in_set(origin)"),
    "header_only": Corruption(header_only, "quarantined", "expect_table_row_count_to_be_between"),
    "unknown_carrier": Corruption(unknown_carrier, "quarantined", "expect_column_values_to_be_in_set(carrier)"),
    "short_day": Corruption(short_day, "warned", "expect_table_row_count_to_be_between"),
    "extreme_delays": Corruption(extreme_delays, "warned", "expect_column_values_to_be_between(dep_delay)"),
    "blank_delays": Corruption(blank_delays, "quarantined", "expect_column_values_to_not_be_null(dep_delay)"),
    "tenth_of_day": Corruption(tenth_of_day, "quarantined", "expect_table_row_count_to_be_between"),
    "delays_in_hours": Corruption(delays_in_hours, "quarantined",
                                  "expect_column_values_to_be_in_set(_dep_delay_off_times)"),
}


def corrupt(kind: str, content: bytes) -> bytes:
    try:
        return CORRUPTIONS[kind].make(content)
    except KeyError:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {', '.join(CORRUPTIONS)}") from None
