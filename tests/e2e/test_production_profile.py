"""The production profile end to end, through Airflow's real scheduler and Celery workers (about 12 minutes).

The stack is the one ``make up ENV_FILE=infra/prod.env`` starts, from ``infra/prod.env.example`` itself with this
module's own PostgreSQL databases, Redis dbs, ports and home: Airflow 3 (API server, scheduler, DAG processor,
triggerer, three Celery workers on a Redis broker, metadata on PostgreSQL), the MLflow tracking server
(PostgreSQL backend, artifacts on S3), the lake and Feast's offline store on S3, Feast's SQL registry on
PostgreSQL and its Redis online store, Optuna studies on PostgreSQL, the SMTP server and the model service. The
one stand-in is the S3 API: moto's server over HTTP, in place of AWS S3. Nothing is patched in process.

DAGs are triggered with params through the REST API, as a person or a script would; the results are read where
they live: S3, the MLflow server, PostgreSQL, Redis, the live model service, the received email. Then a Celery
worker is killed in the middle of a task: the task is retried on another worker and the chain ends with the same
data as the undisturbed run.
"""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests

from pipelines.core.settings import Settings, get_settings, read_env_file
from pipelines.ops.airflow_api import AirflowClient
from pipelines.ops.stack import down, up, worker_name

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
WINDOW = ("2013-01-01", "2013-01-21")
MONITORED_DAY = date(2013, 1, 22)
TRAINING = {"start_date": WINDOW[0], "end_date": WINDOW[1], "trials": 4, "tuning_workers": 2, "max_epochs": 3,
            "valid_days": 4, "test_days": 4, "time_budget_minutes": 10}
DAG_IDS = ("flights_ingest", "flight_features", "flight_delay_training", "flight_delay_monitoring")
HOST = "127.0.0.1"


@dataclass
class Stack:
    settings: Settings
    profile: dict[str, str]
    api: AirflowClient
    runs: dict[str, Any]

    def s3(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.settings.s3_endpoint_url)

    def keys(self, prefix: str) -> list[str]:
        bucket, _, root = self.settings.lake_root.removeprefix("s3://").partition("/")
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{root}/{prefix}")
        return sorted(o["Key"].removeprefix(f"{root}/") for page in pages for o in page.get("Contents", []))


def _empty_redis_dbs(count: int) -> list[int]:
    import redis

    probe = redis.Redis(host=HOST, port=6379)
    databases = int(probe.config_get("databases")["databases"])
    # Dbs 3-8 are this module's: tests/integration/test_feature_store_production.py takes from 9-13 (they may run
    # at once, on make test's two workers), the bench flushes 14 and 15.
    empty = [n for n in range(3, min(9, databases)) if redis.Redis(host=HOST, port=6379, db=n).dbsize() == 0]
    if len(empty) < count:
        pytest.skip(f"needs {count} empty Redis dbs among 3-8")
    return empty[:count]


def _profile(home: Path, free_port: Any) -> dict[str, str]:
    """infra/prod.env.example with this module's databases, Redis dbs, ports, home and throwaway secrets."""
    profile = read_env_file(REPO / "infra" / "prod.env.example")
    suffix = uuid.uuid4().hex[:8]
    for name, value in profile.items():  # every database gets this module's own name
        profile[name] = re.sub(r"(postgresql\+psycopg://[^/]+/)(\w+)", rf"\g<1>e2e_\g<2>_{suffix}", value)
    broker_db, feast_db = _empty_redis_dbs(2)
    s3_port, mlflow_port, smtp_port = free_port(), free_port(), free_port()
    profile.update({
        "PIPELINE_HOME": str(home),
        "AIRFLOW__CELERY__BROKER_URL": f"redis://{HOST}:6379/{broker_db}",
        "FEAST_REDIS": f"{HOST}:6379,db={feast_db}",
        "S3_ENDPOINT_URL": f"http://{HOST}:{s3_port}",
        "LAKE_URI": f"s3://lake-{suffix}/lake",
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://mlflow-{suffix}/artifacts",
        "EXPERIMENT_TRACKING_URI": f"http://{HOST}:{mlflow_port}",
        "SMTP_PORT": str(smtp_port),
        "AIRFLOW_PORT": str(free_port(3)),
        "SERVICE_PORT": str(free_port(3)),
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex * 2,
        "SERVICE_TOKEN": uuid.uuid4().hex,
        "PGPASSWORD": uuid.uuid4().hex,
        "MLFLOW_TRACKING_PASSWORD": uuid.uuid4().hex, "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
        # One task a worker, so the two mapped tuning tasks run on two workers at once.
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        # A killed worker's task is noticed after 20 s without a heartbeat (production: 60).
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    })
    return profile


