"""The owners' emails over real SMTP: the embedded mail server (pipelines.ops.mail_server) on a free port, Airflow's
SMTP provider sending through the ``smtp_default`` connection that pipelines.ops.airflow_config.airflow_env defines, and
assertions on the ``.eml`` files the server wrote. Then the second path beside it: the webhook alert
(ALERT_WEBHOOK_URL) to a real receiver on 127.0.0.1 (tests.helpers.alerts), each path going when the other is down.

Airflow is imported inside the tests, after AIRFLOW_HOME points into the test's home.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import smtplib
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from pipelines.core.processes import running
from pipelines.core.settings import PROJECT_ROOT, Settings, get_settings
from pipelines.ops.airflow_config import airflow_env
from pipelines.ops.mail_server import message_files, read_messages, start_mail_server, stop_mail_server
from tests.helpers.alerts import Answer, Receiver, failure_context, webhook_receiver

pytestmark = pytest.mark.integration

OWNERS = ["ml-owners@example.com", "oncall@example.com"]
SUMMARY: dict[str, Any] = {
    "date": "2013-07-15",
    "drift_detected": True,
    "drift_share": 0.2903,
    "drifted_features": [{"feature": "temp", "score": 0.4123, "drifted": True},
                         {"feature": "dewp", "score": 0.3311, "drifted": True},
                         {"feature": "wind_speed", "score": 0.05, "drifted": False}],
    "feature_count": 31, "drifted_count": 9,
    "prediction_drift": {"score": 0.18, "drifted": True},
    "quality": {"labelled_flights": 812, "roc_auc": 0.6432, "training_roc_auc": 0.7101, "brier": 0.1875,
                "training_brier": 0.1702},
    "traffic": {"predictions": 1000, "flights": 950},
    "retrain": {"requested": True, "triggers": ["data_drift"],
                "reasons": ["drift share 0.29 over the threshold 0.25"]},
}


@pytest.fixture
def smtp_env(home: Path, free_port: Callable[..., int], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The embedded Airflow environment (its smtp_default connection to a free port included) in this process, as a
    task would see it; no mail server yet: alone, this is an SMTP outage (nothing listens on the port)."""
    monkeypatch.setenv("SMTP_PORT", str(free_port()))
    monkeypatch.setenv("MODEL_OWNERS", ", ".join(OWNERS))
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    settings = get_settings()
    for name, value in airflow_env(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "dags"))  # as Airflow puts the DAG bundle on sys.path
    return settings


@pytest.fixture
def mail(smtp_env: Settings) -> Iterator[Settings]:
    """This home's mail server on the smtp_default connection's port."""
    start_mail_server(smtp_env)
    yield smtp_env
    stop_mail_server(smtp_env)


def _only_message(settings: Settings) -> EmailMessage:
    messages = read_messages(settings)
    assert len(messages) == 1, [m["Subject"] for m in messages]
    return messages[0]


def _html(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("html",))
    assert body is not None
    return str(body.get_content())


def _send_monitoring_email(report_paths: list[Any], summary: dict[str, Any] | None = None) -> dict[str, Any]:
    from _notifiers import send_monitoring_email

    return send_monitoring_email(summary or SUMMARY, report_paths)


