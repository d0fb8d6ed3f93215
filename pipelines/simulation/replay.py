"""Production traffic, simulated honestly: a day's scheduled flights sent to the live model service over HTTP, each
at its prediction time (two hours before departure), with the online store kept as a live system keeps it, so every
flight is served the features that were knowable at its prediction time.

The day is walked in time order, minute by minute of prediction time. The departures that happened before the minute
are given to the operations tracker (``pipelines.features.operations``), whose new state rows are pushed to Feast
(online at once, offline at each hour's end: ``pipelines.features.push``); then the flights predicted in that minute
are sent, in one request. So a request sees exactly the events before its
time. The batch views are loaded hour by hour as a live system's hourly materialization would: weather observed at
14:00 serves flights predicted 14:00-14:59, as the point-in-time training set does (the day's rows read once from the
offline store, an hour loading only the views with rows stamped in its window: ``WindowLoads``). Days are replayed
in order: the online store keeps the newest row per key, so replaying a day after a later one would serve the later
day's values.
Progress is kept in ``{lake}/replay/flight_delay/state.json``, so a retried replay resumes at the hour it reached
(the tracker's state rebuilt up to it, nothing pushed twice) and a finished day is not sent twice. Nothing is
sent twice or skipped: a request the service refuses for now (503, or no connection: nothing was served) is tried
again, any other failure stops the replay inside its hour (the hour is not recorded as done), a retry sends only
the flights the prediction log does not hold yet, and a day is finished only when the log holds every scheduled
flight of it.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd
import requests

from pipelines.core.lake import Lake, open_lake, partition_key
from pipelines.core.settings import Settings, get_settings
from pipelines.features.steps import build_features
from pipelines.features.tables import PLANES_SNAPSHOT, PREDICTION_LEAD, flight_id, scheduled_departure

log = logging.getLogger(__name__)

STATE_KEY = "replay/flight_delay/state.json"
HOUR = pd.Timedelta(hours=1)
SEND_ATTEMPTS = 3
BATCH_FLIGHTS = 100
"""Flights a request carries at most: the service's inline limit (``pipelines.serving.predictor``)."""
"""Tries of a request the service did not serve (503, refused connection) before the replay stops."""


class ReplayError(RuntimeError):
    """A replay that cannot run as asked; the message says why."""


def _state(lake: Lake) -> dict[str, Any]:
    return json.loads(lake.read_text(STATE_KEY)) if lake.exists(STATE_KEY) else {"through": None, "days": {}}


def _day_flights(lake: Lake, day: date) -> pd.DataFrame:
    key = partition_key("validated", "flights", day, "data.parquet")
    if not lake.exists(key):
        raise ReplayError(f"no validated flights for {day}: run flights_ingest for that day first")
    flights = lake.read_parquet(key)
    flights["prediction_time"] = scheduled_departure(flights) - PREDICTION_LEAD
    return flights.sort_values("prediction_time", kind="stable").reset_index(drop=True)


class _Client:
    """One keep-alive HTTP session; each minute's flights go in one request (the service takes up to
    ``BATCH_FLIGHTS`` inline), as a caller asking for the flights due that minute would send them. Single-flight
    requests from four threads spent about 10 s of a replayed day's 21-31 s in per-request overhead."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers.update(headers)

    def _post(self, bodies: list[dict[str, Any]]) -> bool:
        """One request; tried again only when the service cannot have served it (no connection, or 503): a timeout
        may have been served and logged, so it is a failure here and the retry of the replay decides."""
        what = f"{len(bodies)} flights from {bodies[0]['flight']}"
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                response = self.session.post(f"{self.url}/predict", json={"flights": bodies}, timeout=30)
            except requests.ConnectionError as error:
                log.warning("replay: %s: no connection (%s), try %d of %d", what, error, attempt, SEND_ATTEMPTS)
            except requests.RequestException as error:
                log.warning("replay: %s: request failed: %s", what, error)
                return False
            else:
                if response.status_code == 200:
                    return True
                log.warning("replay: %s answered %d: %s", what, response.status_code, response.text[:200])
                if response.status_code != 503:
                    return False
            time.sleep(0.5 * attempt)
        return False

    def send(self, bodies: list[dict[str, Any]]) -> tuple[int, int]:
        """The flights in requests of at most ``BATCH_FLIGHTS``: (flights answered 200, flights failed)."""
        answered = 0
        for first in range(0, len(bodies), BATCH_FLIGHTS):
            batch = bodies[first:first + BATCH_FLIGHTS]
            answered += len(batch) if self._post(batch) else 0
        return answered, len(bodies) - answered

    def close(self) -> None:
        self.session.close()


def _logged(lake: Lake, day: date) -> pd.Series:
    """The flight ids of ``day``'s prediction-log rows in the lake now (one per answer: a repeat is a duplicate)."""
    from pipelines.serving.prediction_log import read_prediction_log

    logged = read_prediction_log(lake, day)
    return logged["flight_id"] if len(logged) else pd.Series([], dtype=object)


