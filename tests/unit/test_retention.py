"""Retention (``pipelines.ops.retention.prune_lake``) on a local home: the lake, GX output and Airflow task logs
filled with objects of every kind and age, protected ones included.

The run's day is 2013-06-30 and every kind's age 30 days, so the cutoff (first date kept) is 2013-05-31: what is
dated 2013-05-30 or earlier goes, what is dated 2013-05-31 or later stays, and nothing outside the four kinds is
touched whatever its date.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipelines.core.lake import Lake, LocalLake
from pipelines.core.settings import Settings
from pipelines.ops.retention import (
    KINDS,
    evidently_report_date,
    gx_run_date,
    partition_date,
    prune_lake,
    stores,
    task_log_date,
    task_logs_dir,
)

DAY = date(2013, 6, 30)
AGES = {"retention_prediction_logs_days": 30, "retention_reports_days": 30, "retention_data_docs_days": 30,
        "retention_task_logs_days": 30}
OLD, EDGE, YOUNG = "2013-05-30", "2013-05-31", "2013-06-29"
RUN = "flights_ingest|{day}T00:00:00-04:00|scheduled__{day}T04:00:00+00:00|{table}|{day}"


def _gx_keys(day: str) -> list[str]:
    keys = []
    for table in ("flights", "weather"):
        run = RUN.format(day=day, table=table)
        keys += [f"data_docs/validations/{table}/{run}/20261204T202014.581805Z/lake-{table}.html",
                 f"validations/{table}/{run}/20261204T202014.581805Z/lake-{table}.json"]
    return keys


def _log_keys(day: str) -> list[str]:
    """A scheduled run's and a backfill's logs whose run ids carry ``day`` (04:00 UTC: that New York day)."""
    return [f"dag_id=flight_delay_monitoring/run_id=scheduled__{day}T04:00:00+00:00/task_id=replay_traffic/"
            "attempt=1.log",
            f"dag_id=flight_delay_monitoring/run_id=scheduled__{day}T04:00:00+00:00/task_id=replay_traffic/"
            "attempt=2.log",
            f"dag_id=flights_ingest/run_id=backfill__{day}T04:00:00+00:00/task_id=tune/map_index=3/attempt=1.log"]


PRUNABLE = {  # kind -> (store, keys dated OLD: all pruned)
    "prediction_logs": ("lake", [f"predictions/flight_delay/date={OLD}/part-{i}.parquet" for i in range(3)]),
    "reports": ("lake", [f"reports/monitoring/date={OLD}/report.html", f"reports/monitoring/date={OLD}/report.json"]),
    "data_docs": ("gx", _gx_keys(OLD)),
    "task_logs": ("task_logs", _log_keys(OLD)),
}


def _kept(day: str) -> dict[str, list[str]]:
    """Objects that must survive any prune: the four kinds dated ``day`` when it is not old, and for every day
    everything else (records, data, anything training or serving reads, and files of no date)."""
    lake = [f"{zone}/{table}/date={day}/{name}" for zone, table, name in (
        ("landing", "flights", "flights.csv"), ("raw", "flights", "data.parquet"),
        ("raw", "flights", "validation.json"), ("validated", "weather", "data.parquet"),
        ("validated", "flights", "validation.json"), ("quarantine", "flights", "data.parquet"),
        ("features", "origin_weather_hourly", "data.parquet"), ("labels", "flight_delay", "data.parquet"),
        ("reports", "monitoring", "summary.json"))]
    lake += [f"leases/flights_ingest/date={day}.json", "reference/planes/planes.parquet",
             f"models/flight_delay_training_{day}/model.pt", f"training/flight_delay_training_{day}/manifest.json",
             "replay/flight_delay/state.json", f"reports/year/2013-04-01_{day}/report.html",
             "reports/backtest/policies.json"]
    gx = ["data_docs/index.html", "data_docs/static/styles/data_docs_default_styles.css",
          "validations/.ge_store_backend_id"]
    logs = [f"dag_processor/{day}/dags-folder/lake_retention.py.log", f"scheduler/{day}/scheduler.log",
            "dag_id=flight_delay_training/run_id=manual__by_hand/task_id=train_final_model/attempt=1.log",
            "dag_id=flight_features/run_id=asset_triggered__2026-12-04T20:20:14.581805+00:00_aB3dE5fG/"
            "task_id=build_features/attempt=1.log"]
    if day != OLD:
        lake += [f"predictions/flight_delay/date={day}/part-0.parquet", f"reports/monitoring/date={day}/report.html",
                 f"reports/monitoring/date={day}/report.json"]
        gx += _gx_keys(day)
        logs += _log_keys(day)
    return {"lake": lake, "gx": gx, "task_logs": logs}


@pytest.fixture
def retention_settings(settings: Settings) -> Settings:
    return settings.model_copy(update=AGES)


@pytest.fixture
def filled(retention_settings: Settings) -> dict[str, Lake]:
    """The home's three stores, holding every prunable kind dated OLD and everything that must stay."""
    where = stores(retention_settings)
    for store, keys in PRUNABLE.values():
        for i, key in enumerate(keys):
            where[store].write_bytes(key, b"x" * (100 + i))
    for day in (OLD, EDGE, YOUNG):
        for store, keys in _kept(day).items():
            for key in keys:
                where[store].write_bytes(key, b"keep")
    return where


