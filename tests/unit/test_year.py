"""The pieces of ``make year`` that decide without Airflow (``pipelines.ops.year``, ``pipelines.simulation.feed``):
broken deliveries land before their day and stay until the source re-lands them, a repair happens once and only
after the day's ingest run failed, and the count of flights served against the feed sees a missing and a twice-
logged flight. The year itself, under the scheduler, is the integration test's (tests/e2e).

The REST client here is a stand-in recording calls: the decisions under test are ours, the API is Airflow's.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pandas as pd
import pytest

from pipelines.core.lake import Lake, landing_key, partition_key
from pipelines.core.settings import Settings
from pipelines.features.tables import flight_id
from pipelines.ops import year
from pipelines.ops.airflow_api import AirflowApiError
from pipelines.simulation.feed import FeedUnavailable, feed_csv, land_feed

BROKEN = date(2013, 5, 14)


def test_a_day_outside_the_feed_is_refused_with_its_dates_and_nothing_lands(lake: Lake, settings: Settings) -> None:
    with pytest.raises(FeedUnavailable, match=r"holds New York days 2013-01-01 \.\. 2013-12-31.*not 2026-12-03"):
        land_feed([date(2013, 12, 31), date(2026, 12, 3)], settings)
    assert not lake.exists(landing_key("flights", date(2013, 12, 31)))


def test_a_year_window_early_in_2013_trains_on_what_the_feed_holds_and_one_ending_past_it_is_refused() -> None:
    from pipelines.core.dates import DEFAULT_WINDOW_DAYS, date_range, training_window
    from pipelines.simulation.feed import feed_window

    window = training_window(date(2013, 4, 8), window_days=DEFAULT_WINDOW_DAYS)  # a Monday's weekly retrain
    assert window[0] < date(2013, 1, 1)
    assert feed_window(window) == date_range(date(2013, 1, 1), date(2013, 4, 7))
    with pytest.raises(FeedUnavailable, match="not 2026-12-03"):
        feed_window(training_window(date(2026, 12, 4), window_days=DEFAULT_WINDOW_DAYS))


def test_land_feed_keeps_a_delivery_that_arrived_unless_told_to_replace(lake: Lake, settings: Settings) -> None:
    lake.write_bytes(landing_key("flights", BROKEN), b"broken")
    kept = land_feed([BROKEN], settings, keep_landed=True)
    assert lake.read_bytes(landing_key("flights", BROKEN)) == b"broken" and kept["kept"] == 1
    assert lake.read_bytes(landing_key("weather", BROKEN)) == feed_csv("weather", BROKEN)
    land_feed([BROKEN], settings)
    assert lake.read_bytes(landing_key("flights", BROKEN)) == feed_csv("flights", BROKEN)


def test_broken_days_land_only_inside_the_slice_and_once(lake: Lake, settings: Settings) -> None:
    state = year.YearState()
    year.land_broken_days(settings, state, (date(2013, 5, 1), date(2013, 5, 31)), say=lambda _: None)
    assert state.broken == [BROKEN.isoformat()]
    assert lake.read_bytes(landing_key("flights", BROKEN)) != feed_csv("flights", BROKEN)
    assert not lake.exists(landing_key("flights", date(2013, 8, 20)))
    lake.write_bytes(landing_key("flights", BROKEN), b"re-landed by the source")
    year.land_broken_days(settings, state, (date(2013, 5, 1), date(2013, 5, 31)), say=lambda _: None)
    assert lake.read_bytes(landing_key("flights", BROKEN)) == b"re-landed by the source", "landed twice"


class RecordingApi:
    """Answers the two calls repair_broken_days makes: the day's ingest run, and clear."""

    def __init__(self, state: str) -> None:
        self.state, self.cleared = state, []  # type: list[str]

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return {"dag_runs": [{"dag_run_id": "backfill__2013-05-14", "state": self.state}]}

    def clear(self, dag_id: str, run_id: str) -> list[str]:
        self.cleared.append(run_id)
        return []


