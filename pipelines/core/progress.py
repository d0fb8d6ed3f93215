"""Progress of range-level steps in the log, so a long window is never silent."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


def log_progress(step: str, done: int, total: int, started: float, every: int = 10) -> None:
    if done == total or done % every == 0:
        log.info("%s: %d/%d partitions (%.1fs)", step, done, total, time.perf_counter() - started)
