"""Where a teacher came from and how its outputs are served: :class:`TeacherInfo`, attached to the frozen module.

:func:`automl_kd.distill.teacher.get_teacher` attaches it; the teacher-output cache reads it back (the teacher's
``outputs`` settings, the artifact cache it was loaded from, the autocast dtype of its forward passes). It lives
apart from both so that neither imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from automl_kd.config import InputNorm
from automl_kd.data import DataSplits
from automl_kd.errors import ConfigError
from automl_kd.precision import autocast_dtype

Normalizer = Callable[[torch.Tensor], torch.Tensor]

ATTR = "automl_kd_teacher"


@dataclass
class TeacherInfo:
    """Where a teacher came from and how its outputs are served; attached to the module as ``automl_kd_teacher``."""

    source: str  # "checkpoint", "cache" or "trained"
    fingerprint: str  # hash of the weights: part of every IG-map and teacher-output cache key
    config: Any = None  # the TeacherConfig
    cache: Any = None  # the ArtifactCache it was loaded from / stored in
    cache_key: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    #: (precision, device type) -> the autocast dtype of the teacher's forward passes, resolved once
    #: (:func:`teacher_dtype`; get_teacher fills in the run's precision from the teacher's own plan)
    dtypes: dict[tuple[str, str], torch.dtype | None] = field(default_factory=dict)

    @property
    def val_acc(self) -> float | None:
        v = self.metrics.get("val_acc")
        return float(v) if v is not None else None


def teacher_info(teacher: nn.Module | None) -> TeacherInfo | None:
    """The :class:`TeacherInfo` of a teacher from :func:`get_teacher` (None for any other module)."""
    info = getattr(teacher, ATTR, None) if teacher is not None else None
    return info if isinstance(info, TeacherInfo) else None


def attach_info(model: nn.Module, info: TeacherInfo) -> None:
    setattr(model, ATTR, info)


def teacher_dtype(
    teacher: nn.Module, precision: str, device: torch.device, input_shape: tuple[int, ...]
) -> torch.dtype | None:
    """The autocast dtype of ``teacher``'s forward passes in ``precision`` (:mod:`automl_kd.precision`): the one
    place it is resolved. A teacher from :func:`~automl_kd.distill.teacher.get_teacher` keeps it in its
    :class:`TeacherInfo`, so ``precision: auto`` looks at the network once per teacher, not once per trial or
    record; any other module is resolved on each call."""
    info = teacher_info(teacher)
    key = (precision, device.type)
    if info is not None and key in info.dtypes:
        return info.dtypes[key]
    dtype = autocast_dtype(precision, device, teacher, input_shape)
    if info is not None:
        info.dtypes[key] = dtype
    return dtype


def input_normalizer(convention: str | InputNorm, data: DataSplits | None) -> Normalizer:
    """[0, 1] images -> the input a network with ``convention`` expects: ``dataset`` (the training split's mean
    and std, how the library trains), ``unit`` (unchanged), or a given :class:`~automl_kd.config.InputNorm`."""
    if convention == "dataset":
        if data is None:
            raise ConfigError("input 'dataset' needs the data's training split (its mean and std)")
        return data.normalize
    if convention == "unit":
        return _unit
    assert isinstance(convention, InputNorm)
    mean, std = convention.mean, convention.std

    def normalize(x: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - m) / s

    return normalize


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x


def check_input(convention: str | InputNorm, data: DataSplits) -> None:
    """A given mean/std has one value per channel of ``data``."""
    if isinstance(convention, InputNorm) and len(convention.mean) != data.in_chans:
        raise ConfigError(
            f"teacher.input: {len(convention.mean)} mean/std values for {data.in_chans}-channel images"
        )


def teacher_normalizer(teacher: nn.Module | None, data: DataSplits) -> Normalizer:
    """How to turn [0, 1] images into ``teacher``'s input (its ``teacher.input`` convention; ``dataset`` for a
    module that did not come from :func:`~automl_kd.distill.teacher.get_teacher`)."""
    info = teacher_info(teacher)
    cfg = info.config if info is not None else None
    return input_normalizer(getattr(cfg, "input", "dataset"), data)


def teacher_input(teacher: nn.Module | None) -> Any:
    """The teacher's input convention as cache keys hold it (``"dataset"``, ``"unit"`` or a mean/std dict)."""
    info = teacher_info(teacher)
    convention = getattr(info.config if info is not None else None, "input", "dataset")
    return convention if isinstance(convention, str) else convention.model_dump()
