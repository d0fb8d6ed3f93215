"""The trained model as it is kept and served: the fitted preprocessor, the best epoch's weights and the Platt
calibration, saved to one file that ``torch.load(weights_only=True)`` reads, and predictions from frames or from
the plain columns an online read returns.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipelines.training.network import Network, NumpyForward, build_net
from pipelines.training.preprocessing import Preprocessor


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
    _networks: dict[str, Network] = field(default_factory=dict, init=False, repr=False, compare=False)
    """Eval-mode networks for inference, one per device, built on first use (never pickled)."""
    _numpy: NumpyForward | None = field(default=None, init=False, repr=False, compare=False)
    """The CPU network's forward pass in numpy for the online path, built on first use (never pickled)."""

    @property
    def valid_log_loss(self) -> float:
        """The best epoch's validation log loss after calibration (what ``predict_proba`` scores there)."""
        return self.history[self.best_epoch]["valid_log_loss"]

    @property
    def valid_log_loss_uncalibrated(self) -> float:
        """The same epoch's validation log loss of the raw ``sigmoid(logit)``, for comparison."""
        return self.history[self.best_epoch]["valid_log_loss_uncalibrated"]

    def network(self, device: torch.device | None = None) -> Network:
        """A new network with the best epoch's weights, in eval mode."""
        net = build_net(self.preprocessor, self.params)
        net.load_state_dict(self.state_dict)
        return net.to(device or torch.device("cpu")).eval()

    def _inference_network(self, device: torch.device) -> Network:
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
        """``predict_proba(pd.DataFrame(columns))`` to float32 precision, on the CPU through
        ``Preprocessor.transform_columns`` and ``NumpyForward``: the online path, about 55 us for one flight,
        where building and converting a frame takes milliseconds."""
        return self.online_probabilities(*self.preprocessor.transform_columns(columns))

    def online_probabilities(self, cat: torch.Tensor, num: torch.Tensor) -> np.ndarray:
        """``probabilities`` to float32 precision through ``NumpyForward`` (built on first use): for a few rows."""
        if self._numpy is None:
            self._numpy = NumpyForward(self._inference_network(torch.device("cpu")))
        a, b = self.calibration
        logits = a * self._numpy(cat.numpy(), num.numpy()) + np.float32(b)
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float64)

    def __getstate__(self) -> dict[str, Any]:
        # MLflow pickles the pyfunc wrapper with this model inside: the networks are a cache, rebuilt on demand.
        return {k: v for k, v in self.__dict__.items() if k not in ("_networks", "_numpy")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _networks={}, _numpy=None)

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
