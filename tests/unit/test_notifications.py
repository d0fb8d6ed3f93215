"""Composition of the owners' emails (pipelines.monitoring.notifications): subjects that say what happened, the
numbers in the HTML body, the attachment cap, and the failed expectations of a critical validation failure."""

from __future__ import annotations

import copy
import html
import re
from pathlib import Path
from typing import Any

import pytest

from pipelines.core.settings import Settings
from pipelines.monitoring.notifications import failed_expectations, failure_email, monitoring_email
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
    "retrain": {"requested": True, "reasons": ["9 of 31 features drifted (share 0.29 over 0.25)"]},
}
NO_DRIFT: dict[str, Any] = {
    "date": "2013-04-02", "drift_detected": False, "drift_share": 0.0323,
    "drifted_features": [{"feature": "temp", "score": 0.31, "drifted": True},
                         {"feature": "wind_speed", "score": 0.02, "drifted": False}],
    "feature_count": 31,
    "prediction_drift": {"score": 0.01, "drifted": False},
    "quality": {"labelled_flights": 812, "roc_auc": 0.70, "training_roc_auc": 0.71, "brier": 0.18,
                "training_brier": 0.17},
    "traffic": {"predictions": 1000, "flights": 950},
    "retrain": {"requested": False, "reasons": []},
}


