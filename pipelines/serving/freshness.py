"""How fresh the online store is, as every answer states it (``features_as_of``): the earliest end of the feature
views' materialized windows, read from Feast's registry.

The value is kept and served as it is; once it is ``max_age_s`` old, the next caller starts one refresh on a
thread of its own and goes on with the value it has. Before, it was read on the request path by every request that
found it old: at 32 concurrent requests, up to 32 registry reads (~1 ms each, under the GIL) and as many rebuilds
of the online reader (~3.5 ms each: a read refreshes the registry cache the reader is compiled from) every 30 s.
A refresh that fails keeps the old value (logged): a registry out for a moment does not fail predictions, whose
features come from the online store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

MAX_AGE_S = 30.0


class FeatureFreshness:
    """``value()``: the freshness as last read, never waiting for a read (after the first, made at start)."""

    def __init__(self, read: Callable[[], str | None], max_age_s: float = MAX_AGE_S) -> None:
        """``read()``: the freshness from the registry (may take tens of milliseconds, may fail)."""
        self._read, self.max_age_s = read, max_age_s
        self._refreshing = threading.Lock()  # held while a refresh runs: one at a time
        self._value: str | None = None
        self._read_at = -float("inf")
        self.refresh()

    def value(self) -> str | None:
        # The lock is taken here, before the thread starts: requests that come before the thread first runs do
        # not each start one.
        if time.monotonic() - self._read_at > self.max_age_s and self._refreshing.acquire(blocking=False):
            threading.Thread(target=self._read_holding_the_lock, name="feature-freshness", daemon=True).start()
        return self._value

    def refresh(self) -> None:
        """Read the freshness now, unless a read is already running (that one's value will do)."""
        if self._refreshing.acquire(blocking=False):
            self._read_holding_the_lock()

    def _read_holding_the_lock(self) -> None:
        try:
            self._value = self._read()
        except Exception as error:
            log.warning("feature freshness: the registry read failed (%s: %s); answers keep %s",
                        type(error).__name__, error, self._value)
        finally:
            # A failed read also waits max_age_s before the next: a registry that is down is not asked per request.
            self._read_at = time.monotonic()
            self._refreshing.release()
