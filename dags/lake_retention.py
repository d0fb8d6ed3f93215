"""
### lake_retention: what the pipeline can regenerate, pruned once it is older than its age

One run per New York day, when the day has ended (midnight America/New_York; the run's data interval is the day),
one run at a time. No catchup: unpausing must not start a run for every day since 2013, and pruning for the
latest day prunes everything an earlier day's run would have; a stretch of days is a backfill. A manual run
prunes for its **day** param, else the New York date of its **Logical date**; a day the feed does not hold (the
form's default, now, is past 2013, and would make all of 2013 old) is refused with the feed's dates, and skipped
on schedule.

1. `prune_lake` (`pipelines/ops/retention.py`): ages in days on the data's clock, from the run's day back to the
   date each object belongs to (`RETENTION_*_DAYS`, 400 by default):
   prediction logs (`predictions/`, kept in `labels/` joined with outcomes), Evidently's report HTML and JSON
   (`reports/monitoring/`; each day's `summary.json` stays), Data Docs with the GX results they are rendered from
   (`$PIPELINE_HOME/gx/`; each verdict in the lake keeps its GX result) and Airflow task logs. Nothing else is
   ever touched. With **dry_run** it only lists what it would delete. Returns per kind the cutoff (first date
   kept), objects and bytes removed. A retry deletes what is left and fails on nothing already gone.
"""

from __future__ import annotations

from datetime import date, timedelta

from _notifiers import notify_owners_on_failure
from _refusals import refuse
from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task, timezone

from pipelines.core.dates import LOCAL_TZ


@dag(
    dag_id="lake_retention",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone=LOCAL_TZ),
    start_date=timezone.parse("2013-01-01", timezone=LOCAL_TZ),
    # No end date (a manual run dated after it would be marked successful without running a task): the feed's own
    # dates decide. No catchup: the run of the latest day prunes all an earlier day's run would.
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "data-platform", "retries": 2, "retry_delay": timedelta(minutes=1),
                  "execution_timeout": timedelta(minutes=30),  # a hung listing fails and is retried
                  "on_failure_callback": notify_owners_on_failure},
    tags=["operations", "retention", "lake"],
    params={
        "day": Param(None, type=["null", "string"], format="date", title="Day",
                     description="The day to measure ages from (YYYY-MM-DD). Empty: the run's logical date."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Only list what would be deleted (objects, bytes, cutoffs); delete nothing."),
    },
)
def lake_retention() -> None:
    @task
    def prune_lake() -> dict:
        from pipelines.core.runs import run_day
        from pipelines.ops.retention import prune_lake
        from pipelines.simulation.feed import FeedUnavailable, check_feed_days

        context = get_current_context()
        params = context["params"]
        day = date.fromisoformat(params["day"]) if params["day"] else run_day(context)
        try:
            check_feed_days([day])
        except FeedUnavailable as error:
            refuse(context, error)
        return prune_lake(day, dry_run=bool(params["dry_run"]))

    prune_lake()


lake_retention()
