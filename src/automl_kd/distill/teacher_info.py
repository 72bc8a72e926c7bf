"""Where a teacher came from and how its outputs are served: :class:`TeacherInfo`, attached to the frozen module.

:func:`automl_kd.distill.teacher.get_teacher` attaches it; the teacher-output cache reads it back (the teacher's
``outputs`` settings and the artifact cache it was loaded from). It lives apart from both so that neither imports
the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

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
