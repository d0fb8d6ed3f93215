"""flight_features through real Airflow, after flights_ingest, as ``make run`` chains them: ``airflow db migrate``,
then ``airflow dags test`` of each DAG on SQLite with the same window as params.

One embedded profile for the module: flights_ingest validates 2013-01-01..03, flight_features builds the feature
tables of those days and materializes their window into the SQLite online store, which must then answer.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipelines.core.settings import PROJECT_ROOT, Settings
from pipelines.features.steps import FEATURE_TABLES
from pipelines.features.store import flight_entities, online_features
from pipelines.features.tables import PLANES_SNAPSHOT
from pipelines.ops.airflow_config import airflow_env

pytestmark = pytest.mark.e2e

AIRFLOW = str(Path(sys.executable).parent / "airflow")
WINDOW = ["2013-01-01", "2013-01-02", "2013-01-03"]
CONF = json.dumps({"start_date": WINDOW[0], "end_date": WINDOW[-1]})
DAILY_TABLES = [t for t in FEATURE_TABLES if t != "plane_attributes"]
FEAST_VARIABLES = ("LAKE_URI", "S3_ENDPOINT_URL", "FEAST_PROFILE", "FEAST_REGISTRY_URL", "FEAST_REDIS",
                   "FEAST_HOME", "FEATURES_URI")


@dataclass(frozen=True)
class Embedded:
    """One embedded profile: PIPELINE_HOME with its lake, Feast stores and Airflow home (SQLite)."""

    home: Path
    env: dict[str, str]

    @property
    def lake(self) -> Path:
        return self.home / "lake"

    @property
    def settings(self) -> Settings:
        return Settings(pipeline_home=self.home, lake_uri=None, s3_endpoint_url=None, feast_profile="embedded",
                        feast_registry_url=None, feast_redis=None)

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        """Read Airflow's metadata database directly (read-only)."""
        db = Path(self.env["AIRFLOW_HOME"]) / "airflow.db"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            connection.row_factory = sqlite3.Row
            return connection.execute(sql, args).fetchall()


def _airflow(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AIRFLOW, *args], env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=540)


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}; output ends:\n{result.stdout[-4000:]}"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    """A fresh embedded profile with Airflow's database migrated, whatever the caller's environment says."""
    home = tmp_path_factory.mktemp("e2e_features") / "home"
    env = airflow_env(Settings(pipeline_home=home))
    for name in FEAST_VARIABLES:
        env.pop(name, None)
    migrated = _airflow(["db", "migrate"], env)
    assert migrated.returncode == 0, _tail(migrated)
    yield Embedded(home=home, env=env)


@pytest.fixture(scope="module")
def runs(embedded: Embedded) -> dict[str, subprocess.CompletedProcess[str]]:
    """flights_ingest, then flight_features, each a manual run over the window (logical date: its last day)."""
    done = {}
    for dag_id in ("flights_ingest", "flight_features"):
        done[dag_id] = _airflow(["dags", "test", dag_id, WINDOW[-1], "-c", CONF], embedded.env)
        assert done[dag_id].returncode == 0, f"{dag_id}: {_tail(done[dag_id])}"
    return done


@pytest.fixture
def feast_env(embedded: Embedded, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """This process pointed at the profile's stores (open_store writes Feast's variables: restored after)."""
    for name in FEAST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FEAST_HOME", "unset")
    monkeypatch.setenv("FEATURES_URI", "unset")
    return embedded.settings


def test_both_runs_succeed(embedded: Embedded, runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    rows = embedded.query("SELECT run_id, state, conf FROM dag_run WHERE dag_id = 'flight_features'")
    assert [(row["state"], json.loads(row["conf"])) for row in rows] == [("success", json.loads(CONF))]
    tasks = embedded.query("SELECT task_id, state FROM task_instance WHERE dag_id = 'flight_features' AND run_id = ?",
                           rows[0]["run_id"])
    assert {row["task_id"]: row["state"] for row in tasks} == {"build_features": "success",
                                                               "materialize_features": "success"}


def test_feature_partitions_exist_for_every_day(embedded: Embedded, runs: dict[str, Any]) -> None:
    for table in DAILY_TABLES:
        for day in WINDOW:
            partition = embedded.lake / "features" / table / f"date={day}" / "data.parquet"
            assert partition.is_file(), f"{table} {day} not in features/"
            assert len(pd.read_parquet(partition)) > 0, f"{table} {day} is empty"
    planes = embedded.lake / "features" / "plane_attributes" / f"date={PLANES_SNAPSHOT.date()}" / "data.parquet"
    assert planes.is_file()


def test_online_features_are_announced(embedded: Embedded, runs: dict[str, Any]) -> None:
    rows = embedded.query("SELECT asset.name AS name FROM asset_event JOIN asset ON asset.id = asset_event.asset_id"
                          " WHERE asset_event.source_dag_id = 'flight_features'")
    assert [row["name"] for row in rows] == ["online_features_flight_delay_v1"]


def test_online_store_answers_for_a_flight_of_the_window(
    embedded: Embedded, runs: dict[str, Any], feast_env: Settings
) -> None:
    day = WINDOW[-1]
    flights = pd.read_parquet(embedded.lake / "validated" / "flights" / f"date={day}" / "data.parquet")
    entities = flight_entities(flights)
    planes = pd.read_parquet(embedded.lake / "features" / "plane_attributes" / f"date={PLANES_SNAPSHOT.date()}"
                             / "data.parquet")
    flight = entities[entities["tailnum"].isin(set(planes["tailnum"]))].iloc[[0]]

    online = online_features(flight, feast_env).iloc[0]

    schedule = pd.read_parquet(embedded.lake / "features" / "flight_schedule" / f"date={day}" / "data.parquet")
    expected_schedule = schedule.set_index("flight_id").loc[flight["flight_id"].iloc[0]]
    assert online["origin_day_departures"] == expected_schedule["origin_day_departures"]
    stats = pd.read_parquet(embedded.lake / "features" / "carrier_stats" / f"date={day}" / "data.parquet")
    assert online["carrier_flights_7d"] == stats.set_index("carrier").loc[flight["carrier"].iloc[0],
                                                                          "carrier_flights_7d"]
    assert online["plane_seats"] == planes.set_index("tailnum").loc[flight["tailnum"].iloc[0], "plane_seats"]
    assert pd.notna(online["temp"]) and pd.notna(online["route_flights_28d"])
    assert online["dep_month"] == date.fromisoformat(day).month
