"""Model metrics: parameters, multiply-adds by tracing, and latency measured properly.

Latency is measured the way the IG-KD paper's timings (Hernandez et al. 2025) were not: warm-up iterations first,
device synchronisation around the timed region, the median of repeated timings, at batch 1 and batch 64, on a named
device, with no data loading in the timed loop.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import ConfigError
from .precision import cpu_name


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass at ``input_shape`` (C, H, W), counted by tracing (convolutions and matrix
    products, the way fvcore and thop count them). Batch size 1."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return int(counter.get_total_flops() // 2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} CPU, {torch.get_num_threads()} threads"


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    device: torch.device,
    batch_sizes: Sequence[int] = (1, 64),
    warmup: int = 3,
    repeats: int = 10,
    budget_s: float = 5.0,
) -> dict[str, Any]:
    """Median forward latency in milliseconds per batch at each batch size, after warm-up, synchronised.

    ``budget_s`` caps the time spent per batch size (fewer repeats for a slow model, at least 3).
    """
    was_training = model.training
    model.eval()
    out: dict[str, Any] = {"latency_device": device_name(device)}
    for bs in batch_sizes:
        x = torch.randn(bs, *input_shape, device=device)
        for _ in range(warmup):
            model(x)
        _sync(device)
        times: list[float] = []
        start_all = time.perf_counter()
        while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start_all < budget_s):
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            times.append((time.perf_counter() - t0) * 1000)
        out[f"latency_ms_b{bs}"] = round(statistics.median(times), 4)
    model.train(was_training)
    return out


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"config key 'device': {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"config key 'device': {name!r}, but CUDA is not available here; use cpu or auto"
            )
        if device.index is not None and device.index >= count:
            raise ConfigError(f"config key 'device': {name!r}, but this machine has {count} CUDA device(s)")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError(f"config key 'device': {name!r}, but MPS is not available here; use cpu or auto")
    return device
