"""Many days judged in a few Great Expectations runs, with exactly the verdicts the days would get one by one.

GX's cost is per expectation and run, not per row: the flights suite takes ~0.4 s on one day's 900 rows and ~0.7 s
on thirty days' 27,000 (its 44 expectations each build their metric graph from their pydantic configuration). A
year judged day by day is 730 runs; judged a window at a time it is a few dozen.

How a window of consecutive days of one table is judged (``judge_window``):

1. The *per-day* part of the suite runs on each day alone, in date order: expectations with ``mostly`` (their
   verdict depends on the share of a day's rows, which pooling days would dilute) and any kind the window form
   below does not cover. Four of the flights suite's 44; none of the weather suite's.
2. The rest runs once on the days stacked, as a *screen*. Each expectation is one whose failure on any day shows
   as a failure of the stack: row by row checks without ``mostly`` as they are; the column set and types as they
   are (a window only holds days with the same columns and dtypes); the day's own parameters (its date, its
   volume floors) and its row count as columns beside each row, compared row by row; uniqueness within a day as
   uniqueness with the day's date.
3. The screen passed: every day passed that part, so its verdict is the per-day part's (the same failures, the
   same status a full run gives). The screen failed: the window is split in two and each half judged the same
   way, down to single days, which get the full checkpoint run (stored and rendered in Data Docs as before).

Volume floors look back at the previous good days. The screen is built assuming every day of the window is good
unless its per-day part quarantined it; a screen that passes confirms that; one that fails is undone before the
halves are judged in order.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

WINDOW_DAYS = 31
"""The most days one screen run stacks: a month of flights is ~27,000 rows, ~0.7 s."""

DATE_COLUMN = "_window_date"
ROWS_COLUMN = "_window_rows"
PARAM_PREFIX = "_window_param_"
PARAMETER = "$PARAMETER"

ROW_BY_ROW = frozenset({
    "expect_column_values_to_be_null", "expect_column_values_to_not_be_null", "expect_column_values_to_be_in_set",
    "expect_column_values_to_be_between",
})
"""Checks of each row alone: a stack fails them exactly when one of its days does (without ``mostly``)."""
WHOLE_COLUMN = frozenset({"expect_column_values_to_be_of_type"})
"""Checks of a column's dtype: the same on the stack as on each day, since a window's days share their dtypes."""


def _reference(value: Any) -> str | None:
    """The parameter name of a ``{"$PARAMETER": name}`` value, else None."""
    return value.get(PARAMETER) if isinstance(value, dict) else None


def _kwargs(config: Any) -> dict[str, Any]:
    return {k: v for k, v in config.kwargs.items() if k != "result_format"}


def _bounds(column: str, kwargs: dict[str, Any], day_parameters: set[str]) -> list[tuple[str, dict[str, Any]]] | None:
    """``column`` between ``min_value`` and ``max_value``, where a bound may be a day's own parameter: those become
    row-by-row comparisons with the parameter's column (nulls skipped, as the range check skips them)."""
    if kwargs.keys() - {"column", "min_value", "max_value"}:
        return None  # strict bounds, mostly, row conditions: left to the per-day part
    fixed: dict[str, Any] = {}
    out: list[tuple[str, dict[str, Any]]] = []
    for bound, above in (("min_value", True), ("max_value", False)):
        value = kwargs.get(bound)
        name = _reference(value)
        if name is None:
            if value is not None:
                fixed[bound] = value
            continue
        if name not in day_parameters:
            fixed[bound] = value
            continue
        other = PARAM_PREFIX + name
        a, b = (column, other) if above else (other, column)
        out.append(("expect_column_pair_values_a_to_be_greater_than_b",
                    {"column_A": a, "column_B": b, "or_equal": True, "ignore_row_if": "either_value_is_missing"}))
    if fixed:
        out.append(("expect_column_values_to_be_between", {"column": column, **fixed}))
    return out


