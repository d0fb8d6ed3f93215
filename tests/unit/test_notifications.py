"""Composition of the owners' emails (pipelines.monitoring.notifications): a first line that says whether anything
needs a person (and the subject that repeats it), the numbers in the HTML body, the report named by its path and
never attached, the chart shown inline by its Content-ID (pipelines.monitoring.daily_chart), and the failed
expectations of a critical validation failure."""

from __future__ import annotations

import copy
import html
import json
import re
import struct
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipelines.core.settings import Settings
from pipelines.monitoring import daily_chart
from pipelines.monitoring.daily_chart import chart_name, history_chart, write_history_chart
from pipelines.monitoring.notifications import (
    failed_expectations,
    failure_email,
    monitoring_email,
    needs_attention,
)
from pipelines.monitoring.retrain import MonitoringPolicy
from pipelines.validation.partition import Failure, Verdict
from pipelines.validation.steps import QuarantineError, check_quarantine

FEATURES = [f"feature_{i:02d}" for i in range(31)]
DRIFT: dict[str, Any] = {
    "date": "2013-07-15",
    "drift_detected": True,
    "drift_share": 9 / 31,
    # every feature checked; 9 drifted, the most drifted has the highest score
    "drifted_features": [{"feature": name, "score": round(0.05 + i * 0.01, 3), "drifted": i >= 22}
                         for i, name in enumerate(FEATURES)],
    "prediction_drift": {"score": 0.21, "drifted": True},
    "quality": {"labelled_flights": 812, "roc_auc": 0.6432, "training_roc_auc": 0.7101, "brier": 0.1875,
                "training_brier": 0.1702},
    "traffic": {"predictions": 1000, "flights": 950},
    "retrain": {"requested": True, "triggers": ["data_drift"],
                "reasons": ["9 of 31 features drifted (share 0.29 over 0.25)"]},
}
NO_DRIFT: dict[str, Any] = {
    "date": "2013-04-02", "drift_detected": False, "drift_share": 0.0323,
    "drifted_features": [{"feature": "temp", "score": 0.31, "drifted": True},
                         {"feature": "wind_speed", "score": 0.02, "drifted": False}],
    "feature_count": 31,
    "prediction_drift": {"score": 0.01, "drifted": False},
    "quality": {"labelled_flights": 3812, "roc_auc": 0.70, "training_roc_auc": 0.71, "brier": 0.18,
                "training_brier": 0.17},
    "traffic": {"predictions": 1000, "flights": 950},
    "retrain": {"requested": False, "triggers": [], "reasons": ["nothing beyond its threshold: no retraining"]},
}
CHART = Path("/tmp/monitoring-email-x/monitoring_2013-07-15.png")  # composition never opens it


def _text(markup: str) -> str:
    """The body as a person reads it: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", markup))


def _first_line(markup: str) -> str:
    """The first text of the body: what a mail client shows as the preview."""
    return re.split(r"\s{2,}", _text(markup).strip())[0]


def _with(summary: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``summary`` with keys replaced; ``quality__roc_auc`` sets ``roc_auc`` inside ``quality``."""
    changed = copy.deepcopy(summary)
    for key, value in changes.items():
        *parents, leaf = key.split("__")
        target = changed
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return changed


@pytest.fixture
def report(tmp_path: Path) -> Path:
    path = tmp_path / "reports" / "monitoring" / "date=2013-07-15" / "report.html"
    path.parent.mkdir(parents=True)
    path.write_text("<html><body>" + "x" * 5000 + "</body></html>")
    return path


# The first line: does anything need a person?


def test_drift_says_action_needed_first_and_in_the_subject(settings: Settings, report: Path) -> None:
    parts = monitoring_email(DRIFT, [report], ["owner@example.com"], settings, chart=CHART)

    headline = "Action needed: drift on 9 of 31 features, predictions drifted, retraining requested"
    assert _first_line(parts.html) == headline
    assert parts.subject == f"[flight_delay] 2013-07-15 {headline}"


