"""Tabular PyTorch model for flight disruption on the ``flight_delay_v1`` training set.

Only the core lives here: preprocessing, the network, a training loop with early stopping and a time-based split.
Tuning (Optuna), tracking (MLflow) and orchestration (Airflow) build on top of ``train_model`` and its ``on_epoch``
callback.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

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
    "hidden_sizes": [64, 32], "dropout": 0.1, "lr": 1e-3, "weight_decay": 0.0, "batch_size": 512,
}


def _categorical_values(frame: pd.DataFrame, column: str) -> pd.Series:
    """The column as strings with missing values as None; ``dest`` is derived from ``route`` ("JFK-LAX")."""
    if column == "dest" and "dest" not in frame.columns and "route" in frame.columns:
        values = frame["route"].astype("string").str.split("-", n=1).str[1]
    elif column in frame.columns:
        values = frame[column]
    else:
        return pd.Series([None] * len(frame), index=frame.index, dtype="object")
    values = values.astype("object")
    missing = pd.isna(values)
    # Integers that pandas turned into floats because of missing values (dep_hour 7.0) keep their integer text.
    text = values.map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
    return text.where(~missing, None)


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

    def fit(self, frame: pd.DataFrame) -> Preprocessor:
        """Learn vocabularies (sorted for determinism) and mean/std; columns missing in training get an indicator."""
        self.vocabularies = {
            column: sorted(set(_categorical_values(frame, column).dropna().tolist())) for column in self.categorical
        }
        self.means, self.stds, self.missing_indicators = {}, {}, []
        for column in self.numeric:
            values = _numeric_values(frame, column)
            finite = values[np.isfinite(values)]
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
            values = _categorical_values(frame, column)
            cat[:, j] = [lookup.get(v, UNKNOWN_INDEX) if v is not None else UNKNOWN_INDEX for v in values]
        num = np.zeros((n, self.n_numeric), dtype=np.float32)
        for j, column in enumerate(self.numeric):
            values = (_numeric_values(frame, column) - self.means[column]) / self.stds[column]
            num[:, j] = np.where(np.isfinite(values), values, 0.0)
        for k, column in enumerate(self.missing_indicators):
            num[:, len(self.numeric) + k] = ~np.isfinite(_numeric_values(frame, column))
        return torch.from_numpy(cat), torch.from_numpy(num)

    def to_dict(self) -> dict[str, Any]:
        return {"categorical": list(self.categorical), "numeric": list(self.numeric),
                "vocabularies": {k: list(v) for k, v in self.vocabularies.items()},
                "means": dict(self.means), "stds": dict(self.stds),
                "missing_indicators": list(self.missing_indicators)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        return cls(categorical=list(data["categorical"]), numeric=list(data["numeric"]),
                   vocabularies={k: list(v) for k, v in data["vocabularies"].items()},
                   means={k: float(v) for k, v in data["means"].items()},
                   stds={k: float(v) for k, v in data["stds"].items()},
                   missing_indicators=list(data["missing_indicators"]))


def embedding_dim(cardinality: int) -> int:
    """Small embeddings: the vocabularies (carriers, airports, hours) are small, so a few dimensions suffice."""
    return max(1, min(16, (cardinality + 1) // 2))


class FlightDelayNet(nn.Module):
    """Embeddings per categorical, concatenated with the numerics, then an MLP to one disruption logit."""

    def __init__(self, cardinalities: list[int], n_numeric: int, hidden_sizes: list[int] | tuple[int, ...] = (64, 32),
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(card, embedding_dim(card)) for card in cardinalities)
        width = sum(embedding_dim(card) for card in cardinalities) + n_numeric
        layers: list[nn.Module] = []
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, int(hidden)), nn.ReLU(), nn.Dropout(float(dropout))]
            width = int(hidden)
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        parts = [emb(cat[:, j]) for j, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat([*parts, num], dim=1)).squeeze(-1)


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

    def network(self, device: torch.device | None = None) -> FlightDelayNet:
        net = _build_net(self.preprocessor, self.params)
        net.load_state_dict(self.state_dict)
        return net.to(device or torch.device("cpu")).eval()

    @torch.no_grad()
    def predict_proba(self, frame: pd.DataFrame, device: torch.device | None = None) -> np.ndarray:
        """Disruption probabilities, computed in eval mode (no dropout) in float32 for reproducibility."""
        device = device or torch.device("cpu")
        net = self.network(device)
        cat, num = self.preprocessor.transform(frame)
        logits = net(cat.to(device), num.to(device))
        return torch.sigmoid(logits.float()).cpu().numpy().astype(np.float64)


def _labels(frame: pd.DataFrame) -> torch.Tensor:
    return torch.as_tensor(frame[LABEL].astype("float32").to_numpy(), dtype=torch.float32)


@torch.no_grad()
def _log_loss(net: nn.Module, cat: torch.Tensor, num: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Unweighted mean log loss: the validation metric reflects calibrated probabilities, not the pos_weight."""
    net.eval()
    total = 0.0
    loss = nn.BCEWithLogitsLoss(reduction="sum")
    for start in range(0, len(y), batch_size):
        end = start + batch_size
        total += float(loss(net(cat[start:end], num[start:end]).float(), y[start:end]))
    return total / max(1, len(y))


