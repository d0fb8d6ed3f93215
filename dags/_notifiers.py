"""Owner emails through Airflow's SMTP connection (``smtp_default``), for the DAG files. Not a DAG file:
``.airflowignore`` keeps the dag-processor from parsing it; DAG files import it (Airflow puts the DAG folder on
``sys.path``).

* ``notify_owners_on_failure``: every DAG's ``on_failure_callback`` (in ``default_args``). Airflow calls it when a
  task fails for good (after its last retry; a retry calls ``on_retry_callback``, not this), in the process that
  ran the task. The owners get DAG, task, date, error and, for a critical validation failure, the failed
  expectations.
* ``send_monitoring_email``: what the monitoring DAG's last task calls with the run's summary and reports.
* ``send_year_report_email``: what ``flight_delay_year_report`` calls once the year report is in the lake.

The messages are composed by ``pipelines.monitoring.notifications``; the owners and the sender come from the settings
(``MODEL_OWNERS``, ``MAIL_FROM``). Everything is imported inside the functions: DAG files stay cheap to parse.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
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


def notify_owners_on_failure(context: Mapping[str, Any]) -> None:
    """``on_failure_callback``: email the owners that a task failed for good."""
    from pipelines.monitoring.notifications import failed_expectations, failure_email

    ti = context["ti"]
    error = context.get("exception")
    dag_run = context.get("dag_run")
    when = context.get("logical_date") or (dag_run.run_after if dag_run is not None else None)
    parts = failure_email(ti.dag_id, ti.task_id, when, error, failed_expectations(error), run_id=ti.run_id,
                          try_number=ti.try_number, log_url=getattr(ti, "log_url", None))
    send_email(parts)


def send_monitoring_email(summary: Mapping[str, Any], report_paths: Iterable[str | Path],
                          conn_id: str = SMTP_CONN_ID) -> dict[str, Any]:
    """Email the model's owners the monitoring run's summary: a first line that says whether anything needs them,
    the last 30 days as a chart shown inline (a PNG drawn into a temporary folder, attached, referenced by its
    Content-ID), the figures, and where the full report is (named, never attached: it is ~8 MB). Without a chart
    (the history unreadable) the email still goes. Returns what was sent (recipients, subject, attachments,
    reports), small enough for XCom."""
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
        return send_email(monitoring_email(summary, report_paths, settings.owners, settings, chart=chart), conn_id)


def send_year_report_email(report: Mapping[str, Any], conn_id: str = SMTP_CONN_ID) -> dict[str, Any]:
    """Email the owners the year report: ``report`` names it (its ``first`` and ``last`` days: the build task's
    return, small for XCom); the stored summary is read back from the lake and its main chart copied into a
    temporary folder, attached and shown inline. Returns what was sent."""
    import tempfile
    from datetime import date

    from pipelines.core.settings import get_settings
    from pipelines.monitoring.notifications import year_report_email
    from pipelines.monitoring.year_report import read_year_report, write_main_chart

    settings = get_settings()
    stored = read_year_report(date.fromisoformat(str(report["first"])), date.fromisoformat(str(report["last"])),
                              settings)
    with tempfile.TemporaryDirectory(prefix="year-report-email-") as folder:
        chart = write_main_chart(stored, Path(folder), settings)
        return send_email(year_report_email(stored, settings, chart=chart), conn_id)
