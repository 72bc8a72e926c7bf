"""The teacher: built from a space or timm, from a checkpoint or trained once and cached, frozen."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from distill_support import CPU, PM, one_thread, teacher_config, tiny_data

from automl_kd import load_config
from automl_kd.cache import ArtifactCache
from automl_kd.config import TeacherConfig
from automl_kd.data import with_training_pool
from automl_kd.distill.teacher import get_teacher, teacher_cache_key, teacher_info
from automl_kd.errors import ConfigError
from automl_kd.plugins.spaces.paper_truncated import PaperTruncatedSpace


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def test_trained_once_then_reused_and_frozen(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tiny_data()
    cache = ArtifactCache(tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="automl_kd"):
        first = get_teacher(teacher_config(), data, CPU, cache, pm=PM)
        second = get_teacher(teacher_config(), data, CPU, cache, pm=PM)
    a, b = teacher_info(first), teacher_info(second)
    assert a is not None and b is not None
    assert (a.source, b.source) == ("trained", "cache") and a.fingerprint == b.fingerprint
    assert "training it now" in caplog.text and "reusing cached weights" in caplog.text
    assert a.val_acc is not None and b.metrics == a.metrics
    # frozen: eval mode that train() cannot undo, no gradients
    second.train()
    assert not second.training and not any(m.training for m in second.modules())
    assert not any(p.requires_grad for p in second.parameters())
    # another training setting or other data is another entry
    other = TeacherConfig(**{**teacher_config().model_dump(), "train": {"epochs": 3}})
    assert teacher_cache_key(other, data) != teacher_cache_key(teacher_config(), data)
    assert teacher_cache_key(teacher_config(), tiny_data(train_size=200)) != teacher_cache_key(
        teacher_config(), data
    )


def test_a_teacher_trains_on_more_images_than_its_students_never_on_a_validation_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tiny_data()  # 240 training and 60 validation images of Fashion-MNIST's 60,000
    val = set(data.val.index.tolist())
    big = with_training_pool(data, 600)
    assert len(big.train) == 600 and not val & set(big.train.index.tolist())
    assert torch.bincount(big.train.y).tolist() == [60] * 10  # stratified
    assert big.val is data.val and big.test is data.test and (big.mean, big.std) == (data.mean, data.std)
    assert big.fingerprint != data.fingerprint
    assert torch.equal(with_training_pool(data, 600).train.index, big.train.index)  # deterministic
    with caplog.at_level(logging.WARNING, logger="automl_kd"):
        everything = with_training_pool(data, 10**6)
    assert len(everything.train) == 60_000 - len(val)
    assert "using all 59940" in caplog.text

    plain = teacher_config()
    more = TeacherConfig(**{**plain.model_dump(), "train": {**plain.train.model_dump(), "train_size": 600}})
    assert teacher_cache_key(more, data) != teacher_cache_key(plain, data)
    cache = ArtifactCache(tmp_path / "cache")
    small_run = teacher_info(get_teacher(plain, data, CPU, cache, pm=PM))
    big_run = teacher_info(get_teacher(more, data, CPU, cache, pm=PM))
    assert small_run is not None and big_run is not None and big_run.source == "trained"
    # scored on the students' validation split, after an epoch over 600 images instead of 240 (batches of 32)
    assert (small_run.metrics["steps"], big_run.metrics["steps"]) == (2 * 8, 2 * 19)
    assert big_run.val_acc is not None
    again = teacher_info(get_teacher(more, data, CPU, cache, pm=PM))
    assert again is not None and again.source == "cache" and again.fingerprint == big_run.fingerprint


def test_a_corrupt_cached_teacher_is_retrained(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tiny_data()
    cache = ArtifactCache(tmp_path / "cache")
    get_teacher(teacher_config(), data, CPU, cache, pm=PM)
    path = cache.path("teacher", teacher_cache_key(teacher_config(), data))
    path.write_bytes(path.read_bytes()[:-10])
    with caplog.at_level(logging.INFO, logger="automl_kd"):
        again = get_teacher(teacher_config(), data, CPU, cache, pm=PM)
    assert "truncated payload" in caplog.text and teacher_info(again).source == "trained"  # type: ignore[union-attr]


def test_timm_teacher_from_a_checkpoint(tmp_path: Path) -> None:
    import timm

    data = tiny_data()
    ref = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "ckpt.pt")
    cfg = TeacherConfig(model="test_resnet", checkpoint=str(tmp_path / "ckpt.pt"))
    teacher = get_teacher(cfg, data, CPU, ArtifactCache(tmp_path / "cache"), pm=PM)
    assert teacher_info(teacher).source == "checkpoint"  # type: ignore[union-attr]
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(teacher(x), ref.eval()(x), atol=1e-5)
    # weights for another network, and a pickle that would run code, are refused with a clear message
    torch.save(timm.create_model("test_resnet", num_classes=3, in_chans=1).state_dict(), tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="does not fit the teacher"):
        get_teacher(
            TeacherConfig(model="test_resnet", checkpoint=str(tmp_path / "bad.pt")),
            data,
            CPU,
            ArtifactCache(tmp_path / "cache"),
            pm=PM,
        )
    torch.save({"state_dict": {"w": torch.ones(1)}, "obj": Path("x")}, tmp_path / "pickle.pt")
    with pytest.raises(ConfigError, match="cannot be read safely"):
        get_teacher(
            TeacherConfig(model="test_resnet", checkpoint=str(tmp_path / "pickle.pt")),
            data,
            CPU,
            ArtifactCache(tmp_path / "cache"),
            pm=PM,
        )


def test_the_paper_truncated_teacher_is_the_spaces_reference(tmp_path: Path) -> None:
    data = tiny_data()
    cfg = TeacherConfig(
        space="paper-truncated",
        space_options={"width": 0.25, "stem_stride": 2},
        train={"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 1},
    )
    teacher = get_teacher(cfg, data, CPU, ArtifactCache(tmp_path / "cache"), pm=PM)
    space = PaperTruncatedSpace(num_classes=10, in_chans=1, input_size=28, width=0.25, stem_stride=2)
    assert sum(p.numel() for p in teacher.parameters()) == space.cost({"removed": 0}).params
    assert "features.18" in dict(teacher.named_modules())
    with pytest.raises(ConfigError, match="exactly one"):
        load_config({"teacher": {"model": "test_resnet", "space": "mbv2"}})


def test_the_teachers_precision_is_resolved_once_per_teacher(tmp_path: Path) -> None:
    """`precision: auto` on a CPU with fast bf16 kernels looks at the network (a hooked batch-1 forward): for the
    teacher that happens once, when get_teacher trains or loads it; its record and its cached outputs for every
    trial reuse that dtype."""
    from automl_kd.distill.teacher import teacher_record
    from automl_kd.distill.teacher_info import teacher_dtype
    from automl_kd.distill.teacher_outputs import teacher_output_provider
    from automl_kd.precision import autocast_dtype

    data = tiny_data()
    teacher = get_teacher(
        teacher_config(), data, CPU, ArtifactCache(tmp_path / "cache"), pm=PM, precision="auto"
    )
    info = teacher_info(teacher)
    assert info is not None and ("auto", "cpu") in info.dtypes  # resolved with the teacher's training plan
    probes: list[int] = []
    teacher.register_forward_pre_hook(lambda _m, args: probes.append(1) if args[0].shape[0] == 1 else None)
    records = [teacher_record(teacher, data, "auto") for _ in range(2)]
    for i in range(2):  # two trials, each building the teacher's cached views afresh
        teacher_output_provider(
            teacher,
            [],
            data,
            2,
            True,
            mode="cached",
            cache=ArtifactCache(tmp_path / f"views{i}"),
            precision="auto",
        )
    assert probes == []
    assert records[0] == records[1]
    expected = autocast_dtype("auto", CPU, teacher, data.input_shape)
    assert teacher_dtype(teacher, "auto", CPU, data.input_shape) == expected == info.dtypes[("auto", "cpu")]
