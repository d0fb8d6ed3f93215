"""The day as it unfolds: operations events (each departure as it happens) and the same-day state they make.

An **event** is one flight leaving New York: its actual departure (scheduled departure plus departure delay, which
may fall after midnight) is its event time, and it carries nothing later than that. A flight that has not left sends
nothing, so a cancelled flight stays "not departed".

:class:`OperationsTracker` turns a local day's published schedule and its events, fed in time order, into **state
rows** for three keys, each keyed by the day (so a new day starts from zero, never from yesterday's evening):

* ``ops_origin`` (``origin_day`` = ``2013-04-01:EWR``) and ``ops_carrier`` (``origin_carrier_day`` =
  ``2013-04-01:EWR:B6``): flights departed so far, their mean departure delay, the share that left 15 minutes or more
  late, the mean departure delay of the last hour, flights whose scheduled time has passed that have not left
  ("pending") and pending as a share of those scheduled so far;
* ``ops_tail`` (``tail_day`` = ``2013-04-01:N12345``): the aircraft's departures from New York so far, the delay of
  its latest one, and its flights due out that have not left.

A state row is stamped with the moment it became knowable: one second (``EVENT_LAG``) after the event, scheduled
time or window exit that changed it, and local midnight for the day's opening zeros. Feast's point-in-time rule
(the latest row stamped at or before the prediction time) then gives a flight exactly the state made by the events
*before* its prediction time. The same tracker makes the rows that the replay pushes online as time passes and the
rows of the offline tables the training set joins, so the two cannot differ (``tests/unit/test_operations.py``
proves both the leakage rule and that equality).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.dates import LOCAL_TZ
from pipelines.features.tables import DISRUPTION_DELAY_MINUTES, flight_id, scheduled_departure

EVENT_LAG = pd.Timedelta(seconds=1)
"""A state is knowable one second after the event that made it: a request at the event's own minute does not see it."""
LAST_HOUR = pd.Timedelta(hours=1)
OPERATIONS_VIEWS = ("ops_origin", "ops_carrier", "ops_tail")
VIEW_KEYS = {"ops_origin": "origin_day", "ops_carrier": "origin_carrier_day", "ops_tail": "tail_day"}
GROUP_STATS = ("departed", "mean_dep_delay", "late_share", "last_hour_dep_delay", "pending", "pending_share")
TAIL_STATS = ("departed", "last_dep_delay", "pending")
VIEW_COLUMNS = {
    "ops_origin": [f"ops_origin_{s}" for s in GROUP_STATS],
    "ops_carrier": [f"ops_carrier_{s}" for s in GROUP_STATS],
    "ops_tail": [f"ops_tail_{s}" for s in TAIL_STATS],
}
INT_COLUMNS = {c for cols in VIEW_COLUMNS.values() for c in cols if c.endswith(("_departed", "_pending"))}
UNKNOWN_TAIL = "UNKNOWN"

# Timeline kinds, in the order they apply at one instant (the result is the same in any order: see ``_apply``).
_SCHEDULED, _DEPARTED, _LEFT_WINDOW = 0, 1, 2


def local_day_text(departures: pd.Series) -> pd.Series:
    """The New York calendar day of UTC instants, as ``YYYY-MM-DD``."""
    return departures.dt.tz_convert(LOCAL_TZ).dt.strftime("%Y-%m-%d")


def operations_keys(day: pd.Series, origin: pd.Series, carrier: pd.Series, tailnum: pd.Series) -> pd.DataFrame:
    """The three state keys of flights (``day`` is their local day as text)."""
    return pd.DataFrame({
        "origin_day": day + ":" + origin,
        "origin_carrier_day": day + ":" + origin + ":" + carrier,
        "tail_day": day + ":" + tailnum.fillna(UNKNOWN_TAIL),
    })


def day_schedule(flights: pd.DataFrame) -> pd.DataFrame:
    """The published schedule of validated flights: id, keys and scheduled departure (UTC), nothing that happened."""
    departure = scheduled_departure(flights)
    keys = operations_keys(local_day_text(departure), flights["origin"], flights["carrier"], flights["tailnum"])
    return pd.concat([pd.DataFrame({"flight_id": flight_id(flights), "scheduled_departure": departure}), keys],
                     axis=1).reset_index(drop=True)


