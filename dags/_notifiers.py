"""Owner alerts, down two paths each on its own: email through Airflow's SMTP connection (``smtp_default``) and,
when ``ALERT_WEBHOOK_URL`` is set, a chat message to that webhook (Slack's JSON; ``pipelines.monitoring.webhook``),
so an SMTP outage does not silence a failure. Not a DAG file: ``.airflowignore`` keeps the dag-processor from
parsing it; DAG files import it (Airflow puts the DAG folder on ``sys.path``).

* ``notify_owners_on_failure``: every DAG's ``on_failure_callback`` (in ``default_args``). Airflow calls it when a
  task fails for good (after its last retry; a retry calls ``on_retry_callback``, not this), in the process that
  ran the task. The owners get DAG, task, date, error, attempt, the log's URL and, for a critical validation
  failure, the failed expectations.
* ``send_monitoring_email``: what the monitoring DAG's last task calls with the run's summary and reports; the
  webhook gets the first line (whether anything needs a person) and where the report is.
* ``send_year_report_email``: what ``flight_delay_year_report`` calls once the year report is in the lake; the
  webhook gets its headline and where it is.

Each alert is composed and sent once per path, the webhook first (seconds: 5 s timeout, 3 tries; SMTP may take
30 s to time out). A path that fails is logged with its traceback and the other still goes; the alert fails (the
callback raises, so Airflow logs it; the task fails) only when no path delivered it: both failed, or email failed
with no webhook set. What was sent is returned with ``delivered`` and ``failed`` (path: error) beside it.

The messages are composed by ``pipelines.monitoring.notifications`` and ``pipelines.monitoring.webhook``; the
owners, the sender and the webhook come from the settings (``MODEL_OWNERS``, ``MAIL_FROM``, ``ALERT_WEBHOOK_URL``).
Everything is imported inside the functions: DAG files stay cheap to parse.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.monitoring.notifications import EmailParts

log = logging.getLogger(__name__)

SMTP_CONN_ID = "smtp_default"


def send_email(parts: EmailParts, conn_id: str = SMTP_CONN_ID) -> dict[str, Any]:
    """Send composed parts with the SMTP provider's hook over the connection ``conn_id``."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id=conn_id) as hook:
        hook.send_email_smtp(to=parts.to, from_email=parts.mail_from, subject=parts.subject, html_content=parts.html,
                             files=[str(path) for path in parts.attachments] or None)
    log.info("emailed %s: %s", ", ".join(parts.to), parts.subject)
    return parts.describe()


