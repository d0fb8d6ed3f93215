"""Tabular PyTorch model for flight disruption on the ``flight_delay_v1`` training set.

Only the core lives here: preprocessing, the network, a training loop with early stopping and a time-based split.
Tuning (Optuna), tracking (MLflow) and orchestration (Airflow) build on top of ``train_model`` and its ``on_epoch``
callback.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipelines.features import LOCAL_TZ

log = logging.getLogger(__name__)

LABEL = "disrupted"
TIME_COLUMN = "scheduled_departure"
UNKNOWN_INDEX = 0
"""Index 0 of every vocabulary: categories unseen in training and missing values share it, so serving never fails."""

CATEGORICAL_COLUMNS: tuple[str, ...] = ("carrier", "origin", "dest", "dep_hour", "dep_weekday", "plane_type")
WEATHER_COLUMNS = ("temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib")
SCHEDULE_COLUMNS = ("origin_hour_departures", "origin_day_departures", "carrier_origin_day_departures")
CARRIER_COLUMNS = tuple(f"carrier_{stat}_{w}d" for w in (7, 28)
                        for stat in ("flights", "disruption_rate", "cancel_rate", "mean_arr_delay"))
ROUTE_COLUMNS = tuple(f"route_{stat}_28d" for stat in ("flights", "disruption_rate", "cancel_rate", "mean_arr_delay"))
PLANE_COLUMNS = ("plane_age", "plane_seats", "plane_engines")
REQUEST_COLUMNS = ("dep_month", "log_distance")
NUMERIC_COLUMNS: tuple[str, ...] = (WEATHER_COLUMNS + SCHEDULE_COLUMNS + CARRIER_COLUMNS + ROUTE_COLUMNS
                                    + PLANE_COLUMNS + REQUEST_COLUMNS)

DEFAULT_PARAMS: dict[str, Any] = {
    "hidden_sizes": [64, 32], "dropout": 0.2, "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 1024,
    # pos_weight = (negatives / positives) ** imbalance_power: 0 ignores the imbalance, 1 balances the classes.
    "imbalance_power": 0.5,
}


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
    text = np.array([_category_text(v) for v in uniques] + [None], dtype=object)
    return pd.Series(text[codes], index=values.index, dtype="object").where(~missing, None)


def _category_text(value: Any) -> str:
    # Integers that pandas turned into floats because of missing values (dep_hour 7.0) keep their integer text.
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _numeric_values(frame: pd.DataFrame, column: str) -> np.ndarray:
    """float64 values with NaN for missing (or absent) values."""
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").astype("float64").to_numpy(na_value=np.nan)


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
            values = _numeric_values(frame, column)
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
            values = (np.clip(_numeric_values(frame, column), low, high) - self.means[column]) / self.stds[column]
            num[:, j] = np.where(np.isfinite(values), values, 0.0)
        for k, column in enumerate(self.missing_indicators):
            num[:, len(self.numeric) + k] = ~np.isfinite(_numeric_values(frame, column))
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
    categorical (``categorical_values``), the same float64 for each numeric (``_numeric_values``), then the same
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
        return None if value != value else _category_text(value)
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
    """``_numeric_values`` of plain values: None is NaN, ints and floats as float64."""
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


class _CpuEmbedding(torch.autograd.Function):
    """The shared-table lookup on the CPU with a vectorized backward: ``index_add_`` of the output gradient into
    the table's rows. Stock ``embedding_dense_backward`` on the CPU issues one tiny BLAS call per looked-up row,
    which cost more than the whole forward pass of the network. Same values, same gradients."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.rows = weight.shape[0]
        return _gather(weight, index)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (index,) = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        return rows.new_zeros(ctx.rows, rows.shape[1]).index_add_(0, index.reshape(-1), rows), None


