"""Tiny teachers, students and data for the distillation tests (a helper module, not a test module)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from automl_kd import get_plugin_manager
from automl_kd.cache import ArtifactCache
from automl_kd.config import DataConfig, TeacherConfig
from automl_kd.data import DataSplits, load_data
from automl_kd.distill.augmenter import Augmenter, PrepareContext
from automl_kd.distill.teacher import get_teacher

PM = get_plugin_manager()
CPU = torch.device("cpu")
TEACHER_SPACE: dict[str, Any] = {
    "stem_stride": 2,
    "stem_channels": 8,
    "stages": [[8, 1, 1], [16, 2, 2], [24, 2, 1]],
    "widths": [1.0],
    "ops": ["ir_k3_e3"],
    "head_channels": 32,
}
STUDENT_SPACE: dict[str, Any] = {**TEACHER_SPACE, "widths": [0.5], "ops": ["ir_k3_e1"], "head_channels": 16}


@functools.lru_cache(maxsize=4)
def tiny_data(train_size: int = 300, crop_padding: int = 2, flip: bool = True) -> DataSplits:
    """Real Fashion-MNIST, a few hundred images (shared between tests: never modify it)."""
    return load_data(
        DataConfig(
            train_size=train_size, test_size=100, val_fraction=0.2, crop_padding=crop_padding, flip=flip
        )
    )


def teacher_config(**outputs: Any) -> TeacherConfig:
    return TeacherConfig(
        space="mbv2",
        space_options=TEACHER_SPACE,
        train={"epochs": 2, "batch_size": 32, "lr": 0.005, "crop_padding": 0, "flip": False},
        outputs=outputs or {},
    )


def tiny_teacher(data: DataSplits, cache: ArtifactCache | None = None, **outputs: Any) -> nn.Module:
    return get_teacher(teacher_config(**outputs), data, CPU, cache or ArtifactCache.default(), pm=PM)


def tiny_student(data: DataSplits, seed: int = 0) -> nn.Module:
    space = PM.spaces.create(
        "mbv2",
        STUDENT_SPACE,
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        input_size=data.input_size,
    )
    torch.manual_seed(seed)
    return space.build(space.reference())


def augmenter(name: str, **options: Any) -> Augmenter:
    aug: Augmenter = PM.augmenters.create(name, options)
    return aug


def prepare(
    augmenters: list[Augmenter],
    teacher: nn.Module,
    student: nn.Module,
    data: DataSplits,
    cache: ArtifactCache | None = None,
    run_dir: Path | None = None,
    log: Any = None,
) -> None:
    ctx = PrepareContext(
        teacher=teacher,
        student=student,
        data=data,
        cache=cache or ArtifactCache.default(),
        device=CPU,
        run_dir=run_dir,
        log=log or (lambda m: None),
    )
    for a in augmenters:
        a.prepare(ctx)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny models on one intra-op thread: on a shared 2-core machine two OpenMP threads wait for each other at
    every small op (measured: the alignment tests take 76 s with 2 threads under load, 4 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