def test_a_quiet_day_says_nothing_needs_you(settings: Settings) -> None:
    parts = monitoring_email(NO_DRIFT, [], ["o@example.com"], settings)

    headline = ("Nothing needs you: no drift (1 of 31 features, under the 12% threshold), quality within bounds, "
                "950 flights served")
    assert _first_line(parts.html) == headline
    assert parts.subject == f"[flight_delay] 2013-04-02 {headline}"
    assert "1 of 31" in _text(parts.html)  # feature_count: the list holds only some of the features


@pytest.mark.parametrize(("changes", "headline"), [
    # each thing that needs a person, alone on an otherwise quiet day
    ({"drift_detected": True, "drift_share": 0.13, "drifted_count": 4, "retrain": {
        "requested": False, "triggers": ["data_drift"], "reasons": ["retraining was requested on 2013-03-30"]}},
     "Action needed: drift on 4 of 31 features, no retraining (cooldown)"),
    ({"prediction_drift": {"score": 0.4, "drifted": True}}, "Action needed: predictions drifted, no retraining"),
    ({"quality__roc_auc": 0.60}, "Action needed: ROC AUC 0.600, 0.110 below training, no retraining"),
    ({"quality__brier": 0.24}, "Action needed: Brier score 0.240, 0.070 above training, no retraining"),
    ({"retrain": {"requested": True, "triggers": ["roc_auc_drop"], "reasons": []}},
     "Action needed: retraining requested"),
    ({"traffic": {"predictions": 130, "flights": 120}},
     "Action needed: only 120 flights served (under 300), no retraining"),
    ({"traffic": {"predictions": 900, "flights": 900, "scheduled": 950}},
     "Action needed: 900 of 950 scheduled flights served, no retraining"),
    ({"drift_share": None, "traffic": {"predictions": 0, "flights": 0}, "prediction_drift": None},
     "Action needed: no flights served, drift not measured, no retraining"),
    # within the policy's bounds: nothing
    ({"quality__roc_auc": 0.62, "quality__brier": 0.22},
     "Nothing needs you: no drift (1 of 31 features, under the 12% threshold), quality within bounds, "
     "950 flights served"),
    ({"traffic": {"predictions": 950, "flights": 950, "scheduled": 950}, "drifted_count": 0},
     "Nothing needs you: no drift, quality within bounds, 950 flights served"),
    ({"quality": None, "labelled_flights": 812},
     "Nothing needs you: no drift (1 of 31 features, under the 12% threshold), quality not judged yet (812 "
     "labelled flights), 950 flights served"),
])
def test_first_line_for_each_case(settings: Settings, changes: dict[str, Any], headline: str) -> None:
    parts = monitoring_email(_with(NO_DRIFT, **changes), [], None, settings)

    assert _first_line(parts.html) == headline
    assert parts.subject == f"[flight_delay] 2013-04-02 {headline}"


def test_the_thresholds_are_the_policy_the_day_was_judged_by(settings: Settings) -> None:
    strict = _with(NO_DRIFT, quality__roc_auc=0.65, policy={**vars(MonitoringPolicy()), "roc_auc_drop": 0.05})

    assert needs_attention(_with(NO_DRIFT, quality__roc_auc=0.65)) == []
    assert needs_attention(strict) == ["ROC AUC 0.650, 0.060 below training"]
    assert "a drop of 0.05 or more needs you" in _text(monitoring_email(strict, [], None, settings).html)


def test_drift_without_retraining_says_why(settings: Settings) -> None:
    summary = _with(DRIFT, retrain={"requested": False, "triggers": ["data_drift"],
                                    "reasons": ["cooldown: retrained 2013-07-13"]},
                    prediction_drift={"score": 0.01, "drifted": False})

    parts = monitoring_email(summary, [], ["o@example.com"], settings)

    assert parts.subject == ("[flight_delay] 2013-07-15 Action needed: drift on 9 of 31 features, "
                             "no retraining (cooldown)")
    assert "cooldown: retrained 2013-07-13" in _text(parts.html)


# The body


