"""The measured figures file, ``$PIPELINE_HOME/bench/results.json``: one section per measurement (``make bench``'s
sections, ``make bench-scale``'s curve, ``make year``'s per-day costs), each stamped with when and on what machine
it was measured, so a figure is never read without its context."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.core.files import write_atomically
from pipelines.core.settings import Settings


def results_file(settings: Settings) -> Path:
    return settings.pipeline_home / "bench" / "results.json"


def write_results(path: Path, section: str, figures: dict[str, Any]) -> None:
    """``figures`` as ``section`` of the file at ``path`` (other sections kept), with the time and the machine."""
    results = json.loads(path.read_text()) if path.exists() else {}
    results[section] = figures | {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    write_atomically(path, json.dumps(results, indent=2, sort_keys=True, default=str).encode(), durable=False)
