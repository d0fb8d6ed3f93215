"""A day's replay and a materialization take turns on the online store (another process holding the store's turn
stands for the other one; on Airflow the pool ``online_store`` does the same across workers)."""

from __future__ import annotations

from datetime import date

import pytest

from pipelines.core.settings import Settings
from pipelines.features import store as feature_store
from pipelines.features.store import OnlineStoreBusy, materialize_features
from pipelines.simulation.replay import replay_traffic
from tests.helpers.locks import hold_lock


def test_neither_writes_while_the_other_holds_the_store(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feature_store, "ONLINE_STORE_TURN_TIMEOUT_S", 0.5)
    holder = hold_lock(settings.pipeline_home / "feast" / "online_store.lock")
    try:
        for step in (lambda: materialize_features([date(2013, 3, 1)], settings),
                     lambda: replay_traffic(date(2013, 3, 1), settings)):
            with pytest.raises(OnlineStoreBusy, match=f"in use by another replay or materialization.*{holder.pid}"):
                step()
    finally:
        holder.kill()
        holder.wait()
