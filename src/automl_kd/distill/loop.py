"""The student training loop: plain functions, readable top to bottom (:func:`automl_kd.distill.fit.fit` wraps it).

One step, in order (two defects of the IG-KD paper's code, Hernandez et al. 2025, are why the order matters: its
maps were blended after crop and flip, its soft labels came from un-augmented images):

1. uint8 batch -> [0, 1] floats on the device;
2. augmenters' ``transform`` (the IG overlay) on the un-augmented image, so a map is blended onto the image it was
   computed for;
3. geometric augmentation (random crop, flip) of the blended image, so the map follows the crop and the flip;
4. normalisation;
5. student forward, and the teacher forward on the *same* view, once for all augmenters that need it;
6. named loss terms: ``task_weight * ce`` plus each augmenter's ``weight * term``; all are logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from automl_kd.data import DataSplits, Split, batches, stratified_indices
from automl_kd.errors import TrainingDiverged, TrialInterrupted
from automl_kd.precision import autocast, autocast_dtype, dtype_name, grad_scaler

from .augmenter import Augmenter, Progress, StepBatch, call_losses
from .plan import TrialPlan, as_plan
from .settings import TrainSettings, check_train_fraction
from .taps import forward
from .teacher_info import Normalizer, teacher_normalizer
from .teacher_outputs import reduce_outputs, teacher_output_provider, teacher_reducers
from .views import random_crop_flip

_log = logging.getLogger("automl_kd")


@dataclass
class TrainResult:
    val_acc: float
    val_curve: list[float]
    #: mean of each named loss term (unweighted) over the last epoch, plus "total"
    loss_terms: dict[str, float]
    epochs_run: int
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    #: what the forward passes ran in: "fp32", "bf16" or "fp16" (``precision: auto`` resolved)
    precision: str = "fp32"


def stop_now(should_stop: Callable[[], bool] | None) -> None:
    """Raise :class:`TrialInterrupted` when a stop was asked for (SIGTERM): no pass runs to its end after it."""
    if should_stop is not None and should_stop():
        raise TrialInterrupted("stopped on request before the trial finished")


@torch.no_grad()
def accuracy(
    model: nn.Module,
    split: Split,
    data: DataSplits,
    batch_size: int = 512,
    *,
    normalize: Normalizer | None = None,
    precision: str | torch.dtype | None = "fp32",
    should_stop: Callable[[], bool] | None = None,
) -> float:
    """Top-1 accuracy in percent on a split, eval mode, under autocast to ``precision``: a resolved autocast dtype
    (a plan's ``dtype``; None is fp32), or a precision name resolved here for ``model``
    (:mod:`automl_kd.precision`).

    ``normalize`` turns [0, 1] images into the model's input (default: the training split's mean and std).
    """
    was_training = model.training
    model.eval()
    normalize = normalize or data.normalize
    device = split.x.device
    dtype = (
        autocast_dtype(precision, device, model, tuple(split.x.shape[1:]))
        if isinstance(precision, str)
        else precision
    )
    correct = 0
    for x, y, _ in batches(split, batch_size, shuffle=False):
        stop_now(should_stop)  # a stop request ends the pass at the next batch (TrialInterrupted)
        xin = normalize(x.float().div_(255))
        if device.type == "cpu":
            xin = xin.contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            logits = model(xin)
        correct += int((logits.argmax(1) == y).sum())
    model.train(was_training)
    return 100.0 * correct / max(1, len(split))


def make_optimizer(model: nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    if s.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=s.lr, momentum=s.momentum, nesterov=True, weight_decay=s.weight_decay
        )
    raise ValueError(f"unknown optimizer {s.optimizer!r}; use adam, adamw or sgd")


def training_subset(train: Split, fraction: float, seed: int) -> Split:
    """A stratified random ``fraction`` of ``train`` drawn from ``seed`` (``train`` itself for 1.0); rows keep
    their dataset indices, so cached IG maps and teacher outputs stay aligned."""
    if check_train_fraction(fraction) == 1:
        return train
    y = train.y.cpu().numpy()
    rows, _ = stratified_indices(y, fraction, np.random.default_rng([seed, 0x5EED]))
    sel = torch.from_numpy(rows).to(train.x.device)
    return Split(train.x[sel], train.y[sel], train.index[sel])


def train_student(
    model: nn.Module,
    data: DataSplits,
    plan: TrialPlan | TrainSettings,
    *,
    seed: int | None = None,
    augmenters: Sequence[Augmenter] = (),
    teacher: nn.Module | None = None,
    report: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    teacher_outputs: str | None = None,
    cache: Any = None,
    normalize: Normalizer | None = None,
) -> TrainResult:
    """Train ``model`` on ``data.train`` with ``plan`` (or bare settings and ``seed``, planned here for the data's
    device); return validation accuracy after each epoch.

    ``report(epoch, val_acc)`` is called after every epoch (an Optuna pruner may raise ``TrialPruned`` there).
    ``data`` must already live on the training device. The test split is not touched here.
    ``teacher_outputs`` (``online``, ``cached``, ``auto``) overrides the teacher's ``teacher.outputs.mode``;
    ``cache`` overrides the artifact cache the teacher-output cache lives in (see
    :mod:`automl_kd.distill.teacher_outputs`). ``normalize`` turns [0, 1] images into ``model``'s input
    (default: the training split's mean and std); the teacher gets its own (``teacher.input``). Forward passes
    run under autocast to the plan's dtype (:mod:`automl_kd.precision`); weights and losses stay fp32. A plan
    that :func:`~automl_kd.distill.fit.fit` has seeded is not seeded again; on its own, this seeds the run
    (:meth:`~automl_kd.distill.plan.TrialPlan.seeded`).
    """
    plan = as_plan(
        plan, seed, data.train.x.device
    ).seeded()  # seeds only when fit has not (a call on its own)
    settings, device = plan.settings, plan.device
    gen = plan.training_generator()  # the batch order and the augmentation draws
    # on the plan's device (fit built it there: then only the layout changes); channels_last speeds up depthwise
    # convolutions about 2x on CPUs too (measured on the 2-core CI machine)
    model.to(device).to(memory_format=torch.channels_last).train()
    plan = plan.for_network(model, data.input_shape)
    dtype = plan.dtype
    scaler = grad_scaler(device, dtype)
    normalize = normalize or data.normalize
    t_normalize = teacher_normalizer(teacher, data) if teacher is not None else normalize

    teacher_layers = sorted({n for a in augmenters for n in a.teacher_layers()})
    student_layers = sorted({n for a in augmenters for n in a.student_layers()})
    needs_teacher = bool(teacher_layers) or any(a.needs_teacher_logits for a in augmenters)
    if needs_teacher and teacher is None:
        names = ", ".join(a.name for a in augmenters if a.needs_teacher_logits or a.teacher_layers())
        raise ValueError(f"augmenters {names} need a teacher; set `teacher:` in the config")
    task_weight = math.prod(a.task_weight() for a in augmenters)
    reducers = teacher_reducers(augmenters)
    provider = None  # cached teacher outputs for fixed views, or None: the teacher runs online
    if needs_teacher:
        assert teacher is not None
        pad, flip = settings.crop_padding, settings.flip
        provider = teacher_output_provider(
            teacher,
            augmenters,
            data,
            pad,
            flip,
            mode=teacher_outputs,
            cache=cache,
            say=log,
            precision=settings.precision,
        )

    train = training_subset(data.train, settings.train_fraction, plan.seed)
    opt = make_optimizer(model, settings)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    if settings.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, settings.max_steps_per_epoch)
    total_steps = steps_per_epoch * settings.epochs
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
        if settings.schedule == "cosine"
        else None
    )

    curve: list[float] = []
    history: list[dict[str, float]] = []
    sums: dict[str, float] = {}
    step = 0
    for epoch in range(settings.epochs):
        sums = {}
        n_batches = 0
        for i, (xb, yb, ib) in enumerate(batches(train, settings.batch_size, shuffle=True, generator=gen)):
            stop_now(should_stop)  # SIGTERM: no further batch, and no validation pass of a cut-short epoch
            if i >= steps_per_epoch:
                break
            x = xb.float().div_(255)
            if provider is not None:  # one of the image's stored views: the one its cached outputs belong to
                rows, views = provider.choose(ib, gen)
                x = provider.make_view(x, ib, yb, rows, views)
            else:
                for a in augmenters:  # before geometric augmentation: the map belongs to this exact image
                    x = a.transform(x, ib, yb, gen)
                x = random_crop_flip(x, settings.crop_padding, settings.flip, gen)
            x01 = x
            x = normalize(x01).contiguous(memory_format=torch.channels_last)

            with autocast(device, dtype):
                s_out = forward(model, x, student_layers)
                t_out = None
                if provider is not None:
                    t_out = provider.outputs(rows, views)
                elif needs_teacher:
                    assert teacher is not None
                    with torch.no_grad():  # the teacher sees the very view the student sees
                        xt = x if t_normalize is normalize else t_normalize(x01)
                        xt = xt.contiguous(memory_format=torch.channels_last)
                        t_out = reduce_outputs(forward(teacher, xt, teacher_layers), reducers)
                terms: dict[str, tuple[float, torch.Tensor]] = {
                    "ce": (
                        task_weight,
                        F.cross_entropy(s_out.logits.float(), yb, label_smoothing=settings.label_smoothing),
                    ),
                }
                progress = Progress(epoch, settings.epochs, step, steps_per_epoch)
                batch = StepBatch(x, yb, ib, s_out, t_out, progress)
                for a in augmenters:  # teacher outputs only to the augmenters that declare them
                    for name, term in call_losses(a, batch).items():
                        if name in terms:
                            raise ValueError(f"augmenter {a.name!r} returned loss term {name!r} twice")
                        terms[name] = term
                loss = sum((w * v.float() for w, v in terms.values()), torch.zeros((), device=device))

            if not torch.isfinite(loss):
                parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, (_, v) in terms.items())
                raise TrainingDiverged(f"loss is {float(loss.detach())} at epoch {epoch} step {i} ({parts})")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if settings.grad_clip:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            scaler.step(opt)
            scaler.update()
            if sched is not None:
                sched.step()
            step += 1
            n_batches += 1
            if step == 1:  # with -v: the moment a fit is training (what a watcher of the process waits for)
                _log.debug("training: first step done, %d to go", total_steps - 1)
            for k, (_, v) in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["total"] = sums.get("total", 0.0) + float(loss.detach())

        means = {k: v / max(1, n_batches) for k, v in sums.items()}
        val = accuracy(
            model,
            data.val,
            data,
            settings.eval_batch_size,
            normalize=normalize,
            precision=dtype,
            should_stop=should_stop,
        )
        curve.append(val)
        history.append({"epoch": epoch, "val_acc": val, **means})
        if log:
            terms_text = " ".join(f"{k}={v:.4f}" for k, v in means.items())
            log(f"epoch {epoch + 1}/{settings.epochs} val_acc={val:.2f}% {terms_text}")
        if report:
            report(epoch, val)
        stop_now(should_stop)
    return TrainResult(
        curve[-1] if curve else 0.0,
        curve,
        {k: v / max(1, n_batches) for k, v in sums.items()},
        len(curve),
        step,
        history,
        dtype_name(dtype),
    )
