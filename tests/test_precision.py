"""``precision: auto | fp32 | bf16 | fp16``: what each resolves to, the dense-MACs rule of ``auto`` on a CPU, and
that training records and uses the precision it resolved to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from distill_support import one_thread, tiny_data, tiny_student
from torch import nn

from automl_kd import get_plugin_manager
from automl_kd.distill.loop import train_student
from automl_kd.distill.settings import TrainSettings
from automl_kd.metrics import device_name
from automl_kd.precision import (
    BF16_MIN_DENSE_MACS,
    autocast,
    autocast_dtype,
    cpu_flags,
    cpu_has_fast_bf16,
    cpu_name,
    dense_macs,
    dtype_name,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def test_explicit_precisions_and_a_bad_name() -> None:
    assert autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16
    assert autocast_dtype("fp16", CPU) is torch.float16
    assert [dtype_name(d) for d in (None, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]
    with pytest.raises(ValueError, match=r"precision must be one of auto, fp32, bf16, fp16, got 'fp64'"):
        autocast_dtype("fp64", CPU)


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="no /proc/cpuinfo (not Linux)")
def test_cpu_name_and_flags_come_from_proc_cpuinfo_and_name_the_latency_device() -> None:
    text = Path("/proc/cpuinfo").read_text()
    model = next(
        line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("model name")
    )
    flags = next(line.partition(":")[2].split() for line in text.splitlines() if line.startswith("flags"))
    assert cpu_name() == model
    assert cpu_flags() == frozenset(flags)
    assert device_name(CPU) == f"{model} CPU, {torch.get_num_threads()} threads"


def test_dense_macs_counts_plain_convolutions_and_linear_layers_but_not_depthwise_ones() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8 x 16 x 16 outputs, 3 * 3 * 3 each: 55,296
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: not counted
        nn.Conv2d(8, 16, 1, stride=2),  # 16 x 8 x 8 outputs, 8 each: 8,192
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),  # 10 outputs, 1,024 each: 10,240
    ).train()
    assert dense_macs(model, (3, 16, 16)) == 55_296 + 8_192 + 10_240
    assert model.training  # the count leaves the mode as it was


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="this CPU has no fast bf16 kernels (AMX or AVX-512 BF16)")
def test_auto_on_this_cpu_is_bf16_for_the_paper_network_and_fp32_for_a_small_student() -> None:
    pm = get_plugin_manager()
    paper = pm.spaces.create("paper-truncated", {}, num_classes=10, in_chans=3, input_size=32)
    for removed in (5, 15):  # the released teacher and its truncated student: both train ~2x faster in bf16
        net = paper.build({"removed": removed})
        assert dense_macs(net, (3, 32, 32)) >= BF16_MIN_DENSE_MACS
        assert autocast_dtype("auto", CPU, net, (3, 32, 32)) is torch.bfloat16
    small = tiny_student(tiny_data())
    assert dense_macs(small, (1, 28, 28)) < BF16_MIN_DENSE_MACS
    assert autocast_dtype("auto", CPU, small, (1, 28, 28)) is None
    assert autocast_dtype("auto", CPU) is torch.bfloat16  # no network given: the CPU alone decides


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_training_records_the_precision_it_ran_in(precision: str) -> None:
    data = tiny_data()
    student = tiny_student(data)
    expected = dtype_name(autocast_dtype(precision, CPU, student, data.input_shape))
    settings = TrainSettings(epochs=1, batch_size=32, lr=0.005, precision=precision)  # type: ignore[arg-type]
    seen: list[torch.dtype] = []
    hook = student.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    result = train_student(student, data, settings, seed=0)
    hook.remove()
    assert result.precision == expected
    want = {"fp32": torch.float32, "bf16": torch.bfloat16}[expected]
    assert seen and all(d == want for d in seen)  # every forward pass, training and validation


def test_autocast_runs_convolutions_in_the_lower_precision_and_nothing_for_fp32() -> None:
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    with autocast(CPU, torch.bfloat16):
        assert conv(x).dtype is torch.bfloat16
    with autocast(CPU, None):
        assert conv(x).dtype is torch.float32
