"""Command line for every step, without Airflow: ``python -m pipelines <step> --date D`` or ``--start S --end E``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from pipelines.core.dates import DEFAULT_WINDOW_DAYS

log = logging.getLogger(__name__)


def _window(args: argparse.Namespace) -> list[date]:
    from pipelines.core.dates import date_range

    if args.date:
        if args.start or args.end:
            raise SystemExit("give either --date or --start/--end, not both")
        return [args.date]
    if not (args.start and args.end):
        raise SystemExit("give --date YYYY-MM-DD, or both --start and --end")
    return date_range(args.start, args.end)


def _land(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.simulation.feed import land_feed

    days = _window(args)
    if not args.corrupt:
        return land_feed(days)
    from pipelines.core.lake import open_lake
    from pipelines.core.settings import get_settings
    from pipelines.simulation.corruption import corrupt
    from pipelines.simulation.feed import feed_csv, land_file

    lake = open_lake(get_settings())
    keys = [land_file(lake, args.table, day, corrupt(args.corrupt, feed_csv(args.table, day))) for day in days]
    return {"corrupt": args.corrupt, "landed": keys}


def _ingest(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.ingest.steps import ingest_feed

    return ingest_feed(_window(args))


def _validate(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.validation.steps import validate_partitions

    return validate_partitions(_window(args), run_key=args.run_key)


def _promote(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.validation.steps import check_quarantine, promote_partitions

    result = promote_partitions(_window(args))
    check_quarantine(result)
    return result


def _features(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.features.steps import build_features

    return build_features(_window(args))


def _materialize(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.features.store import materialize_features

    return materialize_features(_window(args))


def _ablation(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.training.ablation import format_ablation, run_ablation

    table = run_ablation(args.run_key, max_epochs=args.max_epochs)
    print(format_ablation(table))  # noqa: T201 - the command's output
    return {"run_key": args.run_key, "families": len(table["rows"]) - 1}


def _backtest(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.simulation.backtest import BacktestConfig, format_policy_table, run_backtest

    config = BacktestConfig(max_epochs=args.max_epochs, window_days=args.window_days)
    result = run_backtest(config=config, policies=args.policies, prepare=not args.no_prepare)
    print(format_policy_table(result["table"]))  # noqa: T201 - the command's output
    return {"report_paths": result["report_paths"], "seconds": result["seconds"],
            "trainings": len(result["trainings"])}


def _training_set(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.core.settings import get_settings
    from pipelines.features.store import training_set

    days = _window(args)
    frame = training_set(days)
    output = Path(args.output) if args.output else (
        get_settings().pipeline_home / "training" / f"training_set_{days[0]}_{days[-1]}.parquet")
    output.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(output, index=False)
    return {"rows": len(frame), "columns": list(frame.columns), "disruption_rate": float(frame["disrupted"].mean()),
            "output": str(output)}


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from datetime import UTC, datetime

    from pipelines.training.evaluation import format_evaluation
    from pipelines.training.steps import train_pipeline

    days = _window(args)
    run_key = args.run_key or f"cli/{days[-1]}/{datetime.now(UTC):%Y%m%dT%H%M%S}"
    result = train_pipeline(days, run_key, trials=args.trials, time_budget_s=args.time_budget_minutes * 60,
                            max_epochs=args.max_epochs, valid_days=args.valid_days, test_days=args.test_days)
    evaluation = result["evaluation"]
    table = format_evaluation(evaluation["metrics"], comparison=evaluation["network_vs_logistic_regression"])
    print(table, file=sys.stderr)  # noqa: T201 - the command's output
    return result


def _deploy(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.deploy.blue_green import deploy_service

    return deploy_service(version=args.version, force=args.force)


def _status(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.deploy.blue_green import status

    return status()


def _stop(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.deploy.blue_green import stop_all

    return {"stopped": stop_all()}


def _rollback(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.deploy.blue_green import rollback_deployment

    return rollback_deployment()


def _summary(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.ops.summary import format_summary, summarize

    summary = summarize(_window(args))
    print(format_summary(summary))  # noqa: T201 - the command's output
    return summary


def _prune(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.ops.retention import prune_lake
    from pipelines.simulation.feed import check_feed_days

    check_feed_days([args.date])  # a date past the feed would prune the whole of 2013
    return prune_lake(args.date, dry_run=args.dry_run)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.ops.demo import run_demo

    return run_demo(args.start, args.end)


def _year(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.ops.year import YEAR, run_year

    broken = dict(args.broken) if args.broken else None
    return run_year(args.start or YEAR[0], args.end or YEAR[1], broken=broken, profile=args.profile)


def _mail_server(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.core.settings import get_settings
    from pipelines.ops.mail_server import serve

    settings = get_settings()
    serve(settings.smtp_host, args.port or settings.smtp_port, settings.mail_folder)
    return {"stopped": True}


def _mail_start(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.ops.mail_server import start_mail_server

    return start_mail_server()


def _mail_stop(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.ops.mail_server import stop_mail_server

    return {"stopped": stop_mail_server()}


def _mail(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.ops.mail_server import message_files, read_message

    files = message_files()[-args.last:] if args.last else message_files()
    messages = []
    for path in files:
        message = read_message(path)
        messages.append({"file": str(path), "to": message["X-RcptTo"], "subject": message["Subject"],
                         "attachments": [part.get_filename() for part in message.iter_attachments()]})
    return {"messages": messages}


def _up(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.ops.stack import up

    say = lambda text: print(text, flush=True)  # noqa: E731, T201 - progress for the person at the terminal
    return up(args.profile, say=say)


def _down(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.ops.stack import down

    return {"stopped": down(args.profile)}


def _stack_status(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.ops.stack import status

    return status(args.profile)


def _iso(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _broken_day(value: str) -> tuple[date, str]:
    day, _, kind = value.partition(":")
    from pipelines.simulation.corruption import CORRUPTIONS

    if kind not in CORRUPTIONS:
        raise argparse.ArgumentTypeError(f"{value!r}: expected DAY:KIND with KIND one of {', '.join(CORRUPTIONS)}")
    return _iso(day), kind


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log library messages too")
    parser.add_argument("--env-file", type=Path, help="a profile's environment file (infra/prod.env: the "
                        "production profile); its values apply to every setting and every process started")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], Any], help_text: str,
                window: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if window:
            p.add_argument("--date", type=_iso, help="one partition date")
            p.add_argument("--start", type=_iso, help="first date of a window")
            p.add_argument("--end", type=_iso, help="last date of a window (inclusive)")
        p.set_defaults(handler=handler)
        return p

    land = command("land", _land, "Source: drop the day's flights and weather CSVs into landing/")
    land.add_argument("--corrupt",
                      help="land a known-broken flights file instead (see pipelines/simulation/corruption.py)")
    land.add_argument("--table", default="flights", choices=("flights", "weather"), help="table to corrupt")
    command("ingest", _ingest, "Landing CSV -> typed Parquet in raw/ (atomic overwrite)")
    validate = command("validate", _validate, "Run the GX checkpoints on raw partitions and write verdicts")
    validate.add_argument("--run-key", help="run key recorded in the verdicts and GX results")
    command("promote", _promote, "Promote to validated/ or quarantine each partition by its verdict")
    command("features", _features, "Compute feature tables from validated/ into features/ (one partition a day)")
    command("materialize", _materialize, "Apply feature_repo/ and materialize the window to the online store")
    training = command("training-set", _training_set,
                       "Point-in-time correct training set (features + label) for the window's flights")
    training.add_argument("--output", help="Parquet file to write (default: $PIPELINE_HOME/training/...)")
    train = command("train", _train, "Build the training set, tune (Optuna), train and evaluate against baselines")
    train.add_argument("--run-key", help="resume this run key's study and runs (default: a new key)")
    train.add_argument("--trials", type=int, default=20, help="finished Optuna trials to reach (default 20)")
    train.add_argument("--time-budget-minutes", type=float, default=30.0, help="tuning budget (default 30)")
    train.add_argument("--max-epochs", type=int, default=30, help="epochs per training at most (default 30)")
    train.add_argument("--valid-days", type=int, default=14, help="validation days before the test window")
    train.add_argument("--test-days", type=int, default=14, help="most recent days held out for evaluation")
    ablation = command("ablation", _ablation, "Retrain a run's final model with each feature family left out in "
                       "turn; test ROC AUC and Brier, logged to its MLflow run", window=False)
    ablation.add_argument("--run-key", required=True, help="the training run whose model and split to use")
    ablation.add_argument("--max-epochs", type=int, default=20, help="epochs per retraining at most (default 20)")
    backtest = command("backtest", _backtest, "What retraining is worth: the frozen, weekly and drift-triggered "
                       "policies replayed on 2013 (no tuning); per month ROC AUC, Brier and trainings, written to "
                       "reports/backtest/ (about 40 minutes on 2 cores, plus 3 to prepare a fresh lake)", window=False)
    backtest.add_argument("--policies", type=lambda text: [p for p in text.split(",") if p],
                          default=["frozen", "weekly", "drift"], help="comma-separated (default frozen,weekly,drift)")
    backtest.add_argument("--no-prepare", action="store_true",
                          help="use the lake as it is (default: land, ingest, validate and build what it lacks)")
    backtest.add_argument("--max-epochs", type=int, default=30, help="epochs per training at most (default 30)")
    backtest.add_argument("--window-days", type=int, default=DEFAULT_WINDOW_DAYS,
                          help=f"the weekly policy's training window, days before each Monday (default "
                               f"{DEFAULT_WINDOW_DAYS}, the training DAG's; 365: every day since January 1)")
    deploy = command("deploy", _deploy, "Serve the champion (or --version) at 127.0.0.1:$SERVICE_PORT: build its "
                     "Bento, "
                     "start it beside the live one, smoke-test, switch traffic", window=False)
    deploy.add_argument("--version", help="registered model version to serve (default: the champion)")
    deploy.add_argument("--force", action="store_true", help="redeploy even when that Bento is live already")
    command("status", _status, "What the model service's front door serves now", window=False)
    command("stop", _stop, "Stop the model service (front door and both slots) this home started", window=False)
    command("rollback", _rollback, "Make the previous champion the champion again and serve it", window=False)
    command("up", _up, "Start Airflow (UI, scheduler, DAG processor, triggerer, Celery workers in production), the "
            "mail server, the model service and the profile's local services; print the UI and its login",
            window=False)
    command("down", _down, "Stop everything up started, by process id", window=False)
    command("stack-status", _stack_status, "Which processes of the stack run (pid and port)", window=False)
    command("summary", _summary, "Print what the lake holds for a window")
    mail_server = command("mail-server", _mail_server, "Run the embedded mail server in the foreground: every "
                          "message to $SMTP_HOST:$SMTP_PORT becomes a .eml file in $PIPELINE_HOME/mail/", window=False)
    mail_server.add_argument("--port", type=int, help="port to listen on (default $SMTP_PORT, 8025)")
    command("mail-start", _mail_start, "Start this home's mail server in the background (make run does)",
            window=False)
    command("mail-stop", _mail_stop, "Stop this home's mail server (the messages stay)", window=False)
    mail = command("mail", _mail, "List the messages the mail server received: recipients, subject, attachments",
                   window=False)
    mail.add_argument("--last", type=int, default=0, help="only the last N messages")
    prune = command("prune", _prune, "Retention: delete prediction logs, Evidently reports, Data Docs and task logs "
                    "older than their RETENTION_*_DAYS before --date (the data's clock)", window=False)
    prune.add_argument("--date", type=_iso, required=True, help="the day to measure ages from (a run's day)")
    prune.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    run = command("run", _run, "Run the DAG chain (ingest, features, training) through Airflow over a window",
                  window=False)
    run.add_argument("--start", type=_iso, help="first date (default: the demo window)")
    run.add_argument("--end", type=_iso, help="last date (default: the demo window)")
    year = command("year", _year, "Run 2013 as production under Airflow's scheduler: history, then every day by "
                   "backfill, retraining, faults and their repair (resumable)", window=False)
    year.add_argument("--start", type=_iso, help="first production day (default 2013-04-01)")
    year.add_argument("--end", type=_iso, help="last production day (default 2013-12-31)")
    year.add_argument("--broken", type=_broken_day, action="append", metavar="DAY:KIND",
                      help="a day whose flights feed arrives broken, and how (a kind of the corruption catalogue); "
                           "repeatable; default: three days of May, August and October")
    return parser


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if not verbose:
        for noisy in ("great_expectations", "botocore", "boto3", "urllib3", "s3transfer", "feast", "optuna", "mlflow",
                      "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    from pipelines.ops.stack import apply_profile

    args.profile = apply_profile(args.env_file)  # before any settings are read
    try:
        result = args.handler(args)
    except KeyboardInterrupt:  # Ctrl-C: what was stopped has said so (make year: paused, continues when run again)
        return 130
    except Exception as error:  # one clear line for a person; the traceback only with --verbose
        if args.verbose:
            log.exception("%s failed", args.command)
        else:
            log.error("%s failed: %s", args.command, error)
        return 1
    if args.command == "up":
        return 0
    if args.command not in ("summary", "run", "year"):
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    return 0
