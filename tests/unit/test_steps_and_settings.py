"""Partition windows, settings read from the environment, verdict JSON and reasons, and the CLI's argument errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.core.dates import date_range, partition_dates
from pipelines.core.settings import Settings, get_settings
from pipelines.validation.partition import Failure, Verdict
from pipelines.validation.steps import QuarantineError, check_quarantine

REPO = Path(__file__).resolve().parents[2]
D = date(2013, 1, 2)


# --- partition windows ---------------------------------------------------------------------------------------------


def test_partition_dates_without_window_is_the_logical_date() -> None:
    assert partition_dates(D) == [D]
    assert partition_dates(D, None, None) == [D]


@pytest.mark.parametrize(("start", "end"), [("2013-01-30", "2013-02-02"), (date(2013, 1, 30), date(2013, 2, 2))])
def test_partition_dates_explicit_window_is_inclusive_and_ignores_logical_date(
    start: str | date, end: str | date
) -> None:
    assert partition_dates(date(2013, 6, 1), start, end) == [
        date(2013, 1, 30), date(2013, 1, 31), date(2013, 2, 1), date(2013, 2, 2)
    ]


def test_partition_dates_only_start_is_that_single_day() -> None:
    assert partition_dates(D, "2013-03-05") == [date(2013, 3, 5)]


def test_partition_dates_only_end_is_that_single_day() -> None:
    assert partition_dates(D, None, "2013-03-07") == [date(2013, 3, 7)]


def test_partition_dates_end_before_start_raises_naming_both() -> None:
    with pytest.raises(ValueError, match="2013-01-01 is before start date 2013-01-05"):
        partition_dates(D, "2013-01-05", "2013-01-01")


def test_partition_dates_rejects_a_non_date() -> None:
    with pytest.raises(ValueError):
        partition_dates(D, "yesterday", None)


def test_date_range_inclusive_and_across_leap_day() -> None:
    assert date_range(date(2012, 2, 28), date(2012, 3, 1)) == [date(2012, 2, 28), date(2012, 2, 29), date(2012, 3, 1)]
    assert date_range(D, D) == [D]
    assert len(date_range(date(2013, 1, 1), date(2013, 12, 31))) == 365


def test_date_range_end_before_start_raises() -> None:
    with pytest.raises(ValueError, match="end date 2013-01-01 is before start date 2013-01-02"):
        date_range(D, date(2013, 1, 1))


def test_check_quarantine_passes_when_nothing_quarantined() -> None:
    check_quarantine({"validated": {"flights/2013-01-02": 10}, "warned": {}, "quarantined": {}})
    check_quarantine({})


def test_check_quarantine_names_every_quarantined_partition() -> None:
    promotion = {"quarantined": {"flights/2013-01-02": "flights 2013-01-02 quarantined: A",
                                 "weather/2013-01-02": "weather 2013-01-02 quarantined: B"}}

    with pytest.raises(QuarantineError, match="2 partition") as caught:
        check_quarantine(promotion)
    assert "quarantined: A" in str(caught.value) and "quarantined: B" in str(caught.value)


# --- settings ------------------------------------------------------------------------------------------------------


def test_settings_are_read_from_env_when_called(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each get_settings() call sees the environment of that moment."""
    first = get_settings()
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "other-home"))
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    second = get_settings()

    assert first.pipeline_home == home
    assert first.s3_endpoint_url is None
    assert second.pipeline_home == tmp_path / "other-home"
    assert second.s3_endpoint_url == "http://127.0.0.1:9000"


def test_lake_root_defaults_under_pipeline_home(home: Path) -> None:
    settings = get_settings()

    assert settings.lake_uri is None
    assert settings.lake_root == str(home / "lake")
    assert settings.gx_output_dir == home / "gx"
    assert settings.data_docs_index == home / "gx" / "data_docs" / "index.html"


