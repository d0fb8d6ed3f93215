"""``make year``'s Airflow metadata on this machine's PostgreSQL (real server, as on every machine): one database per
pipeline home, named by its path. A bug: a home deleted and made again at the same path (``rm -rf`` and a new
``make year``) found the old home's database, whose runs Airflow refused to create again (409, unique constraint)."""

from __future__ import annotations

import psycopg
import pytest

from pipelines.core.settings import Settings
from pipelines.ops import year
from pipelines.ops.stack import drop_database, ensure_databases

pytestmark = pytest.mark.integration


def _with_a_run(settings: Settings) -> str:
    """The home's metadata database, created with a table that stands for a run of a home that is gone."""
    url = year.metadata_database(settings)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    ensure_databases({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url})
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS dag_run (run_id text PRIMARY KEY)")
        connection.execute("INSERT INTO dag_run VALUES ('manual__history') ON CONFLICT DO NOTHING")
    return url


def _runs(url: str) -> list[str]:
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as connection:
        exists = connection.execute("SELECT to_regclass('dag_run')").fetchone()
        return [row[0] for row in connection.execute("SELECT run_id FROM dag_run")] if exists and exists[0] else []


def test_a_new_home_on_an_old_path_starts_with_an_empty_metadata_database(settings: Settings) -> None:
    url = _with_a_run(settings)
    said: list[str] = []
    try:
        year.forget_stale_metadata(settings, None, said.append)
        ensure_databases({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url})
        assert _runs(url) == [] and said and "dropped" in said[0]
        assert year.YearState.path(settings).exists()  # from now on the database is this home's
    finally:
        drop_database(url)


def test_a_home_that_ran_a_year_keeps_its_runs(settings: Settings) -> None:
    url = _with_a_run(settings)
    try:
        year.YearState(history=True).save(settings)
        year.forget_stale_metadata(settings, None, lambda text: None)
        assert _runs(url) == ["manual__history"]
    finally:
        drop_database(url)


def test_only_a_local_postgresql_database_is_dropped() -> None:
    from pipelines.ops.stack import StackError

    with pytest.raises(StackError, match="not a local PostgreSQL"):
        drop_database("postgresql://airflow@db.example.com:5432/airflow")
