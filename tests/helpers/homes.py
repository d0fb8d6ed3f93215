"""A home of a test's own, copied from the shared champion's: the lake and the model, not its services' state."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path
from typing import Any

from pipelines.core.settings import Settings

# What a copy leaves behind: the shared home's processes, logs, deployments, Bentos, Feast registry and online store,
# and its served traffic.
NOT_COPIED = ("airflow", "run", "logs", "deploy", "bentoml", "feast", "predictions", "replay")


def copy_champion_home(champion_settings: Settings, home: Path, **update: Any) -> Settings:
    """``champion_settings``' lake copied to ``home``; the same registry and tracking (read, never changed)."""
    shutil.copytree(champion_settings.pipeline_home, home, ignore=shutil.ignore_patterns(*NOT_COPIED))
    return champion_settings.model_copy(update={"pipeline_home": home, **update})


def ingest_days(days: list[date], settings: Settings) -> None:
    """The feed of ``days`` landed, ingested, validated and promoted, as flights_ingest does."""
    from pipelines.ingest.steps import ingest_feed
    from pipelines.simulation.feed import land_feed
    from pipelines.validation.steps import promote_partitions, validate_partitions

    for step in (land_feed, ingest_feed, validate_partitions, promote_partitions):
        step(days, settings)
