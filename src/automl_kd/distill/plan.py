"""What one training run runs with, resolved once: the trial plan.

A trial of the ``train`` evaluator, a finalize run, a CE-alone baseline retraining and the teacher's training each
make one :class:`TrialPlan` before anything trains: the :class:`~automl_kd.distill.settings.TrainSettings`, the
seed, the device, and the autocast dtype that ``precision`` resolves to (:mod:`automl_kd.precision`). Below it,
:func:`automl_kd.distill.fit.fit`, :func:`automl_kd.distill.loop.train_student` and
:func:`automl_kd.distill.loop.accuracy` read the plan and resolve nothing again.

``precision: auto`` on a CPU with fast bf16 kernels depends on the network (its dense multiply-adds), which does not
exist before the seeded build; such a plan is *pending* until :meth:`TrialPlan.for_network` resolves it, once, for
the network just built (``fit`` does). Everywhere else the dtype is known when the plan is made.

Seeding happens at one point per run, :meth:`TrialPlan.seeded`: ``fit`` seeds torch, numpy and ``random`` from the
plan's seed once, before the network is built, and the training continues that global stream (dropout's draws
follow the initialisation's); the batch order and the augmentation draws come from a generator of the plan's own
(:meth:`TrialPlan.training_generator`), which touches no global state. ``train_student`` called on its own seeds
at its start instead; a plan that has seeded its run does not seed again.

Example::

    plan = TrialPlan.make(TrainSettings(epochs=2), seed=7, device=torch.device("cpu"))
    fitted = fit(lambda: space.build(params), data, plan)   # fitted.plan is resolved
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from automl_kd.config import Config
from automl_kd.errors import ConfigError
from automl_kd.precision import autocast_dtype, dtype_name, network_decides

from .settings import TrainSettings


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    """The settings, seed, device and autocast dtype of one training run, resolved together."""

    settings: TrainSettings
    seed: int
    device: torch.device
    #: the autocast dtype of the forward passes (None: fp32); meaningful once the plan is not ``pending``
    dtype: torch.dtype | None = None
    #: ``precision: auto`` that waits for the network (see the module docstring)
    pending: bool = False
    #: the global generators were seeded from this plan for its run (:meth:`seeded`)
    is_seeded: bool = dataclasses.field(default=False, compare=False)

    @classmethod
    def make(cls, settings: TrainSettings, *, seed: int, device: torch.device) -> TrialPlan:
        """The plan of ``settings`` trained from ``seed`` on ``device``, its precision resolved where the
        network does not matter."""
        if network_decides(settings.precision, device):
            return cls(settings, seed, device, None, pending=True)
        return cls(settings, seed, device, autocast_dtype(settings.precision, device))

    @classmethod
    def for_config(cls, config: Config, *, seed: int, device: torch.device, **update: Any) -> TrialPlan:
        """The plan of a search's ``train`` evaluator (its stored options, changed by ``update``), with the config's
        data augmentation and precision: what finalize and the CE-alone baseline retrain with."""
        try:
            settings = TrainSettings.from_options(config.evaluator.options, **update)
        except ValueError as exc:
            raise ConfigError(f"evaluator {config.evaluator.name!r}: {exc}") from None
        return cls.make(settings.for_run(config.data, config.precision), seed=seed, device=device)

    def for_network(self, model: nn.Module, input_shape: tuple[int, ...]) -> TrialPlan:
        """This plan, resolved for ``model`` (C, H, W inputs): itself unless it is pending."""
        if not self.pending:
            return self
        dtype = autocast_dtype(self.settings.precision, self.device, model, input_shape)
        return dataclasses.replace(self, dtype=dtype, pending=False)

    def with_seed(self, seed: int) -> TrialPlan:
        """This plan for another run from ``seed`` (the CE-alone baseline retrains each trial from its own)."""
        return dataclasses.replace(self, seed=seed, is_seeded=False)

    def with_settings(self, **update: Any) -> TrialPlan:
        """This plan with some settings changed (``epochs``, ...; not ``precision``, which the dtype came from)."""
        if "precision" in update:
            raise ValueError("a plan's precision is resolved when it is made: make a new plan")
        return dataclasses.replace(self, settings=self.settings.model_copy(update=update), is_seeded=False)

    @property
    def precision(self) -> str:
        """What the forward passes run in: ``fp32``, ``bf16`` or ``fp16``."""
        if self.pending:
            raise RuntimeError("precision: auto is resolved with the network (TrialPlan.for_network)")
        return dtype_name(self.dtype)

    def seeded(self) -> TrialPlan:
        """Seed torch, numpy and ``random`` from the plan's seed, the run's one seeding point, and return the plan
        marked as seeded; a plan already seeded returns itself and seeds nothing (``fit`` seeds before the build,
        so the ``train_student`` it calls does not seed again). Initialisation (timm, torch.nn.init) and dropout
        draw from these global generators."""
        if self.is_seeded:
            return self
        torch.manual_seed(self.seed)
        np.random.seed(self.seed % 2**32)
        random.seed(self.seed)
        return dataclasses.replace(self, is_seeded=True)

    def training_generator(self) -> torch.Generator:
        """The training's own generator, from the plan's seed: the batch order and the augmentation draws (no
        global state is seeded here)."""
        return torch.Generator().manual_seed(self.seed)


def as_plan(plan: TrialPlan | TrainSettings, seed: int | None, device: torch.device) -> TrialPlan:
    """``plan`` itself, or the plan of bare settings trained from ``seed`` on ``device`` (for callers of
    :func:`~automl_kd.distill.fit.fit` and :func:`~automl_kd.distill.loop.train_student` that hold no plan)."""
    if isinstance(plan, TrialPlan):
        return plan
    if seed is None:
        raise TypeError("training from bare TrainSettings needs seed=; or pass a TrialPlan")
    return TrialPlan.make(plan, seed=seed, device=device)
