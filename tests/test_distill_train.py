"""Every subset of the augmenters trains on real data with finite, decreasing loss; weights can be searched."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from distill_support import (
    STUDENT_SPACE,
    TEACHER_SPACE,
    augmenter,
    one_thread,
    prepare,
    tiny_data,
    tiny_student,
    tiny_teacher,
)

from automl_kd import Search, load_config
from automl_kd.cache import ArtifactCache
from automl_kd.distill.loop import train_student
from automl_kd.distill.settings import TrainSettings
from automl_kd.distill.teacher_info import teacher_info
from automl_kd.results.leaderboard import trial_state

NAMES = ("kd", "attention", "ig-overlay")
OPTIONS = {"kd": {}, "attention": {}, "ig-overlay": {"steps": 2, "p": 0.3, "batch_size": 128}}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.mark.parametrize(
    "subset",
    [c for r in range(len(NAMES) + 1) for c in itertools.combinations(NAMES, r)],
    ids=lambda c: "+".join(c) or "none",
)
def test_every_subset_trains_with_finite_decreasing_loss(subset: tuple[str, ...]) -> None:
    data = tiny_data()
    teacher = tiny_teacher(data)
    student = tiny_student(data)
    augs = [augmenter(n, **OPTIONS[n]) for n in subset]
    prepare(augs, teacher, student, data)
    settings = TrainSettings(epochs=3, batch_size=32, lr=0.005, crop_padding=2, flip=True)
    result = train_student(student, data, settings, seed=0, augmenters=augs, teacher=teacher)
    totals = [h["total"] for h in result.history]
    assert all(math.isfinite(v) for h in result.history for k, v in h.items() if k != "epoch")
    assert totals[-1] < totals[0], totals
    expected = (
        {"ce", "total"} | ({"kd"} if "kd" in subset else set()) | ({"at"} if "attention" in subset else set())
    )
    assert set(result.loss_terms) == expected  # every term is named and logged


def test_online_and_cached_teacher_outputs_agree_without_augmentation(tmp_path: Path) -> None:
    # with no random augmentation there is one view per image: the cached run is the online run, step for step
    data = tiny_data(crop_padding=0, flip=False)
    teacher = tiny_teacher(data)
    results = []
    for mode in ("online", "cached"):
        student = tiny_student(data)
        augs = [augmenter("kd"), augmenter("attention")]
        prepare(augs, teacher, student, data)
        settings = TrainSettings(epochs=1, batch_size=32, max_steps_per_epoch=4, crop_padding=0, flip=False)
        results.append(
            train_student(
                student,
                data,
                settings,
                seed=0,
                augmenters=augs,
                teacher=teacher,
                teacher_outputs=mode,
                cache=ArtifactCache(tmp_path / "c"),
            )
        )
    online, cached = results
    for k in ("ce", "kd", "at"):
        assert online.loss_terms[k] == pytest.approx(cached.loss_terms[k], rel=1e-3, abs=1e-5), k


def test_searched_weights_are_study_parameters_and_terms_are_recorded(tmp_path: Path) -> None:
    cfg = load_config(
        {
            "name": "distill-test",
            "run_dir": str(tmp_path / "run"),
            "data": {"train_size": 300, "test_size": 100, "val_fraction": 0.2, "crop_padding": 2},
            "space": {"name": "mbv2", "options": STUDENT_SPACE},
            "search": {"n_trials": 2, "proposer": {"name": "random"}},
            "evaluator": {
                "name": "train",
                "options": {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 3, "latency": False},
            },
            "teacher": {
                "space": "mbv2",
                "space_options": TEACHER_SPACE,
                "train": {"epochs": 1, "batch_size": 32},
            },
            "augmenters": [
                {
                    "name": "kd",
                    "options": {"alpha": {"search": [0.2, 0.8]}, "temperature": {"low": 1.0, "high": 4.0}},
                },
                {"name": "attention", "options": {"gamma": 0.8}},
                {
                    "name": "ig-overlay",
                    "options": {"steps": 2, "p": {"low": 0.0, "high": 0.5}, "batch_size": 128},
                },
            ],
        }
    )
    search = Search(cfg)
    study = search.run()
    fingerprint = teacher_info(search.resource("teacher")).fingerprint  # type: ignore[union-attr]
    for t in study.get_trials():
        assert trial_state(t) == "complete", t.user_attrs.get("fail_reason")
        assert t.user_attrs["teacher_fingerprint"] == fingerprint  # which teacher taught this student
        assert t.params["aug.kd.alpha"] in (0.2, 0.8) and 1.0 <= t.params["aug.kd.temperature"] <= 4.0
        assert 0.0 <= t.params["aug.ig-overlay.p"] <= 0.5
        kd = t.user_attrs["augmenters"][0]
        assert kd["options"]["alpha"] == t.params["aug.kd.alpha"]  # the trial records the values it used
        assert set(t.user_attrs["loss_terms"]) == {"ce", "kd", "at", "total"}
    assert (tmp_path / "run" / "ig_gallery.png").is_file()
