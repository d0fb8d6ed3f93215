"""The training set of the real window (January and February 2013, with the operations views' event rows)
through the ASOF offline store equals stock Feast's, value for value and dtype for dtype: the edge cases are in
``tests/unit/test_offline_asof.py``, this is the whole feature service on real data. Read again, it comes whole
from the per-day cache (``pipelines.features.training_rows``), equal to what Feast retrieves."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.core.settings import Settings
from pipelines.features import store
from pipelines.features.store import training_set


def test_the_asof_training_set_is_stock_feasts(real_data: Settings, real_days: list,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ours = training_set(real_days, real_data)
    stock = training_set(real_days, real_data, stock=True)
    assert len(ours) > 50_000
    assert ours["ops_origin_departed"].notna().mean() > 0.9  # the operations views, where the joins differ most
    pd.testing.assert_frame_equal(ours, stock)

    def no_retrieval(days: list, settings: Settings, *, stock: bool = False) -> pd.DataFrame:
        raise AssertionError(f"{len(days)} days retrieved again though nothing changed")

    monkeypatch.setattr(store, "_retrieve", no_retrieval)
    pd.testing.assert_frame_equal(training_set(real_days, real_data), stock)
