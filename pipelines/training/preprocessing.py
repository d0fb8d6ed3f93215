"""Preprocessing inside the model: vocabularies, scaling, clipping and missing-value indicators learned on the
training split, applied the same way to frames (training, evaluation) and to plain columns (the online path).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipelines.training.columns import (
    CATEGORICAL_COLUMNS,
    NUMERIC_COLUMNS,
    categorical_values,
    category_text,
    numeric_values,
)

UNKNOWN_INDEX = 0
"""Index 0 of every vocabulary: categories unseen in training and missing values share it, so serving never fails."""


@dataclass
class Preprocessor:
    """Vocabularies and standardization learned on the training frame only, so validation and serving see the
    same encoding; plain lists and floats make it JSON-serializable for the model registry."""

    categorical: list[str] = field(default_factory=lambda: list(CATEGORICAL_COLUMNS))
    numeric: list[str] = field(default_factory=lambda: list(NUMERIC_COLUMNS))
    vocabularies: dict[str, list[str]] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)
    missing_indicators: list[str] = field(default_factory=list)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Training minimum and maximum per numeric: inputs are clipped to them, so the network never extrapolates
    (a 1048 mph wind reading, heavier rain than any training hour) beyond what it was fitted on."""
    _encoder: _ColumnEncoder | None = field(default=None, init=False, repr=False, compare=False)
    """``transform_columns``'s lookups and scaling arrays, built on first use from the fitted state."""

    def fit(self, frame: pd.DataFrame) -> Preprocessor:
        """Learn vocabularies (sorted for determinism) and mean/std; columns missing in training get an indicator."""
        self._encoder = None
        self.vocabularies = {
            column: sorted(categorical_values(frame, column).dropna().unique().tolist()) for column in self.categorical
        }
        self.means, self.stds, self.missing_indicators, self.ranges = {}, {}, [], {}
        for column in self.numeric:
            values = numeric_values(frame, column)
            finite = values[np.isfinite(values)]
            self.ranges[column] = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
            mean = float(finite.mean()) if finite.size else 0.0
            std = float(finite.std()) if finite.size > 1 else 1.0
            self.means[column] = mean
            self.stds[column] = std if std > 1e-12 else 1.0
            if finite.size < values.size:
                self.missing_indicators.append(column)
        return self

    @property
    def cardinalities(self) -> list[int]:
        """Embedding table sizes: the vocabulary plus the unknown index 0."""
        return [len(self.vocabularies[c]) + 1 for c in self.categorical]

    @property
    def n_numeric(self) -> int:
        return len(self.numeric) + len(self.missing_indicators)

    def transform(self, frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        """(categorical indices [n, n_cat] int64, numerics [n, n_num] float32); unknown or missing -> index 0,
        missing numerics -> 0 (the training mean) plus their indicator."""
        if not self.vocabularies:
            raise RuntimeError("Preprocessor.transform called before fit")
        n = len(frame)
        cat = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, column in enumerate(self.categorical):
            lookup = {value: i + 1 for i, value in enumerate(self.vocabularies[column])}
            codes, uniques = pd.factorize(categorical_values(frame, column))  # missing -> code -1 -> the last entry
            indices = np.array([lookup.get(v, UNKNOWN_INDEX) for v in uniques] + [UNKNOWN_INDEX], dtype=np.int64)
            cat[:, j] = indices[codes]
        num = np.zeros((n, self.n_numeric), dtype=np.float32)
        for j, column in enumerate(self.numeric):
            low, high = self.ranges[column]
            values = (np.clip(numeric_values(frame, column), low, high) - self.means[column]) / self.stds[column]
            num[:, j] = np.where(np.isfinite(values), values, 0.0)
        for k, column in enumerate(self.missing_indicators):
            num[:, len(self.numeric) + k] = ~np.isfinite(numeric_values(frame, column))
        return torch.from_numpy(cat), torch.from_numpy(num)

    def transform_columns(self, columns: Mapping[str, Sequence[Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``transform(pd.DataFrame(columns))`` without pandas when every value is a plain ``str``, ``int``,
        ``float`` or ``None`` (what an online read returns): the online path. Building a frame and converting it
        column by column cost ~6 ms for one flight; this costs tens of microseconds. Other values go through
        ``transform``."""
        if not self.vocabularies:
            raise RuntimeError("Preprocessor.transform_columns called before fit")
        if self._encoder is None:
            self._encoder = _ColumnEncoder(self)
        try:
            return self._encoder.encode(columns)
        except _NotPlain:
            return self.transform(pd.DataFrame(columns))

    def to_dict(self) -> dict[str, Any]:
        return {"categorical": list(self.categorical), "numeric": list(self.numeric),
                "vocabularies": {k: list(v) for k, v in self.vocabularies.items()},
                "means": dict(self.means), "stds": dict(self.stds),
                "missing_indicators": list(self.missing_indicators),
                "ranges": {k: list(v) for k, v in self.ranges.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        return cls(categorical=list(data["categorical"]), numeric=list(data["numeric"]),
                   vocabularies={k: list(v) for k, v in data["vocabularies"].items()},
                   means={k: float(v) for k, v in data["means"].items()},
                   stds={k: float(v) for k, v in data["stds"].items()},
                   missing_indicators=list(data["missing_indicators"]),
                   ranges={k: (float(v[0]), float(v[1])) for k, v in data["ranges"].items()})


class _NotPlain(Exception):
    """A value ``_ColumnEncoder`` does not convert exactly as pandas would: the caller falls back to pandas."""


_EXACT_INT = 2**53
"""Integers below this in magnitude survive pandas turning an int column with a missing value into float64."""


class _ColumnEncoder:
    """``Preprocessor.transform`` for columns of plain Python values, value by value: the same text for each
    categorical (``categorical_values``), the same float64 for each numeric (``numeric_values``), then the same
    clip, scaling and indicators as numpy operations on the whole matrix, so every number is the same bit for bit.
    Raises ``_NotPlain`` for anything whose pandas conversion it does not reproduce (bools, numpy scalars, text in
    a numeric column, integers beyond 2**53, ragged columns)."""

    def __init__(self, preprocessor: Preprocessor) -> None:
        self.categorical = list(preprocessor.categorical)
        self.lookups = [{value: i + 1 for i, value in enumerate(preprocessor.vocabularies[column])}
                        for column in self.categorical]
        self.numeric = list(preprocessor.numeric)
        self.low = np.array([preprocessor.ranges[c][0] for c in self.numeric], dtype=np.float64)
        self.high = np.array([preprocessor.ranges[c][1] for c in self.numeric], dtype=np.float64)
        self.means = np.array([preprocessor.means[c] for c in self.numeric], dtype=np.float64)
        self.stds = np.array([preprocessor.stds[c] for c in self.numeric], dtype=np.float64)
        self.indicators = [self.numeric.index(c) for c in preprocessor.missing_indicators]

    def encode(self, columns: Mapping[str, Sequence[Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        n = _column_length(columns)
        cat = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, (column, lookup) in enumerate(zip(self.categorical, self.lookups, strict=True)):
            cat[:, j] = [UNKNOWN_INDEX if text is None else lookup.get(text, UNKNOWN_INDEX)
                         for text in self._texts(columns, column, n)]
        raw = np.array([_plain_numbers(columns[c]) if c in columns else [math.nan] * n for c in self.numeric],
                       dtype=np.float64).reshape(len(self.numeric), n).T
        scaled = (np.clip(raw, self.low, self.high) - self.means) / self.stds
        num = np.zeros((n, len(self.numeric) + len(self.indicators)), dtype=np.float32)
        num[:, :len(self.numeric)] = np.where(np.isfinite(scaled), scaled, 0.0)
        num[:, len(self.numeric):] = ~np.isfinite(raw[:, self.indicators])
        return torch.from_numpy(cat), torch.from_numpy(num)

    @staticmethod
    def _texts(columns: Mapping[str, Sequence[Any]], column: str, n: int) -> list[str | None]:
        if column == "dest" and "dest" not in columns and "route" in columns:
            return [_route_dest(route) for route in columns["route"]]
        if column not in columns:
            return [None] * n
        return [_plain_text(value) for value in columns[column]]


def _column_length(columns: Mapping[str, Sequence[Any]]) -> int:
    lengths = {len(values) if isinstance(values, list | tuple) else -1 for values in columns.values()}
    if len(lengths) > 1 or -1 in lengths:
        raise _NotPlain("columns must be lists of one length")
    return lengths.pop() if lengths else 0


def _plain_text(value: Any) -> str | None:
    """``categorical_values`` of one plain value: None and NaN are missing, integral floats lose their ".0"."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if value is None:
        return None
    if kind is float:
        return None if value != value else category_text(value)
    if kind is int and -_EXACT_INT < value < _EXACT_INT:
        return str(value)
    raise _NotPlain(f"categorical value of type {kind.__name__}")


def _route_dest(route: Any) -> str | None:
    """``dest`` from ``route`` ("JFK-LAX" -> "LAX") as ``categorical_values`` splits it."""
    if route is None:
        return None
    if type(route) is not str:
        raise _NotPlain(f"route of type {type(route).__name__}")
    _, dash, dest = route.partition("-")
    return dest if dash else None


def _plain_numbers(values: Sequence[Any]) -> list[float]:
    """``numeric_values`` of plain values: None is NaN, ints and floats as float64."""
    out = []
    for value in values:
        kind = type(value)
        if kind is float:
            out.append(value)
        elif value is None:
            out.append(math.nan)
        elif kind is int and -_EXACT_INT < value < _EXACT_INT:
            out.append(float(value))
        else:
            raise _NotPlain(f"numeric value of type {kind.__name__}")
    return out
