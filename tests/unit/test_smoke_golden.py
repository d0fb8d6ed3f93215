"""The smoke test's golden comparison while production keeps writing to the online store.

A bug found by ``make year``: three new models failed their smoke test ("golden answers differ from the registry
model by up to 0.03-0.09") because the day's operations pushes changed the online store between the slot's read
and the smoke test's own read. The slot and the store here are stand-ins (a function of the store's state): what
is under test is which read the slot's answer is compared with."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from pipelines.core.settings import Settings
from pipelines.deploy import smoke

FLIGHTS = [{"flight": n} for n in range(3)]


class Store:
    """The online store's one feature; ``push_during`` requests see a push land while they are answered."""

    def __init__(self, push_during: int) -> None:
        self.value, self.push_during, self.requests = 0.1, push_during, 0

    def features(self, settings: Settings, flights: list[dict[str, Any]]) -> pd.DataFrame:
        return pd.DataFrame({"ops_origin_departed": [self.value] * len(flights)})


class Slot:
    """Answers with the features it read, then a push lands (for the first ``push_during`` requests)."""

    status_code = 200

    def __init__(self, store: Store) -> None:
        self.store = store

    def post(self, url: str, json: dict[str, Any], timeout: float) -> Slot:
        self.read = self.store.value
        self.store.requests += 1
        if self.store.requests <= self.store.push_during:
            self.store.value += 0.2  # the day's next operations push
        return self


@pytest.mark.parametrize("pushes", [0, 1, 2])
def test_the_answer_is_compared_with_the_features_the_slot_read(monkeypatch: pytest.MonkeyPatch,
                                                                 pushes: int) -> None:
    store = Store(push_during=pushes)
    monkeypatch.setattr(smoke, "_golden_features", store.features)
    slot = Slot(store)
    _, features, tries = smoke._golden_answer(slot, Settings(), "http://slot", FLIGHTS)
    assert tries == pushes + 1
    assert features["ops_origin_departed"].tolist() == [slot.read] * len(FLIGHTS)


def test_a_store_that_never_settles_is_asked_a_bounded_number_of_times(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(push_during=100)
    monkeypatch.setattr(smoke, "_golden_features", store.features)
    _, _, tries = smoke._golden_answer(Slot(store), Settings(), "http://slot", FLIGHTS)
    assert tries == smoke.GOLDEN_TRIES == store.requests