@pytest.mark.parametrize("run_state", ["running", "queued", "success"])
def test_a_broken_day_is_not_repaired_before_its_ingest_run_failed(settings: Settings, run_state: str) -> None:
    state = year.YearState(broken=[BROKEN.isoformat()])
    api = RecordingApi(run_state)
    year.repair_broken_days(api, state, settings, say=lambda _: None)  # type: ignore[arg-type]
    assert api.cleared == [] and state.repaired == []


def test_a_failed_broken_day_is_relanded_and_cleared_once(lake: Lake, settings: Settings) -> None:
    state = year.YearState(broken=[BROKEN.isoformat()])
    lake.write_bytes(landing_key("flights", BROKEN), b"broken")
    api = RecordingApi("failed")
    said: list[str] = []
    year.repair_broken_days(api, state, settings, say=said.append)  # type: ignore[arg-type]
    year.repair_broken_days(api, state, settings, say=said.append)  # type: ignore[arg-type]
    assert api.cleared == ["backfill__2013-05-14"], "cleared once"
    assert state.repaired == [BROKEN.isoformat()] and len(said) == 1 and "quarantined" in said[0]
    assert lake.read_bytes(landing_key("flights", BROKEN)) == feed_csv("flights", BROKEN)


def test_served_against_feed_counts_missing_and_twice_logged_flights(lake: Lake, settings: Settings) -> None:
    flights = pd.DataFrame({"year": [2013] * 3, "month": [5] * 3, "day": [14] * 3, "carrier": ["UA", "B6", "AA"],
                            "flight": [1, 2, 3], "origin": ["EWR", "JFK", "LGA"]})
    lake.write_parquet(partition_key("validated", "flights", BROKEN, "data.parquet"), flights)
    ids = flight_id(flights).tolist()
    logged = pd.DataFrame({"flight_id": [ids[0], ids[1], ids[1]]})  # the third missing, the second twice
    lake.write_parquet(partition_key("predictions", "flight_delay", BROKEN, "part-0.parquet"), logged)

    served = year.served_against_feed(settings, BROKEN, date(2013, 5, 15))

    assert {k: served[k] for k in ("days", "feed_flights", "logged_flights", "missing", "duplicates")} == {
        "days": 1, "feed_flights": 3, "logged_flights": 2, "missing": 1, "duplicates": 1}
    assert served["problems"] == ["2013-05-14: 1 missing, 1 duplicated", "2013-05-15: no validated flights"]


class _StackStarting(Exception):
    """Raised where the stack would create its databases: everything before it (the secrets check) passed."""


