"""KD and attention-transfer losses equal the IG-KD paper's formulas (Hernandez et al. 2025) on fixed tensors."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from distill_support import augmenter, one_thread

from automl_kd.distill.augmenter import Outputs, StepBatch
from automl_kd.plugins.augmenters.attention import match_layers
from automl_kd.plugins.augmenters.kd import kd_loss


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


S = np.array([[1.0, 2.0, 3.0], [0.0, 0.5, -1.0]])
T = np.array([[3.0, 2.0, 1.0], [2.0, 0.0, 0.0]])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _kd_by_hand(s: np.ndarray, t: np.ndarray, temp: float) -> float:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)), KL summed over classes and divided by the batch size."""
    pt, ps = _softmax(t / temp), _softmax(s / temp)
    return float(temp**2 * (pt * (np.log(pt) - np.log(ps))).sum() / len(s))


@pytest.mark.parametrize("temp", [1.0, 2.5, 4.0])
def test_kd_loss_is_the_formula(temp: float) -> None:
    got = kd_loss(torch.tensor(S), torch.tensor(T), temp)
    assert float(got) == pytest.approx(_kd_by_hand(S, T, temp), rel=1e-6)
    assert float(kd_loss(torch.tensor(S), torch.tensor(T), temp, t2_scaling=False)) == pytest.approx(
        _kd_by_hand(S, T, temp) / temp**2, rel=1e-6
    )


def test_kd_alpha_weights_the_kd_term() -> None:
    kd = augmenter("kd", temperature=2.5, alpha=0.01)
    assert kd.task_weight() == pytest.approx(0.99)  # the cross-entropy gets 1 - alpha
    batch = StepBatch(
        torch.zeros(2, 1, 4, 4),
        torch.tensor([2, 0]),
        torch.arange(2),
        Outputs(torch.tensor(S)),
        Outputs(torch.tensor(T)),
    )
    weight, value = kd.losses(batch)["kd"]
    assert weight == 0.01 and float(value) == pytest.approx(_kd_by_hand(S, T, 2.5), rel=1e-6)
    with pytest.raises(Exception, match="alpha"):
        augmenter("kd", alpha=1.5)


def _at_by_hand(fs: np.ndarray, ft: np.ndarray) -> float:
    """mean((a_t - a_s)^2), a = L2-normalise(flatten(mean_c(F^2))), the larger map average-pooled first."""

    def amap(f: np.ndarray) -> np.ndarray:
        return (f**2).mean(1)

    a_s, a_t = amap(fs), amap(ft)
    if a_t.shape[-1] > a_s.shape[-1]:
        k = a_t.shape[-1] // a_s.shape[-1]
        n, h, w = a_t.shape
        a_t = a_t.reshape(n, h // k, k, w // k, k).mean((2, 4))
    a_s, a_t = a_s.reshape(len(a_s), -1), a_t.reshape(len(a_t), -1)
    a_s = a_s / np.linalg.norm(a_s, axis=1, keepdims=True)
    a_t = a_t / np.linalg.norm(a_t, axis=1, keepdims=True)
    return float(((a_t - a_s) ** 2).mean())


@pytest.mark.parametrize("teacher_size", [4, 8])
def test_attention_loss_is_the_formula(teacher_size: int) -> None:
    g = np.random.default_rng(0)
    fs = g.normal(size=(2, 3, 4, 4))
    ft = g.normal(size=(2, 5, teacher_size, teacher_size))
    at = augmenter("attention", gamma=0.8, pairs=[["s.layer", "t.layer"]])
    assert at.student_layers() == ["s.layer"] and at.teacher_layers() == ["t.layer"]
    student = Outputs(torch.zeros(2, 10), {"s.layer": torch.tensor(fs, dtype=torch.float32)})
    # what the training loop hands over: the teacher's features reduced by the augmenter (online or cached)
    reduced = at.reduce_teacher("t.layer", torch.tensor(ft, dtype=torch.float32))
    assert reduced.shape == (2, teacher_size, teacher_size)
    for tfeat in (reduced, reduced.half().float(), torch.tensor(ft, dtype=torch.float32)):
        batch = StepBatch(
            torch.zeros(2, 1, 4, 4),
            torch.zeros(2).long(),
            torch.arange(2),
            student,
            Outputs(torch.zeros(2, 10), {"t.layer": tfeat}),
        )
        weight, value = at.losses(batch)["at"]
        assert weight == 0.8
        assert float(value) == pytest.approx(_at_by_hand(fs, ft), rel=2e-3)


def test_layers_are_matched_by_relative_depth_and_resolution() -> None:
    student = [("blocks.0", 8, 2), ("blocks.1", 16, 4), ("blocks.2", 24, 8)]
    teacher = [
        ("features.0", 32, 1),
        ("features.3", 24, 2),
        ("features.6", 32, 4),
        ("features.9", 64, 8),
        ("features.12", 96, 8),
        ("features.16", 160, 16),
    ]
    assert match_layers(student, teacher, [0.5]) == [("blocks.1", "features.6")]  # middle, same stride 4
    assert match_layers(student, teacher, [1.0]) == [("blocks.2", "features.12")]  # stride 8, the deeper one
    assert match_layers(student, [("a", 8, 32)], [0.0]) == [
        ("blocks.0", "a")
    ]  # no equal stride: nearest depth
