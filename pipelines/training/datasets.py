"""Training sets in the lake: the point-in-time features of a window's validated flights from Feast, split by time
into train / valid / test under ``training/{run}/`` with a manifest (rows, dates, validation runs, content hash),
and the keys of a run's model files under ``models/{run}/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Iterable
from datetime import date
from typing import Any

import pandas as pd

from pipelines.core.lake import partition_key, settings_and_lake
from pipelines.core.runs import run_slug
from pipelines.core.settings import Settings
from pipelines.validation.partition import VERDICT_FILE

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


def _split_key(run_key: str, split: str) -> str:
    return f"training/{run_slug(run_key)}/{split}.parquet"


def model_key(run_key: str, name: str) -> str:
    return f"models/{run_slug(run_key)}/{name}"



def build_training_set(days: Iterable[date], run_key: str, settings: Settings | None = None, *,
                       valid_days: int = 14, test_days: int = 14) -> dict[str, Any]:
    """Point-in-time training set for the window's validated flights, split by time into train / valid / test,
    written to ``training/{run}/`` with a manifest (rows, dates, disruption rates, content hash)."""
    from pipelines.core.dates import LOCAL_TZ
    from pipelines.core.names import LABEL, TIME_COLUMN
    from pipelines.features.store import FEATURE_SERVICE, training_set
    from pipelines.training.fit import time_split

    settings, lake = settings_and_lake(settings)
    days = sorted(days)
    present = set(lake.partitions("validated", "flights"))
    used = [d for d in days if d in present]
    if not used:
        raise ValueError(f"no validated flights between {days[0]} and {days[-1]}: run flights_ingest and "
                         "flight_features for that window first")
    missing = [d for d in days if d not in present]
    if missing:
        log.warning("%d of %d days have no validated flights and are left out: %s", len(missing), len(days),
                    ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else ""))
    started = time.perf_counter()
    frame = training_set(used, settings)
    parts = dict(zip(SPLITS, time_split(frame, valid_days=valid_days, test_days=test_days), strict=True))
    digest = hashlib.sha256()
    splits: dict[str, Any] = {}
    for name, part in parts.items():
        buffer = io.BytesIO()
        part.to_parquet(buffer, index=False)
        data = buffer.getvalue()
        digest.update(data)
        lake.write_bytes(_split_key(run_key, name), data)
        departures = pd.to_datetime(part[TIME_COLUMN], utc=True).dt.tz_convert(LOCAL_TZ)
        splits[name] = {"rows": len(part), "first_departure": str(departures.min()),
                        "last_departure": str(departures.max()),
                        "disruption_rate": round(float(part[LABEL].mean()), 4),
                        "uri": lake.url(_split_key(run_key, name))}
    validations = []
    for day in used:  # which validated content, checked by which GX run, the model was trained on
        verdict = json.loads(lake.read_text(partition_key("validated", "flights", day, VERDICT_FILE)))
        validations.append({k: verdict.get(k) for k in ("date", "content_hash", "gx_run_id", "status")})
    manifest = {
        "run_key": run_key, "window": [str(days[0]), str(days[-1])], "days_used": len(used),
        "validations": validations,
        "days_missing": [str(d) for d in missing], "feature_service": FEATURE_SERVICE,
        "partitions": [partition_key("validated", "flights", d, "data.parquet") for d in used],
        "columns": len(frame.columns), "splits": splits, "training_set_sha256": digest.hexdigest(),
    }
    lake.write_text(f"training/{run_slug(run_key)}/manifest.json", json.dumps(manifest, indent=2))
    log.info("build_training_set: %d flights over %d days (train %d, valid %d, test %d) in %.1fs", len(frame),
             len(used), splits["train"]["rows"], splits["valid"]["rows"], splits["test"]["rows"],
             time.perf_counter() - started)
    return {k: manifest[k] for k in ("run_key", "window", "days_used", "training_set_sha256")} | {
        "rows": {name: split["rows"] for name, split in splits.items()}}


def read_manifest(run_key: str, settings: Settings | None = None) -> dict[str, Any]:
    settings, lake = settings_and_lake(settings)
    key = f"training/{run_slug(run_key)}/manifest.json"
    if not lake.exists(key):
        raise FileNotFoundError(f"no training set for run {run_key}: run build_training_set first")
    return dict(json.loads(lake.read_text(key)))


def read_splits(run_key: str, settings: Settings | None = None) -> dict[str, pd.DataFrame]:
    settings, lake = settings_and_lake(settings)
    read_manifest(run_key, settings)
    return {name: lake.read_parquet(_split_key(run_key, name)) for name in SPLITS}
