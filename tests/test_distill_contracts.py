"""The augmenter contract suite over the built-in augmenters, prepared with a real teacher and real data, and the
replay contract: ``transform`` equals ``apply_view`` of ``sample_view``'s draws."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from distill_support import augmenter, one_thread, prepare, tiny_data, tiny_student, tiny_teacher

from automl_kd.distill.augmenter import Augmenter
from automl_kd.testing import AugmenterContract

NAMES = ["kd", "dkd", "attention", "ig-overlay"]
OPTIONS = {"ig-overlay": {"steps": 2, "p": 0.5, "batch_size": 128}}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


class TestPreparedAugmenters(AugmenterContract):
    @pytest.fixture(params=[*NAMES, "ig-overlay:needed"])
    def augmenter(self, request: pytest.FixtureRequest) -> Augmenter:
        data = tiny_data()
        name, _, how = request.param.partition(":")
        options = {**OPTIONS.get(name, {}), **({"precompute": how} if how else {})}
        aug = augmenter(name, **options)
        prepare([aug], tiny_teacher(data), tiny_student(data), data)
        return aug

    @pytest.fixture
    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        part = tiny_data().train
        return part.x[:8].float() / 255, part.y[:8], part.index[:8]


@pytest.mark.parametrize("name", NAMES)
def test_transform_is_replayable_from_its_draws(name: str) -> None:
    data = tiny_data()
    aug = augmenter(name, **OPTIONS.get(name, {}))
    prepare([aug], tiny_teacher(data), tiny_student(data), data)
    assert aug.replay_key() is not None
    x, y, idx = data.train.x[:16].float() / 255, data.train.y[:16], data.train.index[:16]
    direct = aug.transform(x, idx, y, torch.Generator().manual_seed(3))
    replayed = aug.apply_view(x, idx, y, aug.sample_view(idx, y, torch.Generator().manual_seed(3)))
    assert torch.equal(direct, replayed)
