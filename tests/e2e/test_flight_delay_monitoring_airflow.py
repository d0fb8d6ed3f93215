"""flight_delay_monitoring through real Airflow (``airflow dags test`` on SQLite), on real 2013 data, end to end:
a model trained on January and February, registered (its training reference saved with it), deployed behind the
front door on ports of the test's own; the feed of March 1 and 2 ingested and validated; then one monitoring run
per day. Each run replays the day's flights through the live service over HTTP, labels what was served with the
day's outcomes, builds the Evidently report and emails it to the owners through Airflow's SMTP connection on a
real mail server. Verified where the results live: task states, the prediction log, the labels, the report files
and summary, the message received over SMTP, and the retraining decision's asset event.

The module works in a copy of the session's real-data home, so the days it adds and the hours it materializes
never reach the other tests."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import date
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipelines.core.settings import PROJECT_ROOT, Settings
from pipelines.deploy.blue_green import deploy_service, stop_all
from pipelines.ingest.steps import ingest_feed
from pipelines.ops.airflow_config import airflow_env
from pipelines.ops.mail_server import read_messages, start_mail_server, stop_mail_server
from pipelines.registry.gate import promote_model
from pipelines.registry.register import register_model
from pipelines.simulation.feed import land_feed
from pipelines.training.steps import train_pipeline
from pipelines.validation.steps import promote_partitions, validate_partitions

pytestmark = pytest.mark.e2e

AIRFLOW = str(Path(sys.executable).parent / "airflow")
DAG_ID = "flight_delay_monitoring"
DAYS = [date(2013, 3, 1), date(2013, 3, 2)]
# The DAG starts on 2013-04-01 (a run before its start date runs no task): manual runs on its first days, each
# monitoring one of DAYS through the `day` param.
# Scheduled runs' logical dates: New York midnight (04:00 UTC in April), never before the DAG's start, 2013-04-01
# in New York (00:00 UTC that day is still March 31 there, and Airflow would run no task).
LOGICAL_DATES = ["2013-04-01T04:00:00+00:00", "2013-04-02T04:00:00+00:00"]
OWNERS = "monitoring-owners@example.com"
CHAIN = ["wait_for_feed", "wait_for_previous_replay", "replay_traffic", "label_predictions",
         "wait_for_previous_report", "build_drift_report", "email_report", "request_retraining"]


def _query(env: dict[str, str], sql: str, *args: Any) -> list[sqlite3.Row]:
    with sqlite3.connect(f"file:{Path(env['AIRFLOW_HOME']) / 'airflow.db'}?mode=ro", uri=True) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute(sql, args).fetchall()


@pytest.fixture(scope="module")
def monitored(real_data: Settings, real_days: list, tmp_path_factory: pytest.TempPathFactory,
              free_port: Callable[..., int]) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("monitoring") / "home"
    shutil.copytree(real_data.pipeline_home, home, ignore=shutil.ignore_patterns("airflow", "run", "logs", "deploy",
                                                                                 "mlflow", "optuna", "bentoml"))
    settings = real_data.model_copy(update={
        "pipeline_home": home, "service_port": free_port(3), "smtp_port": free_port(), "model_owners": OWNERS,
        "smoke_p99_budget_ms": 5000.0})  # a busy CI machine's burst is slow; the budget is not what this tests
    train_pipeline(real_days, "monitoring-test/2013-03-01", settings, trials=1, max_epochs=3, valid_days=7,
                   test_days=7)
    register_model("monitoring-test/2013-03-01", settings)
    assert promote_model("monitoring-test/2013-03-01", settings)["decision"] == "promote"
    for step in (land_feed, ingest_feed, validate_partitions, promote_partitions):
        step(DAYS, settings)
    # As after a gap: the feature tables of the days before the first replayed one are not there; the replay must
    # build them, or it serves stale trailing statistics (test_served_features_are_the_point_in_time_features).
    for stale in (home / "lake" / "features").glob("*/date=2013-02-2[78]"):
        shutil.rmtree(stale)
    try:  # what the fixture started is stopped even when a run fails
        deploy_service(settings)
        start_mail_server(settings)
        env = airflow_env(settings) | {"SERVICE_PORT": str(settings.service_port),
                                       "SMTP_PORT": str(settings.smtp_port), "MODEL_OWNERS": OWNERS}
        runs = []
        migrated = subprocess.run([AIRFLOW, "db", "migrate"], env=env, cwd=PROJECT_ROOT, capture_output=True,
                                  text=True)
        assert migrated.returncode == 0, migrated.stdout[-3000:]
        for logical, day in zip(LOGICAL_DATES, DAYS, strict=True):
            conf = json.dumps({"day": day.isoformat()})
            result = subprocess.run([AIRFLOW, "dags", "test", DAG_ID, logical, "-c", conf], env=env,
                                    cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    timeout=900)
            (run,) = _query(env, "SELECT run_id, state FROM dag_run WHERE dag_id = ? AND date(logical_date) = ?",
                            DAG_ID, logical[:10])
            runs.append({"day": day, "returncode": result.returncode, "output": result.stdout, **dict(run)})
        yield {"settings": settings, "env": env, "runs": runs}
    finally:
        stop_all(settings)
        stop_mail_server(settings)


def _tail(run: dict[str, Any]) -> str:
    return f"exit {run['returncode']}; output ends:\n{run['output'][-4000:]}"


def _summary(settings: Settings, day: date) -> dict[str, Any]:
    path = settings.pipeline_home / "lake" / "reports" / "monitoring" / f"date={day}" / "summary.json"
    return dict(json.loads(path.read_text()))


def test_each_day_runs_the_whole_chain(monitored: dict[str, Any]) -> None:
    for run in monitored["runs"]:
        assert run["returncode"] == 0 and run["state"] == "success", _tail(run)
        states = {row["task_id"]: row["state"] for row in _query(
            monitored["env"], "SELECT task_id, state FROM task_instance WHERE run_id = ?", run["run_id"])}
        assert states == dict.fromkeys(CHAIN, "success"), _tail(run)
        # The retrain request is an event of the training DAG's Asset, on the days the report asked for one only.
        summary = _summary(monitored["settings"], run["day"])
        (events,) = _query(monitored["env"], "SELECT count(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                                             "WHERE a.name = 'flight_delay_retrain_requests' AND e.source_run_id = ?",
                           run["run_id"])
        assert events[0] == (1 if summary["retrain"]["requested"] else 0), _tail(run)


def test_traffic_was_served_over_http_and_logged(monitored: dict[str, Any]) -> None:
    lake = monitored["settings"].pipeline_home / "lake"
    for day in DAYS:
        flights = pd.read_parquet(lake / "validated" / "flights" / f"date={day}" / "data.parquet")
        logged = pd.concat([pd.read_parquet(p) for p in (lake / "predictions" / "flight_delay" / f"date={day}")
                            .glob("*.parquet")], ignore_index=True)
        assert len(logged) == len(flights) and logged["flight_id"].is_unique
        assert set(logged["model_version"]) == {"1"} and logged["probability"].between(0, 1).all()
        state = json.loads((lake / "replay" / "flight_delay" / "state.json").read_text())
        assert state["days"][day.isoformat()] | {"finished": True} == state["days"][day.isoformat()]
        assert state["days"][day.isoformat()]["sent"] == len(flights)


def test_served_flights_are_labelled_with_the_days_outcomes(monitored: dict[str, Any]) -> None:
    lake = monitored["settings"].pipeline_home / "lake"
    for day in DAYS:
        labels = pd.read_parquet(lake / "labels" / "flight_delay" / f"date={day}" / "data.parquet")
        flights = pd.read_parquet(lake / "validated" / "flights" / f"date={day}" / "data.parquet")
        assert len(labels) == len(flights) and set(labels["disrupted"].unique()) <= {0, 1}
        expected = (flights["arr_delay"].isna() | (flights["arr_delay"] >= 15)).mean()
        assert labels["disrupted"].mean() == pytest.approx(expected)


def test_report_and_summary_are_in_the_lake(monitored: dict[str, Any]) -> None:
    settings = monitored["settings"]
    for day in DAYS:
        folder = settings.pipeline_home / "lake" / "reports" / "monitoring" / f"date={day}"
        assert {"report.html", "report.json", "summary.json"} <= {p.name for p in folder.iterdir()}
        summary = _summary(settings, day)
        assert summary["date"] == day.isoformat() and summary["model_version"] == "1"
        assert summary["traffic"]["flights"] > 500 and 0 <= summary["drift_share"] <= 1
        assert summary["drifted_features"] and summary["retrain"]["reasons"]
    assert _summary(settings, DAYS[1])["previous"]["date"] == DAYS[0].isoformat()


def test_owners_got_each_days_report_over_smtp(monitored: dict[str, Any]) -> None:
    settings = monitored["settings"]
    messages: list[EmailMessage] = [m for m in read_messages(settings) if "[flight_delay]" in m["Subject"]]
    assert len(messages) == len(DAYS)
    for message, day in zip(messages, DAYS, strict=True):
        summary = _summary(settings, day)
        assert message["To"] == OWNERS and day.isoformat() in message["Subject"]
        body = next(part for part in message.walk() if part.get_content_type() == "text/html").get_content()
        assert f"{summary['traffic']['flights']:,}" in body or str(summary["traffic"]["flights"]) in body
        # The report stays in the lake, named in the body; the only attachment is the inline 30-day chart.
        assert f"date={day}/report.html" in body
        assert [part.get_filename() for part in message.iter_attachments()] == [f"monitoring_{day}.png"]
        assert f"cid:monitoring_{day}.png" in body
        assert len(message.as_bytes()) < 1_000_000


def test_retraining_decision_matches_the_asset_event(monitored: dict[str, Any]) -> None:
    for run in monitored["runs"]:
        summary = _summary(monitored["settings"], run["day"])
        events = _query(monitored["env"], "SELECT asset_event.extra AS extra FROM asset_event JOIN asset ON "
                                          "asset.id = asset_event.asset_id WHERE asset.name = ? AND "
                                          "asset_event.source_run_id = ?", "flight_delay_retrain_requests",
                        run["run_id"])
        if summary["retrain"]["requested"]:
            (event,) = events
            assert json.loads(event["extra"])["start_date"] == summary["retrain"]["window"]["start_date"]
        else:
            assert events == []


def test_served_features_are_the_point_in_time_features(monitored: dict[str, Any]) -> None:
    """What each replayed flight was served equals what the point-in-time training set gives for its prediction
    time: the hour-by-hour materialization serves exactly what was knowable then (no leak, no stale value)."""
    from pipelines.features.store import training_set
    from pipelines.training.columns import OPERATIONS_COLUMNS

    settings = monitored["settings"]
    lake = settings.pipeline_home / "lake"
    day = DAYS[0]
    logged = pd.concat([pd.read_parquet(p) for p in (lake / "predictions" / "flight_delay" / f"date={day}")
                        .glob("*.parquet")], ignore_index=True)
    served = pd.DataFrame([json.loads(text) for text in logged["features"]]).set_index("flight_id").sort_index()
    expected = training_set([day], settings).set_index("flight_id").sort_index()
    assert list(served.index) == list(expected.index)
    numeric = [c for c in served.columns if c in expected.columns and pd.api.types.is_numeric_dtype(expected[c])]
    assert len(numeric) > 20
    # The same-day operations state, pushed as the day unfolded, is among them, and was not empty.
    assert set(OPERATIONS_COLUMNS) <= set(numeric)
    assert served["ops_origin_departed"].astype("float64").gt(0).mean() > 0.5
    assert served["ops_tail_last_dep_delay"].notna().sum() > 50
    for column in numeric:
        got, want = served[column].astype("float64"), expected[column].astype("float64")
        same = (got - want).abs().le(1e-9) | (got.isna() & want.isna())
        assert same.all(), f"{column}: {int((~same).sum())} flights differ, e.g. {got[~same].head(3).to_dict()} " \
                           f"vs {want[~same].head(3).to_dict()}"