def _drop(profile: dict[str, str]) -> None:
    import psycopg
    import redis

    names = {m for value in profile.values() for m in re.findall(r"postgresql\+psycopg://[^/]+/(\w+)", value)}
    with psycopg.connect(host=HOST, user="postgres", dbname="postgres", autocommit=True) as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    for url in (profile["AIRFLOW__CELERY__BROKER_URL"], f"redis://{profile['FEAST_REDIS'].replace(',db=', '/')}"):
        redis.Redis.from_url(url).flushdb()


def _wait_for_asset_run(api: AirflowClient, dag_id: str, after: int, timeout_s: float = 600) -> dict[str, Any]:
    """The run the scheduler starts on an asset event (the ``after``-th run of the DAG and later), once finished."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = api.runs(dag_id)
        if len(runs) > after:
            return api.wait(dag_id, runs[after]["dag_run_id"], timeout_s=deadline - time.monotonic())
        time.sleep(3)
    raise AssertionError(f"the scheduler started no {dag_id} run within {timeout_s:.0f}s")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, free_port: Any) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("production") / "home"
    profile = _profile(home, free_port)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in profile.items():
            patch.setenv(name, value)
        patch.setenv("GX_ANALYTICS_ENABLED", "false")
        settings = get_settings()
        try:
            started = up(profile, settings)
            api = AirflowClient(started["ui"], started["user"], started["password"])
            api.wait_for_dags(DAG_IDS)
            for dag_id in DAG_IDS:
                api.unpause(dag_id)
            yield Stack(settings, profile, api, runs={})
        finally:
            down(profile, settings)
            _drop(profile)


@pytest.fixture(scope="module")
def chain(stack: Stack) -> Stack:
    """Ingest a window, features on its asset event, training (tuning mapped on two workers) and its deployment,
    then a day of production: its feed, its features, its monitoring."""
    api = stack.api
    run = api.trigger("flights_ingest", date.fromisoformat(WINDOW[1]),
                      {"start_date": WINDOW[0], "end_date": WINDOW[1]})
    stack.runs["ingest"] = api.wait("flights_ingest", run)
    stack.runs["features"] = _wait_for_asset_run(api, "flight_features", after=0)
    run = api.trigger("flight_delay_training", date(2013, 4, 1), TRAINING)
    stack.runs["training"] = api.wait("flight_delay_training", run, timeout_s=1500)
    day = MONITORED_DAY.isoformat()
    api.wait("flights_ingest", api.trigger("flights_ingest", MONITORED_DAY, {"start_date": day, "end_date": day}))
    _wait_for_asset_run(api, "flight_features", after=1)
    # The DAG watches days from 2013-04-01 on; an earlier day is named by the param, in a run dated on its first.
    run = api.trigger("flight_delay_monitoring", date(2013, 4, 1), {"day": day})
    stack.runs["monitoring"] = api.wait("flight_delay_monitoring", run, timeout_s=900)
    return stack


def test_the_stack_runs_on_the_production_services(stack: Stack) -> None:
    health = requests.get(f"{stack.api.url}/api/v2/monitor/health", timeout=10).json()
    assert {health[k]["status"] for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")} == {"healthy"}
    config = {name: stack.profile[name] for name in ("AIRFLOW__CORE__EXECUTOR", "FEAST_PROFILE")}
    assert config == {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", "FEAST_PROFILE": "production"}
    assert requests.get(f"{stack.api.url}/api/v2/dags", timeout=10).status_code == 401, "authentication is on"
    import psycopg

    airflow_db = stack.profile["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(host=HOST, user="postgres", dbname="postgres") as admin:  # made by make up for the role
        (owner,) = admin.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                                 (airflow_db,)).fetchone()
    assert owner == "pipeline"
    for number in (1, 2, 3):
        assert (stack.settings.pipeline_home / "run" / f"{worker_name(number)}.pid").exists()


def test_partitions_and_features_are_in_s3(chain: Stack) -> None:
    days = pd.date_range(WINDOW[0], MONITORED_DAY).date
    validated = chain.keys("validated/flights/")
    assert [f"validated/flights/date={d}/data.parquet" for d in days] == [k for k in validated if k.endswith("parquet")]
    assert chain.keys(f"features/weather_hourly/date={MONITORED_DAY}/")
    assert chain.runs["features"]["run_type"] == "asset_triggered"


def test_the_model_is_registered_in_the_mlflow_server_with_artifacts_in_s3(chain: Stack) -> None:
    from mlflow import MlflowClient

    # The server runs MLflow's basic auth: a 401 without the profile's tracking user (every client of the pipeline,
    # and MlflowClient here, sends MLFLOW_TRACKING_USERNAME and _PASSWORD from the environment).
    search = f"{chain.settings.experiment_tracking_uri}/api/2.0/mlflow/registered-models/search"
    assert requests.get(search, timeout=10).status_code == 401
    assert requests.get(search, timeout=10, auth=("pipeline", "not-the-password")).status_code == 401
    user = (chain.profile["MLFLOW_TRACKING_USERNAME"], chain.profile["MLFLOW_TRACKING_PASSWORD"])
    assert requests.get(search, timeout=10, auth=user).status_code == 200
    client = MlflowClient(tracking_uri=chain.settings.experiment_tracking_uri)
    champion = client.get_model_version_by_alias("flight_delay_classifier", "champion")
    assert champion.tags["lineage.window"] == f"{WINDOW[0]}..{WINDOW[1]}"
    assert champion.tags["deployment.status"] == "live"
    bucket = chain.profile["MLFLOW_ARTIFACTS_DESTINATION"].removeprefix("s3://").split("/")[0]
    artifacts = chain.s3().list_objects_v2(Bucket=bucket).get("KeyCount", 0)
    assert artifacts > 0, "the model's artifacts went to S3 through the tracking server"


def test_tuning_fanned_out_over_two_workers_sharing_one_postgres_study(chain: Stack) -> None:
    import optuna

    run_id = chain.runs["training"]["dag_run_id"]
    tuning = [ti for ti in chain.api.task_instances("flight_delay_training", run_id)
              if ti["task_id"] == "tune_hyperparameters"]
    assert sorted(ti["map_index"] for ti in tuning) == [0, 1]
    assert {ti["queue"] for ti in tuning} == {"training"} and {ti["state"] for ti in tuning} == {"success"}
    ran_on = {ti["map_index"]: _ran_on(chain, ti) for ti in tuning}
    assert all(len(workers) == 1 for workers in ran_on.values()), ran_on
    assert ran_on[0] != ran_on[1], f"both tuning tasks ran on one worker: {ran_on}"
    assert 1 not in ran_on[0] + ran_on[1], "worker 1 does not consume the training queue"
    studies = optuna.get_all_study_summaries(storage=chain.settings.optuna_url)
    # Each worker finishes the trial it is running when the study reaches the count: up to workers - 1 more.
    assert len(studies) == 1
    assert TRAINING["trials"] <= studies[0].n_trials <= TRAINING["trials"] + TRAINING["tuning_workers"] - 1


def test_features_are_served_from_redis_and_the_service_answers(chain: Stack) -> None:
    import redis

    from pipelines.core.lake import open_lake, partition_key
    from pipelines.serving.contract import requests_from_flights

    assert redis.Redis.from_url(f"redis://{chain.profile['FEAST_REDIS'].replace(',db=', '/')}").dbsize() > 100
    flights = open_lake(chain.settings).read_parquet(
        partition_key("validated", "flights", MONITORED_DAY, "data.parquet"))
    url = f"http://{HOST}:{chain.settings.service_port}"
    body = {"flights": requests_from_flights(flights.head(3))}
    refused = requests.post(f"{url}/predict", json=body, timeout=30)  # the profile's service wants its token
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer"), refused.text
    assert requests.get(f"{url}/readyz", timeout=10).status_code == 200  # the front door's probe needs none
    answer = requests.post(f"{url}/predict", json=body, headers=chain.settings.service_headers, timeout=30)
    assert answer.status_code == 200, answer.text
    from mlflow import MlflowClient

    champion = MlflowClient(tracking_uri=chain.settings.experiment_tracking_uri).get_model_version_by_alias(
        "flight_delay_classifier", "champion")
    assert [p["model_version"] for p in answer.json()] == [champion.version] * 3
    assert all(0 < p["probability"] < 1 for p in answer.json())


def test_monitoring_report_is_in_s3_and_the_owners_got_the_email(chain: Stack) -> None:
    from pipelines.ops.mail_server import read_messages

    reports = chain.keys(f"reports/monitoring/date={MONITORED_DAY}/")
    assert {k.rsplit("/", 1)[1] for k in reports} >= {"report.html", "report.json", "summary.json"}
    served = chain.keys(f"predictions/flight_delay/date={MONITORED_DAY}/")
    assert served, "the replayed traffic was logged to S3 by the service"
    subjects = [m["Subject"] for m in read_messages(chain.settings)]
    assert any(str(MONITORED_DAY) in subject for subject in subjects), subjects
    (message,) = [m for m in read_messages(chain.settings) if str(MONITORED_DAY) in m["Subject"]]
    assert message["To"] == chain.settings.model_owners


def _validated_frames(stack: Stack, days: list[date]) -> dict[str, pd.DataFrame]:
    from pipelines.core.lake import open_lake, partition_key

    lake = open_lake(stack.settings)
    frames = {}
    for day in days:
        for zone, table, name in (("validated", "flights", "data.parquet"),
                                  ("features", "carrier_stats", "data.parquet")):
            key = partition_key(zone, table, day, name)
            frames[key] = lake.read_parquet(key)
    return frames


def _ran_on(stack: Stack, ti: dict[str, Any]) -> list[int]:
    """The Celery workers (their numbers) whose logs name the task try: each logs the workload id it ran."""
    logs = stack.settings.pipeline_home / "logs"
    return [n for n in (1, 2, 3) if ti["id"] in (logs / f"{worker_name(n)}.log").read_text()]


def _worker_of(stack: Stack, ti: dict[str, Any]) -> int:
    """The Celery worker (its number) whose process tree holds the task's process (the task runs in a process
    group of its own, under the worker's pool)."""
    import psutil

    ancestors = {parent.pid for parent in psutil.Process(int(ti["pid"])).parents()}
    for path in (stack.settings.pipeline_home / "run").glob("airflow-worker-*.pid"):
        if int(json.loads(path.read_text())["pid"]) in ancestors:
            return int(path.stem.rsplit("-", 1)[1])
    raise AssertionError(f"no worker holds pid {ti['pid']}")