def _everything(where: dict[str, Lake]) -> dict[str, list[str]]:
    return {name: store.list_keys("") for name, store in where.items()}


def _expected_after(where: dict[str, Lake], before: dict[str, list[str]]) -> dict[str, list[str]]:
    doomed = {(store, key) for store, keys in PRUNABLE.values() for key in keys}
    return {name: [key for key in keys if (name, key) not in doomed] for name, keys in before.items()}


def test_the_stores_are_the_lake_the_gx_output_and_the_task_logs(retention_settings: Settings,
                                                                 filled: dict[str, Lake]) -> None:
    """Guard: the objects the tests below count on are where prune_lake looks."""
    home = retention_settings.pipeline_home.resolve()
    assert {name: Path(store.uri) for name, store in filled.items()} == {
        "lake": home / "lake", "gx": home / "gx", "task_logs": home / "airflow" / "logs"}
    assert task_logs_dir(retention_settings) == retention_settings.pipeline_home / "airflow" / "logs"
    assert {kind.name for kind in KINDS} == set(PRUNABLE)


def test_prune_removes_exactly_the_old_objects_of_the_four_kinds(retention_settings: Settings,
                                                                 filled: dict[str, Lake]) -> None:
    before = _everything(filled)

    result = prune_lake(DAY, retention_settings)

    assert _everything(filled) == _expected_after(filled, before)
    assert result["dry_run"] is False and result["day"] == "2013-06-30"
    for name, (_, keys) in PRUNABLE.items():
        assert result["kinds"][name] == {
            "age_days": 30, "cutoff": EDGE, "where": filled[PRUNABLE[name][0]].uri, "objects": len(keys),
            "bytes": sum(100 + i for i in range(len(keys))), "oldest": OLD, "newest": OLD}, name
    assert result["objects"] == sum(len(keys) for _, keys in PRUNABLE.values())
    # Emptied partition folders go too, so the lake's own listings stay truthful.
    assert not (Path(filled["lake"].uri) / f"predictions/flight_delay/date={OLD}").exists()
    assert json.dumps(result)  # small and plain: XCom carries it


def test_a_dry_run_deletes_nothing_and_reports_what_the_real_run_removes(retention_settings: Settings,
                                                                        filled: dict[str, Lake]) -> None:
    before = _everything(filled)

    dry = prune_lake(DAY, retention_settings, dry_run=True)
    assert _everything(filled) == before
    real = prune_lake(DAY, retention_settings)

    assert dry["dry_run"] is True
    assert {k: v for k, v in dry.items() if k != "dry_run"} == {k: v for k, v in real.items() if k != "dry_run"}
    assert real["objects"] > 0


def test_a_second_run_removes_nothing_more(retention_settings: Settings, filled: dict[str, Lake]) -> None:
    prune_lake(DAY, retention_settings)
    after = _everything(filled)

    again = prune_lake(DAY, retention_settings)

    assert _everything(filled) == after
    assert again["objects"] == 0 and again["bytes"] == 0
    assert all(kind["oldest"] is None for kind in again["kinds"].values())


def test_a_retry_after_an_interrupted_run_removes_the_rest_and_fails_on_nothing(
        retention_settings: Settings, filled: dict[str, Lake], monkeypatch: pytest.MonkeyPatch) -> None:
    """The first run dies after two deletions; the retry lists again and deletes what is left."""
    before = _everything(filled)
    deleted = []
    real_delete = LocalLake.delete

    def dies_after_two(self: LocalLake, key: str) -> None:
        if len(deleted) == 2:
            raise OSError("worker killed")
        real_delete(self, key)
        deleted.append(key)

    monkeypatch.setattr(LocalLake, "delete", dies_after_two)
    with pytest.raises(OSError, match="worker killed"):
        prune_lake(DAY, retention_settings)
    monkeypatch.undo()
    assert len(deleted) == 2

    retry = prune_lake(DAY, retention_settings)

    assert _everything(filled) == _expected_after(filled, before)
    assert retry["objects"] == sum(len(keys) for _, keys in PRUNABLE.values()) - 2


def test_objects_listed_then_deleted_by_someone_else_are_no_error(
        retention_settings: Settings, filled: dict[str, Lake], monkeypatch: pytest.MonkeyPatch) -> None:
    """A second pruner (a manual run beside the scheduled one) deletes between this run's listing and deleting."""
    real_list = LocalLake.list_sizes

    def listed_then_raced(self: LocalLake, prefix: str) -> dict[str, int]:
        sizes = real_list(self, prefix)
        for key in sizes:
            if key.startswith("predictions/"):
                self.delete(key)
        return sizes

    monkeypatch.setattr(LocalLake, "list_sizes", listed_then_raced)
    result = prune_lake(DAY, retention_settings)

    assert result["kinds"]["prediction_logs"]["objects"] == 3
    assert filled["lake"].list_keys("predictions/") == []


