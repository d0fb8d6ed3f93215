"""
### flight_delay_training: tune and train the disruption model, and judge it against baselines

Weekly (Mondays 06:00 America/New_York; no catchup, a replay of 2013 is a backfill), on a retrain request (the Asset
`flight_delay_retrain_requests`, emitted by monitoring; its extra carries `start_date` / `end_date` and the tuning
it asks for, which wins over the params: `trials`, `max_epochs`, `time_budget_minutes`), or by hand.
The training window is **start_date** .. **end_date** when given, else the **window_days** days before the run's
New York date (a year: the backtest found a 90-day window forgetting the seasons; one starting before the feed
trains on what the feed holds). A window ending outside the feed (a manual run with the form's default logical date,
now, is years past 2013) is refused with the feed's dates.

0. `wait_for_window`: checks the window; with **after_monitoring** (the year's backfill sets it), waits until
   monitoring has watched the window's last day, so a model never goes live before the days it was trained on
   were served (a replayed year runs faster than its calendar; live, the calendar does this by itself). A
   scheduled run (the weekly retrain) then waits while another training runs and is skipped, with the reason,
   when a version was trained on a window ending within **skip_if_trained_within_days** (7) of its own: a drift
   request retrained the model this week, and the weekly run would repeat it on nearly the same days.

1. `build_training_set`: point-in-time features from Feast (`flight_delay_v1`) for the window's validated flights,
   split by time: train, validation (**valid_days**, for tuning and early stopping), test (the last **test_days**).
2. `start_tuning`: the Optuna study (named by the run key, so a retried task resumes it) and the MLflow parent run.
3. `tune_hyperparameters`: **trials** trials within **time_budget_minutes**, TPE sampler, median pruner fed the
   validation log loss each epoch; each trial is a nested MLflow run. Mapped over **tuning_workers** workers
   sharing the one study (more than one needs a shared database: the production profile's PostgreSQL).
4. `train_final_model`: the best parameters, trained again with early stopping; the model (preprocessing inside)
   goes to `models/{run}/model.pt` and MLflow. With **trials** 0 (no search: the year's weekly retrain), the
   champion's hyperparameters (the defaults before the first champion).
5. `evaluate_model`: ROC AUC, PR AUC, log loss, Brier and a calibration plot on the test window, beside a
   base-rate and a logistic-regression baseline on the same features and split.
6. `register_model`: the model (preprocessing inside) logged to MLflow with signature, input example and lineage
   tags, registered as `flight_delay_classifier` with alias `challenger` (a rerun finds its version).
7. `promote_model`: the gate. Challenger and `champion` scored on the same test window; promoted (aliases
   `champion`, `previous_champion`) only above the ROC AUC floor, within the tolerance of the champion (paired
   bootstrap) and without a Brier regression. The decision and its reasons: `models/{run}/promotion.json` and tags.
8. `deploy_service`: only after a promotion (skipped otherwise, saying why): the champion's Bento is built, started
   beside the live service, smoke-tested (health, golden requests, a latency burst) and given the traffic of
   `127.0.0.1:3000`; the previous one stays up for `make rollback`. A failed smoke test rolls back by itself and
   fails the task (no retries: a deployment is not retried blindly).

Tuning and the final training go to the queue `training` (a GPU worker's queue under Celery; the local executors
and `airflow dags test` ignore queues). The run key (DAG id, date, run id) names the study, the MLflow runs and the
lake folders, so a retried task resumes what it started.
"""

from __future__ import annotations

from datetime import timedelta

from _assets import RETRAIN_REQUESTS, TRAINED_MODEL
from _notifiers import notify_owners_on_failure
from _sensors import WindowMonitoredSensor
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task, timezone
from airflow.sdk.exceptions import AirflowSkipException

from pipelines.core.dates import DEFAULT_WINDOW_DAYS, LOCAL_TZ, SKIP_IF_TRAINED_WITHIN_DAYS


