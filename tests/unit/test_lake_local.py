"""LocalLake: object-store semantics over a folder, atomic overwrites, key safety, and open_lake's choice."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from pipelines.core.lake import ZONES, Lake, LocalLake, S3Lake, open_lake, partition_key
from pipelines.core.settings import get_settings


@pytest.fixture
def local(tmp_path: Path) -> LocalLake:
    """A LocalLake on its own empty folder."""
    return LocalLake(tmp_path / "lake")


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_write_then_read_bytes_and_text(local: LocalLake) -> None:
    """Bytes and text come back exactly as written, under the key's path."""
    local.write_bytes("landing/flights/date=2013-01-02/flights.csv", b"a,b\n1,2\n")
    local.write_text("raw/flights/date=2013-01-02/validation.json", '{"status": "passed", "é": 1}')

    assert local.read_bytes("landing/flights/date=2013-01-02/flights.csv") == b"a,b\n1,2\n"
    assert local.read_text("raw/flights/date=2013-01-02/validation.json") == '{"status": "passed", "é": 1}'
    assert (local.root / "landing/flights/date=2013-01-02/flights.csv").read_bytes() == b"a,b\n1,2\n"


def test_parquet_round_trip_keeps_values_and_dtypes(local: LocalLake) -> None:
    """A frame written as Parquet reads back equal, nullable ints included."""
    frame = pd.DataFrame({"flight": pd.array([1, None, 3], dtype="Int64"), "carrier": ["UA", None, "AA"]})
    local.write_parquet("raw/flights/date=2013-01-02/data.parquet", frame)

    pd.testing.assert_frame_equal(local.read_parquet("raw/flights/date=2013-01-02/data.parquet"), frame)


def test_read_missing_key_raises_file_not_found_naming_key(local: LocalLake) -> None:
    with pytest.raises(FileNotFoundError, match="raw/flights/date=2013-01-02/data.parquet"):
        local.read_bytes("raw/flights/date=2013-01-02/data.parquet")


def test_exists_is_true_only_for_files(local: LocalLake) -> None:
    """A written key exists; a missing key and a folder do not."""
    local.write_bytes("raw/flights/date=2013-01-02/data.parquet", b"x")

    assert local.exists("raw/flights/date=2013-01-02/data.parquet")
    assert not local.exists("raw/flights/date=2013-01-03/data.parquet")
    assert not local.exists("raw/flights/date=2013-01-02")


def test_list_keys_is_sorted_recursive_and_scoped_to_prefix(local: LocalLake) -> None:
    """Keys under a folder prefix, sorted, relative to the lake root, with or without a trailing slash."""
    for key in ("raw/weather/date=2013-01-01/data.parquet", "raw/flights/date=2013-01-02/validation.json",
                "raw/flights/date=2013-01-02/data.parquet", "raw/flights/date=2013-01-01/data.parquet",
                "landing/flights/date=2013-01-01/flights.csv"):
        local.write_bytes(key, b"x")

    expected = ["raw/flights/date=2013-01-01/data.parquet", "raw/flights/date=2013-01-02/data.parquet",
                "raw/flights/date=2013-01-02/validation.json"]
    assert local.list_keys("raw/flights/") == expected
    assert local.list_keys("raw/flights") == expected
    assert local.list_keys("raw/") == [*expected, "raw/weather/date=2013-01-01/data.parquet"]
    assert len(local.list_keys("")) == 5
    assert local.list_keys("quarantine/flights/") == []


def test_list_keys_on_a_lake_that_does_not_exist_yet_is_empty(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "never-created")

    assert lake.list_keys("") == []
    assert lake.partitions("raw", "flights") == []


def test_list_keys_hides_temporary_files(local: LocalLake) -> None:
    """A temp file left by a crashed writer is never listed as a key."""
    local.write_bytes("raw/flights/date=2013-01-02/data.parquet", b"x")
    (local.root / "raw/flights/date=2013-01-02/.data.parquet.abc123.tmp").write_bytes(b"half")

    assert local.list_keys("raw/flights/") == ["raw/flights/date=2013-01-02/data.parquet"]


def test_delete_removes_key_and_empty_folders(local: LocalLake) -> None:
    """Deleting the last key of a partition removes its folder, so listings stay truthful."""
    local.write_bytes("quarantine/flights/date=2013-01-02/data.parquet", b"x")
    local.write_bytes("quarantine/flights/date=2013-01-03/data.parquet", b"y")

    local.delete("quarantine/flights/date=2013-01-02/data.parquet")

    assert not local.exists("quarantine/flights/date=2013-01-02/data.parquet")
    assert not (local.root / "quarantine/flights/date=2013-01-02").exists()
    assert local.partitions("quarantine", "flights") == [date(2013, 1, 3)]
    assert local.root.is_dir()


