"""Augmenters: the distillation ingredients (plain KD, attention transfer, IG overlay, ...).

An augmenter may
(a) ``prepare`` once before training (precompute into the artifact cache),
(b) ``transform`` a batch of inputs before geometric augmentation (it gets the batch's dataset indices),
(c) add named loss terms in ``losses``.
It declares which teacher outputs it needs; the training loop runs the teacher once per batch for all augmenters
(or reads the outputs from the cache). The engine, not the augmenters, combines the terms:
``total = task_weight * ce + sum(weight * term)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class Outputs:
    """A network's outputs for one batch: logits and features at named layers."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class StepBatch:
    """What an augmenter's ``losses`` sees for one training step."""

    x: torch.Tensor  # the normalised inputs the student saw
    y: torch.Tensor
    index: torch.Tensor  # dataset indices of the batch
    student: Outputs
    teacher: Outputs | None


@dataclass
class PrepareContext:
    """Handed to ``Augmenter.prepare`` once per training run."""

    teacher: nn.Module | None
    student: nn.Module
    data: Any  # automl_kd.data.DataSplits
    cache: Any  # automl_kd.cache.ArtifactCache
    device: torch.device
    run_dir: Any
    log: Any


class Augmenter:
    """Base class of augmenters. Every weight is an option, so it can be a searched parameter of the study."""

    name: ClassVar[str] = "augmenter"
    #: whether the teacher's logits are needed in ``losses``
    needs_teacher_logits: ClassVar[bool] = False

    def teacher_layers(self) -> list[str]:
        """Names of teacher layers whose outputs ``losses`` needs (empty: none)."""
        return []

    def student_layers(self) -> list[str]:
        """Names of student layers whose outputs ``losses`` needs (empty: none)."""
        return []

    def prepare(self, ctx: PrepareContext) -> None:
        """Run once before training: resolve layer names, precompute caches."""

    def transform(
        self, x: torch.Tensor, index: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Transform a batch of [0, 1] images before geometric augmentation; default: unchanged."""
        return x

    # -- replayable views: what lets the teacher's outputs be cached per view (FKD-style) ----------------------
    # An augmenter whose ``transform`` is random splits it into ``sample_view`` (the random draws, one row per
    # image) and ``apply_view`` (deterministic given the draws), and says in ``replay_key`` what else determines
    # the result. Then ``transform(x, ...) == apply_view(x, ..., sample_view(...))`` and the teacher's outputs
    # can be computed once per stored view. An augmenter that overrides only ``transform`` still works: its
    # teacher outputs are computed online.

    def sample_view(
        self, index: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """This augmenter's random draws for a batch, as tensors with one row per image; default: none."""
        return {}

    def apply_view(
        self, x: torch.Tensor, index: torch.Tensor, y: torch.Tensor, params: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """``transform`` with the draws given (from ``sample_view``); default: unchanged."""
        return x

    def views_drawn(self, index: torch.Tensor, draws: dict[str, torch.Tensor]) -> None:
        """Called once before the teacher's outputs on the cached views are computed, with the dataset indices of
        the training split and this augmenter's draws for every view (``sample_view``'s names, each
        ``[views, images]``), so that it can prepare in bulk what ``apply_view`` will read (ig-overlay with
        ``precompute: needed`` computes the maps those views overlay). Default: nothing."""

    def replay_key(self) -> dict[str, Any] | None:
        """JSON-able description of everything besides the draws that determines ``apply_view`` and
        ``reduce_teacher`` (options, the artifacts they read), part of the teacher-output cache key.
        ``None``: the transform cannot be replayed from draws. Default: ``{}`` when neither ``transform`` nor
        ``reduce_teacher`` is overridden, else ``None``."""
        cls = type(self)
        plain = cls.transform is Augmenter.transform and cls.reduce_teacher is Augmenter.reduce_teacher
        return {} if plain else None

    def reduce_teacher(self, layer: str, feature: torch.Tensor) -> torch.Tensor:
        """Reduce the teacher's output at ``layer`` to what ``losses`` reads (e.g. an attention map), so a cache
        stores the small form; ``losses`` sees the reduced tensor online and cached alike. Default: unchanged."""
        return feature

    def task_weight(self) -> float:
        """Multiplier this augmenter puts on the cross-entropy term (KD's ``1 - alpha``); default 1."""
        return 1.0

    def losses(self, batch: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
        """Named loss terms as ``name -> (weight, value)``; default none."""
        return {}
