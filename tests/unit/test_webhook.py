"""The second alert path (pipelines.monitoring.webhook) against a real receiver on 127.0.0.1 (tests.helpers.alerts):
the Slack JSON it posts, the retry on a 5xx, a timeout or a refused connection (and none on a 4xx or a redirect),
the timeout from the settings, the refusal of a URL that is not http(s), and the text of each alert."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from pipelines.core.processes import free_port
from pipelines.core.settings import Settings, get_settings
from pipelines.monitoring.notifications import monitoring_subject
from pipelines.monitoring.webhook import (
    WebhookError,
    failure_alert,
    monitoring_alert,
    post_alert,
    post_webhook,
    year_report_alert,
)
from tests.helpers.alerts import Answer, webhook_receiver

FAST = {"backoff_s": 0.01}


def test_posts_slack_json_and_says_what_it_did_without_the_url() -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hello*"}}]
    with webhook_receiver() as receiver:
        sent = post_webhook(receiver.url, "*hello* from the pipeline", blocks=blocks)

    assert sent == {"host": "127.0.0.1", "status": 200, "tries": 1}
    (post,) = receiver.posts
    assert post.path == "/services/T000/B000/secret"
    assert post.headers["Content-Type"] == "application/json; charset=utf-8"
    assert post.json == {"text": "*hello* from the pipeline", "blocks": blocks}
    assert "secret" not in str(sent)


def test_a_500_is_tried_again_then_it_goes() -> None:
    with webhook_receiver(Answer(500, b"internal error")) as receiver:
        sent = post_webhook(receiver.url, "alert", **FAST)

    assert sent["tries"] == 2 and sent["status"] == 200
    assert receiver.texts() == ["alert", "alert"]


def test_three_5xx_are_three_tries_then_an_error_naming_the_last() -> None:
    with webhook_receiver(*[Answer(503, b"over capacity")] * 3) as receiver:
        with pytest.raises(WebhookError, match=r"failed 3 tries; the last: HTTP 503 .*over capacity"):
            post_webhook(receiver.url, "alert", **FAST)

    assert len(receiver.posts) == 3


@pytest.mark.parametrize("answer", [Answer(400, b"invalid_payload"), Answer(404, b"no_service"),
                                    Answer(302, b"", headers={"Location": "http://127.0.0.1:1/elsewhere"})],
                         ids=["400", "404", "redirect"])
def test_a_4xx_or_a_redirect_fails_at_once(answer: Answer) -> None:
    """The URL or the payload is wrong: trying again changes nothing. A redirect is not followed (urllib would
    re-send the POST as a GET and call the alert delivered)."""
    with webhook_receiver(answer) as receiver:
        with pytest.raises(WebhookError, match=f"did not take the alert: HTTP {answer.status}"):
            post_webhook(receiver.url, "alert", **FAST)

    assert len(receiver.posts) == 1


def test_a_refused_connection_is_tried_three_times() -> None:
    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there

    started = time.monotonic()
    with pytest.raises(WebhookError, match="failed 3 tries; the last: ConnectionRefusedError"):
        post_webhook(down, "alert", **FAST)
    assert time.monotonic() - started < 2


def test_the_timeout_from_the_settings_bounds_each_try(monkeypatch: pytest.MonkeyPatch, home: object) -> None:
    """A receiver that answers the first post after 3 s: with ALERT_WEBHOOK_TIMEOUT_S=0.3 that try gives up at 0.3 s
    and the second (after the 0.5 s backoff) goes."""
    with webhook_receiver(Answer(delay_s=3.0)) as receiver:
        monkeypatch.setenv("ALERT_WEBHOOK_URL", receiver.url)
        monkeypatch.setenv("ALERT_WEBHOOK_TIMEOUT_S", "0.3")
        started = time.monotonic()
        sent = post_alert("alert")
        elapsed = time.monotonic() - started

    assert sent == {"host": "127.0.0.1", "status": 200, "tries": 2}
    assert 0.7 < elapsed < 2.5, elapsed
    assert receiver.texts() == ["alert", "alert"]


def test_a_timeout_on_the_last_try_is_an_error() -> None:
    with webhook_receiver(Answer(delay_s=2.0)) as receiver:
        started = time.monotonic()
        with pytest.raises(WebhookError, match="failed 1 tries; the last: .*timed out"):
            post_webhook(receiver.url, "alert", timeout_s=0.2, tries=1)
        assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/hook", "hooks.slack.com/services/T/B/x",
                                 "http:///no-host"])
def test_a_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="must be http:// or https:// with a host"):
        post_webhook(url, "alert")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/hook", "hooks.slack.com/services/T/B/x"])
def test_the_setting_refuses_a_url_that_is_not_http(monkeypatch: pytest.MonkeyPatch, home: object, url: str) -> None:
    monkeypatch.setenv("ALERT_WEBHOOK_URL", url)

    with pytest.raises(ValidationError, match="ALERT_WEBHOOK_URL must be an http:// or https:// URL"):
        get_settings()


def test_the_setting_is_a_secret_and_empty_means_none(monkeypatch: pytest.MonkeyPatch, home: object) -> None:
    assert get_settings().alert_webhook_url is None
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "")
    assert get_settings().alert_webhook_url is None
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/Zq8sEcReT ")
    settings = get_settings()
    assert settings.alert_webhook_url is not None
    assert settings.alert_webhook_url.get_secret_value() == "https://hooks.slack.com/services/T/B/Zq8sEcReT"
    assert "Zq8sEcReT" not in repr(settings)
    assert settings.alert_webhook_timeout_s == 5.0


def test_without_a_webhook_nothing_is_posted(settings: Settings) -> None:
    assert post_alert("alert", settings) is None


# The text: what the email says, in Slack's mrkdwn


def test_failure_alert_has_dag_task_date_error_attempt_expectations_and_log() -> None:
    expectations = [f"weather 2013-12-31: expect_{i} <observed 0>" for i in range(12)]
    text = failure_alert("flights_ingest", "check_quarantine", datetime(2013, 12, 31, 5, tzinfo=UTC),
                         ValueError("1 partition(s) quarantined & <b>"), expectations,
                         run_id="scheduled__2013-12-31", try_number=2, log_url="http://airflow/log?try_number=2")

    lines = text.splitlines()
    assert lines[0] == ("*[flight_delay] FAILED flights_ingest.check_quarantine on 2013-12-31: 12 critical "
                        "expectations failed*")
    assert lines[1] == ("DAG: flights_ingest · task: check_quarantine · date: 2013-12-31 00:00 EST "
                        "(2013-12-31T05:00:00+00:00) · run: scheduled__2013-12-31 · attempt: 2")
    assert "```ValueError: 1 partition(s) quarantined &amp; &lt;b&gt;```" in text  # escaped as Slack asks
    assert "• weather 2013-12-31: expect_9 &lt;observed 0&gt;" in lines
    assert "expect_10" not in text and "• and 2 more (in the email)" in lines
    assert lines[-1] == "Log: <http://airflow/log?try_number=2>"


def test_failure_alert_without_an_exception_says_why() -> None:
    text = failure_alert("flight_delay_training", "train_final_model", None, None)

    assert text.startswith("*[flight_delay] FAILED flight_delay_training.train_final_model on no date*")
    assert "no exception was recorded (the task was killed, or timed out)" in text


def test_monitoring_alert_is_the_emails_first_line_and_where_the_report_is() -> None:
    summary = {"date": "2013-07-15", "drift_detected": True, "drift_share": 0.29, "drifted_count": 9,
               "feature_count": 31, "traffic": {"predictions": 1000, "flights": 950},
               "retrain": {"requested": True, "reasons": []}}
    reports = ["s3://lake/reports/monitoring/date=2013-07-15/report.html",
               "s3://lake/reports/monitoring/date=2013-07-15/summary.json"]

    lines = monitoring_alert(summary, reports).splitlines()

    assert lines[0] == f"*{monitoring_subject(summary)}*"
    assert lines[0].startswith("*[flight_delay] 2013-07-15 Action needed: drift on 9 of 31 features")
    assert lines[-2:] == [f"• `{location}`" for location in reports]


def test_year_report_alert_has_its_headline_and_where_it_is() -> None:
    report = {"first": "2013-04-01", "last": "2013-12-31", "headline": "275 days, 3 promotions",
              "paths": {"html": "s3://lake/reports/year/report.html", "summary": "s3://lake/reports/year/s.json"}}

    assert year_report_alert(report).splitlines() == [
        "*[flight_delay] year report 2013-04-01 .. 2013-12-31: 275 days, 3 promotions*", "Report (in the lake):",
        "• `s3://lake/reports/year/report.html`", "• `s3://lake/reports/year/s.json`"]