def _kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and everything under it at once, as when its machine dies."""
    import psutil

    root = psutil.Process(pid)
    tree = [root, *root.children(recursive=True)]
    for process in tree:
        process.send_signal(signal.SIGKILL)
    return [process.pid for process in tree]


def test_killing_a_worker_mid_task_loses_nothing(chain: Stack) -> None:
    """Rerun the window's first week, kill the worker running its validation, and get the same data back."""
    api, days = chain.api, list(pd.date_range(WINDOW[0], "2013-01-07").date)
    before = _validated_frames(chain, days)
    features_runs = len(api.runs("flight_features"))
    run = api.trigger("flights_ingest", days[-1], {"start_date": str(days[0]), "end_date": str(days[-1])})
    deadline = time.monotonic() + 300
    while True:
        (ti,) = [t for t in api.task_instances("flights_ingest", run) if t["task_id"] == "validate_partitions"]
        if ti["state"] == "running" and ti["pid"]:
            break
        assert time.monotonic() < deadline, f"validate_partitions never ran: {ti['state']}"
        time.sleep(0.5)
    victim = _worker_of(chain, ti)
    pid_file = chain.settings.pipeline_home / "run" / f"{worker_name(victim)}.pid"
    worker_pid = int(json.loads(pid_file.read_text())["pid"])
    killed = _kill_tree(worker_pid)  # the worker, its pool, the task's supervisor and the task, all at once
    assert int(ti["pid"]) in killed

    api.wait("flights_ingest", run, timeout_s=600)
    (ti,) = [t for t in api.task_instances("flights_ingest", run) if t["task_id"] == "validate_partitions"]
    assert ti["try_number"] == 2, "the killed try was given up and the task retried"
    retried_on = _ran_on(chain, ti)
    assert len(retried_on) == 1 and retried_on[0] != victim, f"killed worker {victim}, retried on {retried_on}"
    _wait_for_asset_run(api, "flight_features", after=features_runs)
    after = _validated_frames(chain, days)
    for key, frame in before.items():
        pd.testing.assert_frame_equal(after[key], frame, obj=key)

    restarted = up(chain.profile, chain.settings)  # the supervisor's part: start the dead worker again
    assert [p["name"] for p in restarted["processes"] if p["started"]] == [worker_name(victim)]


def test_task_logs_of_the_run_are_readable_through_the_api(chain: Stack) -> None:
    run_id = chain.runs["ingest"]["dag_run_id"]
    text = chain.api.request("GET", f"/dags/flights_ingest/dagRuns/{run_id}/taskInstances/land_feed/logs/1",
                             params={"full_content": True})
    assert "land_feed" in json.dumps(text)
