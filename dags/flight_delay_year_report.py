"""
### flight_delay_year_report: a stretch of production in one report, kept in the lake and emailed to the owners

Manual only (no schedule): `make year` triggers it when the year is done, or trigger it by hand for any
**start_date** .. **end_date** (default: the production year, 2013-04-01 .. 2013-12-31). It reads only what the
runs left behind, so it can be built again at any time.

1. `build_year_report`: from the lake: flights served per day against the feed and the quarantined days (a
   quarantined day whose re-landed feed validated shows as re-run); the drift share per day against its
   threshold; every training the gate judged (`models/{run}/promotion.json`) with its trigger (weekly schedule,
   drift or quality request, manual), the gate's decision, reasons and bootstrap interval, and its deployments;
   ROC AUC and Brier score per ISO week on matured labels of the live model beside the frozen first champion scored
   on the same served features; and the backtest's table of what retraining is worth (`reports/backtest/`, from
   `python -m pipelines backtest`). `report.html` (self-contained), one PNG per chart and `summary.json` go to
   `reports/year/{start_date}_{end_date}/`.
2. `email_year_report`: the owners get the headline figures, the main chart inline and where the report is
   (named, not attached), through the SMTP connection.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from _notifiers import notify_owners_on_failure, send_year_report_email
from airflow.sdk import Param, dag, get_current_context, task


@dag(
    dag_id="flight_delay_year_report",
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2013, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(minutes=1),
                  "execution_timeout": timedelta(hours=1),  # a hung task fails and is retried
                  "on_failure_callback": notify_owners_on_failure},
    tags=["monitoring", "report", "year"],
    params={
        "start_date": Param("2013-04-01", type="string", format="date", title="Start date",
                            description="First day of the report (YYYY-MM-DD): the first production day."),
        "end_date": Param("2013-12-31", type="string", format="date", title="End date",
                          description="Last day of the report, inclusive (YYYY-MM-DD)."),
    },
)
def flight_delay_year_report() -> None:
    @task
    def build_year_report() -> dict:
        from pipelines.core.runs import partition_window
        from pipelines.monitoring.year_report import build_year_report

        days = partition_window(get_current_context())
        report = build_year_report(days[0], days[-1])
        return {key: report[key] for key in ("first", "last", "headline", "paths")}

    @task
    def email_year_report(report: dict) -> dict:
        return send_year_report_email(report)

    email_year_report(build_year_report())


flight_delay_year_report()
