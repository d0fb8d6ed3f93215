"""``make bench``: throughput of the pipeline's stages, printed as a table and merged into ``results.json``.

Runs the steps directly (no Airflow) on a scratch home under ``$PIPELINE_HOME/bench/work`` so the user's lake is
untouched. Later issues add their own sections to the same results file.

Sections: ``ingestion`` (land, ingest, validate, promote the window), ``features`` (``benchmarks/features.py``:
materialization of the year 2013 into Redis and SQLite, a 90-day training set, online reads; each beside stock
Feast on the same data in the same run), ``training`` (``benchmarks/training.py``: samples/s of the default model
with sliced tensors and with a per-sample DataLoader, CPU and, when present, CUDA), ``serving`` (
``benchmarks/serving.py``: the model service under wrk at concurrency 1, 8 and 32 beside a bare BentoML service with the
same model, and where one request's time goes) and ``monitoring`` (``benchmarks/monitoring.py``: one day's Evidently
report and a 30-day one).
"""

from __future__ import annotations

import shutil
import time
from datetime import date
from typing import Any

from benchmarks.console import say
from pipelines.core.bench_results import results_file, write_results
from pipelines.core.settings import Settings, get_settings


def _timed(step: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = step(*args, **kwargs)
    return result, time.perf_counter() - started


ONE_BY_ONE_DAYS = 7
"""Days also judged one checkpoint run per partition, for GX's cost per partition without windows."""
INGEST_AND_VALIDATE_TARGET_S = 90


def bench_ingestion(settings: Settings, start: date, end: date) -> dict[str, Any]:
    from pipelines.core.dates import date_range
    from pipelines.core.lake import open_lake
    from pipelines.core.names import FEED_TABLES
    from pipelines.ingest.steps import ingest_feed
    from pipelines.simulation.feed import land_feed
    from pipelines.validation.partition import gx_context, validate_partition
    from pipelines.validation.steps import promote_partitions, validate_partitions

    days = date_range(start, end)
    _, land_s = _timed(land_feed, days, settings)
    ingested, ingest_s = _timed(ingest_feed, days, settings)
    rows = sum(ingested["rows"].values())
    # GX loads its project once per process (~3 s); measured apart so the per-row figure is the steady state.
    _, context_s = _timed(gx_context, settings)
    validated, validate_s = _timed(validate_partitions, days, settings)
    _, promote_s = _timed(promote_partitions, days, settings)
    partitions = len(days) * len(ingested["rows"])
    # The same days' verdicts again, one checkpoint run per partition (what a daily run does): GX's fixed cost.
    lake, sample = open_lake(settings), days[:ONE_BY_ONE_DAYS]
    _, alone_s = _timed(lambda: [validate_partition(lake, settings, t, d) for d in sample for t in FEED_TABLES])
    total = land_s + ingest_s + validate_s + promote_s
    return {
        "window": f"{start}..{end}",
        "days": len(days),
        "partitions": partitions,
        "rows": rows,
        "land_seconds": round(land_s, 2),
        "ingest_seconds": round(ingest_s, 2),
        "ingest_rows_per_s": round(rows / ingest_s),
        "gx_context_seconds": round(context_s, 2),
        "validate_seconds": round(validate_s, 2),
        "validate_rows_per_s": round(rows / validate_s),
        "validate_partitions_per_s": round(partitions / validate_s, 1),
        "validate_ms_per_partition": round(1000 * validate_s / partitions, 1),
        "checkpoint_ms_per_partition_one_by_one": round(1000 * alone_s / (len(sample) * len(FEED_TABLES)), 1),
        "promote_seconds": round(promote_s, 2),
        "land_to_promote_seconds": round(total, 2),
        "land_to_promote_target_seconds": INGEST_AND_VALIDATE_TARGET_S,
        "outcomes": {k: validated[k] for k in ("passed", "warned", "quarantined")},
    }


def run_benchmarks(start: date | None = None, end: date | None = None) -> dict[str, Any]:
    from benchmarks.features import YEAR

    settings = get_settings()
    start, end = start or YEAR[0], end or YEAR[1]
    bench_dir = settings.pipeline_home / "bench"
    work = bench_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    scratch = Settings(pipeline_home=work, gx_root=settings.gx_root)

    say(f"[1/5] Ingestion and validation of {start} .. {end}...")
    figures = bench_ingestion(scratch, start, end)
    write_results(results_file(settings), "ingestion", figures)
    _print_ingestion(figures)

    from benchmarks.features import bench_features, print_features

    say("[2/5] Features: the year's materialization (stock and ours), a training set, pushes, online reads...")
    features = bench_features(scratch, validated=(start, end), demo=(settings.demo_start, settings.demo_end))
    write_results(results_file(settings), "features", features)
    print_features(features)

    from benchmarks.training import bench_training, print_training
    from pipelines.core.dates import date_range
    from pipelines.features.store import training_set

    say("[3/5] Training throughput...")
    training = bench_training(training_set(date_range(settings.demo_start, settings.demo_end), scratch))
    write_results(results_file(settings), "training", training)
    print_training(training)

    from benchmarks.serving import bench_serving, print_serving

    say("[4/5] Serving: the service and bare BentoML under wrk...")
    serving = bench_serving(scratch, date_range(settings.demo_start, settings.demo_end))
    write_results(results_file(settings), "serving", serving)
    print_serving(serving)

    from benchmarks.monitoring import bench_monitoring, print_monitoring

    say("[5/5] Monitoring reports...")
    monitoring = bench_monitoring(scratch)
    write_results(results_file(settings), "monitoring", monitoring)
    print_monitoring(monitoring)

    from benchmarks.targets import print_targets, target_rows

    results = {"ingestion": figures, "features": features, "training": training, "serving": serving,
               "monitoring": monitoring}
    targets = target_rows(results)
    write_results(results_file(settings), "targets", {"rows": targets})
    print_targets(targets)
    say(f"Results written to {results_file(settings)}")
    return results | {"targets": targets}


def _print_ingestion(figures: dict[str, Any]) -> None:
    say(f"Ingestion and validation, {figures['window']} ({figures['partitions']} partitions, {figures['rows']:,} rows)")
    say(f"  {'stage':<12}{'seconds':>10}{'rows/s':>12}")
    say(f"  {'land':<12}{figures['land_seconds']:>10}{'':>12}")
    say(f"  {'ingest':<12}{figures['ingest_seconds']:>10}{figures['ingest_rows_per_s']:>12,}")
    say(f"  {'validate':<12}{figures['validate_seconds']:>10}{figures['validate_rows_per_s']:>12,}")
    say(f"  {'promote':<12}{figures['promote_seconds']:>10}{'':>12}")
    say(f"  {'in all':<12}{figures['land_to_promote_seconds']:>10}{'':>12}  (target "
        f"{figures['land_to_promote_target_seconds']} s for the year)")
    say(f"  GX per partition: {figures['validate_ms_per_partition']} ms in windows, "
        f"{figures['checkpoint_ms_per_partition_one_by_one']} ms one checkpoint run each; project load once per "
        f"process {figures['gx_context_seconds']}s; outcomes {figures['outcomes']}")
