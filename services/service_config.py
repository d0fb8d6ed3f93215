"""The model service's BentoML settings and request limit, in a module of their own: the bench's bare BentoML
service (``benchmarks/bare_service.py``) serves with the same settings without importing the model service, whose
import tunes the server process (``services.server_tuning``)."""

from __future__ import annotations

from typing import Any

MAX_FLIGHTS = 1000
"""The most flights one ``POST /predict`` takes."""
SERVICE_CONFIG: dict[str, Any] = {"traffic": {"timeout": 10}, "http": {"port": 3000}}
"""``@bentoml.service`` settings: a request's timeout (seconds) and the default port."""
