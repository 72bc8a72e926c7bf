"""``dkd``: Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu and Liang, "Decoupled Knowledge Distillation",
CVPR 2022, arXiv 2203.08679).

The classical KD loss splits into two parts per sample: with ``b = [p_target, 1 - p_target]`` the binary
distribution "target class or not" and ``p~`` the softmax over the non-target classes only (both at temperature T),

    KD = TCKD + (1 - p_target^teacher) * NCKD,
    TCKD = KL(b^teacher || b^student),    NCKD = KL(p~^teacher || p~^student).

DKD drops the coupling factor ``1 - p_target^teacher`` and weighs the parts freely:
``dkd = alpha * T^2 * TCKD + beta * T^2 * NCKD`` (KL summed over its classes, mean over the batch), times a warm-up
factor ``min(epoch / warmup, 1)`` with ``epoch`` counted from 1, as in the authors' reference code (its defaults:
alpha 1, beta 8, T 4, a warm-up of 20 epochs out of CIFAR-100's 240). The cross-entropy keeps its weight
``ce_weight``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from automl_kd.distill.augmenter import Augmenter, Progress, StepBatch
from automl_kd.hookspecs import hookimpl


def dkd_terms(
    student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(TCKD, NCKD)`` at temperature T, each ``T^2 * KL(teacher || student)`` summed over its classes and averaged
    over the batch. Computed in log space: no probability is rounded to 0 and then logged."""
    n, classes = student.shape
    zs, zt = student.float() / temperature, teacher.float() / temperature
    is_target = F.one_hot(target.long(), classes).bool()

    def binary_log(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p(target class), log p(any other class), and the non-target logits (N x classes-1)."""
        log_all = torch.logsumexp(z, dim=1)
        others = z[~is_target].view(n, classes - 1)
        return z[is_target] - log_all, torch.logsumexp(others, dim=1) - log_all, others

    s_tgt, s_rest, s_others = binary_log(zs)
    t_tgt, t_rest, t_others = binary_log(zt)
    log_bs, log_bt = torch.stack([s_tgt, s_rest], 1), torch.stack([t_tgt, t_rest], 1)
    scale = temperature * temperature
    tckd = F.kl_div(log_bs, log_bt, reduction="batchmean", log_target=True) * scale
    nckd = (
        F.kl_div(
            F.log_softmax(s_others, dim=1),
            F.log_softmax(t_others, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        * scale
    )
    return tckd, nckd


def warmup_factor(progress: Progress, warmup: float) -> float:
    """``min((epoch + 1) / warmup, 1)`` (the reference code's ``min(epoch / warmup, 1)``, its epochs counted from 1);
    1 without a warm-up (``warmup <= 0``)."""
    return 1.0 if warmup <= 0 else min((progress.epoch + 1) / warmup, 1.0)


class DKDAugmenter(Augmenter):
    """Decoupled KD on the teacher's logits: two named terms, ``tckd`` and ``nckd``.

    Options:
        alpha: weight of TCKD (>= 0); the paper's value is 1.
        beta: weight of NCKD (>= 0); the reference code's default is 8, its CIFAR-100 pairs use 2 to 8, its
            ImageNet pairs 0.5 and 2.
        temperature: softmax temperature T (> 0); the paper's CIFAR-100 value is 4.
        warmup: epochs over which both weights ramp up linearly, ``min(epoch / warmup, 1)`` with epochs
            counted from 1 (the paper: 20 of 240 epochs); 0: none.
        ce_weight: weight of the cross-entropy term, in [0, 1]; the paper's value is 1.
    """

    name = "dkd"
    needs_teacher_logits = True

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup: float = 20.0,
        ce_weight: float = 1.0,
    ) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not (alpha >= 0 and beta >= 0):
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        if not warmup >= 0:
            raise ValueError(f"warmup (epochs) must be >= 0, got {warmup}")
        if not 0.0 <= ce_weight <= 1.0:
            raise ValueError(f"ce_weight must be in [0, 1], got {ce_weight}")
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        self.warmup, self.ce_weight = float(warmup), float(ce_weight)

    def task_weight(self) -> float:
        return self.ce_weight

    def losses(self, batch: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
        if batch.teacher is None:
            raise ValueError("dkd needs the teacher's logits; set `teacher:` in the config")
        tckd, nckd = dkd_terms(batch.student.logits, batch.teacher.logits, batch.y, self.temperature)
        ramp = warmup_factor(batch.progress, self.warmup)
        return {"tckd": (ramp * self.alpha, tckd), "nckd": (ramp * self.beta, nckd)}


@hookimpl
def register_augmenters(register: Any) -> None:
    register(
        "dkd",
        DKDAugmenter,
        description="decoupled KD: warm-up * T^2 * (alpha * TCKD + beta * NCKD) at T (Zhao et al. 2022)",
    )