def replay_traffic(day: date, settings: Settings | None = None, url: str | None = None,
                   wait_for_log_s: float = 60) -> dict[str, Any]:
    """Send ``day``'s flights to the service at ``url`` (default: the front door) at their prediction times, and
    return once the service has written their predictions to the lake. In the online store's turn
    (``online_store_turn``: no materialization writes into it meanwhile)."""
    from pipelines.features.store import online_store_turn

    settings = settings or get_settings()
    with online_store_turn(settings):
        return _replay_day(day, settings, url, wait_for_log_s)


def _replay_day(day: date, settings: Settings, url: str | None, wait_for_log_s: float) -> dict[str, Any]:
    from pipelines.features.operations import OperationsTracker, day_schedule, departure_events
    from pipelines.features.push import OperationsPusher
    from pipelines.features.store import (
        WindowLoads,
        apply_definitions,
        open_store,
        rewind_online,
        run_window,
        windowed_views,
    )
    from pipelines.serving.contract import requests_from_flights

    url = url or f"http://127.0.0.1:{settings.service_port}"
    lake = open_lake(settings)
    state = _state(lake)
    done = state["days"].get(day.isoformat())
    if done and done.get("finished"):
        log.info("replay_traffic: %s was replayed already (%d flights)", day, done["sent"])
        return done | {"day": day.isoformat(), "already": True}
    flights = _day_flights(lake, day)
    first_hour = flights["prediction_time"].iloc[0].floor("h")
    through = pd.Timestamp(state["through"]) if state["through"] else None
    if through is not None and through > first_hour and not done:
        raise ReplayError(f"the online store was replayed through {through.isoformat()}, after {day}'s first "
                          "prediction hour: replay days in order (a later day's features would be served)")
    try:
        requests.get(f"{url}/readyz", timeout=5).raise_for_status()
    except requests.RequestException as error:
        raise ReplayError(f"the model service at {url} is not ready ({error}): deploy it first "
                          "(python -m pipelines deploy)") from None

    # The day's feature tables, and the two days' before: the trailing statistics a flight of the day sees are
    # published the morning after their own day (D-1's at 06:00 on D, D-2's before that). What the service sees
    # of them is set by the materialization below, hour by hour. The day's own operations tables are not built:
    # they come from the pushes below, as the day unfolds.
    validated = set(lake.partitions("validated", "flights"))
    build_features([d for d in (day - timedelta(days=2), day - timedelta(days=1)) if d in validated], settings)
    build_features([day], settings, operations=False)
    store = open_store(settings)  # materializes through the fast engine feature_store.yaml names
    apply_definitions(store)  # as materialize_features does: the sources point at this home's feature tables
    # From the start of the day's feature window (its schedule is stamped the day before): rows loaded again are
    # the same rows, and the online store keeps the newest per key.
    loaded_until = pd.Timestamp(run_window([day])[0]).tz_convert("UTC")
    views = windowed_views(store.list_feature_views())
    # The plane snapshot is stamped before 2013: loaded whatever the day, as materialize_features does.
    store.materialize(start_date=PLANES_SNAPSHOT.to_pydatetime(), end_date=loaded_until.to_pydatetime(),
                      feature_views=["plane_attributes"])
    if not done:  # a fresh day: the online store as it was before the day's window, whatever was loaded since
        rewind_online(store, loaded_until.to_pydatetime())
    # The day's rows of the windowed views, read once and loaded hour by hour (an hour loads only the views that
    # have rows in its window: mostly the weather alone). Rows written after this read (a later day's features,
    # built meanwhile) are not the day's flights' features: that day's replay loads them from its own window.
    last_hour = flights["prediction_time"].iloc[-1].floor("h") + pd.Timedelta(seconds=1)
    loads = WindowLoads(store, views, loaded_until.to_pydatetime(), last_hour.to_pydatetime())

    events = departure_events(flights)
    tracker = OperationsTracker(day, day_schedule(flights))
    pusher = OperationsPusher(store)
    if through is not None and done:  # a retried replay: the state it had pushed, rebuilt without pushing again
        tracker.record(events[events["event_time"] < through])
        tracker.advance(through)
    recorded_until = tracker.clock

    ids = flight_id(flights)
    bodies = requests_from_flights(flights)  # once for the day (by row position): 5 ms a minute when built per minute
    if done:
        # A retry: what the first try sent reaches the lake within the service's batch age; then it is not sent again.
        time.sleep(min(settings.prediction_log_max_age_s + 1, 60))
    already = set(_logged(lake, day))

    def operations_until(now: pd.Timestamp) -> None:
        """The departures before ``now`` reach the tracker; the state rows stamped up to ``now`` are pushed."""
        nonlocal recorded_until
        tracker.record(events[(events["event_time"] >= recorded_until) & (events["event_time"] < now)])
        recorded_until = max(recorded_until, now)
        pusher.push(tracker.advance(now))

    started = time.perf_counter()
    sent = 0
    materialize_s = 0.0
    view_loads = 0  # views loaded, summed over the hours
    sender = _Client(url, settings.service_headers)
    try:
        for hour, batch in flights.groupby(flights["prediction_time"].dt.floor("h"), sort=True):
            if through is not None and hour + HOUR <= through:
                continue  # a retried replay: these hours were sent before it stopped
            # Rows stamped up to and including the hour: the observation at 14:00 serves flights predicted
            # 14:00-14:59.
            until = hour + pd.Timedelta(seconds=1)
            if until > loaded_until:
                if due := views_with_rows(loads.stamps, loaded_until, until):
                    tick = time.perf_counter()
                    loads.load(due, loaded_until, until)
                    materialize_s += time.perf_counter() - tick
                    view_loads += len(due)
                loaded_until = until
            for minute, requests_now in batch.groupby("prediction_time", sort=True):
                operations_until(minute)
                requests_now = requests_now[~ids.loc[requests_now.index].isin(already)]
                if requests_now.empty:
                    continue
                ok, bad = sender.send([bodies[row] for row in requests_now.index])
                sent += ok
                if bad:  # the hour is not recorded as done: a retry resumes it with what was not logged
                    state["days"][day.isoformat()] = {"sent": sent, "failed": bad, "finished": False}
                    lake.write_text(STATE_KEY, json.dumps(state, indent=2))
                    raise ReplayError(f"{bad} of {len(requests_now)} requests for {day} at {minute} failed; see the "
                                      "log above. A retry resumes the day at this hour with what was not logged")
            # The hour's state, pushed online and offline, before the hour is recorded as done.
            operations_until(hour + HOUR)
            pusher.flush()
            state["through"] = (hour + HOUR).isoformat()
            state["days"][day.isoformat()] = {"sent": sent, "failed": 0, "finished": False}
            lake.write_text(STATE_KEY, json.dumps(state, indent=2))
        # The rest of the day's events (late departures, the last hour's window): the day's offline state whole.
        operations_until(max(events["event_time"].max(), tracker.clock) + 2 * HOUR)
        pusher.flush()
        loads.record()
    finally:
        sender.close()
    send_s = time.perf_counter() - started

    # The service writes its prediction log in batches (by size or age): the day is finished once every scheduled
    # flight of it is there.
    expected = set(ids)
    deadline = time.monotonic() + wait_for_log_s
    while (missing := expected - set(logged_ids := _logged(lake, day))) and time.monotonic() < deadline:
        time.sleep(0.25)
    if missing:
        raise ReplayError(f"the service logged {len(expected) - len(missing)} of {len(expected)} flights of {day} "
                          f"within {wait_for_log_s:.0f}s (e.g. {sorted(missing)[:3]})")
    duplicated = int(logged_ids.duplicated().sum())
    if duplicated:
        log.warning("replay_traffic: %s: %d flights were logged more than once", day, duplicated)
    logged = len(expected)
    result = {"sent": sent, "failed": 0, "finished": True, "logged": logged, "duplicated": duplicated,
              "seconds": round(send_s, 1), "materialize_seconds": round(materialize_s, 1),
              "view_loads": view_loads,
              "operations": pusher.stats(),
              "requests_per_s": round(sent / max(send_s - materialize_s, 1e-9), 1),
              "at": datetime.now().astimezone().isoformat(timespec="seconds")}
    state["days"][day.isoformat()] = result
    lake.write_text(STATE_KEY, json.dumps(state, indent=2))
    log.info("replay_traffic: %s: %d flights served and logged in %.1fs (materialization %.1fs, %d view loads; "
             "operations pushes %s)", day, sent, send_s, materialize_s, view_loads, pusher.stats())
    return result | {"day": day.isoformat()}


