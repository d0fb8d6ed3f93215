"""Retention: what the pipeline can regenerate, or keeps summarised elsewhere, pruned once it is older than its age.

Four kinds, each with its age in days in the settings (``RETENTION_*_DAYS``) and each an allow-list of keys, so
nothing else can be touched: raw, validated and quarantined data, verdicts, features, training sets, models, labels,
leases, the replay's state, the monitoring summaries and the year and backtest reports are never listed here.

=================  ========================================================  =====================================
kind               what                                                      dated by
=================  ========================================================  =====================================
prediction_logs    ``{lake}/predictions/flight_delay/date=D/*.parquet``      ``D`` (the flights' New York date)
reports            ``{lake}/reports/monitoring/date=D/report.{html,json}``   ``D``; ``summary.json`` beside them stays
data_docs          ``$PIPELINE_HOME/gx/``: Data Docs pages and the GX        the partition date that ends the GX run
                   validation results they are rendered from                 name (``{run key}|{table}|D``)
task_logs          Airflow's ``dag_id=*/run_id=*/task_id=*/*.log``           the run id's time, as a New York date
=================  ========================================================  =====================================

Age is measured on the data's clock, never by file times or the wall clock: an object dated ``D`` is pruned by
the run of ``day`` when ``D < day - age`` (the **cutoff**, the first date kept). Airflow names a run by when it may
start (``run_after``): a scheduled or backfilled run by the end of its data interval, so its logs are dated a day
after the day they ran for (kept a day longer); a manual or Asset-triggered run by the wall clock, so in a replay
of 2013 those logs are never old enough (in production both clocks agree).

Data Docs' index page is not rebuilt here (that takes GX, seconds to import): it links to the pruned pages until
the next validation rebuilds it, which leaves out pages whose results are gone.

A dry run lists and deletes nothing. Deletion is idempotent: every run lists again what is there, and deleting a key
that is already gone is not an error, so a retried run finishes what an interrupted one began.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pipelines.core.dates import LOCAL_TZ
from pipelines.core.lake import MONITORING_REPORTS, REPORT_FILES, Lake, LocalLake, open_lake
from pipelines.core.settings import Settings, get_settings
from pipelines.ops.airflow_config import airflow_home

log = logging.getLogger(__name__)

Store = Literal["lake", "gx", "task_logs"]

_PARTITION = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})/")
_GX_RUN = re.compile(r"\|(\d{4}-\d{2}-\d{2})/")
_RUN_ID = re.compile(r"(?:^|/)run_id=[a-z_]+__(\d{4}-\d{2}-\d{2}T[0-9:.]+(?:[+-]\d{2}:?\d{2}|Z)?)[^/]*/")


def partition_date(key: str) -> date | None:
    """The date of a ``.../date=YYYY-MM-DD/...`` key; None for a key outside any partition."""
    found = _PARTITION.search(key)
    return _date(found.group(1)) if found else None


def evidently_report_date(key: str) -> date | None:
    """The day of a monitoring day's Evidently report (HTML or JSON); None for its summary and anything else."""
    if key.rsplit("/", 1)[-1] not in (REPORT_FILES["html"], REPORT_FILES["json"]):
        return None
    return partition_date(key)


def gx_run_date(key: str) -> date | None:
    """The partition date a GX result or Data Docs page judged: the end of its run name
    (``{run key}|{table}|YYYY-MM-DD``, ``pipelines.validation.partition``); None for the index and static assets."""
    found = _GX_RUN.search(key)
    return _date(found.group(1)) if found else None


def task_log_date(key: str) -> date | None:
    """The New York date of the run a task log belongs to, from its ``run_id={type}__{ISO time}`` folder; None for a
    run id without a time (named by hand) and for logs outside ``dag_id=*/run_id=*/``."""
    found = _RUN_ID.search(key)
    if not found:
        return None
    try:
        moment = datetime.fromisoformat(found.group(1))
    except ValueError:
        return None
    return (moment.astimezone(ZoneInfo(LOCAL_TZ)) if moment.tzinfo else moment).date()


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Kind:
    """One kind of prunable object: where it lives, the setting with its age, and the date of each key (None: not
    this kind, kept)."""

    name: str
    store: Store
    prefixes: tuple[str, ...]
    age_setting: str
    dated: Callable[[str], date | None]


KINDS = (
    Kind("prediction_logs", "lake", ("predictions/",), "retention_prediction_logs_days", partition_date),
    Kind("reports", "lake", (f"{MONITORING_REPORTS}/",), "retention_reports_days", evidently_report_date),
    Kind("data_docs", "gx", ("data_docs/validations/", "validations/"), "retention_data_docs_days", gx_run_date),
    Kind("task_logs", "task_logs", ("",), "retention_task_logs_days", task_log_date),
)


def task_logs_dir(settings: Settings) -> Path:
    return settings.task_logs_dir or airflow_home(settings) / "logs"


def stores(settings: Settings) -> dict[Store, Lake]:
    """Where each kind lives: the lake (local or S3), and this machine's GX output and Airflow task logs."""
    return {"lake": open_lake(settings), "gx": LocalLake(settings.gx_output_dir),
            "task_logs": LocalLake(task_logs_dir(settings))}


def prune_lake(day: date, settings: Settings | None = None, *, dry_run: bool = False) -> dict[str, Any]:
    """Delete (or, with ``dry_run``, only list) every object of ``KINDS`` dated before its cutoff, ``day`` minus
    the kind's age. Returns per kind its age, cutoff (first date kept), where it lives, and the objects and bytes
    removed (or that would be) with their oldest and newest dates; and the totals."""
    settings = settings or get_settings()
    where = stores(settings)
    kinds: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        store = where[kind.store]
        age = int(getattr(settings, kind.age_setting))
        cutoff = day - timedelta(days=age)
        doomed: dict[str, tuple[int, date]] = {}
        for prefix in kind.prefixes:
            for key, size in store.list_sizes(prefix).items():
                dated = kind.dated(key)
                if dated is not None and dated < cutoff:
                    doomed[key] = (size, dated)
        if doomed and not dry_run:
            store.delete_keys(sorted(doomed))
        dates = sorted({dated for _, dated in doomed.values()})
        kinds[kind.name] = {
            "age_days": age, "cutoff": cutoff.isoformat(), "where": store.uri,
            "objects": len(doomed), "bytes": sum(size for size, _ in doomed.values()),
            "oldest": dates[0].isoformat() if dates else None, "newest": dates[-1].isoformat() if dates else None}
        log.info("prune_lake %s: %s %d %s (%s bytes) dated before %s (%d days before %s)%s in %s",
                 day, "would remove" if dry_run else "removed", len(doomed), kind.name,
                 f"{kinds[kind.name]['bytes']:,}", cutoff, age, day,
                 f", {dates[0]} .. {dates[-1]}" if dates else "", store.uri)
    return {"day": day.isoformat(), "dry_run": dry_run, "kinds": kinds,
            "objects": sum(k["objects"] for k in kinds.values()), "bytes": sum(k["bytes"] for k in kinds.values())}
