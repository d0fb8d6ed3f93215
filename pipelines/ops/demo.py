"""``make run``: the pipeline through Airflow on embedded defaults, told to a person.

Runs ``airflow dags test`` (a real DAG run in Airflow's SQLite metadata database, tasks executed by Airflow) with
the window as the run's params. The runs are dated now, when they run: the 2013 days they handle are their params,
so the UI shows when they ran and how long they took (a run dated in 2013 would show as lasting years, because
``dags test`` starts a run at its logical date). Airflow's own output goes to a log file; the terminal shows one
line per stage and the summary. This module starts Airflow as a subprocess and never imports it.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
import warnings
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from pipelines.core.settings import PROJECT_ROOT, Settings, get_settings
from pipelines.ops.airflow_config import airflow_env
from pipelines.ops.summary import format_summary, summarize

log = logging.getLogger(__name__)

# Airflow's console line: "<timestamp> [level    ] message    [logger] loc=file:line ..."
_LOG_LINE = re.compile(r"^\S+ \[(?P<level>\w+)\s*\] (?P<message>.*?)\s+\[(?P<logger>[\w.]+)\]( loc=\S+)?")
# The chain `make run` drives over the window, in order; each DAG gets the window as its params, plus its own.
DAGS: dict[str, dict[str, Any]] = {
    "flights_ingest": {},
    "flight_features": {},
    # A few trials keep `make run` short; the DAG's own default (for the weekly run) is 20.
    "flight_delay_training": {"trials": 6, "time_budget_minutes": 5, "max_epochs": 20},
}
# Then the days after the window, as production: their feed ingested, their traffic replayed through the live
# service and each day monitored (flight_delay_monitoring, one run per day, in order).
REPLAY_DAYS = 3
_EXCEPTION = re.compile(r"^[\w.]*(Error|Exception): ")


def _airflow(args: list[str], env: dict[str, str], log_file: Path, show: bool = False) -> int:
    """Run an airflow CLI command, its whole output appended to ``log_file``."""
    command = [str(Path(sys.executable).parent / "airflow"), *args]
    with log_file.open("a") as sink:
        sink.write(f"\n$ {' '.join(command)}\n")
        sink.flush()
        # bandit B603: the venv's airflow, no shell
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,  # nosec B603
                                   cwd=PROJECT_ROOT)
        for line in process.stdout or ():  # a pipe: stdout=PIPE
            sink.write(line)
            if show and (shown := _for_person(line)):
                print(f"  {shown}", flush=True)  # noqa: T201 - progress for the person at the terminal
        return process.wait()


def _for_person(line: str) -> str | None:
    """The few lines of Airflow's output a person wants: task starts, our steps' messages, errors."""
    if _EXCEPTION.match(line):
        return f"error: {line.strip()[:300]}"
    match = _LOG_LINE.match(line)
    if not match:
        return None
    message, logger = match["message"], match["logger"]
    if message.startswith("[DAG TEST] starting task_id="):
        return "task " + message.split("=", 1)[1].split()[0]
    if logger.startswith("pipelines.") and match["level"] in ("info", "warning", "error"):
        return "  " + message
    return None


def _serve_and_ask(settings: Settings, day: date, say: Any) -> dict[str, Any]:
    """Make sure the front door serves the champion (the training DAG's deploy_service did it after a promotion;
    this deploys it when nothing runs, e.g. after ``make stop``), and ask it about a real flight of ``day``."""
    import requests

    from pipelines.core.lake import open_lake, partition_key
    from pipelines.deploy.blue_green import deploy_service
    from pipelines.serving.contract import requests_from_flights

    service = deploy_service(settings)
    flights = open_lake(settings).read_parquet(partition_key("validated", "flights", day, "data.parquet"))
    body = {"flights": requests_from_flights(flights.head(1))}
    answer = requests.post(f"{service['url']}/predict", json=body, headers=settings.service_headers, timeout=30)
    answer.raise_for_status()
    (prediction,) = answer.json()
    logs = settings.pipeline_home / "logs"
    say(f"Model service: {service['url']} serves version {service['model_version']} as Bento {service['bento']} "
        f"(slot {service['slot']}; logs {logs}/front.log, {logs}/slot-{service['slot']}.log)")
    say(f"  {prediction['flight_id']}: disruption probability {prediction['probability']:.3f}, "
        f"disrupted={prediction['disrupted']}, model version {prediction['model_version']}")
    token = " -H 'Authorization: Bearer $SERVICE_TOKEN'" if settings.service_token else ""
    say(f"  Ask it yourself: curl -s -X POST {service['url']}/predict -H 'content-type: application/json'{token} "
        f"-d '{json.dumps(body)}'")
    say("  What it serves: make status   Roll back: make rollback   Stop it: make stop")
    return service | {"prediction": prediction}


def run_demo(start: date | None = None, end: date | None = None) -> dict[str, Any]:
    settings = get_settings()
    start, end = start or settings.demo_start, end or settings.demo_end
    env = airflow_env(settings)
    logs = settings.pipeline_home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"make-run-{datetime.now():%Y%m%dT%H%M%S}.log"
    say = lambda text: print(text, flush=True)  # noqa: E731, T201 - the command's output

    say(f"Pipeline home: {settings.pipeline_home}   (full logs: {log_file})")
    from pipelines.ops.mail_server import message_files, read_messages, start_mail_server

    mail = start_mail_server(settings)
    mails_before = len(message_files(settings))
    say(f"Mail server: {mail['host']}:{mail['port']} (Airflow's smtp_default); the owners' emails land in "
        f"{mail['folder']}/ as .eml files")
    started = time.perf_counter()
    stages: dict[str, float] = {}  # seconds per stage, in order, for the summary

    def airflow_stage(name: str, args: list[str], show: bool = True) -> int:
        tick = time.perf_counter()
        code = _airflow(args, env, log_file, show=show)
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - tick
        return code

    replayed = [end + timedelta(days=i) for i in range(1, REPLAY_DAYS + 1)]
    total = len(DAGS) + 3
    say(f"[1/{total}] Preparing Airflow's metadata database (SQLite)...")
    if airflow_stage("Airflow metadata database", ["db", "migrate"], show=False) != 0:
        raise RuntimeError(f"airflow db migrate failed; see {log_file}")
    window = {"start_date": start.isoformat(), "end_date": end.isoformat()}
    failed = None
    for step, (dag_id, extra) in enumerate(DAGS.items(), 2):
        say(f"[{step}/{total}] Running DAG {dag_id} through Airflow for {start} .. {end}...")
        conf = json.dumps(window | extra)
        if airflow_stage(dag_id, ["dags", "test", dag_id, "-c", conf]) != 0:
            failed = dag_id
            break

    from pipelines.core.dates import date_range

    summary = summarize(date_range(start, end), settings)
    say("")
    say(format_summary(summary))
    if failed is None:
        tick = time.perf_counter()
        summary |= _training_summary(settings, end, say)
        stages["summary and the service's first answer"] = time.perf_counter() - tick
        say("")
        say(f"[{total - 1}/{total}] Running DAG flights_ingest for the replayed days {replayed[0]} .. "
            f"{replayed[-1]}...")
        conf = json.dumps({"start_date": replayed[0].isoformat(), "end_date": replayed[-1].isoformat()})
        if airflow_stage("flights_ingest, replayed days", ["dags", "test", "flights_ingest", "-c", conf]) != 0:
            failed = "flights_ingest"
    if failed is None:
        say(f"[{total}/{total}] Running DAG flight_delay_monitoring for each replayed day (traffic through the live "
            "service, labels, Evidently report, email to the owners)...")
        for day in replayed:
            conf = json.dumps({"day": day.isoformat()})
            if airflow_stage(f"flight_delay_monitoring, {len(replayed)} days",
                             ["dags", "test", "flight_delay_monitoring", "-c", conf]) != 0:
                failed = "flight_delay_monitoring"
                break
        from pipelines.monitoring.report import format_summary as format_monitoring
        from pipelines.monitoring.report import monitoring_history

        monitored = monitoring_history(settings, before=replayed[-1] + timedelta(days=1))
        summary["monitoring"] = [day for day in monitored if date.fromisoformat(day["date"]) in replayed]
        for day in summary["monitoring"]:
            say(format_monitoring(day))
            say(f"  report: {day['report_paths']['html']}")
        from pipelines.simulation.replay import format_replay_summary, replay_summary

        summary["replay"] = [replay_summary(day, settings) for day in replayed]
        for day in summary["replay"]:
            say(format_replay_summary(day))
    elapsed = time.perf_counter() - started
    mails = read_messages(settings)[mails_before:]
    say(f"Emails to {settings.model_owners}: {len(mails)} this run, received by the mail server into "
        f"{settings.mail_folder}/" + "".join(f"\n    {message['Subject']}" for message in mails))
    say(f"  Airflow log: {log_file}")
    summary["stage_seconds"] = {name: round(seconds, 1) for name, seconds in stages.items()}
    say("Time per stage: " + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in stages.items()))
    say(f"Finished in {elapsed:.0f}s: " + ("all DAG runs succeeded." if failed is None
                                           else f"DAG {failed} FAILED (see the log above)."))
    if failed:
        raise RuntimeError(f"the {failed} run failed; see {log_file}")
    return summary


def _training_summary(settings: Settings, end: date, say: Any) -> dict[str, Any]:
    """Features, the model's evaluation, the gate's decision, and the live service answering a real flight."""
    from pipelines.features.store import feature_summary, format_feature_summary
    from pipelines.registry.gate import format_decision, read_decision
    from pipelines.training.evaluation import format_evaluation
    from pipelines.training.steps import latest_evaluation

    features = feature_summary(settings)
    say(format_feature_summary(features))
    with warnings.catch_warnings():  # MLflow's SQLAlchemy store warns about its own mappers on first use
        warnings.simplefilter("ignore", DeprecationWarning)
        evaluation = latest_evaluation(settings)
    first, last = (moment[:10] for moment in evaluation["test_window"])
    say(f"Model evaluation on the test window {first} .. {last} (run {evaluation['run_key']})")
    say(format_evaluation(evaluation["metrics"], comparison=evaluation["network_vs_logistic_regression"]))
    decision = read_decision(evaluation["run_key"], settings)
    say(format_decision(decision))
    service = _serve_and_ask(settings, end, say)
    say(f"  MLflow: {settings.tracking_uri}  (mlflow ui --backend-store-uri {settings.tracking_uri})")
    return {"features": features, "evaluation": evaluation, "promotion": decision, "service": service}
