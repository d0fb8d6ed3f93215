"""Production traffic, simulated honestly: a day's scheduled flights sent to the live model service over HTTP, each
at its prediction time (two hours before departure), with the online store materialized hour by hour as a live
system's hourly job would, so every flight is served the features that were knowable at its prediction time.

Hour by hour through the day: materialize the feature tables' rows stamped up to the hour, then send the flights
whose prediction time falls in that hour as single-flight requests from a few concurrent clients. Weather is
observed on the hour, so a flight predicted at 14:35 sees the 14:00 observation, as the point-in-time training
set does. Days are replayed in order: the online store keeps the newest row per key, so replaying a day after a
later one would serve the later day's values. Progress is kept in ``{lake}/replay/flight_delay/state.json``, so a
retried replay resumes at the hour it reached and a finished day is not sent twice.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd
import requests

from pipelines.core.lake import Lake, open_lake, partition_key
from pipelines.core.settings import Settings, get_settings
from pipelines.features.tables import PLANES_SNAPSHOT, PREDICTION_LEAD, build_features, scheduled_departure

log = logging.getLogger(__name__)

STATE_KEY = "replay/flight_delay/state.json"
HOUR = pd.Timedelta(hours=1)


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


def _send(url: str, bodies: list[dict[str, Any]], clients: int) -> tuple[int, int]:
    """Single-flight requests from ``clients`` keep-alive connections: (answered 200, failed)."""
    def client(batch: list[dict[str, Any]]) -> tuple[int, int]:
        ok = failed = 0
        with requests.Session() as http:
            for body in batch:
                try:
                    response = http.post(f"{url}/predict", json={"flights": [body]}, timeout=30)
                    ok, failed = (ok + 1, failed) if response.status_code == 200 else (ok, failed + 1)
                    if response.status_code != 200:
                        log.warning("replay: %s answered %d: %s", body["flight"], response.status_code,
                                    response.text[:200])
                except requests.RequestException as error:
                    failed += 1
                    log.warning("replay: request failed: %s", error)
        return ok, failed

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, [bodies[i::clients] for i in range(clients)]))
    return sum(ok for ok, _ in results), sum(failed for _, failed in results)


def _logged(lake: Lake, day: date) -> int:
    """Prediction-log rows of ``day`` in the lake now."""
    from pipelines.serving.prediction_log import read_prediction_log

    return len(read_prediction_log(lake, day))


def replay_traffic(day: date, settings: Settings | None = None, url: str | None = None, clients: int = 4,
                   wait_for_log_s: float = 60) -> dict[str, Any]:
    """Send ``day``'s flights to the service at ``url`` (default: the front door) at their prediction times, and
    return once the service has written their predictions to the lake."""
    from pipelines.features.store import apply_definitions, open_store, run_window
    from pipelines.serving.contract import requests_from_flights

    settings = settings or get_settings()
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
    # of them is set by the materialization below, hour by hour.
    validated = set(lake.partitions("validated", "flights"))
    build_features([d for d in (day - timedelta(days=2), day - timedelta(days=1)) if d in validated] + [day],
                   settings)
    store = open_store(settings)  # materializes through the fast engine feature_store.yaml names
    apply_definitions(store)  # as materialize_features does: the sources point at this home's feature tables
    # From the start of the day's feature window (its schedule is stamped the day before): rows loaded again are
    # the same rows, and the online store keeps the newest per key.
    loaded_until = pd.Timestamp(run_window([day])[0]).tz_convert("UTC")
    views = [view.name for view in store.list_feature_views() if view.name != "plane_attributes"]
    # The plane snapshot is stamped before 2013: loaded whatever the day, as materialize_features does.
    store.materialize(start_date=PLANES_SNAPSHOT.to_pydatetime(), end_date=loaded_until.to_pydatetime(),
                      feature_views=["plane_attributes"])
    logged_before = _logged(lake, day)
    started = time.perf_counter()
    sent = failed = 0
    materialize_s = 0.0
    for hour, batch in flights.groupby(flights["prediction_time"].dt.floor("h"), sort=True):
        if through is not None and hour + HOUR <= through:
            continue  # a retried replay: these hours were sent before it stopped
        # Rows stamped up to and including the hour: the observation at 14:00 serves flights predicted 14:00-14:59.
        until = hour + pd.Timedelta(seconds=1)
        if until > loaded_until:
            tick = time.perf_counter()
            store.materialize(start_date=loaded_until.to_pydatetime(), end_date=until.to_pydatetime(),
                              feature_views=views)
            materialize_s += time.perf_counter() - tick
            loaded_until = until
        ok, bad = _send(url, requests_from_flights(batch), clients)
        sent, failed = sent + ok, failed + bad
        state["through"] = (hour + HOUR).isoformat()
        state["days"][day.isoformat()] = {"sent": sent, "failed": failed, "finished": False}
        lake.write_text(STATE_KEY, json.dumps(state, indent=2))
    send_s = time.perf_counter() - started
    if failed:
        raise ReplayError(f"{failed} of {len(flights)} requests for {day} failed; see the log above")

    # The service writes its prediction log in batches (by size or age): wait until this day's rows are in.
    deadline = time.monotonic() + wait_for_log_s
    while (logged := _logged(lake, day) - logged_before) < sent and time.monotonic() < deadline:
        time.sleep(0.5)
    if logged < sent:
        raise ReplayError(f"the service logged {logged} of {sent} predictions for {day} within "
                          f"{wait_for_log_s:.0f}s")
    result = {"sent": sent, "failed": 0, "finished": True, "logged": logged,
              "seconds": round(send_s, 1), "materialize_seconds": round(materialize_s, 1),
              "requests_per_s": round(sent / max(send_s - materialize_s, 1e-9), 1),
              "at": datetime.now().astimezone().isoformat(timespec="seconds")}
    state["days"][day.isoformat()] = result
    lake.write_text(STATE_KEY, json.dumps(state, indent=2))
    log.info("replay_traffic: %s: %d flights served and logged in %.1fs (materialization %.1fs)", day, sent,
             send_s, materialize_s)
    return result | {"day": day.isoformat()}
