"""The ``dkd`` augmenter (Decoupled KD, Zhao et al. 2022) against values worked out by hand, its warm-up, and the
training loop's side of the augmenter interface: the progress each step hands ``losses``, and teacher outputs only
for augmenters that declare them."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from conftest import small_mbv2_options
from distill_support import augmenter, one_thread, tiny_data, tiny_student, tiny_teacher
from fault_support import assert_no_traceback, base_config, cli_in_process, write_yaml

from automl_kd.distill.augmenter import Augmenter, Outputs, Progress, StepBatch, call_losses
from automl_kd.distill.loop import train_student
from automl_kd.distill.settings import TrainSettings
from automl_kd.errors import ConfigError, PluginError
from automl_kd.plugins.augmenters.dkd import DKDAugmenter, dkd_terms, warmup_factor
from automl_kd.plugins.augmenters.kd import kd_loss


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _terms(s: list[list[float]], t: list[list[float]], y: list[int], temp: float) -> tuple[float, float]:
    tckd, nckd = dkd_terms(torch.tensor(s), torch.tensor(t), torch.tensor(y), temp)
    return float(tckd), float(nckd)


def test_tckd_and_nckd_by_hand() -> None:
    """Student logits 0, 0, 0 (probabilities 1/3 each), target class 0, T = 1.

    Teacher A, probabilities 1/2, 1/4, 1/4: binary [1/2, 1/2] against the student's [1/3, 2/3], so
    TCKD = 1/2 ln(3/2) + 1/2 ln(3/4) = 1/2 ln(9/8); non-target [1/2, 1/2] against [1/2, 1/2]: NCKD = 0.
    Teacher B, probabilities 1/5, 3/5, 1/5: binary [1/5, 4/5], TCKD = 1/5 ln(3/5) + 4/5 ln(6/5); non-target
    [3/4, 1/4] against [1/2, 1/2], NCKD = 3/4 ln(3/2) + 1/4 ln(1/2).
    """
    tckd_a, nckd_a = 0.5 * math.log(9 / 8), 0.0
    tckd_b = 0.2 * math.log(3 / 5) + 0.8 * math.log(6 / 5)
    nckd_b = 0.75 * math.log(3 / 2) + 0.25 * math.log(1 / 2)
    zero = [0.0, 0.0, 0.0]
    teacher_a, teacher_b = [math.log(2), 0.0, 0.0], [0.0, math.log(3), 0.0]
    assert _terms([zero], [teacher_a], [0], 1.0) == pytest.approx((tckd_a, nckd_a), abs=1e-6)
    assert _terms([zero], [teacher_b], [0], 1.0) == pytest.approx((tckd_b, nckd_b), abs=1e-6)
    # a batch: both terms are means over its samples
    both = _terms([zero, zero], [teacher_a, teacher_b], [0, 0], 1.0)
    assert both == pytest.approx(((tckd_a + tckd_b) / 2, (nckd_a + nckd_b) / 2), abs=1e-6)
    # the same teacher with the target class moved to position 2: the same numbers
    moved = _terms([zero], [[0.0, 0.0, math.log(2)]], [2], 1.0)
    assert moved == pytest.approx((tckd_a, nckd_a), abs=1e-6)


def _by_numpy(s: np.ndarray, t: np.ndarray, y: np.ndarray, temp: float) -> tuple[float, float]:
    """TCKD and NCKD from probabilities, the way the paper defines them (no log-space tricks)."""

    def probs(z: np.ndarray) -> np.ndarray:
        e = np.exp(z / temp - (z / temp).max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    ps, pt = probs(s), probs(t)
    rows = np.arange(len(y))
    bs = np.stack([ps[rows, y], 1 - ps[rows, y]], 1)
    bt = np.stack([pt[rows, y], 1 - pt[rows, y]], 1)
    keep = np.ones_like(ps, dtype=bool)
    keep[rows, y] = False
    qs = ps[keep].reshape(len(y), -1)
    qt = pt[keep].reshape(len(y), -1)
    qs, qt = qs / qs.sum(1, keepdims=True), qt / qt.sum(1, keepdims=True)
    tckd = (bt * np.log(bt / bs)).sum() / len(y) * temp**2
    nckd = (qt * np.log(qt / qs)).sum() / len(y) * temp**2
    return float(tckd), float(nckd)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_terms_equal_the_definition_on_random_logits(temp: float) -> None:
    rng = np.random.default_rng(3)
    s, t = rng.normal(0, 2, (6, 5)), rng.normal(0, 2, (6, 5))
    y = rng.integers(0, 5, 6)
    got = _terms(s.tolist(), t.tolist(), y.tolist(), temp)
    assert got == pytest.approx(_by_numpy(s, t, y, temp), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_is_tckd_plus_the_coupled_nckd(temp: float) -> None:
    """The paper's decomposition, per sample: KD = TCKD + (1 - p_target^teacher) * NCKD (kd's loss, tested on its
    own, on the one side)."""
    rng = np.random.default_rng(5)
    for _ in range(4):
        s, t = torch.tensor(rng.normal(0, 3, (1, 7))), torch.tensor(rng.normal(0, 3, (1, 7)))
        y = torch.tensor([int(rng.integers(0, 7))])
        tckd, nckd = dkd_terms(s, t, y, temp)
        p_target = float(torch.softmax(t / temp, 1)[0, y])
        assert float(kd_loss(s, t, temp)) == pytest.approx(
            float(tckd) + (1 - p_target) * float(nckd), rel=1e-6
        )


def test_extreme_logits_stay_finite() -> None:
    s = torch.tensor([[200.0, -200.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[-200.0, 200.0, 0.0], [300.0, 0.0, -300.0]])
    tckd, nckd = dkd_terms(s, t, torch.tensor([0, 0]), 1.0)
    (tckd + nckd).backward()
    assert torch.isfinite(tckd) and torch.isfinite(nckd) and float(tckd.detach()) > 10
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_warmup_ramps_over_the_first_epochs_as_in_the_reference_code() -> None:
    """``min(epoch / warmup, 1)`` with epochs counted from 1: 1/20 in the first epoch of a 20-epoch warm-up."""
    at = [warmup_factor(Progress(epoch=e, epochs=40, step=e * 10, steps_per_epoch=10), 20) for e in range(25)]
    assert at[0] == pytest.approx(0.05) and at[9] == pytest.approx(0.5)
    assert at[19] == 1.0 and at[24] == 1.0
    assert all(a < b for a, b in itertools.pairwise(at[:20]))
    assert warmup_factor(Progress(epoch=0, epochs=3), 0) == 1.0
    assert warmup_factor(Progress(epoch=1, epochs=3), 4) == pytest.approx(0.5)


def test_losses_weigh_the_terms_with_alpha_beta_and_the_warmup() -> None:
    aug = DKDAugmenter(alpha=2.0, beta=6.0, temperature=2.0, warmup=4, ce_weight=0.5)
    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g), torch.tensor([1, 3, 5, 7])
    for epoch, ramp in ((0, 0.25), (1, 0.5), (3, 1.0), (9, 1.0)):
        progress = Progress(epoch=epoch, epochs=10, step=epoch * 5, steps_per_epoch=5)
        terms = aug.losses(
            StepBatch(torch.zeros(4, 1, 2, 2), y, torch.arange(4), Outputs(s), Outputs(t), progress)
        )
        tckd, nckd = dkd_terms(s, t, y, 2.0)
        assert terms["tckd"][0] == pytest.approx(2.0 * ramp) and terms["nckd"][0] == pytest.approx(6.0 * ramp)
        assert torch.equal(terms["tckd"][1], tckd) and torch.equal(terms["nckd"][1], nckd)
    assert aug.task_weight() == 0.5


@pytest.mark.parametrize(
    "options, word",
    [
        ({"temperature": 0}, "temperature"),
        ({"beta": -1}, "beta"),
        ({"warmup": -2}, "warmup"),
        ({"ce_weight": 2}, "ce_weight"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        DKDAugmenter(**options)


class Recorder(Augmenter):
    """Records what each step hands ``losses``; declares no teacher outputs."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[Progress, bool]] = []

    def losses(self, batch: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
        self.seen.append((batch.progress, batch.teacher is not None))
        return {}


class ForgetsTheFlag(Augmenter):
    """Reads the teacher's logits without ``needs_teacher_logits = True``."""

    name = "forgets-the-flag"

    def losses(self, batch: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
        return {"soft": (0.5, kd_loss(batch.student.logits, batch.teacher.logits, 4.0))}  # type: ignore[union-attr]


SETTINGS = TrainSettings(epochs=2, batch_size=32, lr=0.005, max_steps_per_epoch=3)


def test_every_step_gets_its_epoch_and_step() -> None:
    data = tiny_data()
    rec = Recorder()
    train_student(tiny_student(data), data, SETTINGS, seed=0, augmenters=[rec])
    progress = [p for p, _ in rec.seen]
    assert [(p.epoch, p.step, p.step_in_epoch) for p in progress] == [
        (0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 3, 0), (1, 4, 1), (1, 5, 2)
    ]  # fmt: skip
    assert {(p.epochs, p.steps_per_epoch, p.total_steps) for p in progress} == {(2, 3, 6)}
    assert [p.fraction for p in progress] == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])


