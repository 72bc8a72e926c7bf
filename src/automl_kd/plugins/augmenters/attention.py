"""``attention``: attention transfer (Zagoruyko and Komodakis), as in the IG-KD paper (Hernandez et al. 2025).

The attention map of a feature tensor F (N x C x H x W) is ``a = L2-normalise(flatten(mean_c(F^2)))``; the loss of
one student/teacher layer pair is ``mean((a_teacher - a_student)^2)`` over the batch and the H*W positions, and
each pair is a named term (``at``, or ``at:<student layer>`` with several pairs) weighted by ``gamma``.

When the two maps differ in resolution, the larger ``mean_c(F^2)`` map is average-pooled (area interpolation,
``adaptive_avg_pool2d``) to the smaller one's size before the L2 normalisation, so both sides see the same
positions at the coarser resolution.

Layer pairs are explicit (``pairs: [[student_layer, teacher_layer], ...]``, names of ``named_modules()``), or
matched in ``prepare``: for each relative depth in ``depths`` (0 = first stage, 1 = last; the paper uses one
layer in the middle, 0.5), the student stage nearest that depth, and the teacher stage with the same total
stride (resolution) nearest the same relative depth (nearest overall when no teacher stage has that stride).
Stages are what :func:`automl_kd.plugins.spaces.irnet.feature_layers` lists (``blocks.N``, or ``features.N`` for
paper-truncated networks), or a timm model's ``feature_info``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from automl_kd.distill.augmenter import Augmenter, PrepareContext, StepBatch
from automl_kd.hookspecs import hookimpl

log = logging.getLogger("automl_kd")


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """``mean_c(F^2)`` as an N x H x W float32 map (not yet normalised)."""
    return feature.float().pow(2).mean(1)


def normalise(a: torch.Tensor) -> torch.Tensor:
    """Flatten N x H x W maps and L2-normalise each."""
    return F.normalize(a.flatten(1), p=2, dim=1, eps=1e-12)


def match_resolution(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two N x H x W maps to the smaller's size."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    if a.shape[-1] * a.shape[-2] > b.shape[-1] * b.shape[-2]:
        return F.adaptive_avg_pool2d(a.unsqueeze(1), (b.shape[-2], b.shape[-1])).squeeze(1), b
    return a, F.adaptive_avg_pool2d(b.unsqueeze(1), (a.shape[-2], a.shape[-1])).squeeze(1)


def at_loss(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """``mean((a_t - a_s)^2)`` of two N x H x W ``mean_c(F^2)`` maps (resized to a common size, normalised)."""
    s, t = match_resolution(student_map, teacher_map)
    return (normalise(t) - normalise(s)).pow(2).mean()


def feature_layers(model: nn.Module) -> list[tuple[str, int, int]]:
    """``(name, channels, stride)`` of a model's stages: IRNet's ``feature_info`` or timm's."""
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and isinstance(info[0], tuple):
        return [(str(n), int(c), int(s)) for n, c, s in info]
    if isinstance(info, list) and info and isinstance(info[0], dict):
        return [(str(d["module"]), int(d["num_chs"]), int(d["reduction"])) for d in info]
    raise ValueError(
        f"{type(model).__name__} lists no stages (feature_info); give attention.pairs explicitly "
        "as [[student_layer, teacher_layer], ...]"
    )


def match_layers(
    student: list[tuple[str, int, int]], teacher: list[tuple[str, int, int]], depths: list[float]
) -> list[tuple[str, str]]:
    """Student/teacher stage pairs at the given relative depths, same stride preferred (see the module doc)."""

    def rel(i: int, n: int) -> float:
        return i / (n - 1) if n > 1 else 0.0

    pairs: list[tuple[str, str]] = []
    for d in depths:
        si = min(range(len(student)), key=lambda i: (abs(rel(i, len(student)) - d), i))
        s_name, _, s_stride = student[si]
        s_depth = rel(si, len(student))
        same = [j for j, (_, _, st) in enumerate(teacher) if st == s_stride] or list(range(len(teacher)))
        tj = min(same, key=lambda j: (abs(rel(j, len(teacher)) - s_depth), j))
        if (s_name, teacher[tj][0]) not in pairs:
            pairs.append((s_name, teacher[tj][0]))
    return pairs


class AttentionTransfer(Augmenter):
    """Match the student's spatial attention maps to the teacher's at paired layers.

    Options:
        gamma: weight of each pair's term (the paper: 0.8).
        pairs: explicit ``[[student_layer, teacher_layer], ...]``; default: matched in ``prepare``.
        depths: relative depths (0..1) of the student stages to pair when ``pairs`` is not given.
    """

    name = "attention"

    def __init__(
        self,
        gamma: float = 0.8,
        pairs: list[tuple[str, str]] | None = None,
        depths: list[float] | None = None,
    ) -> None:
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        depths = [0.5] if depths is None else [float(d) for d in depths]
        if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
            raise ValueError(f"depths must be relative depths in [0, 1], got {depths}")
        self.gamma, self.depths = float(gamma), depths
        self.explicit = [(str(s), str(t)) for s, t in pairs] if pairs else None
        self.pairs: list[tuple[str, str]] = list(self.explicit or [])
        self._warned = False

    def prepare(self, ctx: PrepareContext) -> None:
        if self.explicit is not None:
            return
        if ctx.teacher is None:
            raise ValueError("attention needs a teacher; set `teacher:` in the config")
        self.pairs = match_layers(feature_layers(ctx.student), feature_layers(ctx.teacher), self.depths)
        ctx.log(
            f"attention: layer pairs (student -> teacher) {', '.join(f'{s}->{t}' for s, t in self.pairs)}"
        )

    def student_layers(self) -> list[str]:
        return sorted({s for s, _ in self.pairs})

    def teacher_layers(self) -> list[str]:
        return sorted({t for _, t in self.pairs})

    def reduce_teacher(self, layer: str, feature: torch.Tensor) -> torch.Tensor:
        """The teacher's map, normalised at its own resolution (values in [0, 1]: safe to cache as fp16;
        pooling and re-normalising later gives the same result as pooling the raw map)."""
        a = attention_map(feature)
        return normalise(a).view_as(a)

    def replay_key(self) -> dict[str, Any]:
        return {"attention_map": "mean_c(F^2), L2-normalised over H*W", "version": 1}

    def losses(self, batch: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
        if not self.pairs:
            if not self._warned:
                log.warning(
                    "attention: no layer pairs (prepare() was not called and no pairs given); no AT term"
                )
                self._warned = True
            return {}
        if batch.teacher is None:
            raise ValueError("attention needs the teacher's features; set `teacher:` in the config")
        terms: dict[str, tuple[float, torch.Tensor]] = {}
        for s, t in self.pairs:
            name = "at" if len(self.pairs) == 1 else f"at:{s}"
            tmap = batch.teacher.features[t]
            if tmap.dim() == 4:  # raw features (a caller that bypassed the training loop's reduction)
                tmap = self.reduce_teacher(t, tmap)
            terms[name] = (self.gamma, at_loss(attention_map(batch.student.features[s]), tmap))
        return terms


@hookimpl
def register_augmenters(register: Any) -> None:
    register("attention", AttentionTransfer, description="attention transfer: gamma * mean((a_t - a_s)^2)")
