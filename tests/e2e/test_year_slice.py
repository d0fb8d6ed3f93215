"""A week of ``make year`` under Airflow's real scheduler, in CI (about 10 minutes): July 8-14, 2013.

``pipelines.ops.year.run_year`` as ``make year START=2013-07-08 END=2013-07-14`` runs it, on a fresh home with
this module's own ports and Airflow metadata database (the local PostgreSQL): the stack starts (API server,
scheduler, DAG processor, triggerer, mail server, model service), the days before the week are ingested and
featurized by a manual run, the first champion is trained on January-March (tuned lighter than the year's: one
trial of 5 epochs) and deployed, then the week runs as Airflow backfills under the scheduler. July 10's feed
arrives truncated: it must be quarantined and emailed, re-landed and its run cleared through the REST API. July is
far from the winter the champion learned: the week's monitoring finds the data drifted and asks for a retrain
through the Asset; the training must pass the gate and be deployed blue/green while the week's traffic is served.

Checked where the results live: every validated flight of the week predicted and logged exactly once, and as many
as the feed had; the emails received over SMTP (one per monitored day, each under 1 MB, the quarantine alert, the
year report); the deploy history; the year report's files in the lake. Nothing is patched in process.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import date
from typing import Any

import pandas as pd
import pytest

from pipelines.core.dates import date_range
from pipelines.core.lake import open_lake
from pipelines.core.settings import Settings, get_settings
from pipelines.monitoring.year_report import read_year_report
from pipelines.ops import year
from pipelines.ops.mail_server import message_files, read_message
from pipelines.ops.stack import down, drop_database
from pipelines.simulation.feed import feed_csv

pytestmark = pytest.mark.e2e

WEEK = (date(2013, 7, 8), date(2013, 7, 14))
BROKEN = {date(2013, 7, 10): "truncated"}
# The first champion, tuned lighter than the year's (6 trials of up to 20 epochs): the week is under test, not it.
FIRST_TRAINING = {"trials": 1, "time_budget_minutes": 5, "max_epochs": 5}
ONE_MB = 1_000_000


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory, free_port: Any) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("year") / "home"
    said: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"PIPELINE_HOME": str(home), "AIRFLOW_PORT": str(free_port(3)),
                            "SERVICE_PORT": str(free_port(3)), "SMTP_PORT": str(free_port()),
                            "PREDICTION_LOG_MAX_AGE_S": year.PREDICTION_LOG_MAX_AGE_S,
                            "GX_ANALYTICS_ENABLED": "false"}.items():
            patch.setenv(name, value)
        settings = get_settings()
        try:
            summary = year.run_year(*WEEK, settings=settings, say=said.append, broken=BROKEN,
                                    first_training=FIRST_TRAINING, timeout_s=1800)
            yield {"settings": settings, "summary": summary, "said": said}
        finally:
            down(None, settings)
            drop_database(year.metadata_database(settings)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])


def _messages(settings: Settings) -> list[tuple[str, int]]:
    """(subject, size in bytes) of every message the mail server received."""
    return [(str(read_message(path)["Subject"]), path.stat().st_size) for path in message_files(settings)]


def test_every_flight_of_the_week_is_predicted_and_logged_once(week: dict[str, Any]) -> None:
    served = week["summary"]["served"]
    in_feed = sum(len(pd.read_csv(io.BytesIO(feed_csv("flights", day)))) for day in date_range(*WEEK))
    assert served["problems"] == []
    assert (served["days"], served["missing"], served["duplicates"]) == (7, 0, 0)
    assert served["feed_flights"] == served["logged_flights"] == in_feed


def test_the_broken_day_is_quarantined_emailed_relanded_and_rerun(week: dict[str, Any]) -> None:
    summary, said = week["summary"], week["said"]
    assert summary["faults"] == {"broken": ["2013-07-10"], "repaired": ["2013-07-10"]}
    assert any("2013-07-10: quarantined as expected" in line and "clearing run" in line for line in said)
    subjects = [subject for subject, _ in _messages(week["settings"])]
    assert any("FAILED flights_ingest" in s and "2013-07-10" in s for s in subjects), subjects


def test_every_day_is_monitored_under_the_scheduler_and_emailed_under_one_mb(week: dict[str, Any]) -> None:
    costs = week["summary"]["costs"]
    assert costs["flight_delay_monitoring"]["runs"] == 7
    assert costs["flights_ingest"]["runs"] >= 8  # the history's manual run and the week's seven days
    daily = {day: [(s, size) for s, size in _messages(week["settings"]) if f"[flight_delay] {day} " in s]
             for day in date_range(*WEEK)}
    assert all(len(mails) == 1 for mails in daily.values()), daily
    assert max(size for mails in daily.values() for _, size in mails) < ONE_MB


def test_drift_asks_for_a_retrain_that_the_gate_promotes_and_that_is_deployed(week: dict[str, Any]) -> None:
    trainings = week["summary"]["trainings"]
    assert [t["type"] for t in trainings if t["state"] == "success"].count("asset_triggered") >= 1, trainings
    report = read_year_report(*WEEK, week["settings"])
    requested = [t for t in report["trainings"] if t["trigger"] == "drift request"]
    assert requested and requested[0]["decision"] == "promote", report["trainings"]
    deployed = {d["model_version"] for d in report["deploys"] if d["status"] == "live"}
    assert requested[0]["version"] in deployed, report["deploys"]
    assert report["drift"]["requests"] and "data_drift" in report["drift"]["requests"][0]["triggers"]


def test_the_year_report_is_built_in_the_lake_and_emailed(week: dict[str, Any]) -> None:
    settings = week["settings"]
    report = read_year_report(*WEEK, settings)
    lake = open_lake(settings)
    assert lake.exists(report["keys"]["html"]) and lake.exists(report["keys"]["overview"])
    assert report["days"]["monitored"] == 7 and report["days"]["quarantined"] == 1
    assert report["days"]["rerun"] == 1
    assert any("year report 2013-07-08 .. 2013-07-14" in s for s, _ in _messages(settings))