def _text(markup: str) -> str:
    """The body as a person reads it: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", markup))


@pytest.fixture
def report(tmp_path: Path) -> Path:
    path = tmp_path / "drift_report_2013-07-15.html"
    path.write_text("<html><body>" + "x" * 5000 + "</body></html>")
    return path


def test_drift_subject_says_how_many_features_drifted_and_that_retraining_was_requested(
    settings: Settings, report: Path
) -> None:
    parts = monitoring_email(DRIFT, [report], ["owner@example.com"], settings)

    assert parts.subject == ("[flight_delay] DRIFT on 2013-07-15: 9 of 31 features drifted, predictions drifted, "
                             "retraining requested")


def test_no_drift_subject(settings: Settings) -> None:
    parts = monitoring_email(NO_DRIFT, [], ["o@example.com"], settings)

    assert parts.subject == "[flight_delay] no drift on 2013-04-02"
    assert "1 of 31" in _text(parts.html)  # feature_count: the list holds only some of the features


def test_drift_without_retraining_says_so(settings: Settings) -> None:
    summary = copy.deepcopy(DRIFT) | {"retrain": {"requested": False, "reasons": ["cooldown: retrained 2013-07-13"]}}
    summary["prediction_drift"] = {"score": 0.01, "drifted": False}

    parts = monitoring_email(summary, [], ["o@example.com"], settings)

    assert parts.subject == "[flight_delay] DRIFT on 2013-07-15: 9 of 31 features drifted, no retraining"
    assert "cooldown: retrained 2013-07-13" in _text(parts.html)


def test_body_has_drift_share_top_features_quality_against_training_and_traffic(
    settings: Settings, report: Path
) -> None:
    body = _text(monitoring_email(DRIFT, [report], ["o@example.com"], settings).html)

    assert "drift share 29.0%" in " ".join(body.split())
    assert "9 of 31" in body
    # the ten most drifted, highest score first; the least drifted are left to the report
    assert body.index("feature_30") < body.index("feature_29") < body.index("feature_22") < body.index("feature_21")
    assert "feature_20" not in body
    assert "0.350" in body  # feature_30's score
    for number in ("812", "0.643", "0.710", "-0.067", "0.188", "0.170", "+0.017", "1,000", "950", "0.210"):
        assert number in body, number
    assert "Requested" in body and "share 0.29 over 0.25" in body


def test_report_within_the_cap_is_attached(settings: Settings, report: Path) -> None:
    parts = monitoring_email(DRIFT, [report], ["o@example.com"], settings)

    assert parts.attachments == [report]
    assert parts.not_attached == []
    assert f"attached: {report.name}" in _text(parts.html)


def test_report_over_the_cap_is_named_by_its_path_instead(settings: Settings, report: Path) -> None:
    small = settings.model_copy(update={"email_attachment_max_bytes": 1000})

    parts = monitoring_email(DRIFT, [report], ["o@example.com"], small)

    assert parts.attachments == []
    body = _text(parts.html)
    assert str(report) in body and "over the 1.0 KiB attachment cap" in body


def test_the_cap_holds_for_all_attachments_together(settings: Settings, tmp_path: Path) -> None:
    first, second = tmp_path / "report.html", tmp_path / "report.json"
    first.write_bytes(b"a" * 600)
    second.write_bytes(b"b" * 600)
    capped = settings.model_copy(update={"email_attachment_max_bytes": 1000})

    parts = monitoring_email(DRIFT, [first, str(second)], ["o@example.com"], capped)

    assert parts.attachments == [first]
    assert [entry.startswith(str(second)) for entry in parts.not_attached] == [True]


def test_remote_report_is_linked_not_attached(settings: Settings) -> None:
    parts = monitoring_email(DRIFT, ["s3://lake/reports/drift_2013-07-15.html"], ["o@example.com"], settings)

    assert parts.attachments == []
    assert "s3://lake/reports/drift_2013-07-15.html (not attached: not a local file)" in _text(parts.html)


def test_missing_optional_parts_are_tolerated(settings: Settings) -> None:
    parts = monitoring_email({"date": "2013-04-03", "drift_detected": False}, [], None, settings)

    assert parts.subject == "[flight_delay] no drift on 2013-04-03"
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
    }

    parts = monitoring_email(summary, [], None, settings)

    assert parts.subject == "[flight_delay] DRIFT on 2013-07-15: 2 of 8 features drifted, no retraining"
    body = _text(parts.html)
    assert body.index("wind_speed") < body.index("temp") < body.index("dewp")  # score relative to threshold
    assert "psi score 0.050, threshold 0.100" in body
    assert "wind_gust: no values in the day's traffic" in body
    assert "labelled flights: 40" in body and "v3: 1,200" in body


def test_drift_not_measured_without_traffic(settings: Settings) -> None:
    summary = {"date": "2013-07-16", "drift_detected": False, "drift_share": None, "drifted_count": 0,
               "tested_features": 0, "drifted_features": [], "prediction_drift": None, "quality": None,
               "traffic": {"predictions": 0, "flights": 0}, "retrain": {"requested": False, "reasons": []}}

    parts = monitoring_email(summary, [], None, settings)

    assert parts.subject == "[flight_delay] drift not measured on 2013-07-16"
    assert "not measured" in _text(parts.html)


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
    parts = failure_email("flights_ingest", "check_quarantine", "2013-12-31T00:00:00+00:00", error,
                          failed_expectations(error), run_id="manual__2013-12-31", try_number=1,
                          log_url="http://localhost:8080/dags/flights_ingest/runs/x/tasks/check_quarantine")

    assert parts.subject == ("[flight_delay] FAILED flights_ingest.check_quarantine on 2013-12-31: 3 critical "
                             "expectations failed")
    body = _text(parts.html)
    for text in ("flights_ingest", "check_quarantine", "2013-12-31T00:00:00+00:00", "manual__2013-12-31",
                 "QuarantineError: 2 partition(s) quarantined", "Failed critical expectations",
                 "weather 2013-12-31: expect_table_row_count_to_be_between"):
        assert text in body, text
    assert parts.to == settings.owners


def test_failure_without_expectations_and_markup_in_the_error_is_escaped(settings: Settings) -> None:
    parts = failure_email("flight_features", "materialize_features", None,
                          ConnectionError("<b>redis</b> {{ down }}"), None)

    assert parts.subject == "[flight_delay] FAILED flight_features.materialize_features on no date"
    assert "&lt;b&gt;redis&lt;/b&gt; {{ down }}" in parts.html
    assert "Failed critical expectations" not in parts.html