def test_body_has_drift_share_top_features_quality_against_training_and_traffic(
    settings: Settings, report: Path
) -> None:
    body = _text(monitoring_email(DRIFT, [report], ["o@example.com"], settings).html)

    assert "drift share 29.0% (threshold 12%)" in " ".join(body.split())
    assert "9 of 31" in body
    # the ten most drifted, highest score first; the least drifted are left to the report
    assert body.index("feature_30") < body.index("feature_29") < body.index("feature_22") < body.index("feature_21")
    assert "feature_20" not in body
    assert "0.350" in body  # feature_30's score
    for number in ("812", "0.643", "0.710", "-0.067", "0.188", "0.170", "+0.017", "1,000", "950", "0.210"):
        assert number in body, number
    assert "Requested" in body and "share 0.29 over 0.25" in body


def test_the_report_is_named_by_its_path_never_attached_and_the_chart_is_inline(
    settings: Settings, report: Path
) -> None:
    parts = monitoring_email(DRIFT, [report, "s3://lake/reports/monitoring/date=2013-07-15/report.json"],
                             ["o@example.com"], settings, chart=CHART)

    assert parts.attachments == [CHART]  # the HTML report is not attached, whatever its size
    assert parts.reports == [str(report), "s3://lake/reports/monitoring/date=2013-07-15/report.json"]
    body = _text(parts.html)
    assert str(report) in body and "s3://lake/reports/monitoring/date=2013-07-15/report.json" in body
    # Airflow's SMTP hook gives each attachment the Content-ID <its file name>
    (source,) = re.findall(r'<img src="cid:([^"]+)"', parts.html)
    assert source == CHART.name == "monitoring_2013-07-15.png"
    assert parts.describe()["attachments"] == [CHART.name]


def test_without_a_chart_nothing_is_attached(settings: Settings, report: Path) -> None:
    parts = monitoring_email(DRIFT, [report], ["o@example.com"], settings)

    assert parts.attachments == []
    assert "<img" not in parts.html and str(report) in _text(parts.html)


def test_missing_optional_parts_are_tolerated(settings: Settings) -> None:
    parts = monitoring_email({"date": "2013-04-03", "drift_detected": False}, [], None, settings)

    assert parts.subject == "[flight_delay] 2013-04-03 Action needed: drift not measured"
    assert parts.to == ["flight-delay-owners@example.com"]
    assert "Not judged" in _text(parts.html)


