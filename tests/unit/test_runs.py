"""Run keys and run windows from a task context (``pipelines.core.runs``): the one helper every DAG uses. The
context is a plain mapping, shaped as Airflow 3's ``get_current_context()`` returns it."""

from __future__ import annotations

from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pipelines.core.runs import (
    TUNING_PARAMS,
    monitored_day,
    partition_window,
    run_day,
    run_key,
    run_slug,
    training_run_window,
    training_tuning,
)

NEW_YORK = ZoneInfo("America/New_York")


def _context(params: dict[str, Any] | None = None, logical: datetime | None = None,
             events: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    return {"params": params or {}, "logical_date": logical, "run_id": "manual__1",
            "dag": SimpleNamespace(dag_id="some_dag"),
            "dag_run": SimpleNamespace(run_after=datetime(2013, 5, 2, 7, tzinfo=UTC)),
            "triggering_asset_events": {name: [SimpleNamespace(extra=extra) for extra in extras]
                                        for name, extras in (events or {}).items()}}


def test_the_run_key_names_dag_moment_and_run() -> None:
    key = run_key(_context(logical=datetime(2013, 3, 4, tzinfo=UTC)))
    assert key == "some_dag/2013-03-04T00:00:00+00:00/manual__1"
    assert run_slug(key) == "some_dag_2013-03-04T00_00_00_00_00_manual__1"


def test_a_run_without_logical_date_is_dated_when_it_was_triggered_for() -> None:
    assert run_key(_context()) == "some_dag/2013-05-02T07:00:00+00:00/manual__1"
    assert partition_window(_context()) == [date(2013, 5, 2)]


def test_params_win_over_announced_dates_which_win_over_the_run_day() -> None:
    announced = {"validated_flights": [{"dates": ["2013-01-03", "2013-01-02"]}, {"dates": ["2013-01-02"]}]}
    assert partition_window(_context(events=announced)) == [date(2013, 1, 2), date(2013, 1, 3)]
    window = _context({"start_date": "2013-02-01", "end_date": "2013-02-03"}, events=announced)
    assert partition_window(window) == [date(2013, 2, 1), date(2013, 2, 2), date(2013, 2, 3)]


def test_training_takes_the_window_a_retrain_request_names_unless_params_set_one() -> None:
    request = {"flight_delay_retrain_requests": [{"start_date": "2013-04-01", "end_date": "2013-04-30"}]}
    days = training_run_window(_context({"window_days": 90}, events=request))
    assert (days[0], days[-1], len(days)) == (date(2013, 4, 1), date(2013, 4, 30), 30)
    days = training_run_window(_context({"window_days": 30}, logical=datetime(2013, 6, 1, 6, tzinfo=NEW_YORK)))
    assert (days[0], days[-1]) == (date(2013, 5, 2), date(2013, 5, 31))
    with pytest.raises(ValueError, match="before start"):
        training_run_window(_context({"window_days": 30, "start_date": "2013-06-01", "end_date": "2013-05-01"}))


def test_training_tunes_as_the_retrain_request_asks_else_as_its_params() -> None:
    params = {"trials": 20, "max_epochs": 30, "time_budget_minutes": 30}
    assert training_tuning(_context(params)) == params
    first = {"start_date": "2013-04-01", "end_date": "2013-04-30", "trials": 6, "max_epochs": 20,
             "time_budget_minutes": 5}
    folded = {"flight_delay_retrain_requests": [first, first | {"trials": 3}]}
    assert training_tuning(_context(params, events=folded)) == {"trials": 6, "max_epochs": 20,
                                                                 "time_budget_minutes": 5}
    # an older request that named only its trials
    older = {"flight_delay_retrain_requests": [{"trials": 6}]}
    assert training_tuning(_context(params, events=older)) == params | {"trials": 6}


def test_a_retrain_request_names_exactly_the_tuning_a_training_reads() -> None:
    from pipelines.monitoring.retrain import MonitoringPolicy

    assert set(MonitoringPolicy().request_tuning()) == set(TUNING_PARAMS)


def test_monitoring_watches_the_day_param_else_its_own_day() -> None:
    assert monitored_day(_context({"day": "2013-07-15"})) == date(2013, 7, 15)
    assert monitored_day(_context({"day": None}, logical=datetime(2013, 4, 2, tzinfo=NEW_YORK))) == date(2013, 4, 2)


def test_a_run_day_is_the_new_york_date_of_its_moment() -> None:
    """A daily run's logical date is its data interval's start, New York midnight (04:00 or 05:00 UTC); 00:00 UTC
    is still the evening before in New York, and a run dated then handles that day."""
    assert run_day(_context(logical=datetime(2013, 7, 15, 4, tzinfo=UTC))) == date(2013, 7, 15)
    assert run_day(_context(logical=datetime(2013, 1, 15, 5, tzinfo=UTC))) == date(2013, 1, 15)
    assert run_day(_context(logical=datetime(2013, 7, 15, tzinfo=UTC))) == date(2013, 7, 14)
    assert run_day(_context()) == date(2013, 5, 2), "no logical date: run_after, 07:00 UTC, 03:00 in New York"