def _lake_reports(settings: Settings, html_bytes: int) -> list[str]:
    """The day's report files in the lake as build_report leaves them (an HTML report of ``html_bytes``), and the
    summaries of the 20 days before it, for the chart; returns the day's report locations."""
    from pipelines.core.lake import REPORT_FILES, monitoring_report_key, open_lake

    lake = open_lake(settings)
    day = date.fromisoformat(SUMMARY["date"])
    for back in range(1, 21):
        earlier = copy.deepcopy(SUMMARY) | {"date": (day - timedelta(days=back)).isoformat(),
                                            "drift_share": 0.3 - 0.01 * back}
        lake.write_text(monitoring_report_key(day - timedelta(days=back), REPORT_FILES["summary"]), json.dumps(earlier))
    keys = {name: monitoring_report_key(day, file) for name, file in REPORT_FILES.items()}
    lake.write_bytes(keys["html"], b"<html><body>" + b"<p>drift</p>" * (html_bytes // 12) + b"</body></html>")
    lake.write_text(keys["json"], json.dumps({"metrics": []}))
    lake.write_text(keys["summary"], json.dumps(SUMMARY))
    return [lake.url(key) for key in keys.values()]


def test_monitoring_email_says_what_needs_you_shows_the_chart_inline_and_names_the_report(
    mail: Settings
) -> None:
    report_paths = _lake_reports(mail, html_bytes=8 * 1024 * 1024)
    assert Path(report_paths[0]).stat().st_size > 8_000_000  # an Evidently day report is about that size

    sent = _send_monitoring_email(report_paths)

    message = _only_message(mail)
    (eml,) = message_files(mail)
    assert eml.stat().st_size < 1_000_000, eml.stat().st_size  # the whole message, as the relay takes it
    headline = "Action needed: drift on 9 of 31 features, predictions drifted, retraining requested"
    assert message["Subject"] == f"[flight_delay] 2013-07-15 {headline}" == sent["subject"]
    assert [a.strip() for a in message["X-RcptTo"].split(",")] == OWNERS
    assert [a.strip() for a in message["To"].split(",")] == OWNERS
    assert message["From"] == mail.mail_from
    body = _html(message)
    assert re.split(r"\s{2,}", re.sub(r"<[^>]+>", " ", body).strip())[0] == headline  # the body's first text
    for number in ("29.0%", "9 of 31", "temp", "0.412", "0.331", "812", "0.643", "0.710", "-0.067", "0.188",
                   "0.170", "1,000", "950"):
        assert number in body, number
    for location in report_paths:  # named, in the lake
        assert location in body, location
    # nothing large attached: only the chart, a PNG whose Content-ID is what the HTML's <img> shows
    parts = list(message.iter_attachments())
    assert [part.get_filename() for part in parts] == ["monitoring_2013-07-15.png"] == sent["attachments"]
    (source,) = re.findall(r'<img src="cid:([^"]+)"', body)
    (image,) = [part for part in parts if part["Content-ID"] == f"<{source}>"]
    png = image.get_content()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(png) < 100_000
    assert struct.unpack(">II", png[16:24]) == (640, 360)


def test_without_its_chart_the_monitoring_email_still_goes(mail: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.monitoring import daily_chart

    def unreadable(*args: Any, **kwargs: Any) -> Path:
        raise ValueError("a summary in the lake is not JSON")

    monkeypatch.setattr(daily_chart, "write_history_chart", unreadable)

    _send_monitoring_email(["s3://lake/reports/monitoring/date=2013-07-15/report.html"])

    message = _only_message(mail)
    assert message["Subject"].startswith("[flight_delay] 2013-07-15 Action needed: drift on 9 of 31 features")
    assert list(message.iter_attachments()) == [] and "<img" not in _html(message)
    assert "s3://lake/reports/monitoring/date=2013-07-15/report.html" in _html(message)


def test_failure_email_with_failed_expectations(mail: Settings) -> None:
    from _notifiers import send_email

    from pipelines.monitoring.notifications import failure_email

    expectations = ["weather 2013-12-31: expect_table_row_count_to_be_between: observed 0 -- 60 to 80 rows"]
    send_email(failure_email("flights_ingest", "check_quarantine", "2013-12-31", "1 partition(s) quarantined",
                             expectations))

    message = _only_message(mail)
    assert message["Subject"] == ("[flight_delay] FAILED flights_ingest.check_quarantine on 2013-12-31: "
                                  "1 critical expectation failed")
    assert "expect_table_row_count_to_be_between: observed 0" in _html(message)


def test_messages_are_files_in_arrival_order_never_half_written(mail: Settings) -> None:
    with smtplib.SMTP(mail.smtp_host, mail.smtp_port, timeout=10) as client:
        for i in range(5):
            client.sendmail("a@example.com", ["b@example.com"], f"Subject: message {i}\r\n\r\nbody {i}\r\n")

    assert [m["Subject"] for m in read_messages(mail)] == [f"message {i}" for i in range(5)]
    assert sorted(p.name for p in mail.mail_folder.iterdir()) == [p.name for p in message_files(mail)]  # no temp


def test_start_is_idempotent_and_stop_stops(mail: Settings) -> None:
    first = running(mail, "mail")

    again = start_mail_server(mail)

    assert first is not None and again["pid"] == first["pid"] and again["started"] is False
    assert stop_mail_server(mail) is True
    with pytest.raises(OSError), socket.create_connection((mail.smtp_host, mail.smtp_port), timeout=2):
        pass


def test_a_port_held_by_another_program_is_refused(home: Path, free_port: Callable[..., int]) -> None:
    port = free_port()
    settings = Settings(pipeline_home=home, smtp_port=port)
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        with pytest.raises(RuntimeError, match="in use by another program"):
            start_mail_server(settings)
    assert running(settings, "mail") is None


def test_cli_lists_the_messages(mail: Settings) -> None:
    import subprocess

    with smtplib.SMTP(mail.smtp_host, mail.smtp_port, timeout=10) as client:
        client.sendmail("a@example.com", ["b@example.com"], "Subject: hello\r\n\r\nbody\r\n")
    result = subprocess.run([sys.executable, "-m", "pipelines", "mail"], capture_output=True, text=True,
                            timeout=60, cwd=PROJECT_ROOT)

    assert result.returncode == 0, result.stderr
    assert '"subject": "hello"' in result.stdout


# The second path: the webhook goes when SMTP is down, the email when the webhook is, and the alert fails only when
# neither went.


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A webhook receiver, set as ALERT_WEBHOOK_URL; it answers 200 unless a test scripts other answers."""
    with webhook_receiver() as receiver:
        monkeypatch.setenv("ALERT_WEBHOOK_URL", receiver.url)
        yield receiver


def _quarantine_error() -> Exception:
    return RuntimeError("1 partition(s) quarantined on critical expectations:\n"
                        "weather 2013-12-31 quarantined (critical expectations failed):\n"
                        "  - expect_table_row_count_to_be_between: observed 0 -- 60 to 80 rows")


FAILED = ("[flight_delay] FAILED flights_ingest.check_quarantine on 2013-12-31: 1 critical expectation failed")


def _failed_path(records: list[logging.LogRecord], path: str) -> logging.LogRecord:
    """The one record that says ``path`` failed, with its traceback."""
    (record,) = [r for r in records if f"the {path} alert failed" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    return record


def test_a_failure_goes_down_both_paths(mail: Settings, webhook: Receiver) -> None:
    from _notifiers import notify_owners_on_failure

    notify_owners_on_failure(failure_context(_quarantine_error()))

    assert _only_message(mail)["Subject"] == FAILED
    (text,) = webhook.texts()
    assert text.splitlines()[0] == f"*{FAILED}*"


def test_an_smtp_outage_does_not_silence_a_failure(smtp_env: Settings, webhook: Receiver,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listens on the SMTP port: the callback logs the email's failure with its traceback, posts the alert
    to the webhook and returns (the alert went)."""
    from _notifiers import notify_owners_on_failure

    context = failure_context(_quarantine_error())
    with caplog.at_level(logging.INFO):
        notify_owners_on_failure(context)

    (text,) = webhook.texts()
    for fact in (FAILED, "DAG: flights_ingest", "task: check_quarantine", "date: 2013-12-31 00:00 EST",
                 "attempt: 2", "RuntimeError: 1 partition(s) quarantined",
                 "weather 2013-12-31: expect_table_row_count_to_be_between: observed 0",
                 f"Log: <{context['ti'].log_url}>"):
        assert fact in text, fact
    assert isinstance(_failed_path(caplog.records, "email").exc_info[1], ConnectionRefusedError)  # type: ignore[index]
    assert read_messages(smtp_env) == []


def test_with_the_webhook_down_the_failure_email_still_goes(mail: Settings, webhook: Receiver,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """The webhook answers 503 three times (each try): the email goes, the webhook's failure is logged."""
    from _notifiers import notify_owners_on_failure

    webhook.answers += [Answer(503, b"over capacity")] * 3
    with caplog.at_level(logging.INFO):
        notify_owners_on_failure(failure_context(_quarantine_error()))

    assert _only_message(mail)["Subject"] == FAILED
    assert len(webhook.posts) == 3
    assert "HTTP 503" in str(_failed_path(caplog.records, "webhook").exc_info[1])  # type: ignore[index]


def test_with_both_paths_down_the_callback_raises_both(smtp_env: Settings, monkeypatch: pytest.MonkeyPatch,
                                                       free_port: Callable[..., int]) -> None:
    from _notifiers import notify_owners_on_failure

    from pipelines.monitoring.webhook import WebhookError

    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"http://127.0.0.1:{free_port()}/hook")  # nothing listens

    with pytest.raises(ExceptionGroup, match="no alert path delivered") as raised:
        notify_owners_on_failure(failure_context(_quarantine_error()))

    assert [type(error) for error in raised.value.exceptions] == [WebhookError, ConnectionRefusedError]


def test_without_a_webhook_an_smtp_outage_fails_the_callback(smtp_env: Settings) -> None:
    from _notifiers import notify_owners_on_failure

    with pytest.raises(ConnectionRefusedError):
        notify_owners_on_failure(failure_context(_quarantine_error()))


def test_in_an_smtp_outage_the_monitoring_alert_goes_to_the_webhook(smtp_env: Settings, webhook: Receiver) -> None:
    """What needs a person and where the report is reach the webhook; the task returns what went and what not."""
    location = "s3://lake/reports/monitoring/date=2013-07-15/report.html"

    sent = _send_monitoring_email([location])

    assert sent["delivered"] == ["webhook"] and sent["failed"]["email"].startswith("ConnectionRefusedError")
    assert sent["webhook"] == {"host": "127.0.0.1", "status": 200, "tries": 1}
    (text,) = webhook.texts()
    assert text.splitlines()[0] == ("*[flight_delay] 2013-07-15 Action needed: drift on 9 of 31 features, "
                                    "predictions drifted, retraining requested*")
    assert f"• `{location}`" in text.splitlines()