def _gather(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return weight.index_select(0, index.reshape(-1)).view(*index.shape, weight.shape[1])


def _lookup(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``nn.functional.embedding(index, weight)``; on the CPU through ``_CpuEmbedding`` (CUDA keeps the stock,
    deterministic kernel). Without autograd (inference) the same gather is called directly: the Function's
    per-call machinery was a tenth of a one-flight prediction."""
    if weight.device.type != "cpu":
        return nn.functional.embedding(index, weight)
    if torch.is_grad_enabled():
        return _CpuEmbedding.apply(weight, index)  # type: ignore[no-any-return]
    return _gather(weight, index)


class Dropout(nn.Module):
    """``nn.Dropout`` (zero with probability ``p``, scale the rest by 1/(1-p)) with a cheaper mask on the CPU.

    Stock CPU dropout draws one random number per element, which made it the largest single cost of a training
    step here. On the CPU each 64-bit draw is cut into four 16-bit integers instead, one per element: ``p`` is
    rounded to a multiple of 1/65536 and the scale uses the rounded value, so the expectation is exact. Other
    devices use ``nn.functional.dropout``. No parameters: state dicts are those of ``nn.Dropout``."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = float(p)
        self._dropped = round(self.p * 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self._dropped == 0:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, training=True)
        if self._dropped == 65536:
            return x * 0.0
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, 2**63 - 1)
        keep = words.view(torch.int16)[:x.numel()].view(x.shape) >= self._dropped - 32768
        return x * (keep * (65536 / (65536 - self._dropped)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


EMBEDDING_DIM = 8
"""One width for every categorical: the vocabularies are small (3 origins to ~100 destinations), and one width lets
all columns share one table, looked up in a single gather."""


class FlightDelayNet(nn.Module):
    """Embeddings of the categoricals, concatenated with the numerics, then an MLP to one disruption logit, plus a
    linear path from the same inputs (wide and deep): the additive effects that dominate this problem do not have
    to be relearned through the hidden layers.

    The categorical columns share one embedding table; each column's indices are shifted by an offset into its own
    rows, so the lookup (and its backward) is one operation instead of one per column."""

    def __init__(self, cardinalities: list[int], n_numeric: int, hidden_sizes: list[int] | tuple[int, ...] = (64, 32),
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.offsets: torch.Tensor
        self.register_buffer("offsets", torch.tensor([0, *np.cumsum(cardinalities)[:-1].tolist()], dtype=torch.int64))
        self.embedding = nn.Embedding(int(sum(cardinalities)), EMBEDDING_DIM)
        width = len(cardinalities) * EMBEDDING_DIM + n_numeric
        layers: list[nn.Module] = []
        in_width = width
        for hidden in hidden_sizes:
            layers += [nn.Linear(in_width, int(hidden)), nn.ReLU(), Dropout(float(dropout))]
            in_width = int(hidden)
        layers.append(nn.Linear(in_width, 1))
        self.mlp = nn.Sequential(*layers)
        self.linear = nn.Linear(width, 1)

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        x = torch.cat([_lookup(self.embedding.weight, cat + self.offsets).flatten(1), num], dim=1)
        return (self.mlp(x) + self.linear(x)).squeeze(-1)


def pick_device() -> torch.device:
    """CUDA when there is a GPU, else CPU: the same code trains on a laptop and on the GPU worker."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build_net(preprocessor: Preprocessor, params: dict[str, Any]) -> FlightDelayNet:
    return FlightDelayNet(preprocessor.cardinalities, preprocessor.n_numeric,
                          hidden_sizes=list(params["hidden_sizes"]), dropout=float(params["dropout"]))


@dataclass
class TrainedModel:
    """Everything needed to predict again: the fitted preprocessor, the best epoch's weights, the parameters and
    the per-epoch history (train loss, validation log loss)."""

    preprocessor: Preprocessor
    state_dict: dict[str, torch.Tensor]
    params: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int
    calibration: tuple[float, float] = (1.0, 0.0)
    """Platt scaling fitted on the validation window: probability = sigmoid(a * logit + b)."""
    _networks: dict[str, FlightDelayNet] = field(default_factory=dict, init=False, repr=False, compare=False)
    """Eval-mode networks for inference, one per device, built on first use (never pickled)."""

    @property
    def valid_log_loss(self) -> float:
        """The best epoch's validation log loss after calibration (what ``predict_proba`` scores there)."""
        return self.history[self.best_epoch]["valid_log_loss"]

    @property
    def valid_log_loss_uncalibrated(self) -> float:
        """The same epoch's validation log loss of the raw ``sigmoid(logit)``, for comparison."""
        return self.history[self.best_epoch]["valid_log_loss_uncalibrated"]

    def network(self, device: torch.device | None = None) -> FlightDelayNet:
        """A new network with the best epoch's weights, in eval mode."""
        net = _build_net(self.preprocessor, self.params)
        net.load_state_dict(self.state_dict)
        return net.to(device or torch.device("cpu")).eval()

    def _inference_network(self, device: torch.device) -> FlightDelayNet:
        # Building a network and loading its weights costs more than scoring a thousand flights: once per device.
        # Eval mode and no autograd state, so threads serving requests share it safely.
        net = self._networks.get(str(device))
        if net is None:
            net = self._networks[str(device)] = self.network(device)
        return net

    # no_grad rather than inference_mode: the latter saves ~4 us of a one-flight forward but returns tensors that
    # cannot take part in autograd later (fit_platt on predict_logits would fail).
    @torch.no_grad()
    def _logits(self, cat: torch.Tensor, num: torch.Tensor, device: torch.device | None) -> torch.Tensor:
        device = device or torch.device("cpu")
        return self._inference_network(device)(cat.to(device), num.to(device)).float().cpu()

    def _calibrated(self, logits: torch.Tensor) -> np.ndarray:
        a, b = self.calibration
        return torch.sigmoid(a * logits + b).numpy().astype(np.float64)

    def predict_logits(self, frame: pd.DataFrame, device: torch.device | None = None) -> torch.Tensor:
        """The network's raw logits (before calibration), in eval mode (no dropout), float32."""
        return self._logits(*self.preprocessor.transform(frame), device)

    def probabilities(self, cat: torch.Tensor, num: torch.Tensor, device: torch.device | None = None) -> np.ndarray:
        """Calibrated disruption probabilities of rows the preprocessor has encoded."""
        return self._calibrated(self._logits(cat, num, device))

    def predict_proba(self, frame: pd.DataFrame, device: torch.device | None = None) -> np.ndarray:
        """Calibrated disruption probabilities."""
        return self._calibrated(self.predict_logits(frame, device))

    def predict_proba_columns(self, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """``predict_proba(pd.DataFrame(columns))`` on the CPU through ``Preprocessor.transform_columns``: the
        online path: about 0.1 ms for one flight, where building and converting a frame takes milliseconds."""
        return self.probabilities(*self.preprocessor.transform_columns(columns))

    def __getstate__(self) -> dict[str, Any]:
        # MLflow pickles the pyfunc wrapper with this model inside: the networks are a cache, rebuilt on demand.
        return {k: v for k, v in self.__dict__.items() if k != "_networks"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _networks={})

    def to_bytes(self) -> bytes:
        """Everything needed to predict again, in one file that ``torch.load(weights_only=True)`` can read."""
        buffer = io.BytesIO()
        torch.save({"format": 1, "preprocessor": self.preprocessor.to_dict(), "params": self.params,
                    "state_dict": self.state_dict, "history": self.history, "best_epoch": self.best_epoch,
                    "calibration": list(self.calibration)}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TrainedModel:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if saved.get("format") != 1:
            raise ValueError(f"unknown model format {saved.get('format')!r}")
        a, b = saved["calibration"]
        return cls(preprocessor=Preprocessor.from_dict(saved["preprocessor"]), state_dict=saved["state_dict"],
                   params=saved["params"], history=saved["history"], best_epoch=int(saved["best_epoch"]),
                   calibration=(float(a), float(b)))


def _labels(frame: pd.DataFrame) -> torch.Tensor:
    return torch.as_tensor(frame[LABEL].astype("float32").to_numpy(), dtype=torch.float32)


@torch.no_grad()
def _logits(net: nn.Module, cat: torch.Tensor, num: torch.Tensor, batch_size: int) -> torch.Tensor:
    net.eval()
    return torch.cat([net(cat[i:i + batch_size], num[i:i + batch_size]).float()
                      for i in range(0, len(cat), batch_size)])


def fit_platt(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Platt scaling: the (a, b) minimizing the unweighted log loss of sigmoid(a * logit + b) on held-out rows.
    It undoes the shift that ``pos_weight`` puts into the logits, so probabilities mean what they say."""
    logits, y = logits.detach().float().cpu(), y.detach().float().cpu()
    a, b = torch.ones(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([a, b], lr=1.0, max_iter=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(a * logits + b, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(a.detach()), float(b.detach())


def _log_loss(logits: torch.Tensor, y: torch.Tensor, calibration: tuple[float, float] = (1.0, 0.0)) -> float:
    a, b = calibration
    return float(nn.functional.binary_cross_entropy_with_logits(a * logits.float() + b, y.float()))


def train_model(train_frame: pd.DataFrame, valid_frame: pd.DataFrame, params: dict[str, Any] | None = None,
                seed: int = 0, max_epochs: int = 30, patience: int = 5,
                on_epoch: Callable[[int, float], None] | None = None,
                device: torch.device | None = None) -> TrainedModel:
    """Fit the preprocessor on ``train_frame`` and train with early stopping on the calibrated validation log loss.

    Tensors stay on the device and batches are slices of a shuffled index (no DataLoader: the data fits in memory
    and per-row collation would dominate). Class imbalance is explicit: ``pos_weight`` = (negatives/positives) **
    ``imbalance_power``. Each epoch, Platt scaling is fitted on the validation logits and the validation log loss
    is measured after it, so the metric compares models with any ``pos_weight`` fairly; the best epoch's
    calibration is kept with the model. ``on_epoch(epoch, valid_log_loss)`` runs after each epoch so a tuner can
    report and prune (it may raise).
    """
    params = {**DEFAULT_PARAMS, **(params or {})}
    device = device or pick_device()
    _seed_everything(seed)
    preprocessor = Preprocessor().fit(train_frame)
    cat_train, num_train = (t.to(device) for t in preprocessor.transform(train_frame))
    cat_valid, num_valid = (t.to(device) for t in preprocessor.transform(valid_frame))
    y_train, y_valid = _labels(train_frame).to(device), _labels(valid_frame).to(device)

    net, optimizer, criterion = training_parts(preprocessor, train_frame, params, device)
    batch_size = int(params["batch_size"])
    generator = torch.Generator(device="cpu").manual_seed(seed)

    best_loss, best_epoch, best_state = math.inf, -1, copy.deepcopy(net.state_dict())
    best_calibration = (1.0, 0.0)
    history: list[dict[str, float]] = []
    for epoch in range(max_epochs):
        order = torch.randperm(len(y_train), generator=generator).to(device)
        train_loss = train_epoch(net, optimizer, criterion,
                                 sliced_batches(cat_train, num_train, y_train, order, batch_size))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = _logits(net, cat_valid, num_valid, batch_size * 8)
        calibration = fit_platt(logits, y_valid)
        valid_loss = _log_loss(logits, y_valid, calibration)
        history.append({"epoch": float(epoch), "train_loss": train_loss,
                        "valid_log_loss": valid_loss, "valid_log_loss_uncalibrated": _log_loss(logits, y_valid)})
        log.info("epoch %d: train loss %.4f, valid log loss %.4f (uncalibrated %.4f)", epoch, train_loss, valid_loss,
                 history[-1]["valid_log_loss_uncalibrated"])
        if on_epoch is not None:
            on_epoch(epoch, valid_loss)
        if valid_loss < best_loss - 1e-6:
            best_loss, best_epoch, best_calibration = valid_loss, epoch, calibration
            best_state = copy.deepcopy(net.state_dict())
        elif epoch - best_epoch >= patience:
            log.info("early stop at epoch %d (best %d, %.4f)", epoch, best_epoch, best_loss)
            break

    state = {k: v.detach().cpu().clone() for k, v in best_state.items()}
    return TrainedModel(preprocessor=preprocessor, state_dict=state, params=params, history=history,
                        best_epoch=best_epoch, calibration=best_calibration)


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def sliced_batches(cat: torch.Tensor, num: torch.Tensor, y: torch.Tensor, order: torch.Tensor,
                   batch_size: int) -> Iterator[Batch]:
    """Batches of tensors already on the device, in ``order``: one gather per tensor per epoch (a shuffled copy),
    then contiguous slices of it, which are views: no copy and no index per batch."""
    yield from zip(cat[order].split(batch_size), num[order].split(batch_size), y[order].split(batch_size),
                   strict=True)


class RowDataset(torch.utils.data.Dataset[Batch]):
    """One row at a time, the way a per-sample ``DataLoader`` pipeline reads: the comparison ``make bench`` makes."""

    def __init__(self, cat: torch.Tensor, num: torch.Tensor, y: torch.Tensor) -> None:
        self.cat, self.num, self.y = cat, num, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> Batch:
        return self.cat[i], self.num[i], self.y[i]


def loader_batches(cat: torch.Tensor, num: torch.Tensor, y: torch.Tensor, order: torch.Tensor,
                   batch_size: int) -> Iterable[Batch]:
    """The same batches as ``sliced_batches`` for the same ``order``, through a per-sample DataLoader."""
    dataset = RowDataset(cat.cpu(), num.cpu(), y.cpu())
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=order.cpu().tolist(), num_workers=0)


def train_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                batches: Iterable[Batch]) -> float:
    """One pass over ``batches`` (bf16 autocast on CUDA); returns the mean training loss. The loss is summed on the
    device and read once at the end: no host sync per batch."""
    net.train()
    device = next(net.parameters()).device
    total, rows = torch.zeros((), device=device), 0
    for cat, num, y in batches:
        cat, num, y = (t.to(device, non_blocking=True) for t in (cat, num, y))
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = net(cat, num)
        loss = criterion(logits.float(), y)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(y)
        rows += len(y)
    return float(total) / max(1, rows)


def training_parts(preprocessor: Preprocessor, train_frame: pd.DataFrame, params: dict[str, Any],
                   device: torch.device) -> tuple[FlightDelayNet, torch.optim.Optimizer, nn.Module]:
    """The network, optimizer and loss (with the class weight) for ``params``, on ``device``."""
    y = train_frame[LABEL].astype("float64")
    positives = float(y.sum())
    balanced = (len(y) - positives) / positives if positives > 0 else 1.0
    pos_weight = torch.tensor(balanced ** float(params["imbalance_power"]), device=device)
    net = _build_net(preprocessor, params).to(device)
    # The fused kernel updates every parameter in one call (CPU and CUDA); same Adam, less per-step overhead.
    optimizer = torch.optim.Adam(net.parameters(), lr=float(params["lr"]), weight_decay=float(params["weight_decay"]),
                                 fused=device.type in ("cpu", "cuda"))
    return net, optimizer, nn.BCEWithLogitsLoss(pos_weight=pos_weight)


def time_split(frame: pd.DataFrame, valid_days: int, test_days: int) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                                pd.DataFrame]:
    """Split by the New York calendar date of ``scheduled_departure``: the last ``test_days`` dates are the test
    set, the ``valid_days`` before them validation, the rest training, so evaluation always looks at the future."""
    departure = pd.to_datetime(frame[TIME_COLUMN])
    if departure.dt.tz is not None:
        departure = departure.dt.tz_convert(LOCAL_TZ).dt.tz_localize(None)
    dates = departure.dt.normalize()
    days = np.sort(dates.unique())
    if len(days) <= valid_days + test_days:
        raise ValueError(f"need more than {valid_days + test_days} distinct days, got {len(days)}")
    test_start = days[len(days) - test_days] if test_days > 0 else None
    valid_start = days[len(days) - test_days - valid_days]
    is_test = dates >= test_start if test_start is not None else pd.Series(False, index=frame.index)
    is_valid = (dates >= valid_start) & ~is_test
    is_train = ~is_valid & ~is_test
    parts = (frame[is_train], frame[is_valid], frame[is_test])
    return tuple(p.sort_values(TIME_COLUMN, kind="stable").reset_index(drop=True) for p in parts)  # type: ignore[return-value]
