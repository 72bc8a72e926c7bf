"""Training a candidate, written once: seed, build, prepare the augmenters, train.

The ``train`` evaluator (one trial), ``finalize`` (the chosen trial, longer) and the teacher (trained once and
cached) all call :func:`fit`. Seeding comes first, before the network is built, so the same seed, parameters and
config give the same initial weights and, on the CPU, the same metrics.

Example::

    fitted = fit(lambda: space.build(params), data, TrainSettings(epochs=2), seed=7, device=torch.device("cpu"))
    print(fitted.result.val_acc, fitted.seconds)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from automl_kd.data import DataSplits

from .augmenter import Augmenter, PrepareContext
from .loop import TrainResult, train_student
from .settings import TrainSettings


@dataclass
class Fitted:
    """A trained network, what its training reported, and how long the training took (seconds)."""

    model: nn.Module
    result: TrainResult
    seconds: float


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and ``random``: network initialisation (timm, torch.nn.init) draws from the global RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def fit(
    build: Callable[[], nn.Module],
    data: DataSplits,
    settings: TrainSettings,
    *,
    seed: int,
    device: torch.device,
    augmenters: Sequence[Augmenter] = (),
    teacher: nn.Module | None = None,
    cache: Any = None,
    run_dir: Path | None = None,
    report: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Fitted:
    """Seed, build the network with ``build()`` on ``device``, let each augmenter ``prepare`` (precompute into
    ``cache``), and train it with :func:`automl_kd.distill.loop.train_student`.

    ``data`` must already live on ``device``. ``report(epoch, val_acc)`` is called after every epoch.
    """
    seed_everything(seed)
    model = build().to(device)
    if augmenters:
        prep = PrepareContext(
            teacher=teacher,
            student=model,
            data=data,
            cache=cache,
            device=device,
            run_dir=run_dir,
            log=log or (lambda _msg: None),
        )
        for aug in augmenters:
            aug.prepare(prep)
    t0 = time.perf_counter()
    result = train_student(
        model,
        data,
        settings,
        seed=seed,
        augmenters=augmenters,
        teacher=teacher,
        report=report,
        log=log,
        should_stop=should_stop,
        normalize=normalize,
    )
    return Fitted(model, result, time.perf_counter() - t0)
