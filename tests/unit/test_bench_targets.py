"""The table at the end of ``make bench``: each figure judged against its target, a skipped section said so."""

from __future__ import annotations

from typing import Any

from benchmarks.targets import target_rows


def _results(service_ratio_at_8: float) -> dict[str, Any]:
    return {
        "ingestion": {"land_to_promote_seconds": 71.3, "land_to_promote_target_seconds": 90},
        "features": {"materialize_redis": {"ours": {"seconds": 1.9}, "speedup": 5.5},
                     "targets_met": {"materialize_identical_to_stock": True},
                     "training_set": {"seconds": 13.7, "speedup": 2.1, "identical": True},
                     "online": {"1_flight": {"ours": {"p99_ms": 0.41}}, "100_flights": {"ours": {"p99_ms": 4.3}}}},
        "serving": {"ratio_ours_to_bare": {"1": 0.8, "8": service_ratio_at_8, "32": 0.93},
                    "p99_ratio_ours_to_bare": {"1": 1.4, "8": 1.1, "32": 1.3},
                    "batch": {"ratio_ours_to_bare": 0.97}},
        "monitoring": {"reports": {"one_day": {"build_report_seconds": 1.8}}},
    }


def test_each_figure_is_judged_against_its_target() -> None:
    rows = {row["figure"]: row for row in target_rows(_results(service_ratio_at_8=0.91))}
    assert rows["year's feed landed, ingested, validated, promoted (s)"] == {
        "figure": "year's feed landed, ingested, validated, promoted (s)", "value": 71.3, "target": "<= 90 s",
        "met": True}
    assert rows["demo window's training set, ours (s)"]["met"] is False  # 13.7 s against 10
    assert rows["service/bare BentoML, requests/s at c=8"]["met"] is True
    assert rows["service/bare BentoML, p99 at c=32"]["met"] is False  # 1.3 against 1.2
    assert rows["service/bare BentoML, requests/s at c=1"]["met"] is None  # reported, not judged
    assert rows["one day's Evidently report (s)"]["met"] is True
    slower = {row["figure"]: row for row in target_rows(_results(service_ratio_at_8=0.72))}
    assert slower["service/bare BentoML, requests/s at c=8"] == {
        "figure": "service/bare BentoML, requests/s at c=8", "value": 0.72, "target": ">= 0.90", "met": False}


def test_a_section_that_did_not_run_is_not_measured_rather_than_met() -> None:
    results = _results(0.95)
    results["serving"] = {"skipped": "wrk is not installed"}
    rows = [row for row in target_rows(results) if row["figure"].startswith("service/")]
    assert rows and all(row["met"] is None and row["note"].startswith("not measured") for row in rows)
