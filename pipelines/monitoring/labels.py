"""Late labels: the outcome of a flight is known only after its day ends (arrival delay, cancellation, diversion
arrive with the next feed). ``label_predictions`` joins a matured day's logged predictions with its validated
outcomes into ``{lake}/labels/flight_delay/date=YYYY-MM-DD/data.parquet``, which monitoring reads for the model's
quality on real traffic."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date
from typing import Any

import pandas as pd

from pipelines.core.lake import Lake, open_lake, partition_key
from pipelines.core.settings import Settings, get_settings
from pipelines.features.tables import disrupted, flight_id

log = logging.getLogger(__name__)

LABEL = "disrupted"


def logged_predictions(lake: Lake, day: date) -> pd.DataFrame:
    """Every prediction served for flights of ``day``, the latest answer per flight (a flight asked about twice
    counts once, with what it was told last)."""
    from pipelines.serving.prediction_log import read_prediction_log

    frame = read_prediction_log(lake, day)
    if frame.empty:
        return frame
    return (frame.sort_values("served_at", kind="stable").drop_duplicates("flight_id", keep="last")
            .reset_index(drop=True))


def label_predictions(day: date, settings: Settings | None = None) -> dict[str, Any]:
    """Join ``day``'s served predictions with its outcomes (the validated feed of that day)."""
    settings = settings or get_settings()
    lake = open_lake(settings)
    outcomes_key = partition_key("validated", "flights", day, "data.parquet")
    if not lake.exists(outcomes_key):
        raise FileNotFoundError(f"no validated outcomes for {day} yet: labels arrive with that day's feed")
    predictions = logged_predictions(lake, day)
    if predictions.empty:
        log.warning("label_predictions: no predictions were served for %s", day)
        return {"day": day.isoformat(), "predictions": 0, "labelled": 0, "unmatched": 0, "key": None}
    flights = lake.read_parquet(outcomes_key)
    outcomes = pd.DataFrame({"flight_id": flight_id(flights), LABEL: disrupted(flights)})
    labelled = predictions.merge(outcomes, on="flight_id", how="inner", validate="one_to_one")
    key = partition_key("labels", "flight_delay", day, "data.parquet")
    lake.write_parquet(key, labelled)
    result = {"day": day.isoformat(), "predictions": len(predictions), "labelled": len(labelled),
              "unmatched": len(predictions) - len(labelled),
              "disruption_rate": round(float(labelled[LABEL].mean()), 4) if len(labelled) else None, "key": key}
    log.info("label_predictions: %s: %d of %d served flights labelled (disruption rate %s)", day,
             result["labelled"], result["predictions"], result["disruption_rate"])
    return result


def read_labels(days: Iterable[date], settings: Settings | None = None) -> pd.DataFrame:
    """The labelled predictions of ``days`` that have them."""
    lake = open_lake(settings or get_settings())
    keys = [partition_key("labels", "flight_delay", day, "data.parquet") for day in days]
    parts = [lake.read_parquet(key) for key in keys if lake.exists(key)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
