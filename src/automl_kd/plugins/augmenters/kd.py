"""``kd``: plain knowledge distillation (Hinton et al.), the loss of the IG-KD paper (Hernandez et al. 2025).

``total = (1 - alpha) * ce + alpha * kd`` with ``kd = T^2 * KL(softmax(t / T) || softmax(s / T))``, the KL divergence
summed over classes and divided by the batch size. **alpha weights the KD term** (the paper's convention; torchdistill
uses the opposite one, where its alpha weights the cross-entropy). The ``T^2`` factor keeps the gradient scale of
the soft term independent of the temperature (switch it off with ``t2_scaling: false``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from automl_kd.distill.augmenter import Augmenter, StepBatch
from automl_kd.hookspecs import hookimpl


def kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, t2_scaling: bool = True
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, summed over classes, mean over the batch."""
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student.float() / t, dim=1),
        F.log_softmax(teacher.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return kl * (t * t) if t2_scaling else kl


class KDAugmenter(Augmenter):
    """Soft labels from the teacher's logits on the student's own view.

    Options:
        temperature: softmax temperature T (> 0); the paper's final value is 2.5.
        alpha: weight of the KD term, in [0, 1]; the cross-entropy gets ``1 - alpha``. The paper's final value
            is 0.01.
        t2_scaling: multiply the KD term by T^2.
    """

    name = "kd"
    needs_teacher_logits = True

    def __init__(self, temperature: float = 4.0, alpha: float = 0.5, t2_scaling: bool = True) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha (the weight of the KD term) must be in [0, 1], got {alpha}")
        self.temperature, self.alpha, self.t2_scaling = float(temperature), float(alpha), t2_scaling

    def task_weight(self) -> float:
        return 1.0 - self.alpha

    def losses(self, batch: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
        if batch.teacher is None:
            raise ValueError("kd needs the teacher's logits; set `teacher:` in the config")
        return {
            "kd": (
                self.alpha,
                kd_loss(batch.student.logits, batch.teacher.logits, self.temperature, self.t2_scaling),
            )
        }


@hookimpl
def register_augmenters(register: Any) -> None:
    register(
        "kd", KDAugmenter, description="knowledge distillation: alpha * T^2 * KL(teacher || student) at T"
    )
