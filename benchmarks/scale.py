"""``make bench-scale``: the year's feed at 1x, 3x and 10x through ingestion, validation, feature building,
materialization and a historical retrieval; time and peak memory of each stage at each size, and the curve as a PNG.

The larger sizes are time-shifted copies of 2013: copy ``c`` is the year moved ``365 * c`` days later (so 10x is ten
consecutive years of days, 2013-01-01 .. 2022-12-29), the flight numbers rotated by ``1000 * c`` within the
contract's 1..9999 (still unique per carrier, origin and day), and the weather moved with it. Every day keeps a real
day's row count, so the contract's volume bounds hold and every size is judged by the same suites.

Each stage of each size runs in a process of its own, in order (land, ingest, validate and promote, build features,
materialize into the embedded profile's SQLite online store, retrieve): its peak memory is that process's peak
resident set (the imports included, about the same at every size), its time the stage's own call. The retrieval is
the training set of the data's last 90 days (what a retrain asks for): the entity rows are the same at every size,
the offline store it reads grows with it (a training set of all 3.4 million flights of 10x would be a 3 GB frame
before any join; the pipeline never asks for one). A stage is called linear when its time grows no faster than the
rows: the exponent ``log(t_10x / t_1x) / log(10)`` at most 1.1 (1.0 is linear; noise on 2 cores is a few percent).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess  # nosec B404 - runs this module's own stages with this interpreter
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.core.settings import Settings

FIRST_DAY = date(2013, 1, 1)
FACTORS = (1, 3, 10)
STAGES = ("land", "ingest", "validate", "features", "materialize", "retrieve")
MEMORY_LIMIT_MB = 4096
LINEAR_EXPONENT = 1.1
FLIGHT_NUMBERS = 9999  # the contract's flight numbers are 1..9999
TIME_HOUR = "%Y-%m-%dT%H:%M:%SZ"  # the feed's ``time_hour`` text
STAGE_TIMEOUT_S = 3600
RETRIEVAL_DAYS = 90


def scaled_days(factor: int) -> list[date]:
    from pipelines.core.dates import date_range

    return date_range(FIRST_DAY, FIRST_DAY + timedelta(days=365 * factor - 1))


def shifted_copy(rows: pd.DataFrame, table: str, copy: int) -> pd.DataFrame:
    """One feed file's text rows moved ``365 * copy`` days later, flight numbers rotated.

    Copy 0 goes through the same steps (moved by nothing), so landing a day costs the same at every size: when copy 0
    was passed through untouched, the 1x landing did a third of a copy's work per day and its growth read as worse
    than linear (1.13) though the pipeline's own landing is not in it. The hours are parsed once each (a day has
    about 24), not once a row."""
    if rows.empty:
        return rows
    shift = pd.Timedelta(days=365 * copy)
    rows = rows.copy()
    day = (pd.Timestamp(int(rows["year"].iloc[0]), int(rows["month"].iloc[0]), int(rows["day"].iloc[0])) + shift)
    rows["year"], rows["month"], rows["day"] = str(day.year), str(day.month), str(day.day)
    hours = rows["time_hour"].unique()
    moved = (pd.to_datetime(pd.Series(hours), utc=True, format=TIME_HOUR) + shift).dt.strftime(TIME_HOUR)
    rows["time_hour"] = rows["time_hour"].map(dict(zip(hours, moved, strict=True)))
    if table == "flights":
        rows["flight"] = ((rows["flight"].astype(int) - 1 + 1000 * copy) % FLIGHT_NUMBERS + 1).astype(str)
    return rows


# ------------------------------------------------------------------------------------------------------------------
# the stages, each run in its own process
# ------------------------------------------------------------------------------------------------------------------


def _land(settings: Settings, days: list[date]) -> dict[str, Any]:
    import io

    from pipelines.core.lake import open_lake
    from pipelines.core.names import FEED_TABLES
    from pipelines.simulation.feed import feed_csv, land_file, land_reference

    lake = open_lake(settings)
    land_reference(lake)
    rows = 0
    for i, day in enumerate(days):
        copy, source_day = divmod(i, 365)
        source = FIRST_DAY + timedelta(days=source_day)
        for table in FEED_TABLES:
            text = pd.read_csv(io.BytesIO(feed_csv(table, source)), dtype=str, keep_default_na=False)
            frame = shifted_copy(text, table, copy)
            land_file(lake, table, day, frame.to_csv(index=False, lineterminator="\n").encode())
            rows += len(frame) if table == "flights" else 0
    return {"flights": rows}


def _ingest(settings: Settings, days: list[date]) -> dict[str, Any]:
    from pipelines.ingest.steps import ingest_feed

    return {"flights": ingest_feed(days, settings)["rows"]["flights"]}


def _validate(settings: Settings, days: list[date]) -> dict[str, Any]:
    from pipelines.validation.steps import promote_partitions, validate_partitions

    verdicts = validate_partitions(days, settings)
    promote_partitions(days, settings)
    return {k: verdicts[k] for k in ("passed", "warned", "quarantined")}


def _features(settings: Settings, days: list[date]) -> dict[str, Any]:
    from pipelines.features.steps import build_features

    return {"rows": sum(build_features(days, settings)["rows"].values())}


def _materialize(settings: Settings, days: list[date]) -> dict[str, Any]:
    from pipelines.features.store import materialize_features

    result = materialize_features(days, settings)
    return {"engine": result.get("engine")}


def _retrieve(settings: Settings, days: list[date]) -> dict[str, Any]:
    """The training set of the data's last ``RETRIEVAL_DAYS`` (what a retrain asks for) from an offline store holding
    every size's days: the entity rows stay the same, the store grows."""
    from pipelines.features.store import training_set

    frame = training_set(days[-RETRIEVAL_DAYS:], settings)
    return {"rows": len(frame), "columns": frame.shape[1]}


