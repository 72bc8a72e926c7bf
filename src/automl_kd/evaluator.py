"""Evaluators score candidates. The base class and the per-trial context the engine hands them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from .space import Candidate, SearchSpace

log = logging.getLogger("automl_kd")


@dataclass
class TrialContext:
    """What an evaluator gets besides the candidate.

    ``report(step, value)`` records an intermediate validation accuracy and raises ``optuna.TrialPruned`` when the
    study's pruner says stop. ``record(key, value)`` stores an extra JSON-serialisable fact with the trial.
    ``resources`` holds objects shared by all trials of the run (the loaded data, the teacher), built lazily by
    the engine: ``context.resource("data")``.
    """

    number: int
    seed: int
    device: torch.device
    run_dir: Path
    space: SearchSpace
    report: Callable[[int, float], None] = lambda step, value: None
    record: Callable[[str, Any], None] = lambda key, value: None
    resource: Callable[[str], Any] = lambda name: None
    augmenters: list[Any] = field(default_factory=list)
    should_stop: Callable[[], bool] = lambda: False

    def log(self, message: str) -> None:
        log.info("trial %d: %s", self.number, message)


class Evaluator:
    """Base class of evaluators.

    ``evaluate`` returns a dict of metrics with at least ``val_acc`` (percent, the objective fed back to the
    proposer); it may also return ``test_acc`` (report only), ``params``, ``macs``, latencies and anything else.
    It raises :class:`automl_kd.errors.InfeasibleCandidate` for a candidate it cannot score.
    """

    name: ClassVar[str] = "evaluator"
    #: whether this evaluator trains networks (and so needs data, a device and the space's ``build``)
    trains: ClassVar[bool] = False
    #: how many intermediate values (epochs) ``evaluate`` reports; the Hyperband pruner's budget (None: unknown)
    steps: int | None = None

    def evaluate(self, candidate: Candidate, context: TrialContext) -> dict[str, Any]:
        raise NotImplementedError