def departure_events(flights: pd.DataFrame) -> pd.DataFrame:
    """One event per flight that left: its id, departure delay and actual departure (UTC) as ``event_time``."""
    left = flights[flights["dep_delay"].notna()]
    departure = scheduled_departure(left)
    delay = left["dep_delay"].astype("float64")
    events = pd.DataFrame({"flight_id": flight_id(left), "dep_delay": delay,
                           "event_time": departure + pd.to_timedelta(delay, unit="min")})
    return events.sort_values(["event_time", "flight_id"], kind="stable").reset_index(drop=True)


@dataclass
class _Group:
    """Running counts of one key of the day."""

    departed: int = 0
    delay_sum: float = 0.0
    late: int = 0
    recent: int = 0
    recent_sum: float = 0.0
    due: int = 0
    pending: int = 0
    last_delay: float = math.nan

    def stats(self) -> tuple[float, ...]:
        nan = math.nan
        return (self.departed, self.delay_sum / self.departed if self.departed else nan,
                self.late / self.departed if self.departed else nan,
                self.recent_sum / self.recent if self.recent else nan,
                self.pending, self.pending / self.due if self.due else nan)

    def tail_stats(self) -> tuple[float, ...]:
        return (self.departed, self.last_delay, self.pending)


class OperationsTracker:
    """The operations state of one local day, advanced through time.

    Give it the day's schedule (``day_schedule``); feed departure events as they arrive (``record``, any batch in
    any order, each at most once); ``advance(until)`` applies everything whose time has come and returns the state
    rows stamped up to ``until``, per view, in stamp order. Events must arrive before the clock passes them
    (one older than the last ``advance`` counts from its arrival, see ``record``)."""

    def __init__(self, day: date, schedule: pd.DataFrame) -> None:
        self.day = day
        self.flights = {row.flight_id: row for row in schedule.itertuples(index=False)}
        self.groups: dict[tuple[str, str], _Group] = {}
        self.departed: set[str] = set()
        self.passed: set[str] = set()
        self.day_start = pd.Timestamp(day).tz_localize(LOCAL_TZ).tz_convert("UTC")
        self.clock = self.day_start
        self._timeline: list[tuple[pd.Timestamp, int, str, float]] = [
            (row.scheduled_departure, _SCHEDULED, row.flight_id, math.nan) for row in self.flights.values()]
        heapq.heapify(self._timeline)
        self._pending_rows: list[tuple[str, pd.Timestamp, str, tuple[float, ...]]] = []
        self._opened = False

    def _keys(self, flight: str) -> list[tuple[str, str]]:
        row = self.flights[flight]
        keys = [("ops_origin", row.origin_day), ("ops_carrier", row.origin_carrier_day)]
        if not row.tail_day.endswith(UNKNOWN_TAIL):
            keys.append(("ops_tail", row.tail_day))
        return keys

    def _open(self) -> None:
        """The day's opening rows: every key of the schedule at zero, stamped at local midnight."""
        for flight in self.flights:
            for view, key in self._keys(flight):
                self.groups.setdefault((view, key), _Group())
        for (view, key), group in sorted(self.groups.items()):
            self._emit(view, key, self.clock, group)
        self._opened = True

    def record(self, events: pd.DataFrame) -> int:
        """Departure events (``flight_id``, ``dep_delay``, ``event_time``) of this day's flights; returns how many
        arrived late. A late event (its time already passed by the clock, so rows after it were already served)
        takes effect when it arrives, at the clock: what was served before it arrived is never rewritten."""
        late = 0
        for event in events.itertuples(index=False):
            if event.flight_id not in self.flights:
                raise ValueError(f"event for {event.flight_id}, which is not on {self.day}'s schedule")
            # A flight that left before its day began (a minute early, just after midnight) counts from midnight.
            instant = max(event.event_time, self.day_start)
            if self._opened and instant + EVENT_LAG <= self.clock:
                instant, late = self.clock, late + 1
            heapq.heappush(self._timeline, (instant, _DEPARTED, event.flight_id, float(event.dep_delay)))
        return late

    def advance(self, until: pd.Timestamp) -> dict[str, pd.DataFrame]:
        """Apply every change knowable by ``until`` and return the new state rows (stamped at or before it)."""
        if not self._opened:
            self._open()
        while self._timeline and self._timeline[0][0] + EVENT_LAG <= until:
            instant = self._timeline[0][0]
            touched: dict[tuple[str, str], _Group] = {}
            while self._timeline and self._timeline[0][0] == instant:
                _, kind, flight, delay = heapq.heappop(self._timeline)
                for view, key in self._keys(flight):
                    group = self.groups[(view, key)]
                    self._apply(group, kind, flight, delay)
                    touched[(view, key)] = group
                if kind == _DEPARTED:
                    heapq.heappush(self._timeline, (instant + LAST_HOUR, _LEFT_WINDOW, flight, delay))
                self._after(kind, flight)
            for (view, key), group in sorted(touched.items()):
                self._emit(view, key, instant + EVENT_LAG, group)
        self.clock = max(self.clock, until)
        return self._flush()

    def _apply(self, group: _Group, kind: int, flight: str, delay: float) -> None:
        # Pending counts flights whose scheduled time has passed and that have not left: a flight adds to it when
        # its time passes unless it left already, and leaves it when it departs after its time passed. Both
        # orders at one instant give the same count.
        if kind == _SCHEDULED:
            group.due += 1
            if flight not in self.departed:
                group.pending += 1
        elif kind == _DEPARTED:
            group.departed += 1
            group.delay_sum += delay
            group.late += delay >= DISRUPTION_DELAY_MINUTES
            group.recent += 1
            group.recent_sum += delay
            group.last_delay = delay
            if flight in self.passed:
                group.pending -= 1
        else:
            group.recent -= 1
            group.recent_sum -= delay

    def _after(self, kind: int, flight: str) -> None:
        if kind == _SCHEDULED:
            self.passed.add(flight)
        elif kind == _DEPARTED:
            self.departed.add(flight)

    def _emit(self, view: str, key: str, stamp: pd.Timestamp, group: _Group) -> None:
        values = group.tail_stats() if view == "ops_tail" else group.stats()
        self._pending_rows.append((view, stamp, key, values))

    def _flush(self) -> dict[str, pd.DataFrame]:
        rows, self._pending_rows = self._pending_rows, []
        return state_frames(rows, self.day)


