"""The sensors the DAGs wait with. Not a DAG file: ``.airflowignore`` keeps the dag-processor from parsing it; DAG
files import it (Airflow puts the DAG folder on ``sys.path``).

Both reschedule between pokes, so a waiting run holds no worker slot. Subclasses of the Task SDK's sensor rather
than ``@task.sensor``: that decorator imports the standard provider's PythonSensor, whose module warns on import
with this Airflow. Each first refuses a day the simulated feed does not hold (``_refusals.refuse``), then waits.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from _refusals import refuse
from airflow.sdk import BaseSensorOperator

# The feed of a day may be quarantined and re-landed by a person: wait for hours, not minutes.
WAIT = timedelta(hours=6)


class DayValidatedSensor(BaseSensorOperator):
    """Waits until the monitored day's flights are validated (flights_ingest promoted them): the replay builds the
    day's feature tables from them, and the labels come from them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(mode="reschedule", poke_interval=10, timeout=WAIT.total_seconds(), **kwargs)

    def poke(self, context: Any) -> bool:
        from pipelines.core.lake import open_lake, partition_key
        from pipelines.core.runs import monitored_day
        from pipelines.core.settings import get_settings
        from pipelines.simulation.feed import FeedUnavailable, check_feed_days

        day = monitored_day(context)
        try:
            check_feed_days([day])
        except FeedUnavailable as error:
            refuse(context, error)
        self.log.info("waiting for the validated flights of %s", day)
        return open_lake(get_settings()).exists(partition_key("validated", "flights", day, "data.parquet"))


class WindowMonitoredSensor(BaseSensorOperator):
    """Checks a training run's window; with the run's ``after_monitoring`` param, waits until monitoring has
    watched the window's last day."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(mode="reschedule", poke_interval=30, timeout=WAIT.total_seconds(), **kwargs)

    def poke(self, context: Any) -> bool:
        from pipelines.core.lake import REPORT_FILES, monitoring_report_key, open_lake
        from pipelines.core.runs import training_run_window
        from pipelines.core.settings import get_settings
        from pipelines.simulation.feed import FeedUnavailable, check_feed_days

        days = training_run_window(context)
        try:
            check_feed_days(days)
        except FeedUnavailable as error:
            refuse(context, error)
        if not context["params"]["after_monitoring"]:
            return True
        self.log.info("waiting until monitoring has watched %s, the window's last day", days[-1])
        return open_lake(get_settings()).exists(monitoring_report_key(days[-1], REPORT_FILES["summary"]))