def test_delete_missing_key_is_not_an_error(local: LocalLake) -> None:
    local.delete("raw/flights/date=2013-01-02/data.parquet")

    assert local.list_keys("") == []


def test_delete_keeps_folders_that_still_hold_files(local: LocalLake) -> None:
    local.write_bytes("validated/flights/date=2013-01-02/data.parquet", b"x")
    local.write_bytes("validated/flights/date=2013-01-02/validation.json", b"{}")

    local.delete("validated/flights/date=2013-01-02/data.parquet")

    assert local.list_keys("validated/") == ["validated/flights/date=2013-01-02/validation.json"]


def test_delete_prefix_removes_only_that_partition(local: LocalLake) -> None:
    for day in ("2013-01-02", "2013-01-03"):
        local.write_bytes(f"quarantine/flights/date={day}/data.parquet", b"x")
        local.write_bytes(f"quarantine/flights/date={day}/validation.json", b"{}")

    local.delete_prefix("quarantine/flights/date=2013-01-02/")

    assert local.list_keys("quarantine/") == ["quarantine/flights/date=2013-01-03/data.parquet",
                                              "quarantine/flights/date=2013-01-03/validation.json"]
    assert local.partitions("quarantine", "flights") == [date(2013, 1, 3)]


def test_partitions_are_sorted_distinct_dates_ignoring_other_folders(local: LocalLake) -> None:
    """Only date=YYYY-MM-DD folders of that zone and table count, each once."""
    local.write_bytes("raw/flights/date=2013-01-03/data.parquet", b"x")
    local.write_bytes("raw/flights/date=2013-01-03/validation.json", b"x")
    local.write_bytes("raw/flights/date=2013-01-01/data.parquet", b"x")
    local.write_bytes("raw/flights/notes/readme.txt", b"x")
    local.write_bytes("raw/flights/date=2013-1-5/data.parquet", b"x")
    local.write_bytes("raw/flights/stray.parquet", b"x")
    local.write_bytes("raw/weather/date=2013-01-02/data.parquet", b"x")
    local.write_bytes("validated/flights/date=2013-01-04/data.parquet", b"x")

    assert local.partitions("raw", "flights") == [date(2013, 1, 1), date(2013, 1, 3)]
    assert local.partitions("raw", "weather") == [date(2013, 1, 2)]
    assert local.partitions("quarantine", "flights") == []


def test_overwrite_replaces_content_and_leaves_no_temp_file(local: LocalLake) -> None:
    """A rerun replaces its own file (never appends) and leaves nothing behind."""
    key = "raw/flights/date=2013-01-02/data.parquet"
    local.write_bytes(key, b"first version, rather long")
    local.write_bytes(key, b"second")

    assert local.read_bytes(key) == b"second"
    assert _tmp_files(local.root) == []
    assert sorted(p.name for p in (local.root / "raw/flights/date=2013-01-02").iterdir()) == ["data.parquet"]


