"""The tabular network: one shared embedding table for the categoricals, an MLP and a linear path (wide and deep),
with CPU fast paths for the embedding backward and dropout; CUDA when present. The model averages a few such
networks (``FlightDelayEnsemble``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from pipelines.training.preprocessing import Preprocessor


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

    def member_logits(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """The logits as the one member of an ensemble, [1, n]: what training fits."""
        return self(cat, num).unsqueeze(0)


class FlightDelayEnsemble(nn.Module):
    """Networks with their own initialization and dropout, trained side by side on the same batches, each on its
    own loss; the prediction is their mean logit.

    One network's test ROC AUC on the demo window varied by 0.005 (standard deviation) from one seed to the next,
    as much as most hyperparameters changed it, and its validation log loss did not tell the better seeds apart.
    The mean of three varied by 0.0015 and was 0.0016 higher on average."""

    def __init__(self, members: list[FlightDelayNet]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def member_logits(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """Each member's logits, [members, n]."""
        return torch.stack([member(cat, num) for member in self.members])

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        return self.member_logits(cat, num).mean(0)


Network = FlightDelayNet | FlightDelayEnsemble
"""What ``build_net`` makes: both take (categorical indices, numerics) to one logit per row, and give each member's
logits with ``member_logits``."""


class NumpyForward:
    """The eval-mode forward pass of a network in numpy float32, for the few rows of an online request. Torch
    dispatches each of the three-member model's ~40 small operations in a few microseconds; numpy's cost a
    microsecond: one flight's logits took 113 us through torch and 29 us here, 100 flights 279 and 122 us. The
    same arithmetic summed in another order: probabilities agree to float32 precision (at most 1.2e-7 apart on
    the demo test window)."""

    def __init__(self, net: Network) -> None:
        members = list(net.members) if isinstance(net, FlightDelayEnsemble) else [net]
        self.members = [self._compile(member) for member in members]  # type: ignore[arg-type]

    @staticmethod
    def _compile(member: FlightDelayNet) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                  list[tuple[np.ndarray, np.ndarray]]]:
        if any(not isinstance(layer, nn.Linear | nn.ReLU | Dropout) for layer in member.mlp):
            raise TypeError(f"NumpyForward covers Linear, ReLU and Dropout layers, not {member.mlp}")
        linears = [layer for layer in member.mlp if isinstance(layer, nn.Linear)]

        def array(t: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)

        # The wide (linear) path reads the same input as the first layer: one matrix product for both, its output
        # the last column.
        first = np.concatenate([array(linears[0].weight).T, array(member.linear.weight).T], axis=1)
        first_bias = np.concatenate([array(linears[0].bias), array(member.linear.bias)])
        rest = [(np.ascontiguousarray(array(layer.weight).T), array(layer.bias)) for layer in linears[1:]]
        return array(member.embedding.weight), member.offsets.cpu().numpy(), np.ascontiguousarray(first), \
            first_bias, rest

    def __call__(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        """The mean logit of the members for encoded rows (what ``Network.forward`` returns), float32."""
        total = np.zeros(len(cat), dtype=np.float32)
        for table, offsets, first, first_bias, rest in self.members:
            x = np.concatenate([table[cat + offsets].reshape(len(cat), -1), num], axis=1)
            out = x @ first + first_bias
            wide, deep = out[:, -1], out[:, :-1]
            for weight, bias in rest:  # a ReLU after every layer but the last (dropout is off in eval)
                deep = np.maximum(deep, 0) @ weight + bias
            total += deep[:, 0] + wide
        return total / np.float32(len(self.members))


def pick_device() -> torch.device:
    """CUDA when there is a GPU, else CPU: the same code trains on a laptop and on the GPU worker."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


CPU_THREADS = 1
"""PyTorch's intra-op threads while training on the CPU. The network's steps are small (1,024-row batches through a
64-32 MLP): on 2 cores, 6 epochs of a 90-day window took 3.0 s with one thread and 3.0-3.2 s with two, and beside
one other busy process 3.6-4.2 s with one against 10.5-12.6 s with two (torch's threads spin waiting for each
other). A pipeline host is rarely idle: the daily runs, the model service and other trainings share its cores."""


@contextmanager
def cpu_threads(device: torch.device, threads: int = CPU_THREADS) -> Iterator[None]:
    """``threads`` intra-op threads while training on ``device`` when it is the CPU (a GPU is left alone); the
    process's setting is restored afterwards."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_net(preprocessor: Preprocessor, params: dict[str, Any]) -> Network:
    """The network ``params`` describe: an ensemble of ``params["members"]`` networks, or one network when there is
    one member (and for models saved before ensembles, whose params have no ``members``)."""
    nets = [FlightDelayNet(preprocessor.cardinalities, preprocessor.n_numeric,
                           hidden_sizes=list(params["hidden_sizes"]), dropout=float(params["dropout"]))
            for _ in range(int(params.get("members", 1)))]
    return nets[0] if len(nets) == 1 else FlightDelayEnsemble(nets)
