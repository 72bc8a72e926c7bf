"""Numeric precision: which autocast dtype a device gets for ``precision: auto | fp32 | bf16 | fp16``.

``auto`` is mixed precision on CUDA (bf16 where the GPU supports it, else fp16 with a gradient scaler); on CPUs
whose oneDNN has fast bf16 kernels (AMX or AVX-512 BF16) it is bf16 autocast for networks with at least
:data:`BF16_MIN_DENSE_MACS` multiply-adds per image in dense layers (convolutions that are not grouped, and linear
layers), and fp32 for smaller ones; fp32 everywhere else. The threshold is measured (benchmarks/train_throughput.py,
docs/benchmarks.md): on a 2-core CPU with AMX, bf16 trains the IG-KD teacher (53 M dense MACs) 1.89x and its
truncated student (12 M) 2.56x as fast as fp32, but small mbv2 students (7 M and 1.8 M) only 0.68x and 0.65x as
fast, because their depthwise convolutions and casts cost more than the matrix units save. Weights, optimiser state
and losses stay fp32; only the matmuls and convolutions inside :func:`autocast` run in the lower precision.

Example::

    dtype = autocast_dtype("auto", torch.device("cpu"), model, (3, 32, 32))  # bf16 for a big network on AMX
    with autocast(torch.device("cpu"), dtype):
        loss = F.cross_entropy(model(x), y)
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from torch import nn

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
#: CPU flags (as /proc/cpuinfo spells them) that give oneDNN native bf16 kernels
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
#: ``auto`` on such a CPU: bf16 from this many dense multiply-adds per image (see the module docstring)
BF16_MIN_DENSE_MACS = 10_000_000


@functools.cache
def _cpuinfo(field: str) -> str | None:
    """The first value of ``field`` in /proc/cpuinfo (Linux), or None where the file or the field is missing."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == field:
            return value.strip()
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux), or an empty set where /proc/cpuinfo does not exist."""
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_name() -> str:
    """The CPU's model name, e.g. ``AMD EPYC``; ``platform.processor()`` is empty on Linux, so /proc/cpuinfo
    first, then what :mod:`platform` knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_has_fast_bf16() -> bool:
    """oneDNN on this CPU has native bf16 kernels (AMX or AVX-512 BF16)."""
    return torch.backends.mkldnn.is_available() and any(f in cpu_flags() for f in BF16_CPU_FLAGS)


def dense_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one image in the convolutions that are not grouped and in the linear layers: the work
    the matrix units (AMX, tensor cores) take; depthwise convolutions and element-wise layers are left out."""
    total = 0

    def count(module: nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            total += out.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, nn.Linear):
            total += out.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total


def network_decides(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` on ``device`` depends on the network (``auto`` on a CPU with fast bf16 kernels)."""
    return precision == "auto" and device.type == "cpu" and cpu_has_fast_bf16()


def autocast_dtype(
    precision: str,
    device: torch.device,
    model: nn.Module | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    ``model`` and its ``input_shape`` (C, H, W) let ``auto`` on a CPU keep a small network in fp32 (see the module
    docstring); without them ``auto`` means bf16 on a CPU with fast bf16 kernels."""
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
        if model is not None and input_shape is not None:
            return torch.bfloat16 if dense_macs(model, input_shape) >= BF16_MIN_DENSE_MACS else None
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