def window_form(config: Any, day_parameters: set[str], helpers: list[str]) -> list[tuple[str, dict[str, Any]]] | None:
    """The expectation ``config`` as checks on a stack of days that fail exactly when it fails on one of them; None
    when it has no such form (it then runs on each day alone)."""
    kwargs = _kwargs(config)
    kind = config.type
    if kwargs.get("mostly", 1) < 1:
        return None
    kwargs.pop("mostly", None)
    if kind == "expect_table_columns_to_match_set":
        return [(kind, kwargs | {"column_set": [*kwargs["column_set"], *helpers]})]
    if kind == "expect_table_row_count_to_be_between":
        return _bounds(ROWS_COLUMN, {"column": ROWS_COLUMN} | kwargs, day_parameters)
    if kind == "expect_compound_columns_to_be_unique":
        return [(kind, kwargs | {"column_list": [*kwargs["column_list"], DATE_COLUMN]})]
    if kind == "expect_column_values_to_be_between" and any(
            _reference(kwargs.get(b)) in day_parameters for b in ("min_value", "max_value")):
        return _bounds(kwargs["column"], kwargs, day_parameters)
    if kind in ROW_BY_ROW or kind in WHOLE_COLUMN:
        return [(kind, kwargs)]
    return None


@dataclass(frozen=True)
class SplitSuite:
    """A suite in its two parts: the screen (run on a stack of days) and the per-day part (configurations of the
    original suite, run on each day alone)."""

    screen: Any
    per_day: Any
    per_day_names: list[str]


def split_suite(suite: Any, day_parameters: set[str]) -> SplitSuite:
    """``suite`` (a GX ``ExpectationSuite``) split into its window screen and its per-day part."""
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    helpers = [DATE_COLUMN, ROWS_COLUMN, *(PARAM_PREFIX + p for p in sorted(day_parameters))]
    screen, per_day = [], []
    for expectation in suite.expectations:
        form = window_form(expectation.configuration, day_parameters, helpers)
        if form is None:
            per_day.append(copy.copy(expectation))  # as it is, severity and all (a suite owns its expectations)
        else:
            screen += [ExpectationConfiguration(type=kind, kwargs=kwargs).to_domain_obj() for kind, kwargs in form]
    return SplitSuite(
        screen=ExpectationSuite(name=f"{suite.name}_window_screen", expectations=screen),
        per_day=ExpectationSuite(name=f"{suite.name}_per_day", expectations=per_day),
        per_day_names=[e.expectation_type for e in per_day])


def signature(frame: pd.DataFrame) -> tuple[tuple[str, str], ...]:
    """What days must share to be stacked: their columns, in order, with dtypes."""
    return tuple((str(c), str(t)) for c, t in frame.dtypes.items())


def stack(frames: dict[date, pd.DataFrame], parameters: dict[date, dict[str, Any]],
          day_parameters: set[str]) -> pd.DataFrame:
    """The days' frames stacked, each row with its day's date, row count and own parameters beside it."""
    parts = []
    for day, frame in frames.items():
        extra = {DATE_COLUMN: day.isoformat(), ROWS_COLUMN: len(frame)}
        extra |= {PARAM_PREFIX + p: parameters[day][p] for p in sorted(day_parameters)}
        parts.append(frame.assign(**extra))
    return pd.concat(parts, ignore_index=True)


def windows(days: list[date], frames: dict[date, pd.DataFrame]) -> Iterator[list[date]]:
    """``days`` (ascending) as runs of consecutive days with rows and the same columns, at most ``WINDOW_DAYS``."""
    current: list[date] = []
    for day in days:
        frame = frames[day]
        if frame.empty:  # no rows to carry its row count in a stack: judged alone
            yield from ([current, [day]] if current else [[day]])
            current = []
            continue
        fits = (current and (day - current[-1]).days == 1 and len(current) < WINDOW_DAYS
                and signature(frame) == signature(frames[current[0]]))
        if current and not fits:
            yield current
            current = []
        current.append(day)
    if current:
        yield current


def bisect(window: list[date], passes: Callable[[list[date]], bool], alone: Callable[[date], None]) -> None:
    """Judge ``window``: ``passes`` screens a run of days (and records their verdicts when it passes); a day whose
    screen fails, or a single day, is judged ``alone``. Halves are judged in date order."""
    if len(window) == 1:
        alone(window[0])
        return
    if passes(window):
        return
    middle = len(window) // 2
    bisect(window[:middle], passes, alone)
    bisect(window[middle:], passes, alone)
