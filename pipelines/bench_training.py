"""The ``training`` section of ``make bench``: training throughput of the default model, and the same model fed by
a per-sample ``DataLoader``, measured in the same run on the same rows.

Data: the real training set of the demo window (``training_set`` from the feature store in the bench's scratch
home), its train split preprocessed once. Both paths run the one training loop of ``pipelines.model.train_epoch``
and differ only in where batches come from: slices of tensors already on the device (``sliced_batches``, what
``train_model`` uses) or a ``DataLoader`` over a per-row dataset with default collation (``loader_batches``).
Throughput is rows per second of training (forward, backward, optimizer step) after one warm-up epoch; the
DataLoader path is timed on part of an epoch, which is enough for a rate. On a GPU host each device is measured.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd
import torch

TARGETS = {"cpu_samples_per_s": 200_000, "speedup_vs_dataloader": 10.0, "cuda_samples_per_s": 5_000_000}
SLICED_EPOCHS = 3
LOADER_ROWS = 40_000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(device: torch.device, batches: Callable[[torch.Tensor], Iterable[Any]], epochs: int, rows: int,
          parts: tuple[Any, Any, Any], generator: torch.Generator, n: int) -> float:
    """Rows per second over ``epochs`` epochs of ``rows`` rows each (a prefix of a fresh permutation)."""
    from pipelines.model import train_epoch

    net, optimizer, criterion = parts
    _sync(device)
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)[:rows].to(device)
        train_epoch(net, optimizer, criterion, batches(order))
    _sync(device)
    return epochs * rows / (time.perf_counter() - started)


def measure(train: pd.DataFrame, device: torch.device, params: dict[str, Any] | None = None) -> dict[str, Any]:
    from pipelines.model import DEFAULT_PARAMS, Preprocessor, loader_batches, sliced_batches, training_parts

    params = {**DEFAULT_PARAMS, **(params or {})}
    batch_size = int(params["batch_size"])
    preprocessor = Preprocessor().fit(train)
    cat, num = (t.to(device) for t in preprocessor.transform(train))
    y = torch.as_tensor(train["disrupted"].to_numpy(), dtype=torch.float32, device=device)
    n = len(y)
    generator = torch.Generator().manual_seed(0)

    def sliced(order: torch.Tensor) -> Iterable[Any]:
        return sliced_batches(cat, num, y, order, batch_size)

    def loader(order: torch.Tensor) -> Iterable[Any]:
        return loader_batches(cat, num, y, order, batch_size)

    torch.manual_seed(0)
    parts = training_parts(preprocessor, train, params, device)
    _rate(device, sliced, 1, n, parts, generator, n)  # warm-up: allocator, kernels, caches
    sliced_rate = _rate(device, sliced, SLICED_EPOCHS, n, parts, generator, n)
    loader_rows = min(n, LOADER_ROWS)
    _rate(device, loader, 1, min(n, 4 * batch_size), parts, generator, n)
    loader_rate = _rate(device, loader, 1, loader_rows, parts, generator, n)
    return {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(), "rows": n, "batch_size": batch_size,
        "parameters": sum(p.numel() for p in parts[0].parameters()),
        "sliced_samples_per_s": round(sliced_rate), "sliced_epochs": SLICED_EPOCHS,
        "dataloader_samples_per_s": round(loader_rate), "dataloader_rows": loader_rows,
        "speedup_vs_dataloader": round(sliced_rate / loader_rate, 1),
    }


def bench_training(frame: pd.DataFrame) -> dict[str, Any]:
    """Both paths on the CPU, and on CUDA too when there is a GPU."""
    from pipelines.model import time_split

    train, _, _ = time_split(frame, valid_days=14, test_days=14)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results: dict[str, Any] = {"cpus": os.cpu_count(), "targets": TARGETS}
    for device in devices:
        results[device.type] = measure(train, device)
    cpu = results["cpu"]
    results["met"] = {"cpu_samples_per_s": cpu["sliced_samples_per_s"] >= TARGETS["cpu_samples_per_s"],
                      "speedup_vs_dataloader": cpu["speedup_vs_dataloader"] >= TARGETS["speedup_vs_dataloader"]}
    if "cuda" in results:
        results["met"]["cuda_samples_per_s"] = (results["cuda"]["sliced_samples_per_s"]
                                                >= TARGETS["cuda_samples_per_s"])
    return results


def print_training(figures: dict[str, Any]) -> None:
    say = print  # noqa: T201 - the command's output
    say("Training throughput, default model, demo-window train split (samples/s, after a warm-up epoch)")
    say(f"  {'device':<8}{'sliced tensors':>16}{'per-sample DataLoader':>24}{'speedup':>10}")
    for name in ("cpu", "cuda"):
        if name in figures:
            row = figures[name]
            say(f"  {row['device_name'][:8]:<8}{row['sliced_samples_per_s']:>16,}"
                f"{row['dataloader_samples_per_s']:>24,}{row['speedup_vs_dataloader']:>9}x")
    cpu = figures["cpu"]
    say(f"  ({cpu['rows']:,} rows, batch {cpu['batch_size']}, {cpu['parameters']:,} parameters, "
        f"{cpu['torch_threads']} torch threads; targets: CPU >= {TARGETS['cpu_samples_per_s']:,}/s, "
        f">= {TARGETS['speedup_vs_dataloader']:.0f}x the DataLoader; met: {figures['met']})")
