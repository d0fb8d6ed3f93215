"""TODO docstring (source, model, registry)"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


FEED_TABLES = ("flights", "weather")
REFERENCE_TABLES = ("airlines", "airports", "planes")

LABEL = "disrupted"
TIME_COLUMN = "scheduled_departure"

MODEL_NAME = "flight_delay_classifier"
CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous_champion"