def test_owners_and_sender_come_from_the_settings(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("MODEL_OWNERS", " a@example.com,b@example.com ")
    monkeypatch.setenv("MAIL_FROM", "pipeline@example.org")
    settings = Settings()

    parts = monitoring_email(NO_DRIFT, [], settings.owners, settings)

    assert (parts.to, parts.mail_from) == (["a@example.com", "b@example.com"], "pipeline@example.org")


def test_owners_must_be_addresses(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("MODEL_OWNERS", "nobody")
    with pytest.raises(ValueError, match="MODEL_OWNERS"):
        Settings()


def test_the_monitoring_steps_summary_shape(settings: Settings) -> None:
    """As pipelines.monitoring writes it: tested_features, thresholds and methods per feature, quality None until
    enough outcomes are known, the top-level labelled_flights, model versions in the traffic."""
    summary = {
        "date": "2013-07-15", "model_version": "3", "drift_detected": True, "drift_share": 0.25,
        "drifted_count": 2, "tested_features": 8,
        "drifted_features": [
            {"feature": "wind_speed", "method": "wasserstein", "score": 0.2, "threshold": 0.1, "drifted": True},
            {"feature": "temp", "method": "wasserstein", "score": 0.3, "threshold": 0.25, "drifted": True},
            {"feature": "dewp", "method": "wasserstein", "score": 0.09, "threshold": 0.1, "drifted": False}],
        "untested_features": [{"feature": "wind_gust", "reason": "no values in the day's traffic"}],
        "prediction_drift": {"score": 0.05, "method": "psi", "threshold": 0.1, "drifted": False},
        "traffic": {"predictions": 1200, "flights": 950, "model_versions": {"3": 1200}},
        "labelled_flights": 40, "quality": None,
        "retrain": {"requested": False, "triggers": [], "reasons": ["cooldown"], "window": None},
        "policy": vars(MonitoringPolicy()),
    }

    parts = monitoring_email(summary, [], None, settings)

    assert parts.subject == "[flight_delay] 2013-07-15 Action needed: drift on 2 of 8 features, no retraining"
    body = _text(parts.html)
    assert body.index("wind_speed") < body.index("temp") < body.index("dewp")  # score relative to threshold
    assert "psi score 0.050, threshold 0.100" in body
    assert "wind_gust: no values in the day's traffic" in body
    assert "labelled flights: 40" in body and "v3: 1,200" in body and "model version 3" in body


def test_drift_not_measured_without_traffic(settings: Settings) -> None:
    summary = {"date": "2013-07-16", "drift_detected": False, "drift_share": None, "drifted_count": 0,
               "tested_features": 0, "drifted_features": [], "prediction_drift": None, "quality": None,
               "traffic": {"predictions": 0, "flights": 0}, "retrain": {"requested": False, "reasons": []}}

    parts = monitoring_email(summary, [], None, settings)

    assert parts.subject == ("[flight_delay] 2013-07-16 Action needed: no flights served, drift not measured, "
                             "no retraining")
    assert "not measured" in _text(parts.html)


# The chart


def _day_summary(day: date, share: float | None = 0.05, auc: float | None = 0.70) -> dict[str, Any]:
    return {"date": day.isoformat(), "drift_share": share,
            "quality": None if auc is None else {"roc_auc": auc, "training_roc_auc": 0.71},
            "traffic": {"predictions": 900 + day.day, "flights": 900}}


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def test_the_chart_is_a_small_png_of_the_last_thirty_days() -> None:
    end = date(2013, 7, 15)
    history = [_day_summary(end - timedelta(days=i), share=0.01 * i, auc=None if i > 25 else 0.7 - 0.003 * i)
               for i in range(40) if i != 12]  # a missing day, and days before the window

    png = history_chart(history, MonitoringPolicy())

    assert _png_size(png) == (640, 360)
    assert len(png) < 100_000
    assert history_chart(list(reversed(history))) == png  # any order
    assert history_chart([s for s in history if s["date"] >= "2013-06-16"]) == png  # 30 days: older ones unseen
    assert history_chart([{**history[0], "drift_share": 0.4}, *history[1:]]) != png  # the day itself is drawn
    assert _png_size(history_chart([])) == (640, 360)


def test_the_chart_reads_the_lakes_summaries_of_the_thirty_days_ending_with_the_day(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.core.lake import REPORT_FILES, monitoring_report_key, open_lake

    lake = open_lake(settings)
    day = date(2013, 7, 15)
    for offset in (-1, 0, 1, 29, 30):  # the next day, the day itself (stale), the first and one before the window
        stored = _day_summary(day - timedelta(days=offset)) | {"stale": True}
        lake.write_text(monitoring_report_key(date.fromisoformat(stored["date"]), REPORT_FILES["summary"]),
                        json.dumps(stored))
    drawn: list[Any] = []

    def draw(history: list[dict[str, Any]], policy: MonitoringPolicy) -> bytes:
        drawn.append(history)
        return b"png"

    monkeypatch.setattr(daily_chart, "history_chart", draw)
    today = _day_summary(day, share=0.3)

    path = write_history_chart(today, tmp_path, settings)

    assert path == tmp_path / chart_name(day) and path.read_bytes() == b"png"
    (history,) = drawn
    assert [s["date"] for s in history] == ["2013-06-16", "2013-07-14", "2013-07-15"]
    assert history[-1] == today  # the day's own summary as given, not the stored one


# Failures


def _quarantine_error() -> QuarantineError:
    """The error check_quarantine raises for a real verdict (so a change of its wording breaks this test)."""
    empty = Verdict(table="weather", date="2013-12-31", status="quarantined", rows=0, failures=[
        Failure(expectation="expect_table_row_count_to_be_between", severity="critical",
                description="a day has 60 to 80 hourly rows", observed=0)])
    dupes = Verdict(table="flights", date="2013-12-31", status="quarantined", rows=900, failures=[
        Failure(expectation="expect_compound_columns_to_be_unique", severity="critical",
                description="one row per flight", unexpected_count=4, unexpected_percent=0.4, examples=[1, 2]),
        Failure(expectation="expect_column_values_to_not_be_null", severity="critical", column="carrier",
                description="carrier is known", unexpected_count=2, unexpected_percent=0.2),
    ])
    promotion = {"quarantined": {"weather/2013-12-31": empty.reason(), "flights/2013-12-31": dupes.reason()}}
    with pytest.raises(QuarantineError) as raised:
        check_quarantine(promotion)
    return raised.value


def test_failed_expectations_are_read_from_check_quarantines_error() -> None:
    items = failed_expectations(_quarantine_error())

    assert items is not None and len(items) == 3
    assert items[0].startswith("weather 2013-12-31: expect_table_row_count_to_be_between: observed 0")
    assert items[1].startswith("flights 2013-12-31: expect_compound_columns_to_be_unique: 4 rows (0.4%) failed")
    assert items[2].startswith("flights 2013-12-31: expect_column_values_to_not_be_null(carrier): 2 rows")


def test_failed_expectations_survive_the_dag_task_rewrapping_the_error() -> None:
    """flights_ingest's check_quarantine raises AirflowFailException(str(error)) from the QuarantineError."""
    error = _quarantine_error()
    try:
        raise RuntimeError(str(error)) from error
    except RuntimeError as wrapped:
        assert failed_expectations(wrapped) == failed_expectations(error)
    assert failed_expectations(str(error)) == failed_expectations(error)


def test_an_exception_may_list_its_failed_expectations() -> None:
    error = RuntimeError("validation failed")
    error.failed_expectations = ["flights 2013-01-02: expect_x"]  # type: ignore[attr-defined]

    assert failed_expectations(error) == ["flights 2013-01-02: expect_x"]
    assert failed_expectations(ValueError("the API is down")) is None
    assert failed_expectations(None) is None


def test_failure_subject_and_body(settings: Settings) -> None:
    error = _quarantine_error()
    parts = failure_email("flights_ingest", "check_quarantine", "2013-12-31T05:00:00+00:00", error,
                          failed_expectations(error), run_id="manual__2013-12-31", try_number=1,
                          log_url="http://localhost:8080/dags/flights_ingest/runs/x/tasks/check_quarantine")

    assert parts.subject == ("[flight_delay] FAILED flights_ingest.check_quarantine on 2013-12-31: 3 critical "
                             "expectations failed")
    body = _text(parts.html)
    # The run's moment in New York time, the data's clock, beside the UTC instant Airflow's UI shows.
    for text in ("flights_ingest", "check_quarantine", "2013-12-31 00:00 EST (2013-12-31T05:00:00+00:00)",
                 "manual__2013-12-31",
                 "QuarantineError: 2 partition(s) quarantined", "Failed critical expectations",
                 "weather 2013-12-31: expect_table_row_count_to_be_between"):
        assert text in body, text
    assert parts.to == settings.owners


def test_failure_without_expectations_and_markup_in_the_error_is_escaped(settings: Settings) -> None:
    parts = failure_email("flight_features", "materialize_features", None,
                          ConnectionError("<b>redis</b> {{ down }}"), None)

    assert parts.subject == "[flight_delay] FAILED flight_features.materialize_features on no date"
    evening = failure_email("flight_features", "build_features", datetime(2013, 7, 15, 1, tzinfo=UTC), None)
    assert evening.subject.endswith("on 2013-07-14"), "01:00 UTC is the evening before in New York"
    assert "&lt;b&gt;redis&lt;/b&gt; {{ down }}" in parts.html
    assert "Failed critical expectations" not in parts.html
