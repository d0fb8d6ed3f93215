"""The sensors the DAGs wait with. Not a DAG file: ``.airflowignore`` keeps the dag-processor from parsing it; DAG
files import it (Airflow puts the DAG folder on ``sys.path``).

The feed and window sensors reschedule between pokes, so a waiting run holds no worker slot; each first refuses a
day the simulated feed does not hold (``_refusals.refuse``), then waits. The previous-day sensor pokes every second
in its slot: its wait is the length of one replay. Subclasses of the Task SDK's sensor rather than
``@task.sensor``: that decorator imports the standard provider's PythonSensor, whose module warns on import with
this Airflow.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from _refusals import refuse
from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowSkipException

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


# Runs the scheduler makes from the DAG's timetable (the weekly retrain), or a backfill of it.
SCHEDULED = frozenset({"scheduled", "backfill"})


class WindowMonitoredSensor(BaseSensorOperator):
    """Checks a training run's window; with the run's ``after_monitoring`` param, waits until monitoring has
    watched the window's last day. A scheduled run with ``skip_if_trained_within_days`` then waits while another
    training runs (two trainings never share the cores) and skips when the registry holds a version trained on data
    that recent (a drift request retrained the model this week: the weekly retrain would repeat it)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(mode="reschedule", poke_interval=30, timeout=WAIT.total_seconds(), **kwargs)

    def poke(self, context: Any) -> bool:
        from pipelines.core.lake import REPORT_FILES, monitoring_report_key, open_lake
        from pipelines.core.runs import training_run_window
        from pipelines.core.settings import get_settings
        from pipelines.simulation.feed import FeedUnavailable, feed_window

        try:
            days = feed_window(training_run_window(context))
        except FeedUnavailable as error:
            refuse(context, error)
        if context["params"]["after_monitoring"]:
            self.log.info("waiting until monitoring has watched %s, the window's last day", days[-1])
            if not open_lake(get_settings()).exists(monitoring_report_key(days[-1], REPORT_FILES["summary"])):
                return False
        fresh_days = int(context["params"].get("skip_if_trained_within_days") or 0)
        run_type = context["dag_run"].run_type
        if fresh_days and getattr(run_type, "value", run_type) in SCHEDULED:  # an enum in a task
            return self._no_fresher_model(context, days[-1], fresh_days)
        return True

    def _no_fresher_model(self, context: Any, last_day: Any, fresh_days: int) -> bool:
        from pipelines.registry.register import fresher_version

        ti = context["ti"]
        if ti.get_dr_count(dag_id=ti.dag_id, states=["running"]) > 1:
            self.log.info("waiting: another run of %s is training", ti.dag_id)
            return False
        freshest = fresher_version(last_day, fresh_days)
        if freshest is not None:
            raise AirflowSkipException(
                f"version {freshest[1]} was trained on data through {freshest[0]}, {(last_day - freshest[0]).days} "
                f"days before this window's last day {last_day} (under skip_if_trained_within_days = {fresh_days}): "
                "nothing to retrain")
        return True


# A task instance's states that end it (Airflow's TerminalTIState, and ``removed``).
ENDED = frozenset({"success", "skipped", "failed", "upstream_failed", "removed"})


class PreviousRunEndedSensor(BaseSensorOperator):
    """Waits until ``task``'s try in the run before this one (by logical date) has ended, however it ended. Days
    are replayed in order (the online store keeps the newest row per key), and two monitoring runs overlap: the next
    day's replay starts as soon as this day's has ended, while this day's labels, report and email are made.
    Airflow's ``depends_on_past`` would keep a run waiting for good after a failed or refused run before it (a
    person's run dated today after a refused one, say); this sensor waits only while the earlier try is unfinished.
    No earlier run, or one that has ended without the task: nothing to wait for."""

    def __init__(self, *, task: str, **kwargs: Any) -> None:
        super().__init__(mode="poke", poke_interval=1, timeout=WAIT.total_seconds(), **kwargs)
        self.task = task

    def poke(self, context: Any) -> bool:
        ti = context["ti"]
        previous = ti.get_previous_dagrun()
        if previous is None:
            return True
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[previous.run_id], task_ids=[self.task])
        state = states.get(previous.run_id, {}).get(self.task)
        if state in ENDED or (state is None and str(previous.state) in ("success", "failed")):
            return True
        if not getattr(self, "_said", False):  # once per try, not every second
            self.log.info("waiting for %s of the run before, %s (%s)", self.task, previous.run_id,
                          state or "not started")
            self._said = True
        return False
