"""The IG-KD authors' released CIFAR-10 network as a teacher and as a scored checkpoint, on real CIFAR-10 (JPEG)
images: its input convention (RGB in [0, 1]), `automl-kd evaluate` on a plain weights file, fine-tuning it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from automl_kd import get_plugin_manager
from automl_kd.cache import ArtifactCache
from automl_kd.config import DataConfig, TeacherConfig
from automl_kd.data import load_data, unpack_imagefolder
from automl_kd.distill.loop import accuracy
from automl_kd.distill.taps import model_fingerprint
from automl_kd.distill.teacher import get_teacher
from automl_kd.distill.teacher_info import teacher_info, teacher_normalizer

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RELEASED = SHARED / "igkd-students" / "CIFAR10_KD_IG_AT_T2.5_alpha0.01_p0.1_gamma0.8_TestAcc92.42.pt"
pytestmark = pytest.mark.skipif(not RELEASED.is_file(), reason=f"{RELEASED} is not here")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 40 training and 60 test images of each class of the CIFAR-10 (JPEG) archive, unpacked."""
    archive = SHARED / "cifar-10-jpeg" / "cifar-10-jpeg.tar.gz"
    return unpack_imagefolder(archive, tmp_path_factory.mktemp("cifar-jpeg"), {"train": 40, "test": 60})


def teacher_cfg(**kw: object) -> TeacherConfig:
    return TeacherConfig.model_validate(
        {"space": "paper-truncated", "params": {"removed": 5}, "checkpoint": str(RELEASED), **kw}
    )


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "automl_kd.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_evaluate_scores_the_released_weights_file(cifar: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        "model: {space: paper-truncated, params: {removed: 5}, input: unit}\n"
        f"data: {{dataset: imagefolder, root: {cifar}}}\n"
    )
    done = cli("evaluate", "--checkpoint", str(RELEASED), "--config", str(cfg), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["layout"] == "igkd" and result["n"] == 600
    # 83.76 % on all 10,000 test images (fp32); 600 of them give that within a few points
    assert 76.0 < result["accuracy"] < 91.0
    assert not list(RELEASED.parent.glob("evaluate-*.json"))  # nothing written beside a shared weights file

    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(cfg.read_text().replace("removed: 5", "removed: 6"))
    done = cli("evaluate", "--checkpoint", str(RELEASED), "--config", str(wrong), "--json")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "does not fit" in done.stderr and "igkd layout" in done.stderr


def test_the_teacher_is_fed_in_its_own_input_convention(cifar: Path) -> None:
    data = load_data(DataConfig(dataset="imagefolder", root=str(cifar), val_fraction=0.25))
    cache = ArtifactCache.default()
    pm = get_plugin_manager()
    cpu = torch.device("cpu")
    right = get_teacher(teacher_cfg(input="unit"), data, cpu, cache, pm, precision="fp32")
    wrong = get_teacher(teacher_cfg(), data, cpu, cache, pm, precision="fp32")  # as if trained by us
    info = teacher_info(right)
    assert info is not None and info.source == "checkpoint" and info.metrics["layout"] == "igkd"
    unit = accuracy(right, data.test, data, normalize=teacher_normalizer(right, data), precision="fp32")
    normalised = accuracy(wrong, data.test, data, normalize=teacher_normalizer(wrong, data), precision="fp32")
    assert unit > 75.0
    assert unit > normalised + 10.0  # the convention matters: standardised inputs are not what it learned
    # bf16 autocast agrees with fp32 to within a few images of 600
    bf16 = accuracy(right, data.test, data, normalize=teacher_normalizer(right, data), precision="bf16")
    assert abs(bf16 - unit) <= 1.0


def test_a_released_checkpoint_is_fine_tuned_once_and_cached(cifar: Path) -> None:
    data = load_data(DataConfig(dataset="imagefolder", root=str(cifar), val_fraction=0.25))
    cache = ArtifactCache.default()
    pm = get_plugin_manager()
    cfg = teacher_cfg(
        input="unit",
        finetune=True,
        train={"epochs": 1, "batch_size": 32, "lr": 1e-4, "optimizer": "adamw", "max_steps_per_epoch": 2},
    )
    released = get_teacher(teacher_cfg(input="unit"), data, torch.device("cpu"), cache, pm)
    tuned = get_teacher(cfg, data, torch.device("cpu"), cache, pm)
    again = get_teacher(cfg, data, torch.device("cpu"), cache, pm)
    first, second = teacher_info(tuned), teacher_info(again)
    assert first is not None and second is not None
    assert (first.source, second.source) == ("trained", "cache")
    assert first.fingerprint == second.fingerprint != model_fingerprint(released)
    assert first.metrics["val_acc"] > 60.0  # two small steps from a strong start keep it strong

    with pytest.raises(ValueError, match=r"finetune needs teacher\.checkpoint"):
        TeacherConfig.model_validate({"space": "paper-truncated", "finetune": True})
