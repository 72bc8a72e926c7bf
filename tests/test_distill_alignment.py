"""Caches are aligned with the images they were computed from (the IG-KD paper's code,
Hernandez et al. 2025, computed maps, crops and flips out of step). Runs in CI.

Each test here would fail on the original paper's code: its maps and soft labels were computed in the order of a
shuffled, augmented loader and read back by dataset index; its maps were blended after crop and flip without being
cropped or flipped; its soft labels came from un-augmented images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from distill_support import augmenter, one_thread, prepare, tiny_data, tiny_student, tiny_teacher

from automl_kd.cache import ArtifactCache
from automl_kd.data import batches
from automl_kd.distill.augmenter import Augmenter, StepBatch
from automl_kd.distill.ig.attribution import attribution_maps
from automl_kd.distill.ig.gallery import overlay
from automl_kd.distill.ig.inference import inference_copy
from automl_kd.distill.ig.maps import IGMaps
from automl_kd.distill.loop import train_student
from automl_kd.distill.settings import TrainSettings
from automl_kd.distill.taps import forward
from automl_kd.distill.teacher_outputs import build_view, teacher_output_provider
from automl_kd.distill.views import apply_crop_flip


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def _row_of(data: Any, index: int) -> int:
    return int((data.train.index == index).nonzero()[0, 0])


def test_ig_map_of_index_i_is_computed_from_image_i(tmp_path: Path) -> None:
    data = tiny_data()
    teacher = tiny_teacher(data)
    ig = augmenter("ig-overlay", steps=4, batch_size=64)
    prepare([ig], teacher, tiny_student(data), data, ArtifactCache(tmp_path / "cache"))
    fast, mean = inference_copy(teacher), torch.tensor(data.mean)
    g = torch.Generator().manual_seed(1)
    for b, (_, _, ib) in enumerate(batches(data.train, 16, shuffle=True, generator=g)):
        if b == 2:
            break
        cached = ig.maps.lookup(ib)
        for k, i in enumerate(
            ib.tolist()
        ):  # a fresh computation on image i alone, found by its dataset index
            r = _row_of(data, i)
            fresh, _, _ = attribution_maps(
                fast,
                data.train.x[r : r + 1].float() / 255,
                data.train.y[r : r + 1],
                data.normalize,
                mean,
                ig.settings,
            )
            assert torch.allclose(cached[k], fresh[0], rtol=3e-3, atol=1e-3 * float(fresh.max())), i
        # and the maps do tell images apart, so a misaligned lookup could not pass
        assert not torch.allclose(cached, ig.maps.lookup(ib.roll(1)), rtol=0.1)


def test_cached_teacher_outputs_of_index_i_are_computed_from_a_view_of_image_i(tmp_path: Path) -> None:
    data = tiny_data()
    teacher = tiny_teacher(data)
    cache = ArtifactCache(tmp_path / "cache")
    augs = [augmenter("kd"), augmenter("attention"), augmenter("ig-overlay", steps=2, p=0.5, batch_size=128)]
    prepare(augs, teacher, tiny_student(data), data, cache)
    provider = teacher_output_provider(teacher, augs, data, padding=2, flip=True, mode="cached", cache=cache)
    assert provider is not None and provider.views == 4
    layer = augs[1].teacher_layers()[0]
    g = torch.Generator().manual_seed(2)
    for b, (_, _, ib) in enumerate(batches(data.train, 32, shuffle=True, generator=g)):
        if b == 2:
            break
        rows, views = provider.choose(ib, g)
        cached = provider.outputs(rows, views)
        for k, i in enumerate(ib.tolist()):
            r, v = _row_of(data, i), int(views[k])
            draws = {
                name: t[v, r : r + 1] for name, t in provider.draws.items()
            }  # the stored draws of (i, v)
            x = build_view(
                data.train.x[r : r + 1].float() / 255,
                data.train.index[r : r + 1],
                data.train.y[r : r + 1],
                draws,
                provider.augmenters,
                provider.padding,
            )
            out = forward(teacher, data.normalize(x), [layer])
            assert torch.allclose(cached.logits[k], out.logits[0], atol=1e-4), i
            fresh_map = augs[1].reduce_teacher(layer, out.features[layer])[0]
            assert torch.allclose(cached.features[layer][k], fresh_map, atol=2e-3), i


class TeacherCheck(Augmenter):
    """Inside the training loop: the teacher outputs handed to the losses are the teacher's on the student's input."""

    name = "teacher-check"
    needs_teacher_logits = True

    def __init__(self, teacher: Any, layer: str, reducer: Augmenter) -> None:
        self.teacher, self.layer, self.reducer, self.checked = teacher, layer, reducer, 0

    def losses(self, batch: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
        assert batch.teacher is not None
        fresh = forward(self.teacher, batch.x.float(), [self.layer])
        assert torch.allclose(batch.teacher.logits.float(), fresh.logits, atol=1e-4)
        reduced = self.reducer.reduce_teacher(self.layer, fresh.features[self.layer])
        assert torch.allclose(batch.teacher.features[self.layer].float(), reduced, atol=2e-3)
        self.checked += 1
        return {}


@pytest.mark.parametrize("mode", ["online", "cached"])
def test_training_loop_teacher_outputs_belong_to_the_students_view(mode: str, tmp_path: Path) -> None:
    data = tiny_data()
    teacher = tiny_teacher(data)
    student = tiny_student(data)
    cache = ArtifactCache(tmp_path / "cache")
    at = augmenter("attention")
    augs = [augmenter("ig-overlay", steps=2, p=0.5, batch_size=128), augmenter("kd"), at]
    prepare(augs, teacher, student, data, cache)
    check = TeacherCheck(teacher, at.teacher_layers()[0], at)
    settings = TrainSettings(epochs=1, batch_size=32, max_steps_per_epoch=4, crop_padding=2, flip=True)
    train_student(
        student,
        data,
        settings,
        seed=0,
        augmenters=[*augs, check],
        teacher=teacher,
        teacher_outputs=mode,
        cache=cache,
    )
    assert check.checked == 4


class ViewRecorder(Augmenter):
    """Records the [0, 1] view the student trained on."""

    name = "view-recorder"

    def __init__(self, data: Any, needs_teacher: bool) -> None:
        self.data, self.seen = data, []
        self.needs_teacher_logits = needs_teacher

    def losses(self, batch: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
        std = torch.tensor(self.data.std).view(1, -1, 1, 1)
        mean = torch.tensor(self.data.mean).view(1, -1, 1, 1)
        self.seen.append((batch.index.clone(), batch.x.float() * std + mean))
        return {}


@pytest.mark.parametrize("mode", ["online", "cached"])
def test_the_overlay_happens_before_crop_and_flip(mode: str, tmp_path: Path) -> None:
    data = tiny_data()
    teacher = tiny_teacher(data)
    ig = augmenter("ig-overlay", p=1.0, w=0.5, exponent=[1.0, 1.0])
    # maps that are not symmetric, unlike their crops and flips: the image itself, rotated by 90 degrees
    x01 = data.train.x.float() / 255
    ig.maps = IGMaps(
        x01[:, 0].transpose(1, 2).contiguous(), torch.ones(len(x01)), data.train.index, {}, "stub"
    )
    rec = ViewRecorder(data, needs_teacher=(mode == "cached"))
    settings = TrainSettings(epochs=1, batch_size=32, max_steps_per_epoch=3, crop_padding=2, flip=True)
    train_student(
        tiny_student(data),
        data,
        settings,
        seed=0,
        augmenters=[ig, rec],
        teacher=teacher,
        teacher_outputs=mode,
        cache=ArtifactCache(tmp_path / "cache"),
    )
    assert rec.seen
    for index, views in rec.seen:
        for i, view in zip(index.tolist(), views, strict=True):
            r = _row_of(data, i)
            blended = overlay(
                x01[r : r + 1], ig.maps.lookup(torch.tensor([i])), 0.5
            )  # overlay on the whole image
            variants = [
                apply_crop_flip(
                    blended,
                    {"dy": torch.tensor([dy]), "dx": torch.tensor([dx]), "flip": torch.tensor([f])},
                    2,
                )[0]
                for dy in range(5)
                for dx in range(5)
                for f in (False, True)
            ]
            # the student's view is a crop/flip of the blended image: the map moved with the image
            assert any(torch.allclose(view, v, atol=1e-5) for v in variants), i


def test_cached_teacher_outputs_are_the_same_when_ig_maps_are_computed_on_demand(tmp_path: Path) -> None:
    """``precompute: needed`` computes maps only for the images some cached view overlays, and the teacher's
    outputs on those views are the ones the whole-split precompute gives."""
    data = tiny_data()
    teacher = tiny_teacher(data)
    logits = {}
    for how in ("all", "needed"):
        cache = ArtifactCache(tmp_path / how)
        augs = [augmenter("kd"), augmenter("ig-overlay", steps=2, p=0.1, batch_size=128, precompute=how)]
        prepare(augs, teacher, tiny_student(data), data, cache)
        provider = teacher_output_provider(
            teacher, augs, data, padding=2, flip=True, mode="cached", cache=cache
        )
        assert provider is not None
        logits[how] = provider.logits
        if how == "needed":
            done = augs[1].maps.store.done
            assert 0 < done < len(data.train), done  # p 0.1 over 4 views: about a third of the images
            # computed in one batch before the views, not a few images per view batch
            assert len(list(cache.partial_dir("ig-maps", augs[1].maps.key).glob("*.art"))) == 1
    assert torch.allclose(logits["all"], logits["needed"], atol=1e-4)
