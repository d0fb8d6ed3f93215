"""``make year``: 2013 run as production by Airflow's scheduler, day by day, with faults on the way.

1. The stack (``make up``: API server with the UI, scheduler, DAG processor, triggerer, mail server, model service).
2. History: January to March ingested in one manual run of ``flights_ingest`` (``flight_features`` follows on its
   Asset), then the first champion trained on them by a manual run of ``flight_delay_training``, which deploys it.
3. Production, April 1 to December 31, as backfills the scheduler runs in date order (Airflow's own backfills, as
   the UI's *Backfill* creates them): ``flights_ingest`` and ``flight_delay_monitoring`` every New York day,
   ``flight_delay_training`` each Monday with lighter tuning (``WEEKLY``), a backfill of its own once monitoring
   has watched the Sunday; drift and quality requests start more trainings through the Asset, with the tuning
   the request names (``MonitoringPolicy.request_tuning``).
   Ingestion runs ahead; monitoring waits for each day's validated flights; the online store's writers take turns.
4. Faults: the days of ``BROKEN_DAYS`` arrive broken (kinds from the corruption catalogue), are quarantined and
   emailed, and the year goes on. Once their ingest run has failed, the fixed feed is re-landed and the run is
   cleared through the REST API, as an operator would; monitoring of the day was waiting for it.
5. The end: flights served against the feed, faults, trainings and each DAG's cost (``year/summary.json``), and the
   year report by the DAG ``flight_delay_year_report`` (HTML and charts in the lake, emailed to the owners).

Resumable: the state (history done, backfill ids, faults repaired) is kept in ``$PIPELINE_HOME/year/state.json``
and Airflow keeps the runs; the same command continues where it stopped, no day run twice. Ctrl-C pauses the
backfills (the stack keeps running: ``make down`` stops it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from pipelines.core.bench_results import results_file, write_results
from pipelines.core.dates import SKIP_IF_TRAINED_WITHIN_DAYS, local_midnight
from pipelines.core.lake import open_lake, partition_key
from pipelines.core.settings import Settings, get_settings
from pipelines.ops.airflow_api import AirflowClient

log = logging.getLogger(__name__)

HISTORY = (date(2013, 1, 1), date(2013, 3, 31))
YEAR = (date(2013, 4, 1), date(2013, 12, 31))
DAG_IDS = ("flights_ingest", "flight_features", "flight_delay_training", "flight_delay_monitoring")
DAILY_DAGS = ("flights_ingest", "flight_features", "flight_delay_monitoring")
REPORT_DAG = "flight_delay_year_report"
# The first champion: tuned as make run tunes it.
FIRST_TRAINING = {"trials": 6, "time_budget_minutes": 5, "max_epochs": 20}
# A scheduled weekly retrain: no search, the champion's hyperparameters on the new window (``trials`` 0); a drift or
# quality request runs a short search once in four weeks (MonitoringPolicy.request_tuning, search_every_days). The
# week's data moved, the best settings rarely do, and the search was the largest step of a weekly training
# (tune_hyperparameters, 2 trials).
WEEKLY = {"trials": 0, "time_budget_minutes": 5, "max_epochs": 20, "after_monitoring": True}
# Days whose flights feed arrives broken, and how (pipelines.simulation.corruption): each is quarantined.
BROKEN_DAYS = {date(2013, 5, 14): "truncated", date(2013, 8, 20): "missing_columns",
               date(2013, 10, 9): "duplicated_flights"}
POLL_S = 15
# The replay of a day waits until the service has written the day's predictions, which it does in batches or when
# the oldest is this old: a day's traffic is sent in about 15 s, so the default 10 s would be most of it again. The
# stack's processes (the scheduler, its tasks, the slots they deploy) inherit it when make year starts them.
PREDICTION_LOG_MAX_AGE_S = "1"
# The DAG processor parses every DAG file again each 30 s by default, about 5% of a core through the year for files
# that do not change while it runs; a DAG file edited meanwhile is picked up within this.
DAG_FILE_PROCESS_INTERVAL_S = "300"
# Airflow's metadata for the year, unless a profile names its own database: this machine's PostgreSQL, one database
# per pipeline home. On SQLite, Airflow refuses to create a backfill while the scheduler writes, and its API server
# answered 500 to an unpause under the year's load.
METADATA_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


@dataclass
class YearState:
    """What ``make year`` did so far, kept between runs of the command."""

    history: bool = False
    backfills: dict[str, int] = field(default_factory=dict)
    weekly: dict[str, int] = field(default_factory=dict)
    """Monday (ISO date) -> the backfill of that Monday's training, created once monitoring watched the Sunday."""
    weekly_not_run: dict[str, str] = field(default_factory=dict)
    """Monday (ISO date) -> why its training was not made: a later Monday's was due too, or a fresher version was
    registered (what the weekly run's own first task would have found)."""
    broken: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)

    def start_time(self) -> datetime:
        """When the year was first started, with this machine's time zone (what Airflow's run filters compare)."""
        return datetime.fromtimestamp(self.started_at).astimezone()

    @staticmethod
    def path(settings: Settings) -> Path:
        return settings.pipeline_home / "year" / "state.json"

    @classmethod
    def load(cls, settings: Settings) -> YearState:
        path = cls.path(settings)
        return cls(**json.loads(path.read_text())) if path.exists() else cls()

    def save(self, settings: Settings) -> None:
        path = self.path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.__dict__, indent=2))
        temporary.replace(path)