def test_teacher_outputs_go_only_to_augmenters_that_declare_them() -> None:
    """kd makes the teacher run; an augmenter beside it that declares nothing still gets ``teacher = None``."""
    data = tiny_data()
    rec = Recorder()
    result = train_student(
        tiny_student(data),
        data,
        SETTINGS,
        seed=0,
        augmenters=[augmenter("kd"), rec],
        teacher=tiny_teacher(data),
    )
    assert "kd" in result.loss_terms and rec.seen and not any(has for _, has in rec.seen)


@pytest.mark.parametrize("beside", [[], ["kd"]])
def test_a_missing_flag_is_named_in_a_real_training_run(beside: list[str]) -> None:
    """Alone (no teacher forward at all) or beside kd (the teacher runs for kd): the same error, naming the flag."""
    data = tiny_data()
    augs = [*(augmenter(n) for n in beside), ForgetsTheFlag()]
    with pytest.raises(
        PluginError, match=r"'forgets-the-flag' reads batch.teacher.logits .*needs_teacher_logits"
    ):
        train_student(tiny_student(data), data, SETTINGS, seed=0, augmenters=augs, teacher=tiny_teacher(data))


class Guards(Augmenter):
    """Checks for the teacher (as kd does) but has no flag; ``failure`` is what its losses raise."""

    name = "guards"

    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure

    def losses(self, batch: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
        if self.failure is not None:
            raise self.failure
        if batch.teacher is None:
            raise ValueError("guards needs the teacher")
        return {}


def _step(teacher: bool) -> StepBatch:
    logits = torch.zeros(2, 3)
    return StepBatch(
        torch.zeros(2, 1, 4, 4),
        torch.tensor([0, 1]),
        torch.arange(2),
        Outputs(logits),
        Outputs(logits) if teacher else None,
    )


@pytest.mark.parametrize("teacher", [True, False])
def test_an_undeclared_augmenter_failing_without_the_teacher_is_told_the_flag(teacher: bool) -> None:
    with pytest.raises(
        PluginError,
        match=r"'guards' declares no teacher outputs.* raised ValueError: guards needs the teacher; .*"
        r"needs_teacher_logits = True",
    ):
        call_losses(Guards(), _step(teacher))


def test_call_losses_keeps_other_errors() -> None:
    class Declared(Guards):
        needs_teacher_logits = True

    with pytest.raises(ValueError, match=r"^bad value$"):  # it declares: the error is its own
        call_losses(Declared(ValueError("bad value")), _step(True))
    with pytest.raises(RuntimeError, match=r"^out of memory$"):  # not the kind a None teacher causes
        call_losses(Guards(RuntimeError("out of memory")), _step(True))
    with pytest.raises(ConfigError, match=r"^its own config error$"):  # automl-kd's own errors pass through
        call_losses(Guards(ConfigError("its own config error")), _step(True))


def test_dkd_trains_with_finite_named_terms() -> None:
    data = tiny_data()
    dkd = augmenter("dkd", warmup=2)
    result = train_student(
        tiny_student(data), data, SETTINGS, seed=0, augmenters=[dkd], teacher=tiny_teacher(data)
    )
    assert {"ce", "tckd", "nckd", "total"} <= set(result.loss_terms)
    assert all(math.isfinite(v) for v in result.loss_terms.values())
    assert [h["epoch"] for h in result.history] == [0, 1]


PLUGIN = """
import torch.nn.functional as F
from automl_kd import Augmenter, hookimpl


class Soft(Augmenter):
    name = "soft"  # no needs_teacher_logits = True

    def losses(self, batch):
        log_t = F.log_softmax(batch.teacher.logits, 1)
        kl = F.kl_div(F.log_softmax(batch.student.logits, 1), log_t, reduction="batchmean", log_target=True)
        return {"soft": (0.5, kl)}


@hookimpl
def register_augmenters(register):
    register("soft", Soft)
"""


def test_a_run_with_a_plugin_missing_the_flag_says_which_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A third-party augmenter installed through its entry point, run as a user runs it: the failed trial's reason,
    on the console and in storage, names the flag."""
    (tmp_path / "forgetful.py").write_text(PLUGIN)
    info = tmp_path / "forgetful-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: forgetful\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[automl_kd]\nforgetful = forgetful\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    teacher = {
        "space": "mbv2",
        "space_options": small_mbv2_options(),
        "train": {"epochs": 1, "max_steps_per_epoch": 2},
    }
    cfg = base_config("forgetful", augmenters=[{"name": "soft"}], teacher=teacher)
    cfg["evaluator"]["options"]["max_steps_per_epoch"] = 2
    res = cli_in_process("run", str(write_yaml(tmp_path / "cfg.yaml", cfg)), cwd=tmp_path, capfd=capfd)
    assert_no_traceback(res)
    why = "augmenter 'soft' reads batch.teacher.logits but declares no teacher outputs"
    assert why in res.err and "set `needs_teacher_logits = True` on the class" in res.err, res
    study = optuna.load_study(
        study_name="forgetful", storage=f"sqlite:///{tmp_path / 'runs/forgetful/study.db'}"
    )
    [trial] = study.trials
    assert why in trial.user_attrs["fail_reason"]
