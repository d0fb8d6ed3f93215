"""Names every stage shares, kept once: the feed's tables, the label, the registered model and its aliases."""

from __future__ import annotations

FEED_TABLES = ("flights", "weather")
REFERENCE_TABLES = ("airlines", "airports", "planes")

LABEL = "disrupted"
TIME_COLUMN = "scheduled_departure"

MODEL_NAME = "flight_delay_classifier"
CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous_champion"