_STAGE_CALLS: dict[str, Callable[[Settings, list[date]], dict[str, Any]]] = {
    "land": _land, "ingest": _ingest, "validate": _validate, "features": _features, "materialize": _materialize,
    "retrieve": _retrieve}


def run_stage(stage: str, home: Path, gx_root: Path, factor: int, out: Path) -> None:
    """One stage at one size in this process; writes its seconds, peak memory and counts to ``out``."""
    settings = Settings(pipeline_home=home, gx_root=gx_root)
    days = scaled_days(factor)
    started = time.perf_counter()
    counts = _STAGE_CALLS[stage](settings, days)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out.write_text(json.dumps({"seconds": round(seconds, 2), "peak_mb": round(peak_mb), **counts}))


# ------------------------------------------------------------------------------------------------------------------
# the curve
# ------------------------------------------------------------------------------------------------------------------


def bench_scale(work: Path, gx_root: Path, log_file: Path, factors: tuple[int, ...] = FACTORS,
                say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every stage at every size, a fresh home per size; stops at the first stage that fails."""
    sizes: dict[str, dict[str, Any]] = {}
    for factor in factors:
        home = work / f"x{factor}"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        stages: dict[str, Any] = {}
        for stage in STAGES:
            out = home / f"stage_{stage}.json"
            with log_file.open("a") as log:
                subprocess.run(  # nosec B603 - this interpreter, this module
                    [sys.executable, "-m", "benchmarks.scale", "--stage", stage, "--home", str(home),
                     "--gx-root", str(gx_root), "--factor", str(factor), "--out", str(out)],
                    stdout=log, stderr=subprocess.STDOUT, check=True, timeout=STAGE_TIMEOUT_S)
            stages[stage] = json.loads(out.read_text())
            say(f"  {factor}x {stage:<12}{stages[stage]['seconds']:>9.1f} s{stages[stage]['peak_mb']:>8,} MB")
        sizes[f"{factor}x"] = {"days": 365 * factor, "flights": stages["ingest"]["flights"], "stages": stages}
        shutil.rmtree(home / "lake", ignore_errors=True)  # 10x keeps about 1 GB of lake otherwise
    return {"sizes": sizes, "growth": growth(sizes), "memory_limit_mb": MEMORY_LIMIT_MB,
            "linear_exponent_limit": LINEAR_EXPONENT}


def growth(sizes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per stage: the exponent of time against rows between the smallest and the largest size, and the verdicts."""
    keys = sorted(sizes, key=lambda k: sizes[k]["flights"])
    small, large = sizes[keys[0]], sizes[keys[-1]]
    ratio = large["flights"] / small["flights"]
    verdicts = {}
    for stage in STAGES:
        t_small, t_large = small["stages"][stage]["seconds"], large["stages"][stage]["seconds"]
        exponent = math.log(t_large / t_small) / math.log(ratio) if ratio > 1 and t_small > 0 else float("nan")
        peak = max(sizes[k]["stages"][stage]["peak_mb"] for k in keys)
        verdicts[stage] = {"exponent": round(exponent, 3), "linear": exponent <= LINEAR_EXPONENT,
                           "peak_mb": peak, "within_memory": peak <= MEMORY_LIMIT_MB,
                           "seconds_per_million_flights": {
                               k: round(sizes[k]["stages"][stage]["seconds"] / sizes[k]["flights"] * 1e6, 1)
                               for k in keys}}
    return verdicts


def plot_scale(figures: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = figures["sizes"]
    keys = sorted(sizes, key=lambda k: sizes[k]["flights"])
    flights = [sizes[k]["flights"] / 1e6 for k in keys]
    fig, (times, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in STAGES:
        seconds = [sizes[k]["stages"][stage]["seconds"] for k in keys]
        times.plot(flights, seconds, marker="o", label=stage)
        memory.plot(flights, [sizes[k]["stages"][stage]["peak_mb"] / 1024 for k in keys], marker="o", label=stage)
    linear = [sizes[keys[0]]["stages"][s]["seconds"] for s in STAGES]
    times.plot(flights, [max(linear) * f / flights[0] for f in flights], color="grey", linestyle=":",
               label="linear (slowest stage at 1x)")
    times.set(xscale="log", yscale="log", xlabel="flights (millions)", ylabel="seconds",
              title="Time per stage")
    memory.axhline(MEMORY_LIMIT_MB / 1024, color="red", linestyle="--", label="4 GiB limit")
    memory.set(xscale="log", xlabel="flights (millions)", ylabel="peak resident memory (GiB)",
               title="Peak memory per stage (its own process)")
    for axis in (times, memory):
        axis.set_xticks(flights, [f"{k}\n{f:.2f} M" for k, f in zip(keys, flights, strict=True)])
        axis.set_xticks([], minor=True)  # the log scale's own minor labels overprinted the sizes
        axis.grid(True, which="both", alpha=0.3)
    times.legend(fontsize=8)
    memory.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_scale(figures: dict[str, Any], say: Callable[[str], None]) -> None:
    sizes = figures["sizes"]
    keys = sorted(sizes, key=lambda k: sizes[k]["flights"])
    say("Scale curve: seconds (peak MB) per stage")
    say(f"  {'stage':<12}" + "".join(f"{k + ' ' + format(sizes[k]['flights'], ','):>22}" for k in keys)
        + f"{'exponent':>10}  verdict")
    for stage in STAGES:
        cells = "".join(f"{sizes[k]['stages'][stage]['seconds']:>12.1f} ({sizes[k]['stages'][stage]['peak_mb']:>6,})"
                        for k in keys)
        verdict = figures["growth"][stage]
        say(f"  {stage:<12}{cells}{verdict['exponent']:>10.2f}  "
            + ("linear" if verdict["linear"] else "WORSE THAN LINEAR") + ", "
            + ("within 4 GiB" if verdict["within_memory"] else "OVER 4 GiB"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--factors", default=",".join(map(str, FACTORS)), help="sizes, as multiples of the year")
    parser.add_argument("--png", type=Path, help="also copy the plot here (docs/scale_curve.png for the README)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # a child: one stage at one size
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--gx-root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--factor", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from pipelines.cli import configure_logging

    configure_logging(False)
    if args.stage:
        run_stage(args.stage, args.home, args.gx_root, args.factor, args.out)
        return 0

    from benchmarks.console import say
    from pipelines.core.bench_results import write_results
    from pipelines.core.settings import get_settings

    settings = get_settings()
    bench_dir = settings.pipeline_home / "bench"
    log_file = bench_dir / "scale.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    factors = tuple(int(f) for f in args.factors.split(","))
    say(f"make bench-scale: the year at {', '.join(f'{f}x' for f in factors)}; each stage's output in {log_file}")
    try:
        figures = bench_scale(bench_dir / "scale", settings.gx_root, log_file, factors, say)
    except subprocess.CalledProcessError as error:
        say(f"bench-scale failed: a stage exited {error.returncode} (details: {log_file})")
        return 1
    png = plot_scale(figures, bench_dir / "scale_curve.png")
    if args.png:
        shutil.copyfile(png, args.png)
    write_results(bench_dir / "results.json", "scale", figures | {"plot": str(png)})
    print_scale(figures, say)
    say(f"Plot: {png}; results in {bench_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
