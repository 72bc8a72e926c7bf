"""The ``train`` evaluator: trains the candidate on real data and scores it on the validation split.

Its options are the fields of :class:`~automl_kd.distill.settings.TrainSettings` (``extra_options``, read by
:mod:`automl_kd.options`) plus ``latency`` and ``latency_batch_sizes``: a new training setting is a new field there
and nothing here. The test split is evaluated once after training, for the report only; it never reaches the
proposer.
"""

from __future__ import annotations

from typing import Any, ClassVar

from automl_kd.distill.fit import train_and_score
from automl_kd.distill.plan import TrialPlan
from automl_kd.distill.settings import TrainSettings
from automl_kd.distill.teacher_info import teacher_info
from automl_kd.evaluator import Evaluator, TrialContext
from automl_kd.hookspecs import hookimpl
from automl_kd.space import Candidate


class TrainEvaluator(Evaluator):
    """Train each candidate (cross-entropy plus the configured augmenters) and report validation accuracy."""

    name = "train"
    trains = True
    #: the options besides the signature's: every training setting the config may set (automl_kd.options)
    extra_options: ClassVar[dict[str, tuple[Any, Any]]] = TrainSettings.option_fields()

    def __init__(
        self, latency: bool = True, latency_batch_sizes: list[int] | None = None, **settings: Any
    ) -> None:
        unknown = sorted(set(settings) - set(self.extra_options))
        if unknown:
            raise TypeError(f"unknown option {unknown[0]!r}")
        self.settings = TrainSettings.from_options(settings)
        self.steps = self.settings.epochs
        self.latency = latency
        self.latency_batch_sizes = latency_batch_sizes or [1, 64]

    def plan(self, context: TrialContext) -> TrialPlan:
        """This trial's plan: the options' settings with the config's data augmentation and precision, the
        trial's seed and device."""
        settings = self.settings.for_run(
            context.resource("data_config"), context.resource("precision") or "fp32"
        )
        return TrialPlan.make(settings, seed=context.seed, device=context.device)

    def evaluate(self, candidate: Candidate, context: TrialContext) -> dict[str, Any]:
        data = context.resource("data")
        teacher = context.resource("teacher") if context.augmenters else None
        _, metrics = train_and_score(
            lambda: context.space.build(candidate.params),
            data,
            self.plan(context),
            latency_batch_sizes=self.latency_batch_sizes if self.latency else None,
            should_stop=context.should_stop,
            augmenters=context.augmenters,
            teacher=teacher,
            cache=context.resource("cache") if context.augmenters else None,
            run_dir=context.run_dir,
            report=context.report,
            log=context.log,
        )
        info = teacher_info(teacher)
        if info is not None:  # which teacher taught: a teacher trained again on another machine may differ
            metrics["teacher_fingerprint"] = info.fingerprint
        return metrics


@hookimpl
def register_evaluators(register: Any) -> None:
    register("train", TrainEvaluator, description="train on real data; validation accuracy is the objective")
