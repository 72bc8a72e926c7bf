"""Training a candidate, written once: seed, build, prepare the augmenters, train; and scoring what it trained.

The ``train`` evaluator (one trial), ``finalize`` (the chosen trial, longer), the CE-alone baseline and the teacher
(trained once and cached) all call :func:`fit` with a :class:`~automl_kd.distill.plan.TrialPlan`; the first three
turn its result into their metrics record with :func:`train_and_score`. Seeding comes first, once, before the
network is built (:meth:`~automl_kd.distill.plan.TrialPlan.seeded`), so the same seed, parameters and config give
the same initial weights and, on the CPU, the same metrics.

Example::

    plan = TrialPlan.make(TrainSettings(epochs=2), seed=7, device=torch.device("cpu"))
    fitted = fit(lambda: space.build(params), data, plan)
    print(fitted.result.val_acc, fitted.seconds)
    model, metrics = train_and_score(lambda: space.build(params), data, plan)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from automl_kd.data import DataSplits
from automl_kd.metrics import count_macs, count_params, measure_latency

from .augmenter import Augmenter, PrepareContext
from .loop import TrainResult, accuracy, stop_now, train_student
from .plan import TrialPlan, as_plan
from .settings import TrainSettings


@dataclass
class Fitted:
    """A trained network, what its training reported, how long the training took (seconds), and the plan it
    trained with (resolved for this network)."""

    model: nn.Module
    result: TrainResult
    seconds: float
    plan: TrialPlan


def fit(
    build: Callable[[], nn.Module],
    data: DataSplits,
    plan: TrialPlan | TrainSettings,
    *,
    seed: int | None = None,
    device: torch.device | None = None,
    augmenters: Sequence[Augmenter] = (),
    teacher: nn.Module | None = None,
    cache: Any = None,
    run_dir: Path | None = None,
    report: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Fitted:
    """Seed, build the network with ``build()`` on the plan's device, resolve the plan for it, let each augmenter
    ``prepare`` (precompute into ``cache``), and train it with :func:`automl_kd.distill.loop.train_student`.

    ``plan`` may be bare settings with ``seed`` and ``device``. ``data`` must already live on the device.
    ``report(epoch, val_acc)`` is called after every epoch.
    """
    plan = as_plan(plan, seed, device or data.train.x.device).seeded()  # the run's one seeding point
    model = build().to(plan.device)
    plan = plan.for_network(model, data.input_shape)
    if augmenters:
        prep = PrepareContext(
            teacher=teacher,
            student=model,
            data=data,
            cache=cache,
            device=plan.device,
            run_dir=run_dir,
            log=log or (lambda _msg: None),
        )
        for aug in augmenters:
            aug.prepare(prep)
    t0 = time.perf_counter()
    result = train_student(
        model,
        data,
        plan,
        augmenters=augmenters,
        teacher=teacher,
        report=report,
        log=log,
        should_stop=should_stop,
        normalize=normalize,
    )
    return Fitted(model, result, time.perf_counter() - t0, plan)


def train_and_score(
    build: Callable[[], nn.Module],
    data: DataSplits,
    plan: TrialPlan,
    *,
    latency_batch_sizes: Sequence[int] | None = None,
    plain_weights: bool = False,
    should_stop: Callable[[], bool] | None = None,
    **fit_args: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a candidate with :func:`fit` and score it: the trained network and its metrics record.

    The record: ``val_acc`` (the objective), ``test_acc`` (report only), ``val_acc_curve``, ``loss_terms``,
    ``epochs``, ``train_steps``, ``precision``, ``train_seconds``, ``params``, ``macs``, and the latencies at
    ``latency_batch_sizes`` (none measured for None). ``plain_weights`` puts the network in eval mode with
    contiguous weights, as it is saved, before it is scored. ``fit_args`` go to :func:`fit`.
    """
    fitted = fit(build, data, plan, should_stop=should_stop, **fit_args)
    model, result, plan = fitted.model, fitted.result, fitted.plan
    if plain_weights:  # training used channels_last
        model.eval().to(memory_format=torch.contiguous_format)
    shape = data.input_shape
    metrics: dict[str, Any] = {
        "val_acc": result.val_acc,
        # report only, never used to choose
        "test_acc": accuracy(
            model,
            data.test,
            data,
            plan.settings.eval_batch_size,
            precision=plan.dtype,
            should_stop=should_stop,
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
    stop_now(should_stop)
    if latency_batch_sizes is not None:
        metrics.update(measure_latency(model, shape, plan.device, latency_batch_sizes))
    return model, metrics
