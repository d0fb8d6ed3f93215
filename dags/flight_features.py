"""
### flight_features: feature tables and the online store, for the days that were just validated

Runs whenever `flights_ingest` announces newly validated flight partitions (the Asset `validated_flights`; the
event's extra lists the dates), or by hand with **start_date** / **end_date**.

1. `build_features`: from `validated/`, write each day's feature tables to `features/` (weather by origin and
   hour, schedule congestion, trailing carrier and route statistics, plane attributes, and the day's operations
   state from its departures, which replaces the files its pushes left), replacing that day's partitions.
2. `materialize_features`: apply `feature_repo/` and materialize exactly the run's event-time window (with an
   overlap for late data) into the online store, never "up to now"; in the pool `online_store`, never beside a
   monitoring run's replay. Feature service: `flight_delay_v1`. The
   operations views are not materialized: they reach the online store by push, as their events happen.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from _assets import ONLINE_FEATURES, VALIDATED_FLIGHTS
from _notifiers import notify_owners_on_failure
from airflow.sdk import Param, dag, get_current_context, task

from pipelines.core.names import ONLINE_STORE_POOL


@dag(
    dag_id="flight_features",
    doc_md=__doc__,
    schedule=[VALIDATED_FLIGHTS],
    start_date=datetime(2013, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "ml-platform", "retries": 2, "retry_delay": timedelta(minutes=1),
                  "execution_timeout": timedelta(hours=1),  # a hung task fails and is retried
                  "on_failure_callback": notify_owners_on_failure},
    tags=["features", "feast", "flights"],
    params={
        "start_date": Param(None, type=["null", "string"], format="date", title="Start date",
                            description="First day of a manual window (YYYY-MM-DD). Empty: the announced days."),
        "end_date": Param(None, type=["null", "string"], format="date", title="End date",
                          description="Last day of a manual window, inclusive. Empty: same as start date."),
    },
)
def flight_features() -> None:
    @task
    def build_features() -> dict:
        from pipelines.core.runs import partition_window
        from pipelines.features.steps import build_features

        return build_features(partition_window(get_current_context()))

    @task(outlets=[ONLINE_FEATURES], pool=ONLINE_STORE_POOL)
    def materialize_features() -> dict:
        from pipelines.core.runs import partition_window
        from pipelines.features.store import materialize_features

        return materialize_features(partition_window(get_current_context()))

    build_features() >> materialize_features()


flight_features()
