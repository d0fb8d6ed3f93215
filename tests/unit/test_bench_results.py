"""The measured figures file keeps every section and stamps each with when and where it was measured."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.core.bench_results import write_results


def test_a_section_is_added_beside_the_others_with_its_time_and_machine(tmp_path: Path) -> None:
    path = tmp_path / "bench" / "results.json"
    write_results(path, "ingestion", {"seconds": 67.4})
    write_results(path, "year", {"wall_s": 6000})
    write_results(path, "year", {"wall_s": 5900})
    results = json.loads(path.read_text())
    assert sorted(results) == ["ingestion", "year"]
    assert results["ingestion"]["seconds"] == 67.4 and results["year"]["wall_s"] == 5900
    assert {"measured_at", "machine"} <= set(results["year"]) and results["year"]["machine"]["cpus"] >= 1
