"""The model's input columns and how each is read from a frame: categoricals as text (``dest`` from ``route``),
numerics as float64 with NaN for missing values. Shared by preprocessing, the registry's input and monitoring.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

CATEGORICAL_COLUMNS: tuple[str, ...] = ("carrier", "origin", "dest", "dep_hour", "dep_weekday", "plane_type")
WEATHER_COLUMNS = ("temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib")
SCHEDULE_COLUMNS = ("origin_hour_departures", "origin_day_departures", "carrier_origin_day_departures")
CARRIER_COLUMNS = tuple(f"carrier_{stat}_{w}d" for w in (7, 28)
                        for stat in ("flights", "disruption_rate", "cancel_rate", "mean_arr_delay"))
ROUTE_COLUMNS = tuple(f"route_{stat}_28d" for stat in ("flights", "disruption_rate", "cancel_rate", "mean_arr_delay"))
PLANE_COLUMNS = ("plane_age", "plane_seats", "plane_engines")
# Not dep_month: served days always lie after the training window, so the network learnt a "March" from the window's
# last three days (dropping it: test ROC AUC +0.005 on the demo window; logistic regression +0.0006).
REQUEST_COLUMNS = ("log_distance",)
OPERATIONS_STATS = ("departed", "mean_dep_delay", "late_share", "last_hour_dep_delay", "pending", "pending_share")
OPERATIONS_COLUMNS = (tuple(f"ops_origin_{stat}" for stat in OPERATIONS_STATS)
                      + tuple(f"ops_carrier_{stat}" for stat in OPERATIONS_STATS)
                      + ("ops_tail_departed", "ops_tail_last_dep_delay", "ops_tail_pending"))
"""The day so far at the origin, at the origin for the flight's airline, and for its aircraft, as of the prediction
time (``pipelines.features.operations``)."""
NUMERIC_COLUMNS: tuple[str, ...] = (WEATHER_COLUMNS + SCHEDULE_COLUMNS + CARRIER_COLUMNS + ROUTE_COLUMNS
                                    + PLANE_COLUMNS + REQUEST_COLUMNS + OPERATIONS_COLUMNS)
FEATURE_FAMILIES: dict[str, tuple[str, ...]] = {
    "weather": WEATHER_COLUMNS,
    "schedule": SCHEDULE_COLUMNS,
    "carrier_history": CARRIER_COLUMNS,
    "route_history": ROUTE_COLUMNS,
    "plane": PLANE_COLUMNS + ("plane_type",),
    "request": REQUEST_COLUMNS + ("dep_hour", "dep_weekday"),
    "operations": OPERATIONS_COLUMNS,
}
"""Numeric and categorical columns grouped by where they come from: the unit the ablation drops in turn. The
identity categoricals (carrier, origin, dest) are in no family: every model keeps them."""


def categorical_values(frame: pd.DataFrame, column: str) -> pd.Series:
    """The column as strings with missing values as None; ``dest`` is derived from ``route`` ("JFK-LAX")."""
    if column == "dest" and "dest" not in frame.columns and "route" in frame.columns:
        codes, routes = pd.factorize(frame["route"].astype("string"))  # split each distinct route once
        dests = pd.Series(routes, dtype="string").str.split("-", n=1).str[1].astype("object").tolist()
        values = pd.Series(np.array([*dests, None], dtype=object)[codes], index=frame.index, dtype="object")
    elif column in frame.columns:
        values = frame[column]
    else:
        return pd.Series([None] * len(frame), index=frame.index, dtype="object")
    values = values.astype("object")
    missing = pd.isna(values)
    # Each distinct value is converted once (a column has at most a few hundred), then spread by its code.
    codes, uniques = pd.factorize(values)
    text = np.array([category_text(v) for v in uniques] + [None], dtype=object)
    return pd.Series(text[codes], index=values.index, dtype="object").where(~missing, None)


def category_text(value: Any) -> str:
    # Integers that pandas turned into floats because of missing values (dep_hour 7.0) keep their integer text.
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def numeric_values(frame: pd.DataFrame, column: str) -> np.ndarray:
    """float64 values with NaN for missing (or absent) values."""
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").astype("float64").to_numpy(na_value=np.nan)