def train_model(train_frame: pd.DataFrame, valid_frame: pd.DataFrame, params: dict[str, Any] | None = None,
                seed: int = 0, max_epochs: int = 30, patience: int = 5,
                on_epoch: Callable[[int, float], None] | None = None,
                device: torch.device | None = None) -> TrainedModel:
    """Fit the preprocessor on ``train_frame`` and train with early stopping on validation log loss.

    Tensors stay on the device and batches are slices of a shuffled index (no DataLoader: the data fits in memory
    and per-row collation would dominate). Class imbalance is explicit through ``pos_weight`` = negatives/positives.
    ``on_epoch(epoch, valid_log_loss)`` runs after each epoch so a tuner can report and prune (it may raise).
    """
    params = {**DEFAULT_PARAMS, **(params or {})}
    device = device or pick_device()
    _seed_everything(seed)
    preprocessor = Preprocessor().fit(train_frame)
    cat_train, num_train = (t.to(device) for t in preprocessor.transform(train_frame))
    cat_valid, num_valid = (t.to(device) for t in preprocessor.transform(valid_frame))
    y_train, y_valid = _labels(train_frame).to(device), _labels(valid_frame).to(device)

    positives = float(y_train.sum())
    negatives = float(len(y_train)) - positives
    pos_weight = torch.tensor(negatives / positives if positives > 0 else 1.0, device=device)
    net = _build_net(preprocessor, params).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=float(params["lr"]), weight_decay=float(params["weight_decay"]))
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    use_amp = device.type == "cuda"
    batch_size = int(params["batch_size"])
    generator = torch.Generator(device="cpu").manual_seed(seed)

    best_loss, best_epoch, best_state = math.inf, -1, copy.deepcopy(net.state_dict())
    history: list[dict[str, float]] = []
    for epoch in range(max_epochs):
        net.train()
        order = torch.randperm(len(y_train), generator=generator).to(device)
        train_loss = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = net(cat_train[index], num_train[index])
            loss = criterion(logits.float(), y_train[index])
            loss.backward()
            optimizer.step()
            train_loss += float(loss.detach()) * len(index)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            valid_loss = _log_loss(net, cat_valid, num_valid, y_valid, batch_size * 4)
        history.append({"epoch": float(epoch), "train_loss": train_loss / max(1, len(order)),
                        "valid_log_loss": valid_loss})
        log.info("epoch %d: train loss %.4f, valid log loss %.4f", epoch, history[-1]["train_loss"], valid_loss)
        if on_epoch is not None:
            on_epoch(epoch, valid_loss)
        if valid_loss < best_loss - 1e-6:
            best_loss, best_epoch = valid_loss, epoch
            best_state = copy.deepcopy(net.state_dict())
        elif epoch - best_epoch >= patience:
            log.info("early stop at epoch %d (best %d, %.4f)", epoch, best_epoch, best_loss)
            break

    state = {k: v.detach().cpu().clone() for k, v in best_state.items()}
    return TrainedModel(preprocessor=preprocessor, state_dict=state, params=params, history=history,
                        best_epoch=best_epoch)


def time_split(frame: pd.DataFrame, valid_days: int, test_days: int) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                                pd.DataFrame]:
    """Split by the calendar date of ``scheduled_departure``: the last ``test_days`` dates are the test set, the
    ``valid_days`` before them validation, the rest training, so evaluation always looks at the future."""
    departure = pd.to_datetime(frame[TIME_COLUMN])
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
