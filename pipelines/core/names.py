"""Names every stage shares, kept once: the feed's tables, the label, the registered model and its aliases."""

from __future__ import annotations

FEED_TABLES = ("flights", "weather")
REFERENCE_TABLES = ("airlines", "airports", "planes")

LABEL = "disrupted"
TIME_COLUMN = "scheduled_departure"

MODEL_NAME = "flight_delay_classifier"
CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous_champion"

# Airflow pools the stack creates (pipelines.ops.airflow_config.POOLS): name -> slots, what it guards.
ONLINE_STORE_POOL = "online_store"
"""The online store's writers: a day's replay (hour-by-hour materialization and pushes after a rewind) and
flight_features' materialization, one at a time, so neither leaves the store holding a mix of both."""