@dag(
    dag_id="flight_delay_training",
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 6 * * 1", timezone=LOCAL_TZ),
                                 assets=RETRAIN_REQUESTS),
    start_date=timezone.parse("2013-04-01", timezone=LOCAL_TZ),
    # No end date (a manual run dated after it would be marked successful without running a task): the feed's own
    # dates decide (wait_for_window). No catchup: a replay of the year is an explicit backfill.
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "ml-platform", "retries": 2, "retry_delay": timedelta(minutes=1),
                  # A hung task fails and is retried; tuning has its own bound (its time budget, up to a day).
                  "execution_timeout": timedelta(hours=2),
                  "on_failure_callback": notify_owners_on_failure},
    tags=["training", "optuna", "mlflow", "pytorch"],
    params={
        "start_date": Param(None, type=["null", "string"], format="date", title="Start date",
                            description="First day of the training window (YYYY-MM-DD). Empty: window_days back."),
        "end_date": Param(None, type=["null", "string"], format="date", title="End date",
                          description="Last day of the training window, inclusive. Empty: the day before the run."),
        "window_days": Param(DEFAULT_WINDOW_DAYS, type="integer", minimum=21, maximum=366, title="Window days",
                             description="Length of the default window, ending the day before the run."),
        "valid_days": Param(14, type="integer", minimum=1, maximum=60, title="Validation days",
                            description="Days before the test window used for tuning and early stopping."),
        "test_days": Param(14, type="integer", minimum=1, maximum=60, title="Test days",
                           description="The most recent days, held out for evaluation and the promotion gate."),
        "trials": Param(20, type="integer", minimum=0, maximum=500, title="Optuna trials",
                        description="Finished trials (complete or pruned) the study should hold (with several "
                                    "tuning workers, each finishes the trial it is running: up to workers - 1 more). "
                                    "0: no search, the champion's hyperparameters on the new window."),
        "time_budget_minutes": Param(30, type="number", exclusiveMinimum=0, maximum=1440, title="Time budget",
                                     description="Minutes of tuning; no new trial starts after that."),
        "max_epochs": Param(30, type="integer", minimum=1, maximum=500, title="Max epochs",
                            description="Upper bound per training; early stopping usually ends sooner."),
        "tuning_workers": Param(1, type="integer", minimum=1, maximum=32, title="Tuning workers",
                                description="Mapped tuning tasks sharing the study (needs PostgreSQL storage)."),
        "skip_if_trained_within_days": Param(
            SKIP_IF_TRAINED_WITHIN_DAYS, type="integer", minimum=0, maximum=366, title="Skip if trained within days",
            description="A scheduled run (the weekly retrain, or its backfill) first waits while another training "
                        "runs, then is skipped when a registered version was trained on a window ending fewer than "
                        "this many days before its own (a drift request retrained this week). 0: never skipped. "
                        "Manual and requested runs always train."),
        "after_monitoring": Param(False, type="boolean", title="After monitoring",
                                  description="Wait until flight_delay_monitoring has watched the window's last day "
                                              "(a replayed year: no model goes live before its window was served)."),
    },
)
def flight_delay_training() -> None:
    @task
    def build_training_set() -> dict:
        from pipelines.core.runs import run_key, training_run_window
        from pipelines.simulation.feed import feed_window
        from pipelines.training.datasets import build_training_set

        context = get_current_context()
        return build_training_set(feed_window(training_run_window(context)), run_key(context),
                                  valid_days=int(context["params"]["valid_days"]),
                                  test_days=int(context["params"]["test_days"]))

    @task
    def start_tuning() -> list[int]:
        from pipelines.core.runs import run_key
        from pipelines.training.steps import start_tuning

        context = get_current_context()
        return start_tuning(run_key(context), workers=int(context["params"]["tuning_workers"]))["workers"]

    # The time budget (at most a day) is checked between trials: a day and an hour bounds a hung one.
    @task(queue="training", execution_timeout=timedelta(hours=25))
    def tune_hyperparameters(worker: int) -> dict:
        from pipelines.core.runs import run_key, training_tuning
        from pipelines.training.steps import tune_hyperparameters

        context = get_current_context()
        tuning = training_tuning(context)
        return tune_hyperparameters(run_key(context), trials=int(tuning["trials"]), worker=worker,
                                    time_budget_s=float(tuning["time_budget_minutes"]) * 60,
                                    max_epochs=int(tuning["max_epochs"]))

    @task(queue="training")
    def train_final_model() -> dict:
        from pipelines.core.runs import run_key, training_tuning
        from pipelines.registry.register import champion_params
        from pipelines.training.steps import train_final_model

        context = get_current_context()
        tuning = training_tuning(context)
        untuned = champion_params() if int(tuning["trials"]) == 0 else None
        return train_final_model(run_key(context), max_epochs=int(tuning["max_epochs"]), untuned=untuned)

    @task
    def evaluate_model() -> dict:
        from pipelines.core.runs import run_key
        from pipelines.training.steps import evaluate_model

        return evaluate_model(run_key(get_current_context()))

    @task
    def register_model() -> dict:
        from pipelines.core.runs import run_key
        from pipelines.registry.register import register_model

        return register_model(run_key(get_current_context()))

    @task(outlets=[TRAINED_MODEL])
    def promote_model() -> dict:
        from pipelines.core.runs import run_key
        from pipelines.registry.gate import promote_model

        return promote_model(run_key(get_current_context()))

    @task(retries=0)
    def deploy_service(decision: dict) -> dict:
        if decision["decision"] != "promote":
            raise AirflowSkipException(f"version {decision['challenger_version']} was not promoted: nothing to deploy")
        from pipelines.deploy.blue_green import deploy_service

        deployed = deploy_service()
        return {name: deployed.get(name) for name in ("status", "model_version", "bento", "slot", "url")}

    workers = start_tuning()
    WindowMonitoredSensor(task_id="wait_for_window") >> build_training_set() >> workers
    decision = promote_model()
    (tune_hyperparameters.expand(worker=workers) >> train_final_model() >> evaluate_model() >> register_model()
     >> decision)
    deploy_service(decision)


flight_delay_training()
