"""The ``training`` section of ``make bench``: training throughput of the default model, and the same model fed by
a per-sample ``DataLoader``, measured in the same run on the same rows.

Data: the real training set of the demo window (``training_set`` from the feature store in the bench's scratch
home), split by ``time_split`` as training does, its train split preprocessed once (not timed). Both paths run the
one training loop of ``pipelines.training.fit.train_epoch`` (forward, loss, backward, optimizer step) and differ only in
where batches come from: a shuffled copy of tensors already on the device cut into contiguous slices
(``sliced_batches``, what ``train_model`` uses) or a ``DataLoader`` over a per-row dataset with default collation,
shuffled, ``num_workers=0`` (``loader_batches``). Same batch size, same network, same optimizer.

Throughput is training rows per second over several whole epochs after a warm-up, total rows over total time:
the per-sample path's cost includes the garbage collections its per-row objects trigger (in this process a
full collection every ~80,000 rows, ~0.15 s each), which a median of short passes would hide. Each epoch's
seconds are recorded too, so a disturbance by another process shows. On a GPU host CUDA is measured as well (the
DataLoader then collates on the CPU and each batch is copied to the GPU, as such a pipeline would).
"""

from __future__ import annotations

import gc
import os
import platform
import time
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd
import torch

from benchmarks.console import say
from pipelines.training.fit import Batch

TARGETS = {"cpu_samples_per_s": 200_000, "speedup_vs_dataloader": 10.0, "cuda_samples_per_s": 5_000_000}
SLICED_EPOCHS = 5
LOADER_EPOCHS = 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _seconds(device: torch.device, epoch: Callable[[torch.Tensor], None], passes: int, rows: int, n: int,
             generator: torch.Generator) -> list[float]:
    """Seconds of each of ``passes`` calls of ``epoch`` on the first ``rows`` of a fresh permutation of ``n``; the
    permutation is drawn before the clock starts. Garbage left by what ran before (preprocessing) is collected
    first, so a full collection inside the timing is one that the measured path's own objects caused."""
    gc.collect()
    seconds = []
    for _ in range(passes):
        order = torch.randperm(n, generator=generator)[:rows].to(device)
        _sync(device)
        started = time.perf_counter()
        epoch(order)
        _sync(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def measure(train: pd.DataFrame, device: torch.device, params: dict[str, Any] | None = None,
            sliced_epochs: int = SLICED_EPOCHS, loader_epochs: int = LOADER_EPOCHS,
            loader_rows: int | None = None) -> dict[str, Any]:
    """Samples/s of the default model (or ``params``) on ``device``: sliced tensors, then the per-sample
    DataLoader, continuing the same network and optimizer (``loader_rows`` caps the rows of its epochs)."""
    from benchmarks.training import loader_batches
    from pipelines.core.names import LABEL
    from pipelines.training.fit import DEFAULT_PARAMS, sliced_batches, train_epoch, training_parts
    from pipelines.training.preprocessing import Preprocessor

    params = {**DEFAULT_PARAMS, **(params or {})}
    batch_size = int(params["batch_size"])
    preprocessor = Preprocessor().fit(train)
    cat_cpu, num_cpu = preprocessor.transform(train)
    y_cpu = torch.as_tensor(train[LABEL].astype("float32").to_numpy(), dtype=torch.float32)
    cat, num, y = (t.to(device) for t in (cat_cpu, num_cpu, y_cpu))
    n = len(y)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net, optimizer, criterion = training_parts(preprocessor, train, params, device)

    def sliced(order: torch.Tensor) -> None:
        train_epoch(net, optimizer, criterion, sliced_batches(cat, num, y, order, batch_size))

    def loader(order: torch.Tensor) -> None:
        train_epoch(net, optimizer, criterion, loader_batches(cat_cpu, num_cpu, y_cpu, order, batch_size))

    _seconds(device, sliced, 1, n, n, generator)  # warm-up: allocator, kernels, caches
    sliced_s = _seconds(device, sliced, sliced_epochs, n, n, generator)
    loader_rows = min(n, loader_rows or n)
    _seconds(device, loader, 1, min(n, 4 * batch_size), n, generator)
    loader_s = _seconds(device, loader, loader_epochs, loader_rows, n, generator)
    sliced_rate = sliced_epochs * n / sum(sliced_s)
    loader_rate = loader_epochs * loader_rows / sum(loader_s)
    return {
        "device": str(device), "device_name": _device_name(device),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "rows": n, "batch_size": batch_size, "batches_per_epoch": -(-n // batch_size),
        "parameters": sum(p.numel() for p in net.parameters()),
        "sliced_samples_per_s": round(sliced_rate), "sliced_epochs": sliced_epochs,
        "sliced_epoch_seconds": [round(s, 4) for s in sliced_s],
        "dataloader_samples_per_s": round(loader_rate), "dataloader_epochs": loader_epochs,
        "dataloader_rows": loader_rows, "dataloader_epoch_seconds": [round(s, 4) for s in loader_s],
        "speedup_vs_dataloader": round(sliced_rate / loader_rate, 1),
    }


def bench_training(frame: pd.DataFrame, params: dict[str, Any] | None = None, valid_days: int = 14,
                   test_days: int = 14, devices: Iterable[torch.device] | None = None) -> dict[str, Any]:
    """Both paths on the CPU, and on CUDA too when there is a GPU, on the train split of ``frame`` (the split
    training uses: the last ``test_days`` and the ``valid_days`` before them are left out)."""
    from pipelines.training.fit import time_split

    train, _, _ = time_split(frame, valid_days=valid_days, test_days=test_days)
    if devices is None:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results: dict[str, Any] = {"cpus": os.cpu_count(), "targets": TARGETS}
    for device in devices:
        results[device.type] = measure(train, device, params)
    met: dict[str, bool] = {}
    if "cpu" in results:
        cpu = results["cpu"]
        met["cpu_samples_per_s"] = cpu["sliced_samples_per_s"] >= TARGETS["cpu_samples_per_s"]
        met["speedup_vs_dataloader"] = cpu["speedup_vs_dataloader"] >= TARGETS["speedup_vs_dataloader"]
    if "cuda" in results:
        met["cuda_samples_per_s"] = results["cuda"]["sliced_samples_per_s"] >= TARGETS["cuda_samples_per_s"]
    results["met"] = met
    return results


def print_training(figures: dict[str, Any]) -> None:
    say("Training throughput, default model, demo-window train split (samples/s after a warm-up)")
    say(f"  {'device':<24}{'sliced tensors':>16}{'per-sample DataLoader':>24}{'speedup':>10}")
    rows = [figures[name] for name in ("cpu", "cuda") if name in figures]
    for row in rows:
        say(f"  {row['device_name'][:23]:<24}{row['sliced_samples_per_s']:>16,}"
            f"{row['dataloader_samples_per_s']:>24,}{row['speedup_vs_dataloader']:>9}x")
    if rows:
        first = rows[0]
        say(f"  ({first['rows']:,} rows, batch {first['batch_size']}, {first['parameters']:,} parameters, "
            f"{first['torch_threads']} torch threads; targets: CPU >= {TARGETS['cpu_samples_per_s']:,}/s, "
            f">= {TARGETS['speedup_vs_dataloader']:.0f}x the DataLoader, CUDA >= "
            f"{TARGETS['cuda_samples_per_s']:,}/s; met: {figures['met']})")


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