def test_failed_replace_keeps_old_content_and_removes_temp(local: LocalLake, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure at the final move leaves the previous file intact and no temp file behind."""
    key = "validated/flights/date=2013-01-02/data.parquet"
    local.write_bytes(key, b"good old data")

    def fail(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk went away"):
        local.write_bytes(key, b"new data that never lands")
    monkeypatch.undo()

    assert local.read_bytes(key) == b"good old data"
    assert _tmp_files(local.root) == []
    assert local.list_keys("validated/") == [key]


def test_failed_write_of_first_version_leaves_nothing(local: LocalLake, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed first write does not create the key at all."""
    key = "raw/weather/date=2013-01-02/data.parquet"

    def fail(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        local.write_bytes(key, b"data")
    monkeypatch.undo()

    assert not local.exists(key)
    assert _tmp_files(local.root) == []


def test_failure_while_writing_temp_removes_it(local: LocalLake) -> None:
    """An error while the bytes are being written (here: not bytes at all) leaves the old file and no temp."""
    key = "raw/flights/date=2013-01-02/data.parquet"
    local.write_bytes(key, b"old")

    with pytest.raises(TypeError):
        local.write_bytes(key, "not bytes")  # type: ignore[arg-type]

    assert local.read_bytes(key) == b"old"
    assert _tmp_files(local.root) == []


def test_reader_sees_old_content_until_complete_new_file_is_moved_in(
    local: LocalLake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right before the move, the target still holds the old bytes and the temp already holds all new bytes."""
    key = "raw/flights/date=2013-01-02/data.parquet"
    local.write_bytes(key, b"old content")
    new = b"n" * 1_000_000
    seen: dict[str, object] = {}
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen["during"] = local.read_bytes(key)
        seen["temp"] = Path(src).read_bytes()
        seen["same_folder"] = Path(src).parent == Path(dst).parent
        seen["listed"] = local.list_keys("raw/")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    local.write_bytes(key, new)
    monkeypatch.undo()

    assert seen["during"] == b"old content"
    assert seen["temp"] == new
    assert seen["same_folder"] is True
    assert seen["listed"] == [key]
    assert local.read_bytes(key) == new
    assert _tmp_files(local.root) == []


@pytest.mark.parametrize("key", ["../outside.txt", "raw/../../outside.txt", "/etc/passwd", "raw/flights/../../../x"])
def test_keys_escaping_the_root_are_refused(local: LocalLake, key: str) -> None:
    """No operation may reach outside the lake folder."""
    with pytest.raises(ValueError, match="escapes the lake root"):
        local.write_bytes(key, b"x")
    with pytest.raises(ValueError, match="escapes the lake root"):
        local.read_bytes(key)
    with pytest.raises(ValueError, match="escapes the lake root"):
        local.exists(key)
    with pytest.raises(ValueError, match="escapes the lake root"):
        local.delete(key)
    assert not (local.root.parent / "outside.txt").exists()


def test_symlink_out_of_the_root_is_refused(local: LocalLake, tmp_path: Path) -> None:
    """A folder inside the lake that links outside it cannot be used to escape."""
    outside = tmp_path / "outside"
    outside.mkdir()
    local.root.mkdir(parents=True)
    (local.root / "raw").symlink_to(outside, target_is_directory=True)

    with pytest.raises(ValueError, match="escapes the lake root"):
        local.write_bytes("raw/x.txt", b"x")
    assert list(outside.iterdir()) == []


def test_dotdot_that_stays_inside_the_root_is_allowed(local: LocalLake) -> None:
    local.write_bytes("raw/../landing/x.csv", b"x")

    assert local.list_keys("") == ["landing/x.csv"]


def test_url_joins_root_and_key(local: LocalLake) -> None:
    assert local.url("raw/flights/date=2013-01-02/data.parquet") == (
        f"{local.root}/raw/flights/date=2013-01-02/data.parquet"
    )


def test_partition_key_layout_for_every_zone() -> None:
    for zone in ZONES:
        assert partition_key(zone, "flights", date(2013, 1, 2), "data.parquet") == (
            f"{zone}/flights/date=2013-01-02/data.parquet"
        )


@pytest.mark.parametrize("zone", ["bronze", "Raw", "", "raw/"])
def test_partition_key_rejects_unknown_zones(zone: str) -> None:
    with pytest.raises(ValueError, match="unknown lake zone") as caught:
        partition_key(zone, "flights", date(2013, 1, 2), "data.parquet")
    assert "landing" in str(caught.value) and "quarantine" in str(caught.value)


def test_open_lake_defaults_to_local_folder_in_pipeline_home(home: Path) -> None:
    lake = open_lake(get_settings())

    assert isinstance(lake, LocalLake)
    assert lake.root == (home / "lake").resolve()


def test_open_lake_uses_a_local_path_from_lake_uri(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKE_URI", str(tmp_path / "elsewhere"))
    lake = open_lake(get_settings())

    assert isinstance(lake, LocalLake)
    assert lake.root == (tmp_path / "elsewhere").resolve()


def test_open_lake_accepts_file_uri(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKE_URI", f"file://{tmp_path / 'via-file-uri'}")
    lake = open_lake(get_settings())
    lake.write_bytes("raw/flights/date=2013-01-02/data.parquet", b"x")

    assert isinstance(lake, LocalLake)
    assert lake.root == (tmp_path / "via-file-uri").resolve()
    assert (tmp_path / "via-file-uri/raw/flights/date=2013-01-02/data.parquet").read_bytes() == b"x"


def test_open_lake_picks_s3_for_s3_uri(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An s3:// URI gives an S3Lake (constructing it makes no request)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("LAKE_URI", "s3://bucket/some/prefix/")
    lake = open_lake(get_settings())

    assert isinstance(lake, S3Lake)
    assert (lake.bucket, lake.prefix, lake.uri) == ("bucket", "some/prefix", "s3://bucket/some/prefix")


@pytest.mark.parametrize("uri", ["gs://bucket/lake", "http://example.com/lake", "abfs://container/lake"])
def test_open_lake_refuses_other_schemes_clearly(home: Path, monkeypatch: pytest.MonkeyPatch, uri: str) -> None:
    monkeypatch.setenv("LAKE_URI", uri)

    with pytest.raises(ValueError, match="unsupported lake URI") as caught:
        open_lake(get_settings())
    assert uri in str(caught.value) and "s3://" in str(caught.value)


def test_lake_fixture_is_a_fresh_local_lake(lake: Lake, home: Path) -> None:
    assert isinstance(lake, LocalLake)
    assert lake.list_keys("") == []
    assert Path(lake.uri).is_relative_to(home.resolve())


def test_list_sizes_gives_each_key_its_size_and_hides_temporary_files(local: LocalLake) -> None:
    """Sizes in bytes, for the same keys list_keys gives (retention reports what it frees)."""
    local.write_bytes("predictions/flight_delay/date=2013-01-02/a.parquet", b"12345")
    local.write_bytes("predictions/flight_delay/date=2013-01-03/b.parquet", b"")
    local.write_bytes("reports/monitoring/date=2013-01-02/report.html", b"x" * 1000)
    (local.root / "predictions/flight_delay/date=2013-01-02/.a.parquet.abc.tmp").write_bytes(b"half")

    assert local.list_sizes("predictions/") == {"predictions/flight_delay/date=2013-01-02/a.parquet": 5,
                                                "predictions/flight_delay/date=2013-01-03/b.parquet": 0}
    assert list(local.list_sizes("")) == local.list_keys("")
    assert local.list_sizes("labels/") == {}


def test_a_version_changes_with_the_content_not_with_a_rewrite(local: LocalLake) -> None:
    """What the training rows' cache is keyed on: a rewrite of the same bytes keeps the version."""
    local.write_bytes("features/weather_hourly/date=2013-01-02/data.parquet", b"rows")
    local.write_bytes("features/weather_hourly/date=2013-01-03/data.parquet", b"rows")
    (local.root / "features/weather_hourly/date=2013-01-02/.data.parquet.abc.tmp").write_bytes(b"half")
    before = local.list_versions("features/")
    local.write_bytes("features/weather_hourly/date=2013-01-02/data.parquet", b"rows")
    assert local.list_versions("features/") == before and len(before) == 2
    local.write_bytes("features/weather_hourly/date=2013-01-03/data.parquet", b"other rows")
    after = local.list_versions("features/")
    assert after["features/weather_hourly/date=2013-01-02/data.parquet"] == before[
        "features/weather_hourly/date=2013-01-02/data.parquet"]
    assert after["features/weather_hourly/date=2013-01-03/data.parquet"] != before[
        "features/weather_hourly/date=2013-01-03/data.parquet"]


def test_delete_keys_deletes_many_skips_missing_ones_and_drops_empty_folders(local: LocalLake) -> None:
    """A retry after a partial delete passes keys that are gone already: no error, the rest deleted."""
    keys = [f"predictions/flight_delay/date=2013-01-0{d}/part-{i}.parquet" for d in (2, 3) for i in range(2)]
    for key in [*keys, "labels/flight_delay/date=2013-01-02/data.parquet"]:
        local.write_bytes(key, b"x")
    local.delete(keys[0])

    assert local.delete_keys(keys) == 4
    assert local.delete_keys(keys) == 4
    assert local.list_keys("") == ["labels/flight_delay/date=2013-01-02/data.parquet"]
    assert not (local.root / "predictions").exists()


def test_the_base_lake_lists_sizes_and_deletes_keys_through_its_primitives(local: LocalLake) -> None:
    """A backend that overrides neither (the Lake defaults): the same answers, through read_bytes and delete."""
    local.write_bytes("reports/monitoring/date=2013-01-02/report.json", b"{}")
    local.write_bytes("reports/monitoring/date=2013-01-02/summary.json", b"{\"a\": 1}")

    assert Lake.list_sizes(local, "reports/") == local.list_sizes("reports/") == {
        "reports/monitoring/date=2013-01-02/report.json": 2, "reports/monitoring/date=2013-01-02/summary.json": 8}
    assert Lake.delete_keys(local, iter(["reports/monitoring/date=2013-01-02/report.json", "missing/key"])) == 2
    assert local.list_keys("") == ["reports/monitoring/date=2013-01-02/summary.json"]