def test_lake_uri_overrides_lake_root(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKE_URI", "s3://bucket/lake")

    assert get_settings().lake_root == "s3://bucket/lake"


def test_settings_are_frozen(settings: Settings) -> None:
    with pytest.raises(ValueError):
        settings.lake_uri = "s3://bucket/elsewhere"  # type: ignore[misc]


def test_settings_ignore_unrelated_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOMETHING_ELSE", "x")

    assert get_settings().pipeline_home == home


# --- verdicts ------------------------------------------------------------------------------------------------------


def _failures() -> list[Failure]:
    return [
        Failure(expectation="expect_column_values_to_not_be_null", severity="critical",
                description="Every flight has a carrier.", column="carrier", unexpected_count=3,
                unexpected_percent=1.5, examples=[None, None, None]),
        Failure(expectation="expect_table_row_count_to_be_between", severity="critical",
                description="A day has between 500 and 1500 flights.", observed=42),
        Failure(expectation="expect_column_values_to_be_between", severity="warning",
                description="Wind speed is plausible.", column="wind_speed", unexpected_count=1,
                unexpected_percent=0.2, examples=[1048.0]),
    ]


def test_verdict_json_round_trip() -> None:
    verdict = Verdict(table="flights", date="2013-01-02", status="quarantined", rows=200, failures=_failures(),
                      gx_run_id="manual|flights|2013-01-02@2024-01-01T00:00:00", run_key="dag/run")

    assert Verdict.from_json(verdict.to_json()) == verdict


def test_verdict_json_carries_reason_extras_and_gx_result_and_still_parses() -> None:
    verdict = Verdict(table="weather", date="2013-02-12", status="warned", rows=72, failures=_failures()[2:])
    text = verdict.to_json(gx_result={"success": False}, content_hash="abc", dropped_columns=["x"])
    body = json.loads(text)

    assert body["reason"] == verdict.reason()
    assert body["gx_result"] == {"success": False}
    assert body["content_hash"] == "abc" and body["dropped_columns"] == ["x"]
    assert Verdict.from_json(text) == verdict


def test_quarantined_reason_names_critical_failures_with_counts_only() -> None:
    reason = Verdict(table="flights", date="2013-01-02", status="quarantined", rows=200,
                     failures=_failures()).reason()

    assert reason.startswith("flights 2013-01-02 quarantined (200 rows), 2 failed:")
    assert "expect_column_values_to_not_be_null(carrier): 3 rows (1.5%) failed" in reason
    assert "Every flight has a carrier." in reason
    assert "expect_table_row_count_to_be_between: observed 42" in reason
    assert "wind_speed" not in reason


def test_warned_reason_names_the_warning_and_its_examples() -> None:
    reason = Verdict(table="weather", date="2013-02-12", status="warned", rows=72,
                     failures=_failures()[2:]).reason()

    assert reason.startswith("weather 2013-02-12 warned (72 rows), 1 failed:")
    assert "expect_column_values_to_be_between(wind_speed): 1 rows (0.2%) failed, e.g. [1048.0]" in reason


def test_passed_reason_says_all_met() -> None:
    reason = Verdict(table="flights", date="2013-01-02", status="passed", rows=900, failures=[]).reason()

    assert reason == "flights 2013-01-02: all expectations met (900 rows)"


def test_failure_sentence_for_an_expectation_that_could_not_run() -> None:
    failure = Failure(expectation="expect_column_values_to_be_in_set", severity="critical", description="d",
                      column="origin", error="column origin does not exist")

    assert failure.sentence() == "expect_column_values_to_be_in_set(origin): could not be evaluated: " \
                                 "column origin does not exist"


def test_verdict_severity_split() -> None:
    verdict = Verdict(table="flights", date="2013-01-02", status="quarantined", rows=1, failures=_failures())

    assert [f.severity for f in verdict.critical] == ["critical", "critical"]
    assert [f.column for f in verdict.warnings] == ["wind_speed"]


# --- CLI -----------------------------------------------------------------------------------------------------------


def _cli(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LAKE_URI", "S3_ENDPOINT_URL")}
    env |= {"PIPELINE_HOME": str(home), "GX_ANALYTICS_ENABLED": "false"}
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["land", "--date", "2013-01-02", "--start", "2013-01-01"], "give either --date or --start/--end, not both"),
        (["land", "--start", "2013-01-01"], "give --date YYYY-MM-DD, or both --start and --end"),
        (["land"], "give --date YYYY-MM-DD, or both --start and --end"),
        (["land", "--start", "2013-01-05", "--end", "2013-01-01"],
         "land failed: end date 2013-01-01 is before start date 2013-01-05"),
    ],
)
def test_cli_window_errors_exit_nonzero_with_one_line(home: Path, args: list[str], message: str) -> None:
    """A bad window is one readable line on stderr, no traceback, nothing on stdout, nothing landed."""
    result = _cli(args, home)

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(message)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (home / "lake").exists()


def test_cli_bad_date_is_an_argument_error_naming_the_value(home: Path) -> None:
    result = _cli(["land", "--date", "2013-02-30"], home)

    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == ["python -m pipelines land: error: argument --date: '2013-02-30' is not a date (YYYY-MM-DD)"]
    assert "Traceback" not in result.stderr


def test_cli_date_outside_the_feed_fails_with_one_line(home: Path) -> None:
    result = _cli(["land", "--date", "2014-01-01"], home)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "land failed: the simulated feed holds New York days 2013-01-01 .. 2013-12-31" in lines[0]
    assert "not 2014-01-01" in lines[0]


def test_ctrl_c_ends_a_command_with_status_130_and_no_traceback(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """make year pauses its backfills and says so on Ctrl-C; the command then ends quietly (a traceback used to
    follow the message)."""
    import pipelines.ops.year

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipelines.ops.year, "run_year", interrupted)
    assert main(["year", "--start", "2013-04-01", "--end", "2013-04-02"]) == 130
    assert "Traceback" not in capsys.readouterr().err


def test_cli_main_returns_1_for_a_failing_step(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """In process: main() turns a step's error into exit status 1 and one logged line."""
    assert main(["ingest", "--date", "2013-01-02"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert errors[0].startswith("ingest failed: no landing file for flights on 2013-01-02")


def test_cli_main_both_date_and_window_exits_with_message(home: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["promote", "--date", "2013-01-02", "--end", "2013-01-03"])
    assert caught.value.code == "give either --date or --start/--end, not both"


def test_cli_main_unknown_command_exits_2(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["launch"])
    assert caught.value.code == 2
    assert "invalid choice: 'launch'" in capsys.readouterr().err
