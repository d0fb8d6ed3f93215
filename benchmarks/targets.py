"""The end of ``make bench``: every figure it judges, one row each with its value, its target or the ratio it is
judged by, and whether it is met; printed and written as ``targets`` in the results file (the README's table
copies it). A section that did not run (no ``wrk``, no Redis) gives a row saying so, never a silent pass."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from benchmarks.console import say

REPORT_TARGET_S = 2.0
"""One day's Evidently report, built from the served and labelled frames (issue 18)."""

Row = dict[str, Any]
Figure = Callable[[Mapping[str, Any]], tuple[float, bool | None]]


def _row(results: Mapping[str, Any], figure: str, target: str, measure: Figure) -> Row:
    try:
        value, met = measure(results)
    except (KeyError, TypeError) as error:  # the section was skipped, or failed before this figure
        return {"figure": figure, "value": None, "target": target, "met": None, "note": f"not measured ({error})"}
    return {"figure": figure, "value": value, "target": target, "met": met}


def _serving_ratio(key: str, concurrency: str, bound: float | None, at_least: bool) -> Figure:
    """A ratio of the serving section at one concurrency, judged against ``bound`` (None: reported only)."""
    def measure(results: Mapping[str, Any]) -> tuple[float, bool | None]:
        ratio = float(results["serving"][key][concurrency])
        if bound is None:
            return ratio, None
        return ratio, ratio >= bound if at_least else ratio <= bound
    return measure


def target_rows(results: Mapping[str, Any]) -> list[Row]:
    """The rows, from ``run_benchmarks``' sections (``ingestion``, ``features``, ``serving``, ``monitoring``)."""
    from benchmarks.features import TARGETS as FEATURES
    from benchmarks.serving import JUDGED_AT
    from benchmarks.serving import TARGETS as SERVING

    rows = [_row(results, "year's feed landed, ingested, validated, promoted (s)",
                 f"<= {results.get('ingestion', {}).get('land_to_promote_target_seconds', 90)} s",
                 lambda r: (r["ingestion"]["land_to_promote_seconds"],
                            r["ingestion"]["land_to_promote_seconds"] <= r["ingestion"]
                            ["land_to_promote_target_seconds"])),
            _row(results, "year materialized into Redis, ours (s)", f"<= {FEATURES['materialize_year_seconds']:g} s",
                 lambda r: (r["features"]["materialize_redis"]["ours"]["seconds"],
                            r["features"]["materialize_redis"]["ours"]["seconds"]
                            <= FEATURES["materialize_year_seconds"])),
            _row(results, "  its speed against stock Feast (x)", "> 1 (same bytes)",
                 lambda r: (r["features"]["materialize_redis"]["speedup"],
                            r["features"]["materialize_redis"]["speedup"] > 1
                            and r["features"]["targets_met"]["materialize_identical_to_stock"])),
            _row(results, "demo window's training set, ours (s)", f"<= {FEATURES['training_set_seconds']:g} s",
                 lambda r: (r["features"]["training_set"]["seconds"],
                            r["features"]["training_set"]["seconds"] <= FEATURES["training_set_seconds"])),
            _row(results, "  its speed against stock Feast (x)", "> 1 (same frame)",
                 lambda r: (r["features"]["training_set"]["speedup"],
                            r["features"]["training_set"]["speedup"] > 1
                            and r["features"]["training_set"]["identical"])),
            _row(results, "online read of 1 flight, p99 (ms)", f"< {FEATURES['online_1_p99_ms']:g} ms",
                 lambda r: (r["features"]["online"]["1_flight"]["ours"]["p99_ms"],
                            r["features"]["online"]["1_flight"]["ours"]["p99_ms"] < FEATURES["online_1_p99_ms"])),
            _row(results, "online read of 100 flights, p99 (ms)", f"< {FEATURES['online_100_p99_ms']:g} ms",
                 lambda r: (r["features"]["online"]["100_flights"]["ours"]["p99_ms"],
                            r["features"]["online"]["100_flights"]["ours"]["p99_ms"]
                            < FEATURES["online_100_p99_ms"]))]
    for c in ("1", *JUDGED_AT):
        judged = c in JUDGED_AT
        rows.append(_row(results, f"service/bare BentoML, requests/s at c={c}",
                         f">= {SERVING['throughput_vs_bare']:.2f}" if judged else "reported",
                         _serving_ratio("ratio_ours_to_bare", c, SERVING["throughput_vs_bare"] if judged else None,
                                        at_least=True)))
        rows.append(_row(results, f"service/bare BentoML, p99 at c={c}",
                         f"<= {SERVING['p99_vs_bare']:.1f}" if judged else "reported",
                         _serving_ratio("p99_ratio_ours_to_bare", c, SERVING["p99_vs_bare"] if judged else None,
                                        at_least=False)))
    rows.append(_row(results, "service/bare BentoML, requests/s, 100 flights a request at c=8", "reported",
                     lambda r: (r["serving"]["batch"]["ratio_ours_to_bare"], None)))
    rows.append(_row(results, "one day's Evidently report (s)", f"<= {REPORT_TARGET_S:g} s",
                     lambda r: (r["monitoring"]["reports"]["one_day"]["build_report_seconds"],
                                r["monitoring"]["reports"]["one_day"]["build_report_seconds"] <= REPORT_TARGET_S)))
    return rows


def print_targets(rows: list[Row]) -> None:
    say("Targets")
    say(f"  {'figure':<62}{'value':>9}  {'target':<18}met")
    for row in rows:
        value = "-" if row["value"] is None else f"{row['value']:g}"
        met = {True: "yes", False: "NO", None: "-"}[row["met"]]
        say(f"  {row['figure']:<62}{value:>9}  {row['target']:<18}{met}" + (f"  {row['note']}" if "note" in row
                                                                             else ""))
