"""Numeric precision: which autocast dtype a device gets for ``precision: auto | fp32 | bf16 | fp16``.

``auto`` is bf16 autocast on CPUs whose oneDNN has fast bf16 kernels (AMX or AVX-512 BF16: about 1.5x the
fp32 training step of the IG-KD teacher on a 2-core Xeon, see docs/benchmarks.md), mixed precision on CUDA (bf16
where the GPU supports it, else fp16 with a gradient scaler), and fp32 everywhere else. Weights, optimiser state
and losses stay fp32; only the matmuls and convolutions inside :func:`autocast` run in the lower precision.

Example::

    dtype = autocast_dtype("auto", torch.device("cpu"))     # torch.bfloat16 on an AMX Xeon, else None
    with autocast(torch.device("cpu"), dtype):
        loss = F.cross_entropy(model(x), y)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
#: CPU flags (as /proc/cpuinfo spells them) that give oneDNN native bf16 kernels
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux), or an empty set where /proc/cpuinfo does not exist."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """oneDNN on this CPU has native bf16 kernels (AMX or AVX-512 BF16)."""
    return torch.backends.mkldnn.is_available() and any(f in cpu_flags() for f in BF16_CPU_FLAGS)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def dtype_name(dtype: torch.dtype | None) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``: what a run records as the precision it used."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device`` (nothing when ``dtype`` is None)."""
    if dtype is None:
        yield
        return
    with torch.autocast(device.type, dtype=dtype):
        yield


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only where fp16 needs one (CUDA); bf16 has fp32's range and needs none."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16 and device.type == "cuda")