def state_frames(rows: Iterable[tuple[str, pd.Timestamp, str, tuple[float, ...]]],
                 day: date) -> dict[str, pd.DataFrame]:
    """Rows ``(view, stamp, key, values)`` as one frame per view, in the layout of its feature table."""
    by_view: dict[str, list[tuple[pd.Timestamp, str, tuple[float, ...]]]] = {v: [] for v in OPERATIONS_VIEWS}
    for view, stamp, key, values in rows:
        by_view[view].append((stamp, key, values))
    frames = {}
    for view, items in by_view.items():
        stats = list(zip(*(values for _, _, values in items), strict=True)) or [()] * len(VIEW_COLUMNS[view])
        columns: dict[str, Any] = {
            VIEW_KEYS[view]: pd.array([key for _, key, _ in items], dtype="object"),
            "event_timestamp": pd.DatetimeIndex([stamp for stamp, _, _ in items], dtype="datetime64[us, UTC]"),
        }
        for name, values in zip(VIEW_COLUMNS[view], stats, strict=True):
            columns[name] = np.array(values, dtype="int64" if name in INT_COLUMNS else "float64")
        columns["day"] = day.isoformat()
        frames[view] = pd.DataFrame(columns, index=pd.RangeIndex(len(items)))
    return frames


def operations_tables(flights: pd.DataFrame, day: date) -> dict[str, pd.DataFrame]:
    """The whole of ``day``'s state rows from its flights (schedule and departures): the offline tables, made by
    the same tracker the live path feeds event by event."""
    schedule, events = day_schedule(flights), departure_events(flights)
    tracker = OperationsTracker(day, schedule)
    tracker.record(events)
    end = max([*schedule["scheduled_departure"], *events["event_time"]], default=tracker.clock)
    return tracker.advance(end + LAST_HOUR + EVENT_LAG)