def test_the_default_ages_keep_everything_2013_needs(settings: Settings) -> None:
    """make run (January-March and a few April days) and make year (April-December): pruning for the year's last
    day with the defaults removes nothing of 2013."""
    where = stores(settings)
    keys = {"lake": PRUNABLE["prediction_logs"][1] + PRUNABLE["reports"][1], "gx": _gx_keys("2013-01-01"),
            "task_logs": _log_keys("2013-01-01")}
    for store, names in keys.items():
        for key in names:
            where[store].write_bytes(key.replace(OLD, "2013-01-01"), b"x")
    before = _everything(where)

    result = prune_lake(date(2013, 12, 31), settings)

    assert result["objects"] == 0 and _everything(where) == before
    assert {kind["age_days"] for kind in result["kinds"].values()} == {400}
    assert {kind["cutoff"] for kind in result["kinds"].values()} == {"2012-11-26"}


@pytest.mark.parametrize("name", list(AGES))
def test_an_age_below_one_day_is_refused(home: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name.upper(), "0")
    with pytest.raises(ValidationError, match=name):
        Settings()
    monkeypatch.setenv(name.upper(), "45")
    assert getattr(Settings(), name) == 45


def test_ages_and_the_log_folder_come_from_the_environment(home: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASK_LOGS_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("RETENTION_REPORTS_DAYS", "3")
    settings = Settings()

    assert task_logs_dir(settings) == tmp_path / "logs"
    assert prune_lake(DAY, settings, dry_run=True)["kinds"]["reports"]["cutoff"] == "2013-06-27"
    assert prune_lake(DAY, settings, dry_run=True)["kinds"]["task_logs"]["where"] == str(tmp_path / "logs")


@pytest.mark.parametrize(("key", "expected"), [
    ("predictions/flight_delay/date=2013-05-30/part-1.parquet", date(2013, 5, 30)),
    ("reports/monitoring/date=2013-05-30/summary.json", date(2013, 5, 30)),
    ("predictions/flight_delay/date=2013-5-30/part-1.parquet", None),
    ("predictions/flight_delay/date=2013-02-30/part-1.parquet", None),
    ("predictions/flight_delay/stray.parquet", None),
])
def test_partition_date(key: str, expected: date | None) -> None:
    assert partition_date(key) == expected


def test_only_evidently_files_of_a_report_day_are_dated() -> None:
    assert evidently_report_date("reports/monitoring/date=2013-05-30/report.html") == date(2013, 5, 30)
    assert evidently_report_date("reports/monitoring/date=2013-05-30/report.json") == date(2013, 5, 30)
    assert evidently_report_date("reports/monitoring/date=2013-05-30/summary.json") is None


@pytest.mark.parametrize(("key", "expected"), [
    (_gx_keys("2013-05-30")[0], date(2013, 5, 30)),
    (_gx_keys("2013-05-30")[1], date(2013, 5, 30)),
    ("validations/flights/manual|flights|2013-01-02/20261204T202025.926466Z/lake-flights.json", date(2013, 1, 2)),
    ("data_docs/index.html", None),
    ("validations/.ge_store_backend_id", None),
])
def test_gx_results_and_pages_are_dated_by_the_partition_they_judged(key: str, expected: date | None) -> None:
    assert gx_run_date(key) == expected


@pytest.mark.parametrize(("run_id", "expected"), [
    ("scheduled__2013-05-31T04:00:00+00:00", date(2013, 5, 31)),  # New York midnight
    ("scheduled__2013-01-02T05:00:00+00:00", date(2013, 1, 2)),  # in winter
    ("backfill__2013-05-31T03:59:59+00:00", date(2013, 5, 30)),  # still the evening before in New York
    ("manual__2013-05-31T00:00:00", date(2013, 5, 31)),
    ("asset_triggered__2013-05-31T12:00:00.123456+00:00_aB3dE5fG", date(2013, 5, 31)),
    ("manual__by_hand", None),
    ("scheduled__2013-13-31T04:00:00+00:00", None),
])
def test_task_logs_are_dated_by_their_run_id_in_new_york(run_id: str, expected: date | None) -> None:
    assert task_log_date(f"dag_id=d/run_id={run_id}/task_id=t/attempt=1.log") == expected
    assert task_log_date(f"scheduler/run_id={run_id}.log") is None


def test_the_cli_prunes_with_dry_run_and_refuses_a_day_past_the_feed(
        retention_settings: Settings, filled: dict[str, Lake], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    for name, value in AGES.items():
        monkeypatch.setenv(name.upper(), str(value))
    before = _everything(filled)

    assert main(["prune", "--date", "2013-06-30", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["objects"] == sum(len(keys) for _, keys in PRUNABLE.values())
    assert _everything(filled) == before
    # The wall clock's year would make all of 2013 old: refused, nothing touched.
    assert main(["prune", "--date", "2026-12-04"]) == 1
    assert _everything(filled) == before
    assert main(["prune", "--date", "2013-06-30"]) == 0
    assert _everything(filled) == _expected_after(filled, before)
