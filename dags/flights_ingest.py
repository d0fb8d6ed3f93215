"""
### flights_ingest: the daily flight and weather feed, landed, typed and validated

One run per New York day, when the day has ended (midnight America/New_York; the run's data interval is the day).
The simulated airline feed holds 2013: no catchup, replay a stretch of it as a backfill (the UI's *Backfill*,
`airflow backfill create`, or `make year`). A manual trigger handles the New York date of its **Logical date**, or
the window **start_date** .. **end_date**; a day the feed does not hold (the form's default, now, is past 2013) is
refused with the feed's dates, and a scheduled run past 2013 skips, saying so.

One run at a time works on a day: `land_feed` takes the lease of each of the run's days (`leases/flights_ingest/`
in the lake; a second run of the same day waits for it, `DAY_LEASE_WAIT_S` or 15 minutes, then fails naming the
holder), the tasks after it check they still hold them, and `promote_partitions` gives them back (a run that died:
they expire in 2 h).

1. `land_feed`: the source drops the day's flights and weather CSVs into `landing/` (as an airline feed would); a
   day whose files already arrived keeps them (a broken delivery stays until the source re-lands it).
2. `ingest_feed`: landing CSV -> typed Parquet in `raw/` (atomic overwrite; unreadable fields are flagged, never lost).
3. `validate_partitions`: Great Expectations checkpoints `flights` and `weather`; Data Docs rebuilt.
4. `promote_partitions`: passing and warned partitions -> `validated/`, announced as events of the Assets
   `validated_flights` / `validated_weather` (extra: the dates) when that table got any;
   any critical failure -> `quarantine/` with the validation result, and `validated/` keeps what it had.
5. `check_quarantine`: fails the run, naming every failed expectation and its counts, when anything was quarantined.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from _assets import VALIDATED_PARTITIONS, VALIDATED_TABLES
from _notifiers import notify_owners_on_failure
from _refusals import refuse
from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task, timezone

from pipelines.core.dates import LOCAL_TZ

INGEST_LEASE = "flights_ingest"


@dag(
    dag_id="flights_ingest",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone=LOCAL_TZ),
    start_date=timezone.parse("2013-01-01", timezone=LOCAL_TZ),
    # No end date: Airflow would mark a manual run dated after it successful without running a task; the feed's
    # own dates decide instead (land_feed). No catchup: unpausing (the UI's trigger form does) must not start a run
    # for every day since 2013; a replay of the year is an explicit backfill.
    catchup=False,
    max_active_runs=2,
    default_args={"owner": "data-platform", "retries": 2, "retry_delay": timedelta(minutes=1),
                  # A hung task fails and is retried rather than holding its slot: a whole year by hand validates
                  # in about 12 minutes on 2 cores.
                  "execution_timeout": timedelta(hours=1),
                  "on_failure_callback": notify_owners_on_failure},
    tags=["ingestion", "validation", "flights"],
    params={
        "start_date": Param(None, type=["null", "string"], format="date", title="Start date",
                            description="First partition of a manual window (YYYY-MM-DD). Empty: the logical date."),
        "end_date": Param(None, type=["null", "string"], format="date", title="End date",
                          description="Last partition of a manual window, inclusive. Empty: same as start date."),
    },
)
def flights_ingest() -> None:
    def hold_days(context: Any, *, take: bool = False, give_back: bool = False) -> None:
        """One run at a time works on a day (pipelines.core.leases): the first task takes the run's days, waiting
        while another run holds them; the next check they still hold them; promotion gives them back."""
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines.core.lake import settings_and_lake
        from pipelines.core.leases import DayLeased, acquire_days, check_days, release_days
        from pipelines.core.runs import partition_window, run_key

        settings, lake = settings_and_lake()
        days, holder = partition_window(context), run_key(context)
        try:
            if take:
                acquire_days(lake, INGEST_LEASE, days, holder, wait_s=settings.day_lease_wait_s)
            elif give_back:
                release_days(lake, INGEST_LEASE, days, holder)
            else:
                check_days(lake, INGEST_LEASE, days, holder)
        except DayLeased as error:  # it waited its turn already: a retry would only wait again
            raise AirflowFailException(str(error)) from error

    @task
    def land_feed() -> dict:
        from pipelines.core.runs import partition_window
        from pipelines.simulation.feed import FeedUnavailable, land_feed

        context = get_current_context()
        hold_days(context, take=True)
        try:
            return land_feed(partition_window(context), keep_landed=True)
        except FeedUnavailable as error:
            hold_days(context, give_back=True)
            refuse(context, error)

    @task
    def ingest_feed() -> dict:
        from pipelines.core.runs import partition_window
        from pipelines.ingest.steps import ingest_feed

        context = get_current_context()
        hold_days(context)
        return ingest_feed(partition_window(context))

    @task
    def validate_partitions() -> dict:
        from pipelines.core.runs import partition_window, run_key
        from pipelines.validation.steps import validate_partitions

        context = get_current_context()
        hold_days(context)
        return validate_partitions(partition_window(context), run_key=run_key(context))

    # Events go out through the alias so an asset gets one only when partitions of it were promoted: a day whose
    # weather was quarantined must not trigger consumers of validated weather.
    @task(outlets=[VALIDATED_PARTITIONS])
    def promote_partitions() -> dict:
        from pipelines.core.runs import partition_window, run_key
        from pipelines.validation.steps import promote_partitions

        context = get_current_context()
        hold_days(context)
        result = promote_partitions(partition_window(context))
        hold_days(context, give_back=True)
        for table, dates in result["validated_dates"].items():
            if dates:
                context["outlet_events"][VALIDATED_PARTITIONS].add(
                    VALIDATED_TABLES[table], extra={"dates": dates, "run_key": run_key(context)})
        return result

    @task(retries=0)
    def check_quarantine(promotion: dict) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines.validation.steps import QuarantineError, check_quarantine

        try:
            check_quarantine(promotion)
        except QuarantineError as error:  # data, not infrastructure: retrying cannot help
            raise AirflowFailException(str(error)) from error

    landed = land_feed()
    ingested = ingest_feed()
    validated = validate_partitions()
    promoted = promote_partitions()
    landed >> ingested >> validated >> promoted
    check_quarantine(promoted)


flights_ingest()
