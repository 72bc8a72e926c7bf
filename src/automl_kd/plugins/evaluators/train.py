"""The ``train`` evaluator: trains the candidate on real data and scores it on the validation split.

The test split is evaluated once after training, for the report only; it never reaches the proposer.
"""

from __future__ import annotations

from typing import Any, Literal

from automl_kd.distill.fit import fit
from automl_kd.distill.loop import accuracy, stop_now
from automl_kd.distill.settings import TrainSettings, check_train_fraction
from automl_kd.distill.teacher_info import teacher_info
from automl_kd.evaluator import Evaluator, TrialContext
from automl_kd.hookspecs import hookimpl
from automl_kd.metrics import count_macs, count_params, measure_latency
from automl_kd.space import Candidate


class TrainEvaluator(Evaluator):
    """Train each candidate (cross-entropy plus the configured augmenters) and report validation accuracy."""

    name = "train"
    trains = True

    def __init__(
        self,
        epochs: int = 2,
        batch_size: int = 128,
        lr: float = 1e-3,
        optimizer: Literal["adam", "adamw", "sgd"] = "adam",
        weight_decay: float = 0.0,
        schedule: Literal["cosine", "none"] = "cosine",
        label_smoothing: float = 0.0,
        grad_clip: float | None = None,
        max_steps_per_epoch: int | None = None,
        train_fraction: float = 1.0,
        latency: bool = True,
        latency_batch_sizes: list[int] | None = None,
    ) -> None:
        for key, value, ok, rule in (
            ("epochs", epochs, epochs >= 1, ">= 1"),
            ("batch_size", batch_size, batch_size >= 1, ">= 1"),
            ("lr", lr, lr > 0, "> 0"),
        ):
            if not ok:
                raise ValueError(f"{key} must be {rule} (got {value!r})")
        self.settings = TrainSettings(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            weight_decay=weight_decay,
            schedule=schedule,
            label_smoothing=label_smoothing,
            grad_clip=grad_clip,
            max_steps_per_epoch=max_steps_per_epoch,
            train_fraction=check_train_fraction(train_fraction),
        )
        self.steps = epochs
        self.latency = latency
        self.latency_batch_sizes = latency_batch_sizes or [1, 64]

    def evaluate(self, candidate: Candidate, context: TrialContext) -> dict[str, Any]:
        data = context.resource("data")
        data_cfg = context.resource("data_config")
        settings = self.settings.model_copy(
            update={
                "crop_padding": data_cfg.crop_padding,
                "flip": data_cfg.flip,
                "precision": context.resource("precision") or "fp32",
            }
        )
        teacher = context.resource("teacher") if context.augmenters else None
        fitted = fit(
            lambda: context.space.build(candidate.params),
            data,
            settings,
            seed=context.seed,
            device=context.device,
            augmenters=context.augmenters,
            teacher=teacher,
            cache=context.resource("cache") if context.augmenters else None,
            run_dir=context.run_dir,
            report=context.report,
            log=context.log,
            should_stop=context.should_stop,
        )
        model, result = fitted.model, fitted.result
        shape = data.input_shape
        metrics: dict[str, Any] = {
            "val_acc": result.val_acc,
            # report only
            "test_acc": accuracy(
                model,
                data.test,
                data,
                settings.eval_batch_size,
                precision=settings.precision,
                should_stop=context.should_stop,
            ),
            "val_acc_curve": [round(v, 4) for v in result.val_curve],
            "loss_terms": {k: round(v, 6) for k, v in result.loss_terms.items()},
            "epochs": result.epochs_run,
            "train_steps": result.steps,
            "precision": result.precision,
            "train_seconds": round(fitted.seconds, 3),
            "params": count_params(model),
            "macs": count_macs(model, shape),
        }
        info = teacher_info(teacher)
        if info is not None:  # which teacher taught: a teacher trained again on another machine may differ
            metrics["teacher_fingerprint"] = info.fingerprint
        stop_now(context.should_stop)
        if self.latency:
            metrics.update(measure_latency(model, shape, context.device, self.latency_batch_sizes))
        return metrics


@hookimpl
def register_evaluators(register: Any) -> None:
    register("train", TrainEvaluator, description="train on real data; validation accuracy is the objective")