def views_with_rows(stamps: dict[str, pd.Series], since: pd.Timestamp, until: pd.Timestamp) -> list[str]:
    """The views with a row stamped in ``[since, until]`` (``stamps``: each view's sorted timestamps), in order."""
    return [view for view, times in stamps.items()
            if times.searchsorted(since, side="left") < times.searchsorted(until, side="right")]


def replay_summary(day: date, settings: Settings | None = None) -> dict[str, Any]:
    """What the replay of ``day`` served: its record (flights, pushes of the operations state) and how many served
    vectors carried that state, with the origin's state at one mid-day request as an example."""
    from pipelines.serving.prediction_log import read_prediction_log

    settings = settings or get_settings()
    lake = open_lake(settings)
    record = _state(lake)["days"].get(day.isoformat(), {})
    logged = read_prediction_log(lake, day)
    if logged.empty:
        return {"day": day.isoformat(), "record": record, "served": 0}
    features = pd.DataFrame([json.loads(text) for text in logged["features"]])
    with_state = features["ops_origin_departed"].notna() if "ops_origin_departed" in features else pd.Series(False)
    example = features.iloc[len(features) // 2]
    return {"day": day.isoformat(), "record": record, "served": len(features),
            "with_operations_state": int(with_state.sum()),
            "example": {k: example.get(k) for k in ("flight_id", "ops_origin_departed", "ops_origin_mean_dep_delay",
                                                    "ops_origin_pending", "ops_carrier_departed")}}


def format_replay_summary(summary: dict[str, Any]) -> str:
    ops = summary["record"].get("operations", {})
    lines = [f"Replayed {summary['day']}: {summary['served']:,} flights served at their prediction times; "
             f"{ops.get('pushes', 0):,} pushes of the operations state ({ops.get('online_rows', 0):,} rows online, "
             f"{ops.get('offline_rows', 0):,} offline); {summary.get('with_operations_state', 0):,} served vectors "
             "carry it"]
    if example := summary.get("example"):
        delay = example["ops_origin_mean_dep_delay"]
        lines.append(f"  e.g. {example['flight_id']} saw its origin at {example['ops_origin_departed']} departed "
                     f"(mean delay {'-' if delay is None or delay != delay else f'{delay:.1f}'} min), "
                     f"{example['ops_origin_pending']} pending; its airline there {example['ops_carrier_departed']} "
                     "departed")
    return "\n".join(lines)