def metadata_database(settings: Settings, profile: Mapping[str, str] | None = None) -> dict[str, str]:
    """Airflow's metadata database on this machine's PostgreSQL (created by ``make up``), one per pipeline home,
    unless ``profile`` names its own (then nothing)."""
    if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" in (profile or {}):
        return {}
    home = str(settings.pipeline_home.resolve()).encode()
    name = "airflow_year_" + hashlib.sha1(home, usedforsecurity=False).hexdigest()[:10]  # a name, not a secret
    url = f"{METADATA_SERVER}/{name}?connect_timeout=10"
    return {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": url}


def forget_stale_metadata(settings: Settings, profile: Mapping[str, str] | None,
                          say: Callable[[str], None]) -> None:
    """A home that never ran a year (no state file) starts with an empty metadata database of its own: one left by
    a deleted home of the same path holds runs of a lake that is gone, and Airflow refused to create the history's
    run again (409, unique constraint). A profile's own database is never touched."""
    from pipelines.ops.stack import drop_database

    local = metadata_database(settings, profile)
    if local and not YearState.path(settings).exists():
        if drop_database(local["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]):
            say("  dropped the metadata database a deleted home of this path had left")
        YearState().save(settings)


def _client(settings: Settings) -> AirflowClient:
    from pipelines.ops.airflow_config import ADMIN, admin_password, api_url

    return AirflowClient(api_url(settings), ADMIN, admin_password(settings))


def _validated(settings: Settings, day: date) -> bool:
    return open_lake(settings).exists(partition_key("validated", "flights", day, "data.parquet"))


def _wait_until(check: Callable[[], bool], what: str, timeout_s: float, say: Callable[[str], None]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not done within {timeout_s:.0f}s")
        time.sleep(POLL_S / 3)
    say(f"  {what}: done")


def _active_runs(api: AirflowClient, dag_id: str) -> int:
    answer = api.request("GET", f"/dags/{dag_id}/dagRuns", params={"state": ["queued", "running"], "limit": 1})
    return int(answer["total_entries"])


def run_history(api: AirflowClient, settings: Settings, state: YearState, first: date,
                say: Callable[[str], None], first_training: Mapping[str, Any] = FIRST_TRAINING) -> None:
    """Every day before ``first`` ingested and featurized (January to March for the whole year), and the first
    champion trained on January to March (tuned as ``first_training`` says) and deployed."""
    start, last = HISTORY[0], first - timedelta(days=1)
    say(f"History {start} .. {last}: flights_ingest (one manual run), then flight_features on its Asset...")
    window = {"start_date": start.isoformat(), "end_date": last.isoformat()}
    api.wait("flights_ingest", api.trigger("flights_ingest", last, window), timeout_s=3600)
    _wait_until(lambda: _active_runs(api, "flight_features") == 0 and bool(api.runs("flight_features")),
                "flight_features for the history", 1800, say)
    say(f"First champion: flight_delay_training on {HISTORY[0]} .. {HISTORY[1]} (manual run), promoted and "
        "deployed...")
    monday = local_midnight(YEAR[0]) + timedelta(hours=6)
    champion_window = {"start_date": HISTORY[0].isoformat(), "end_date": HISTORY[1].isoformat()}
    run = api.trigger("flight_delay_training", monday, champion_window | dict(first_training))
    api.wait("flight_delay_training", run, timeout_s=1800)
    state.history = True
    state.save(settings)


def land_broken_days(settings: Settings, state: YearState, days: tuple[date, date],
                     say: Callable[[str], None], broken: dict[date, str] | None = None) -> None:
    """The broken deliveries (``broken``, default ``BROKEN_DAYS``) of ``days``, in the landing zone before their
    day's ingest run (it keeps a landed file)."""
    from pipelines.simulation.corruption import corrupt
    from pipelines.simulation.feed import feed_csv, land_file

    lake = open_lake(settings)
    for day, kind in (BROKEN_DAYS if broken is None else broken).items():
        if not days[0] <= day <= days[1] or day.isoformat() in state.broken or _validated(settings, day):
            continue
        land_file(lake, "flights", day, corrupt(kind, feed_csv("flights", day)))
        state.broken.append(day.isoformat())
        say(f"  the flights feed of {day} will arrive broken ({kind})")
    state.save(settings)


def start_backfills(api: AirflowClient, state: YearState, settings: Settings, days: tuple[date, date],
                    say: Callable[[str], None]) -> None:
    """The year's daily backfills, once: ingestion (two days at once) and monitoring (two days at once,
    overlapping: a day's replay waits for the day before's, its report for the day before's report).
    The weekly trainings are not one backfill: Airflow queues all of a backfill's runs at once, and while a DAG
    has ``max_active_runs`` queued or running runs it defers every Asset-triggered run, so a year-long training
    backfill starved every drift request (``start_weekly_training`` makes them one Monday at a time)."""
    first, last = days
    for dag_id, at_once in (("flights_ingest", 2), ("flight_delay_monitoring", 2)):
        if dag_id in state.backfills:
            set_paused(api, [state.backfills[dag_id]], paused=False)
            continue
        backfill = api.backfill(dag_id, first, last, {}, max_active_runs=at_once)
        state.backfills[dag_id] = int(backfill["id"])
        state.save(settings)
        say(f"  backfill {backfill['id']}: {dag_id} {first} .. {last}")
    set_paused(api, state.weekly.values(), paused=False)


def mondays(days: tuple[date, date]) -> list[date]:
    """The Mondays after the first day, each a weekly training (the first day's champion is already trained)."""
    first, last = days
    return [day for n in range(1, (last - first).days + 1) if (day := first + timedelta(days=n)).weekday() == 0]


def start_weekly_training(api: AirflowClient, state: YearState, settings: Settings, days: tuple[date, date],
                          say: Callable[[str], None]) -> None:
    """The weekly training due now, as a backfill of its Monday (``WEEKLY``: the scheduler's weekly run, with lighter
    tuning), once monitoring has watched the Sunday before it and no training runs: a model never goes live before
    the days it was trained on were served, no training run waits queued in front of the drift requests, and two
    trainings never share the cores. Monitoring runs ahead of training: when several Mondays are due at once only
    the latest trains (the DAG's ``catchup=False``: a scheduler that missed weeks runs the last one; the others
    would train older windows to be replaced at once), and a Monday whose window a registered version covers
    already (a drift request retrained that week) is not made (its run would skip itself after waiting its turn)."""
    pending = [monday for monday in mondays(days)
               if monday.isoformat() not in state.weekly and monday.isoformat() not in state.weekly_not_run]
    due = []
    for monday in pending:
        sunday = _run_of_day(api, "flight_delay_monitoring", monday - timedelta(days=1))
        if sunday is None or sunday["state"] != "success":
            break
        due.append(monday)
    if not due:
        return
    # Airflow runs one backfill of a DAG at a time (409 otherwise), and a running training may register a fresher
    # version: decide once none runs.
    if any(backfill["completed_at"] is None for backfill in api.backfills("flight_delay_training")) or \
            _active_runs(api, "flight_delay_training"):
        return
    *older, monday = due

    def not_run(day: date, why: str) -> None:
        state.weekly_not_run[day.isoformat()] = why
        say(f"  {day}: no weekly training, {why}")

    for earlier in older:
        not_run(earlier, f"the training of {monday}, due too, trains a later window")
    from pipelines.registry.register import fresher_version

    fresher = fresher_version(monday - timedelta(days=1), SKIP_IF_TRAINED_WITHIN_DAYS, settings)
    if fresher is not None:
        not_run(monday, f"version {fresher[1]} was trained on data through {fresher[0]}")
        state.save(settings)
        return
    # The backfill spans the New York Monday, midnight to midnight: the 06:00 run is inside it.
    backfill = api.backfill("flight_delay_training", monday, monday + timedelta(days=1), WEEKLY, max_active_runs=1)
    state.weekly[monday.isoformat()] = int(backfill["id"])
    state.save(settings)
    say(f"  {monday}: the weekly training (backfill {backfill['id']})")


def repair_broken_days(api: AirflowClient, state: YearState, settings: Settings,
                       say: Callable[[str], None]) -> None:
    """A broken day whose ingest run failed: the source re-lands the fixed feed, the operator clears the run."""
    from pipelines.simulation.feed import land_day

    for text in state.broken:
        if text in state.repaired:
            continue
        day = date.fromisoformat(text)
        run = _run_of_day(api, "flights_ingest", day)
        if run is None or run["state"] != "failed":
            continue
        say(f"  {day}: quarantined as expected; the owners were emailed. Re-landing the fixed feed and clearing "
            f"run {run['dag_run_id']} through the REST API")
        land_day(open_lake(settings), day)
        api.clear("flights_ingest", run["dag_run_id"])
        state.repaired.append(text)
        state.save(settings)


def _run_of_day(api: AirflowClient, dag_id: str, day: date) -> dict[str, Any] | None:
    moment = local_midnight(day)
    answer = api.request("GET", f"/dags/{dag_id}/dagRuns",
                         params={"logical_date_gte": moment.isoformat(), "logical_date_lte": moment.isoformat(),
                                 "limit": 5})
    runs = answer["dag_runs"]
    return dict(runs[-1]) if runs else None


def _the_years_runs(dag_id: str, state: YearState) -> dict[str, Any]:
    """Filters for a DAG's runs of the year, not the scheduler's own runs for today (past the feed). Trainings
    are told by when they ran and how they were started: those a drift or quality request started through the
    Asset have no logical date (counted by it, the year's line said "5 done" while 15 had run)."""
    if dag_id == "flight_delay_training":
        return {"start_date_gte": state.start_time().isoformat(),
                "run_type": ["manual", "backfill", "asset_triggered"]}
    return {"logical_date_gte": local_midnight(HISTORY[0]).isoformat(),
            "logical_date_lte": local_midnight(YEAR[1]).isoformat()}


def progress(api: AirflowClient, state: YearState) -> dict[str, Any]:
    """Days done per daily DAG, trainings, failures: from Airflow's runs. ``finished``: every backfill made so far
    has completed and no training runs (the caller checks that every Monday's training was made)."""
    counts: dict[str, Any] = {}
    for dag_id in DAG_IDS:
        answer = api.request("GET", f"/dags/{dag_id}/dagRuns",
                             params={"limit": 1, "state": ["success"]} | _the_years_runs(dag_id, state))
        failed = api.request("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 1, "state": ["failed"]})
        counts[dag_id] = {"success": answer["total_entries"], "failed": failed["total_entries"],
                          "active": _active_runs(api, dag_id)}
    ids = [*state.backfills.values(), *state.weekly.values()]
    backfills = [api.request("GET", f"/backfills/{backfill_id}") for backfill_id in ids]
    counts["finished"] = bool(backfills) and all(b["completed_at"] for b in backfills) and \
        counts["flight_delay_training"]["active"] == 0
    return counts


def _line(counts: dict[str, Any], started: float, first: date, last: date) -> str:
    days = (last - first).days + 1
    ingest, monitoring = counts["flights_ingest"], counts["flight_delay_monitoring"]
    training = counts["flight_delay_training"]
    return (f"  {time.time() - started:6.0f}s  ingested {ingest['success']}/{days + 1} runs, monitored "
            f"{monitoring['success']}/{days} days, trainings {training['success']} done "
            f"({training['active']} running), failed runs: ingest {ingest['failed']}, monitoring "
            f"{monitoring['failed']}, training {training['failed']}")


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def dag_costs(api: AirflowClient, dag_id: str, since: datetime) -> dict[str, Any]:
    """What the DAG's runs since ``since`` (run after it) cost: runs, wall seconds per run (median and mean), and
    per task the mean seconds of its successful tries, the slowest first. The scheduler's own runs (for today,
    past the feed) are not the year's and are left out."""
    runs = [run for run in api.every(f"/dags/{dag_id}/dagRuns", "dag_runs",
                                     {"start_date_gte": since.isoformat(), "state": ["success"]})
            if run["run_type"] != "scheduled"]
    walls = sorted(w for run in runs if (w := _seconds(run.get("start_date"), run.get("end_date"))) is not None)
    tasks: dict[str, list[float]] = {}
    ids = {run["dag_run_id"] for run in runs}
    for ti in api.every(f"/dags/{dag_id}/dagRuns/~/taskInstances", "task_instances",
                        {"start_date_gte": since.isoformat(), "state": ["success"]}):
        if ti["dag_run_id"] in ids and ti.get("duration") is not None:
            tasks.setdefault(ti["task_id"], []).append(float(ti["duration"]))
    per_task = {task: round(sum(values) / len(values), 1) for task, values in tasks.items()}
    return {"runs": len(runs), "median_s": round(walls[len(walls) // 2], 1) if walls else None,
            "mean_s": round(sum(walls) / len(walls), 1) if walls else None,
            "tasks_mean_s": dict(sorted(per_task.items(), key=lambda item: -item[1]))}


def served_against_feed(settings: Settings, first: date, last: date) -> dict[str, Any]:
    """Every validated flight of the days against the prediction log: flights predicted and logged once, missing
    ones and duplicates (a flight logged more than once)."""
    from pipelines.core.dates import date_range
    from pipelines.features.tables import flight_id
    from pipelines.serving.prediction_log import read_prediction_log

    lake = open_lake(settings)
    totals = {"days": 0, "feed_flights": 0, "logged_flights": 0, "missing": 0, "duplicates": 0}
    short: list[str] = []
    for day in date_range(first, last):
        key = partition_key("validated", "flights", day, "data.parquet")
        if not lake.exists(key):
            short.append(f"{day}: no validated flights")
            continue
        feed = flight_id(lake.read_parquet(key))
        logged = read_prediction_log(lake, day)
        ids = logged["flight_id"] if not logged.empty else feed.iloc[0:0]
        missing = int((~feed.isin(ids)).sum())
        duplicates = int(ids.duplicated().sum())
        totals["days"] += 1
        totals["feed_flights"] += len(feed)
        totals["logged_flights"] += int(ids.nunique())
        totals["missing"] += missing
        totals["duplicates"] += duplicates
        if missing or duplicates:
            short.append(f"{day}: {missing} missing, {duplicates} duplicated")
    return totals | {"problems": short}


def year_summary(api: AirflowClient, settings: Settings, state: YearState, first: date,
                 last: date) -> dict[str, Any]:
    """The year in figures: flights served against the feed, faults, trainings and what each DAG cost."""
    since = state.start_time()
    trainings = []
    for run in api.every("/dags/flight_delay_training/dagRuns", "dag_runs", {"start_date_gte": since.isoformat()}):
        if run["run_type"] == "scheduled":  # the scheduler's own runs are for today, past the feed: skipped
            continue
        tasks = {ti["task_id"]: ti["state"] for ti in api.task_instances("flight_delay_training", run["dag_run_id"])}
        trainings.append({"run_id": run["dag_run_id"], "type": run["run_type"], "state": run["state"],
                          "logical_date": run.get("logical_date"), "window": run.get("conf") or {},
                          # A weekly run skipped by its first task: a version trained this week already.
                          "skipped": tasks.get("wait_for_window") == "skipped"})
    costs = {dag_id: dag_costs(api, dag_id, since) for dag_id in DAG_IDS}
    served = served_against_feed(settings, first, last)
    summary: dict[str, Any] = {"days": f"{first}..{last}", "wall_s": round(time.time() - state.started_at),
               "served": served,
               "faults": {"broken": state.broken, "repaired": state.repaired},
               "trainings": trainings, "weekly_not_run": state.weekly_not_run, "costs": costs,
               "slowest_step": slowest_daily_step(costs)}
    path = settings.pipeline_home / "year" / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    write_results(results_file(settings), "year", {
        "days": summary["days"], "wall_s": summary["wall_s"], "slowest_step": summary["slowest_step"],
        "per_day_s": {dag_id: {"median": cost["median_s"], "mean": cost["mean_s"], "runs": cost["runs"]}
                      for dag_id, cost in costs.items()},
        "tasks_mean_s": {dag_id: cost["tasks_mean_s"] for dag_id, cost in costs.items()},
        "served": {k: v for k, v in served.items() if k != "problems"},
        "trainings": sum(not t["skipped"] for t in trainings),
        "weekly_runs_skipped": sum(t["skipped"] for t in trainings), "weekly_not_run": len(state.weekly_not_run)})
    return summary


def slowest_daily_step(costs: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The task of the daily DAGs with the longest mean, as "dag.task (seconds)"."""
    steps = [(float(seconds), f"{dag_id}.{task}") for dag_id in DAILY_DAGS if dag_id in costs
             for task, seconds in dict(costs[dag_id]["tasks_mean_s"]).items()]
    if not steps:
        return None
    seconds, name = max(steps)
    return f"{name} ({seconds}s)"


def set_paused(api: AirflowClient, backfill_ids: Iterable[int], paused: bool) -> None:
    """Pause or unpause the backfills that have not completed (Airflow answers 409 for a completed one)."""
    for backfill_id in backfill_ids:
        if api.request("GET", f"/backfills/{backfill_id}").get("completed_at") is None:
            api.request("PUT", f"/backfills/{backfill_id}/{'pause' if paused else 'unpause'}")


def _pause(api: AirflowClient, state: YearState) -> None:
    set_paused(api, [*state.backfills.values(), *state.weekly.values()], paused=True)


def run_year(first: date = YEAR[0], last: date = YEAR[1], settings: Settings | None = None,
             say: Callable[[str], None] = print, broken: dict[date, str] | None = None,
             profile: dict[str, str] | None = None,
             first_training: Mapping[str, Any] = FIRST_TRAINING, timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``first`` .. ``last`` (default: April to December 2013) as production; see the module's docstring.
    ``broken``: the days that arrive broken and how (default ``BROKEN_DAYS``); ``profile``: a profile's
    environment (Airflow's metadata goes to PostgreSQL unless it names a database); ``first_training``: the first
    champion's tuning (CI's slice tunes it lighter); ``timeout_s``: give up (pausing the backfills) when production
    has not finished this many seconds after its backfills started (None: wait as long as it takes)."""
    if not YEAR[0] <= first <= last <= YEAR[1]:
        raise ValueError(f"the production days must lie within {YEAR[0]} .. {YEAR[1]}, got {first} .. {last}")
    os.environ.setdefault("PREDICTION_LOG_MAX_AGE_S", PREDICTION_LOG_MAX_AGE_S)
    os.environ.setdefault("AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL", DAG_FILE_PROCESS_INTERVAL_S)
    settings = settings or get_settings()
    from pipelines.ops.stack import up

    say(f"2013 as production, {first} .. {last}, under Airflow's scheduler (pipeline home {settings.pipeline_home})")
    forget_stale_metadata(settings, profile, say)
    stack = up(profile, settings=settings, say=lambda text: say(f"  {text}"),
               local=metadata_database(settings, profile))
    api = _client(settings)
    api.wait_for_dags((*DAG_IDS, REPORT_DAG))
    for dag_id in (*DAG_IDS, REPORT_DAG):  # DAGs are created paused, and a paused DAG's runs stay queued
        api.unpause(dag_id)
    state = YearState.load(settings)
    if not state.history:
        run_history(api, settings, state, first, say, first_training)
    else:
        say("History and first champion: done in an earlier run")
    land_broken_days(settings, state, (first, last), say, broken)
    say(f"Production {first} .. {last}: backfills (watch them in the UI: {stack['ui']}, Browse > Backfills)")
    start_backfills(api, state, settings, (first, last), say)
    last_line = 0.0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            repair_broken_days(api, state, settings, say)
            start_weekly_training(api, state, settings, (first, last), say)
            counts = progress(api, state)
            if counts["finished"] and len(state.weekly) + len(state.weekly_not_run) == len(mondays((first, last))):
                break
            if deadline is not None and time.monotonic() > deadline:
                _pause(api, state)
                raise RuntimeError(f"production {first} .. {last} not finished within {timeout_s:.0f}s: "
                                   + _line(counts, state.started_at, first, last).strip())
            if time.monotonic() - last_line > 60:
                say(_line(counts, state.started_at, first, last))
                last_line = time.monotonic()
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        _pause(api, state)
        say("Paused the year's backfills (the stack keeps running; make down stops it). make year continues.")
        raise
    say(_line(counts, state.started_at, first, last))
    say(f"Done in {time.time() - state.started_at:.0f}s (since {datetime.fromtimestamp(state.started_at)})")
    summary = year_summary(api, settings, state, first, last)
    served = summary["served"]
    say(f"Flights: {served['feed_flights']:,} in the feed of {served['days']} days, {served['logged_flights']:,} "
        f"predicted and logged, {served['missing']} missing, {served['duplicates']} logged twice")
    say(f"Faults: {len(state.broken)} broken days, {len(state.repaired)} re-landed and re-run")
    skipped = sum(t["skipped"] for t in summary["trainings"])
    say(f"Trainings: {len(summary['trainings']) - skipped} (and {skipped} weekly runs skipped: a version trained "
        f"that week already; {len(state.weekly_not_run)} weekly trainings not made, a later one or a fresher version "
        "covering their week)")
    for dag_id, cost in summary["costs"].items():
        say(f"  {dag_id}: {cost['runs']} runs, median {cost['median_s']}s a run; slowest tasks "
            + ", ".join(f"{task} {seconds}s" for task, seconds in list(cost["tasks_mean_s"].items())[:3]))
    say(f"Slowest daily step: {summary['slowest_step']}")
    say(f"Summary: {settings.pipeline_home / 'year' / 'summary.json'} (the costs also in {results_file(settings)})")
    say(f"The year report: {REPORT_DAG} (built from the lake, emailed to the owners)...")
    report_run = api.trigger(REPORT_DAG, last, {"start_date": first.isoformat(), "end_date": last.isoformat()})
    api.wait(REPORT_DAG, report_run, timeout_s=1800)
    from pipelines.monitoring.year_report import HTML_FILE, year_report_key

    report = f"{settings.lake_root}/{year_report_key(first, last, HTML_FILE)}"
    say(f"  {report} (charts beside it as PNG)")
    return summary | {"report": report}
