"""A read of the offline store while a day's operations pushes are compacted (``write_operations`` deletes the push
files it folded into ``data.parquet``): in the July slice a drift training's retrieval failed on a push file the
next day's replay had just compacted, and the task lost a minute to Airflow's retry. The read is tried again and
finds the compacted file. The compaction is made to fall between the listing and the read (it cannot be timed
for real); DuckDB and the files are real."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from pipelines.features.store import COMPACTION_READ_ATTEMPTS, read_through_compaction


def _day(folder: Path) -> Path:
    """A day's partition as the replay leaves it: two push files."""
    folder.mkdir(parents=True)
    for n, rows in enumerate(([1, 2], [3])):
        pd.DataFrame({"value": rows}).to_parquet(folder / f"push-{n}.parquet")
    return folder


def _compact(folder: Path) -> None:
    pd.concat([pd.read_parquet(path) for path in sorted(folder.glob("push-*"))]).to_parquet(folder / "data.parquet")
    for path in folder.glob("push-*"):
        path.unlink()


def test_a_read_that_lost_a_file_to_the_compaction_reads_again(tmp_path: Path) -> None:
    folder = _day(tmp_path / "date=2013-07-08")
    tries: list[int] = []

    def read() -> pd.DataFrame:
        listed = sorted(str(path) for path in folder.glob("*.parquet"))
        if not tries:
            _compact(folder)  # between this read's listing and its opening of the files
        tries.append(len(listed))
        return duckdb.sql(f"select * from read_parquet({listed})").df()

    frame = read_through_compaction(read, "test")
    assert tries == [2, 1]  # the push files, then the compacted file
    assert sorted(frame["value"]) == [1, 2, 3]


def test_other_errors_and_a_file_that_stays_gone_are_raised(tmp_path: Path) -> None:
    calls: list[str] = []

    def broken_query() -> pd.DataFrame:
        calls.append("query")
        return duckdb.sql("select * from no_such_table").df()

    with pytest.raises(duckdb.CatalogException):
        read_through_compaction(broken_query, "test")
    assert calls == ["query"]

    missing = str(tmp_path / "never.parquet")

    def gone() -> pd.DataFrame:
        calls.append("gone")
        return duckdb.sql(f"select * from read_parquet('{missing}')").df()

    with pytest.raises(duckdb.IOException):
        read_through_compaction(gone, "test")
    assert calls.count("gone") == COMPACTION_READ_ATTEMPTS
