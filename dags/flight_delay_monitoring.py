"""
### flight_delay_monitoring: the served model, checked every day, with its owners told

One run per New York day from 2013-04-01 (the first day after the demo window), when the day has ended (midnight
America/New_York; the run's data interval is the day), two runs at a time, overlapping: a day's traffic is replayed
once the day before's replay has ended, while that day's labels, report and email are made; no catchup:
a stretch of days is a backfill (the UI's *Backfill*, or `make year`), which runs them in order. A manual run
watches the **day** param, else the New York date of its **Logical date**; a day the feed does not hold (the
form's default, now, is past 2013) is refused with the feed's dates.

0. `wait_for_feed`: the day's flights validated (`flights_ingest`); waits (rescheduling, no worker held) while the
   day's feed is late, or quarantined until it is re-landed and its ingest run cleared. Then
   `wait_for_previous_replay` and `wait_for_previous_report`: the run before (by logical date) has ended its replay
   (days are replayed in order), and its report before this day's report is built (the retrain cooldown counts the
   earlier requests); however it ended, so a failed or refused run before does not hold this one for good.
1. `replay_traffic`: the simulated production traffic. The day's scheduled flights go to the live service over
   HTTP at their prediction times, minute by minute, with the day's departures pushed to Feast as operations state
   before each minute's requests and the batch views materialized hour by hour (after a rewind of the online store
   to the day's window start; in the pool `online_store`, never beside flight_features' materialization); their
   predictions are logged to `predictions/`. A retry sends only the flights the prediction log lacks, and the day
   is done only when every scheduled flight of it is logged once. Off with **replay_traffic** = false where real
   traffic reaches the service.
2. `label_predictions`: the day's outcomes (its validated feed) joined to what was served: `labels/`.
3. `build_drift_report`: Evidently: data drift of the served features against the champion's training reference,
   drift of the scores, and quality on the labelled trailing window beside the training metrics. HTML, JSON and
   the summary in `reports/monitoring/date=YYYY-MM-DD/`; the summary carries the retraining decision.
4. `email_report`: the owners get the summary through the SMTP connection: a first line that says whether anything
   needs them, a 30-day chart inline, the figures, and where the full report is (named, not attached).
5. `request_retraining`: when the report asks for it (drift share or a quality drop over the thresholds, enough
   flights, outside the cooldown), an event of the Asset `flight_delay_retrain_requests` (through the alias
   `retrain_requested`), which schedules `flight_delay_training` on the window it names. Otherwise no event, and
   the task's return value (XCom) gives the reasons. (Not a skip: a skipped task's end reached the scheduler up to
   5 s late, and each day's run waits for it.)
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from _assets import RETRAIN_REQUESTED, RETRAIN_REQUESTS
from _notifiers import notify_owners_on_failure, send_monitoring_email
from _sensors import DayValidatedSensor, PreviousRunEndedSensor
from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task, timezone
from airflow.sdk.exceptions import AirflowSkipException

from pipelines.core.dates import LOCAL_TZ
from pipelines.core.names import ONLINE_STORE_POOL

log = logging.getLogger(__name__)


@dag(
    dag_id="flight_delay_monitoring",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone=LOCAL_TZ),
    start_date=timezone.parse("2013-04-01", timezone=LOCAL_TZ),
    # No end date (a manual run dated after it would be marked successful without running a task): the feed's own
    # dates decide (wait_for_features). No catchup: a replay of the year is an explicit backfill.
    catchup=False,
    max_active_runs=2,
    default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(minutes=1),
                  "execution_timeout": timedelta(hours=1),  # a hung task fails and is retried
                  "on_failure_callback": notify_owners_on_failure},
    tags=["monitoring", "evidently", "drift"],
    params={
        "day": Param(None, type=["null", "string"], format="date", title="Day",
                     description="The day to monitor (YYYY-MM-DD). Empty: the run's logical date."),
        "replay_traffic": Param(True, type="boolean", title="Replay traffic",
                                description="Send the day's scheduled flights to the live service first (the "
                                            "simulated production traffic). Off where real traffic arrives."),
    },
)
def flight_delay_monitoring() -> None:
    @task(pool=ONLINE_STORE_POOL)
    def replay_traffic() -> dict:
        if not get_current_context()["params"]["replay_traffic"]:
            raise AirflowSkipException("replay_traffic is off: monitoring the traffic the service really got")
        from pipelines.core.runs import monitored_day
        from pipelines.simulation.replay import replay_traffic

        return replay_traffic(monitored_day(get_current_context()))

    # Runs when the replay is off (skipped) but the day's feed is there; skipped when the day was (past the feed).
    @task(trigger_rule="none_failed_min_one_success")
    def label_predictions() -> dict:
        from pipelines.core.runs import monitored_day
        from pipelines.monitoring.labels import label_predictions

        return label_predictions(monitored_day(get_current_context()))

    @task
    def build_drift_report() -> dict:
        from pipelines.core.runs import monitored_day
        from pipelines.monitoring.report import build_drift_report

        return build_drift_report(monitored_day(get_current_context()))

    @task
    def email_report(summary: dict) -> dict:
        return send_monitoring_email(summary, summary["report_paths"].values())

    @task(outlets=[RETRAIN_REQUESTED])
    def request_retraining(summary: dict) -> dict:
        retrain: dict[str, Any] = summary["retrain"]
        if not retrain["requested"]:
            log.info("no retraining: %s", "; ".join(retrain["reasons"]))
            return {"requested": False, "reasons": retrain["reasons"]}
        extra = dict(retrain["window"]) | dict(retrain["tuning"]) | {"monitored_day": summary["date"],
                                                                     "reasons": retrain["reasons"]}
        get_current_context()["outlet_events"][RETRAIN_REQUESTED].add(RETRAIN_REQUESTS, extra=extra)
        return {"requested": True} | extra

    feed = DayValidatedSensor(task_id="wait_for_feed")
    replay = replay_traffic()
    labels = label_predictions()
    summary = build_drift_report()
    feed >> PreviousRunEndedSensor(task_id="wait_for_previous_replay", task="replay_traffic") >> replay >> labels
    feed >> labels >> summary
    feed >> PreviousRunEndedSensor(task_id="wait_for_previous_report", task="build_drift_report") >> summary
    email_report(summary)
    request_retraining(summary)


flight_delay_monitoring()