def deliver(what: str, email: Callable[[], dict[str, Any]],
            webhook: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    """Send one alert down both paths, each on its own: ``webhook`` (None: no webhook set) then ``email``, each
    composing and sending its message. A failed path is logged with its traceback and the other still goes.
    Returns what the email sent (its ``describe()``; empty when it failed), ``webhook`` (what was posted, or
    None), ``delivered`` (the paths that went) and ``failed`` (path: error); raises when no path delivered: the
    one error, or both as an ``ExceptionGroup``."""
    results: dict[str, dict[str, Any] | None] = {}
    errors: dict[str, Exception] = {}
    for path, send in (("webhook", webhook), ("email", email)):
        try:
            results[path] = send()
        except Exception as error:
            log.exception("%s: the %s alert failed", what, path)
            errors[path] = error
    delivered = [path for path, result in results.items() if result is not None]
    if not delivered:
        if len(errors) == 1:
            raise next(iter(errors.values()))
        raise ExceptionGroup(f"{what}: no alert path delivered ({', '.join(errors)} failed)", list(errors.values()))
    return {**(results.get("email") or {}), "webhook": results.get("webhook"), "delivered": delivered,
            "failed": {path: f"{type(error).__name__}: {error}" for path, error in errors.items()}}


def notify_owners_on_failure(context: Mapping[str, Any]) -> None:
    """``on_failure_callback``: tell the owners that a task failed for good, by email and webhook."""
    from pipelines.monitoring.notifications import failed_expectations, failure_email
    from pipelines.monitoring.webhook import failure_alert, post_alert

    ti = context["ti"]
    error = context.get("exception")
    dag_run = context.get("dag_run")
    when = context.get("logical_date") or (dag_run.run_after if dag_run is not None else None)
    expectations = failed_expectations(error)
    facts: dict[str, Any] = {"run_id": ti.run_id, "try_number": ti.try_number,
                             "log_url": getattr(ti, "log_url", None)}
    deliver(f"failure of {ti.dag_id}.{ti.task_id}",
            email=lambda: send_email(failure_email(ti.dag_id, ti.task_id, when, error, expectations, **facts)),
            webhook=lambda: post_alert(failure_alert(ti.dag_id, ti.task_id, when, error, expectations, **facts)))


def send_monitoring_email(summary: Mapping[str, Any], report_paths: Iterable[str | Path],
                          conn_id: str = SMTP_CONN_ID) -> dict[str, Any]:
    """Email the model's owners the monitoring run's summary: a first line that says whether anything needs them,
    the last 30 days as a chart shown inline (a PNG drawn into a temporary folder, attached, referenced by its
    Content-ID), the figures, and where the full report is (named, never attached: it is ~8 MB). Without a chart
    (the history unreadable) the email still goes. The webhook gets the first line and where the report is. Returns
    what was sent (recipients, subject, attachments, reports, the paths that delivered), small enough for XCom."""
    from pipelines.monitoring.webhook import monitoring_alert, post_alert

    reports = [str(location) for location in report_paths]
    return deliver(f"monitoring email of {summary.get('date')}",
                   email=lambda: _monitoring_email(summary, reports, conn_id),
                   webhook=lambda: post_alert(monitoring_alert(summary, reports)))


def _monitoring_email(summary: Mapping[str, Any], reports: list[str], conn_id: str) -> dict[str, Any]:
    import tempfile

    from pipelines.core.settings import get_settings
    from pipelines.monitoring.daily_chart import write_history_chart
    from pipelines.monitoring.notifications import monitoring_email

    settings = get_settings()
    with tempfile.TemporaryDirectory(prefix="monitoring-email-") as folder:
        try:
            chart: Path | None = write_history_chart(summary, Path(folder), settings)
        except Exception:  # the figures matter more than the picture
            log.warning("monitoring email for %s goes without its chart", summary.get("date"), exc_info=True)
            chart = None
        return send_email(monitoring_email(summary, reports, settings.owners, settings, chart=chart), conn_id)


def send_year_report_email(report: Mapping[str, Any], conn_id: str = SMTP_CONN_ID) -> dict[str, Any]:
    """Email the owners the year report: ``report`` names it (its ``first`` and ``last`` days: the build task's
    return, small for XCom); the stored summary is read back from the lake and its main chart copied into a
    temporary folder, attached and shown inline. The webhook gets its headline and where it is. Returns what was
    sent."""
    from datetime import date

    from pipelines.core.settings import get_settings
    from pipelines.monitoring.webhook import post_alert, year_report_alert
    from pipelines.monitoring.year_report import read_year_report

    settings = get_settings()
    stored = read_year_report(date.fromisoformat(str(report["first"])), date.fromisoformat(str(report["last"])),
                              settings)
    return deliver(f"year report {report['first']} .. {report['last']}",
                   email=lambda: _year_report_email(stored, conn_id),
                   webhook=lambda: post_alert(year_report_alert(stored), settings))


def _year_report_email(stored: Mapping[str, Any], conn_id: str) -> dict[str, Any]:
    import tempfile

    from pipelines.core.settings import get_settings
    from pipelines.monitoring.notifications import year_report_email
    from pipelines.monitoring.year_report import write_main_chart

    settings = get_settings()
    with tempfile.TemporaryDirectory(prefix="year-report-email-") as folder:
        chart = write_main_chart(stored, Path(folder), settings)
        return send_email(year_report_email(stored, settings, chart=chart), conn_id)
