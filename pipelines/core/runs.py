"""A pipeline run's identity and window, from its Airflow task context: the one place DAGs get them from.

The context is taken as a plain mapping (what ``get_current_context()`` returns), so nothing here imports Airflow.
A run's moment is its logical date; a manual or asset-triggered run may have none (Airflow 3), and then it is the
moment the run was created for (``run_after``). A run's **day** is its moment's date in New York local time, the
data's clock: a daily schedule's run covers one New York day (its data interval), starting at local midnight.
Every artefact of a run carries its **run key**: DAG id, moment and run id, so a model version traces back to the
run, and a retried task finds what it made before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from pipelines.core.dates import LOCAL_TZ, partition_dates, training_window


def run_moment(context: Mapping[str, Any]) -> datetime:
    """The run's logical date, or when it was triggered for when it has none."""
    moment: datetime = context.get("logical_date") or context["dag_run"].run_after
    return moment


def run_day(context: Mapping[str, Any]) -> date:
    """The New York local date of the run's moment: the day a daily run's data interval covers (it starts at local
    midnight), a weekly run's Monday, a manual run's chosen date."""
    moment = run_moment(context)
    return (moment.astimezone(ZoneInfo(LOCAL_TZ)) if moment.tzinfo else moment).date()


def run_key(context: Mapping[str, Any]) -> str:
    """``{dag_id}/{moment}/{run_id}``: names the run's studies, MLflow runs, lake folders and validation results."""
    return f"{context['dag'].dag_id}/{run_moment(context).isoformat()}/{context['run_id']}"


def run_slug(run_key: str) -> str:
    """The run key as a path segment and name: only letters, digits and ``._-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_key).strip("_")


def announced(context: Mapping[str, Any], name: str) -> list[Any]:
    """The values of ``name`` in the extras of the asset events that triggered the run, in event order."""
    values: list[Any] = []
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            value = (event.extra or {}).get(name)
            if value is not None:
                values.extend(value if isinstance(value, list) else [value])
    return values


def partition_window(context: Mapping[str, Any]) -> list[date]:
    """The partitions a run handles: its **start_date** / **end_date** params when set; else the dates the
    triggering asset events announce (``extra["dates"]``); else its own day."""
    params = context["params"]
    day = run_day(context)
    if params.get("start_date") or params.get("end_date"):
        return partition_dates(day, params.get("start_date"), params.get("end_date"))
    dates = sorted({date.fromisoformat(str(value)) for value in announced(context, "dates")})
    return dates or [day]


def training_run_window(context: Mapping[str, Any]) -> list[date]:
    """A training run's window: **start_date** / **end_date** from the params, else from the retrain request that
    triggered it, else the **window_days** days before the run's day."""
    params = context["params"]
    start = params.get("start_date") or next(iter(announced(context, "start_date")), None)
    end = params.get("end_date") or next(iter(announced(context, "end_date")), None)
    return training_window(run_day(context), start, end, int(params["window_days"]))


TUNING_PARAMS = ("trials", "max_epochs", "time_budget_minutes")


def training_tuning(context: Mapping[str, Any]) -> dict[str, Any]:
    """A training run's tuning (``TUNING_PARAMS``): as the retrain request that started it asks
    (``MonitoringPolicy.request_tuning``; the first request's when Airflow folded several into one run), else its
    params."""
    return {name: next(iter(announced(context, name)), context["params"][name]) for name in TUNING_PARAMS}


def monitored_day(context: Mapping[str, Any]) -> date:
    """The day a monitoring run watches: its **day** param, else its own day."""
    day = context["params"].get("day")
    return date.fromisoformat(str(day)) if day else run_day(context)