def test_the_year_on_embedded_defaults_starts_with_its_local_metadata_database(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # A bug: the year's own choice of the local PostgreSQL (trust auth) went through the production profile's
    # secrets check, so `make year` refused to start on embedded defaults. Stopped where databases are created.
    from pipelines.ops import stack

    seen: dict[str, str] = {}

    def ensure_databases(env: dict[str, str]) -> list[str]:
        seen.update(env)
        raise _StackStarting

    monkeypatch.setattr(stack, "ensure_databases", ensure_databases)
    with pytest.raises(_StackStarting):
        year.run_year(settings=settings, say=lambda text: None)
    assert seen["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://postgres@127.0.0.1:5432/"
                                                                  "airflow_year_")
    assert seen["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] == seen["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def test_a_profile_given_to_the_year_is_still_held_to_its_secrets(settings: Settings) -> None:
    from pipelines.ops.stack import StackError

    with pytest.raises(StackError, match="SERVICE_TOKEN"):
        year.run_year(settings=settings, say=lambda text: None, profile={"SERVICE_TOKEN": "change-me"})


def test_a_profile_naming_its_metadata_database_keeps_it() -> None:
    assert year.metadata_database(Settings(), {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://x"}) == {}


def test_the_slowest_daily_step_is_named_among_the_daily_dags_only() -> None:
    costs = {"flights_ingest": {"tasks_mean_s": {"validate": 4.0, "land": 0.5}},
             "flight_delay_monitoring": {"tasks_mean_s": {"replay_traffic": 9.5, "build_drift_report": 1.4}},
             "flight_delay_training": {"tasks_mean_s": {"tune": 80.0}}}  # weekly, not a daily step
    assert year.slowest_daily_step(costs) == "flight_delay_monitoring.replay_traffic (9.5s)"
    assert year.slowest_daily_step({}) is None


def test_a_listing_is_read_page_by_page_to_its_last_item() -> None:
    # A bug: the year's costs asked for 1,000 runs and got Airflow's page of 100, so they counted 100 days.
    from pipelines.ops.airflow_api import PAGE, AirflowClient

    runs = [{"dag_run_id": f"r{n}"} for n in range(2 * PAGE + 7)]
    asked: list[dict[str, Any]] = []

    class Paged(AirflowClient):
        def request(self, method: str, path: str, **kwargs: Any) -> Any:
            params = kwargs["params"]
            asked.append(params)
            start = params["offset"]
            return {"dag_runs": runs[start:start + min(params["limit"], PAGE)], "total_entries": len(runs)}

    listed = Paged("http://127.0.0.1:1", "admin", "x").every("/dags/d/dagRuns", "dag_runs", {"state": ["success"]})
    assert listed == runs
    assert [p["offset"] for p in asked] == [0, PAGE, 2 * PAGE] and all(p["state"] == ["success"] for p in asked)


class WeeklyApi:
    """Answers start_weekly_training's calls: monitoring's run of a day (success for the days in ``monitored``),
    and backfills, recorded."""

    def __init__(self) -> None:
        self.monitored: set[date] = set()
        self.made: list[tuple[str, date, date, dict[str, Any]]] = []
        self.completed: set[int] = set()
        self.training_runs = 0  # queued or running (a drift request's, say)

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if "state" in kwargs["params"]:
            assert path == "/dags/flight_delay_training/dagRuns"
            return {"total_entries": self.training_runs}
        day = datetime.fromisoformat(kwargs["params"]["logical_date_gte"]).date()
        return {"dag_runs": [{"dag_run_id": f"backfill__{day}", "state": "success"}] if day in self.monitored
                else []}

    def backfill(self, dag_id: str, first: date, last: date, conf: dict[str, Any], max_active_runs: int) -> Any:
        if any(backfill["completed_at"] is None for backfill in self.backfills(dag_id)):
            raise AirflowApiError(f"POST /backfills: 409 There is already a running backfill for dag {dag_id}")
        self.made.append((dag_id, first, last, conf))
        return {"id": len(self.made)}

    def backfills(self, dag_id: str) -> list[dict[str, Any]]:
        return [{"id": n, "dag_id": made[0], "completed_at": "2026-12-05T20:00:00Z" if n in self.completed else None}
                for n, made in enumerate(self.made, start=1) if made[0] == dag_id]


@pytest.fixture
def no_fresher_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """No registered version covers a Monday's week (the registry is MLflow's; these tests answer for it)."""
    from pipelines.registry import register

    monkeypatch.setattr(register, "fresher_version", lambda *args, **kwargs: None)


@pytest.mark.usefixtures("no_fresher_version")
def test_each_weekly_training_is_made_alone_once_monitoring_watched_its_sunday(settings: Settings) -> None:
    # A bug: one backfill queued all the year's Mondays at once, and Airflow defers Asset-triggered runs while a
    # DAG has max_active_runs queued runs: none of the year's 14 drift requests started a training.
    days, state, api = (date(2013, 7, 1), date(2013, 7, 21)), year.YearState(), WeeklyApi()
    assert year.mondays(days) == [date(2013, 7, 8), date(2013, 7, 15)]
    year.start_weekly_training(api, state, settings, days, say=lambda _: None)  # type: ignore[arg-type]
    assert api.made == [], "before Sunday's monitoring"
    api.monitored.add(date(2013, 7, 7))
    for _ in range(2):
        year.start_weekly_training(api, state, settings, days, say=lambda _: None)  # type: ignore[arg-type]
    assert api.made == [("flight_delay_training", date(2013, 7, 8), date(2013, 7, 9), year.WEEKLY)]
    assert state.weekly == {"2013-07-08": 1} and year.YearState.load(settings).weekly == {"2013-07-08": 1}
    api.completed.add(1)
    api.monitored.add(date(2013, 7, 14))
    year.start_weekly_training(api, state, settings, days, say=lambda _: None)  # type: ignore[arg-type]
    assert [made[1] for made in api.made] == [date(2013, 7, 8), date(2013, 7, 15)]


@pytest.mark.usefixtures("no_fresher_version")
def test_a_weekly_training_waits_while_the_last_one_still_runs(settings: Settings) -> None:
    # A bug, found by make year: Airflow runs one backfill of a DAG at a time, and the year died on "409 There is
    # already a running backfill" when a Sunday was monitored before the last Monday's training had finished.
    days, state, api = (date(2013, 7, 1), date(2013, 7, 21)), year.YearState(), WeeklyApi()
    api.monitored.add(date(2013, 7, 7))
    year.start_weekly_training(api, state, settings, days, say=lambda _: None)  # type: ignore[arg-type]
    api.monitored.add(date(2013, 7, 14))
    year.start_weekly_training(api, state, settings, days, say=lambda _: None)  # type: ignore[arg-type]
    assert [made[1] for made in api.made] == [date(2013, 7, 8)] and list(state.weekly) == ["2013-07-08"]
    api.completed.add(1)
    year.start_weekly_training(api, state, settings, days, say=lambda _: None)  # type: ignore[arg-type]
    assert [made[1] for made in api.made] == [date(2013, 7, 8), date(2013, 7, 15)]


@pytest.mark.usefixtures("no_fresher_version")
def test_of_several_mondays_due_at_once_only_the_latest_trains(settings: Settings) -> None:
    # Found by make year: monitoring runs ahead of training, and the Mondays it had passed were made one backfill
    # at a time, each training an older window to be replaced at once; the year's end waited on them.
    days, state, api = (date(2013, 7, 1), date(2013, 7, 28)), year.YearState(), WeeklyApi()
    api.monitored |= {date(2013, 7, 7), date(2013, 7, 14), date(2013, 7, 21)}
    api.training_runs = 1  # a drift request's training: it may register a fresher version, so nothing is decided
    year.start_weekly_training(api, state, settings, days, say=lambda _: None)  # type: ignore[arg-type]
    assert api.made == [] and state.weekly_not_run == {}
    api.training_runs = 0
    said: list[str] = []
    year.start_weekly_training(api, state, settings, days, say=said.append)  # type: ignore[arg-type]
    assert api.made == [("flight_delay_training", date(2013, 7, 22), date(2013, 7, 23), year.WEEKLY)]
    assert list(state.weekly_not_run) == ["2013-07-08", "2013-07-15"]
    assert "the training of 2013-07-22, due too" in said[0]
    assert year.YearState.load(settings).weekly_not_run == state.weekly_not_run
    assert len(state.weekly) + len(state.weekly_not_run) == len(year.mondays(days))


def test_a_monday_whose_week_a_drift_retrain_covers_is_not_made(settings: Settings,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.registry import register

    asked: list[tuple[date, int]] = []

    def fresher(last_day: date, within_days: int, settings: Settings | None = None) -> tuple[date, str] | None:
        asked.append((last_day, within_days))
        return (date(2013, 7, 4), "6")  # a drift request's version, trained through Thursday

    monkeypatch.setattr(register, "fresher_version", fresher)
    days, state, api = (date(2013, 7, 1), date(2013, 7, 21)), year.YearState(), WeeklyApi()
    api.monitored.add(date(2013, 7, 7))
    year.start_weekly_training(api, state, settings, days, say=lambda _: None)  # type: ignore[arg-type]
    assert api.made == [] and asked == [(date(2013, 7, 7), year.SKIP_IF_TRAINED_WITHIN_DAYS)]
    assert state.weekly_not_run == {"2013-07-08": "version 6 was trained on data through 2013-07-04"}


class BackfillsApi:
    """Answers GET /backfills/{id} (completed or not) and records the PUTs."""

    def __init__(self, completed: set[int]) -> None:
        self.completed, self.puts = completed, []

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        backfill_id = int(path.split("/")[2])
        if method == "PUT":
            if backfill_id in self.completed:
                raise AirflowApiError(f"PUT {path}: 409 Backfill is already completed.")
            self.puts.append(path)
            return {}
        return {"id": backfill_id, "completed_at": "2026-12-05T20:32:00Z" if backfill_id in self.completed else None}


def test_resuming_the_year_unpauses_only_the_backfills_still_running(settings: Settings) -> None:
    # A bug, found by make year: resuming unpaused every backfill it had made, and Airflow answers 409 for one that
    # completed (the ingestion backfill ends first), so the year could not be resumed.
    state = year.YearState(history=True, backfills={"flights_ingest": 1, "flight_delay_monitoring": 2},
                           weekly={"2013-04-08": 3, "2013-04-15": 4})
    api = BackfillsApi(completed={1, 3})
    year.start_backfills(api, state, settings, (date(2013, 4, 1), date(2013, 6, 30)),  # type: ignore[arg-type]
                         say=lambda _: None)
    assert api.puts == ["/backfills/2/unpause", "/backfills/4/unpause"]
    api.puts.clear()
    year.set_paused(api, [1, 2, 3, 4], paused=True)  # type: ignore[arg-type]
    assert api.puts == ["/backfills/2/pause", "/backfills/4/pause"]


def test_the_years_line_counts_the_trainings_a_request_started(settings: Settings) -> None:
    # A bug, found by make year: the line said "trainings 5 done" while 15 had run. It counted the runs with a
    # logical date in 2013, and those a drift or quality request starts through the Asset have none.
    runs = [{"run_type": "manual", "logical_date": "2013-03-31T04:00:00Z", "start_date": "2026-12-06T17:01:20Z"},
            {"run_type": "backfill", "logical_date": "2013-06-03T04:00:00Z", "start_date": "2026-12-06T17:30:38Z"},
            *[{"run_type": "asset_triggered", "logical_date": None, "start_date": f"2026-12-06T17:{m}:00Z"}
              for m in range(10, 22)],
            {"run_type": "scheduled", "logical_date": "2026-11-30T11:00:00Z", "start_date": "2026-12-06T17:00:39Z"}]

    class RunsApi:
        """GET /dags/{id}/dagRuns filtered as Airflow filters them (logical dates, run types, start)."""

        def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
            if path.startswith("/backfills/"):
                return {"completed_at": None}
            params = kwargs["params"]
            if "success" not in params["state"]:
                return {"total_entries": 0}
            kept = [run for run in runs
                    if (not params.get("run_type") or run["run_type"] in params["run_type"])
                    and (not params.get("start_date_gte")
                         or datetime.fromisoformat(run["start_date"]) >= datetime.fromisoformat(
                             params["start_date_gte"]))
                    and (not params.get("logical_date_gte") or (
                        run["logical_date"] and params["logical_date_gte"] <= run["logical_date"] <= params[
                            "logical_date_lte"]))]
            return {"total_entries": len(kept)}

    state = year.YearState(started_at=datetime.fromisoformat("2026-12-06T17:00:06+00:00").timestamp())
    counts = year.progress(RunsApi(), state)  # type: ignore[arg-type]
    assert counts["flight_delay_training"]["success"] == 14
    assert "trainings 14 done" in year._line(counts, state.started_at, date(2013, 4, 1), date(2013, 12, 31))
