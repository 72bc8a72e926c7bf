"""Augmenters: the distillation ingredients (plain KD, attention transfer, IG overlay, ...).

An augmenter may
(a) ``prepare`` once before training (precompute into the artifact cache),
(b) ``transform`` a batch of inputs before geometric augmentation (it gets the batch's dataset indices),
(c) add named loss terms in ``losses``.
It declares which teacher outputs it needs (``needs_teacher_logits``, ``teacher_layers()``); the training loop runs
the teacher once per batch for all augmenters (or reads the outputs from the cache) and hands them to the augmenters
that declared them: one that declares nothing gets ``batch.teacher = None``, even when another augmenter of the run
made the teacher run (:func:`call_losses`). The engine, not the augmenters, combines the terms:
``total = task_weight * ce + sum(weight * term)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from automl_kd.errors import AutomlKdError, PluginError

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class Outputs:
    """A network's outputs for one batch: logits and features at named layers."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Progress:
    """Where a training step stands in the run, for losses with a warm-up or a schedule.

    ``epoch`` and ``step`` count from 0: the first step of a run is ``epoch=0, step=0``. ``step`` counts the
    optimizer steps of the whole run (not of the epoch); ``total_steps = epochs * steps_per_epoch``. The default is
    the first and only step of a one-epoch run.
    """

    epoch: int = 0
    epochs: int = 1
    step: int = 0
    steps_per_epoch: int = 1

    @property
    def total_steps(self) -> int:
        """The optimizer steps of the whole run."""
        return self.epochs * self.steps_per_epoch

    @property
    def step_in_epoch(self) -> int:
        """The step's index inside its epoch (from 0)."""
        return self.step - self.epoch * self.steps_per_epoch

    @property
    def fraction(self) -> float:
        """The share of the run's steps done before this one: 0.0 at the first step, below 1.0 at the last."""
        return self.step / max(1, self.total_steps)


@dataclass
class StepBatch:
    """What an augmenter's ``losses`` sees for one training step."""

    x: torch.Tensor  # the normalised inputs the student saw, N x C x H x W
    y: torch.Tensor  # the labels, N (int64)
    index: torch.Tensor  # dataset indices of the batch, N
    #: the student's logits (N x classes, with gradients) and its ``student_layers()`` features
    student: Outputs
    #: the teacher's logits and its ``teacher_layers()`` features (no gradients) on the very view the student saw;
    #: ``None`` for an augmenter that declares neither ``needs_teacher_logits`` nor ``teacher_layers()``
    teacher: Outputs | None
    progress: Progress = field(default_factory=Progress)  # epoch and step of the run


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
    #: whether ``losses`` reads the teacher's outputs (``batch.teacher.logits``); without it (and without
    #: ``teacher_layers()``) ``losses`` gets ``batch.teacher = None``
    needs_teacher_logits: ClassVar[bool] = False

    def needs_teacher(self) -> bool:
        """Whether ``losses`` gets the teacher's outputs: ``needs_teacher_logits`` or any ``teacher_layers()``."""
        return bool(self.needs_teacher_logits or self.teacher_layers())

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


def call_losses(augmenter: Augmenter, batch: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
    """``augmenter.losses(batch)`` the way the training loop calls it: with ``batch.teacher = None`` unless the
    augmenter declares teacher outputs. When an augmenter that declares none fails the way code that meets
    ``None`` where it expected the teacher fails (``AttributeError``, ``TypeError``, ``ValueError``,
    ``AssertionError``), the error is a :class:`~automl_kd.errors.PluginError` that names the missing
    declaration."""
    declared = augmenter.needs_teacher()
    view = batch if declared or batch.teacher is None else replace(batch, teacher=None)
    try:
        return augmenter.losses(view)
    except (AttributeError, TypeError, ValueError, AssertionError) as exc:
        if declared or isinstance(exc, AutomlKdError):
            raise
        fix = (
            "set `needs_teacher_logits = True` on the class (teacher logits) or return the teacher layers it "
            "reads from teacher_layers()"
        )
        if isinstance(exc, AttributeError) and exc.name in ("logits", "features") and exc.obj is None:
            raise PluginError(
                f"augmenter {augmenter.name!r} reads batch.teacher.{exc.name} but declares no teacher outputs, so "
                f"its losses() gets batch.teacher = None: {fix}"
            ) from exc
        raised = type(exc).__name__ + (f": {exc}" if str(exc) else "")
        raise PluginError(
            f"augmenter {augmenter.name!r} declares no teacher outputs, so its losses() gets batch.teacher = None, "
            f"and it raised {raised}; if it reads the teacher, {fix}"
        ) from exc
