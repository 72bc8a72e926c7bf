"""``evaluate`` scores a finalized Fashion-MNIST student on a folder of real Fashion-MNIST test images whose class
folders have other names, through a class map: every mapped image counts, unmapped classes are skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import FormulaPlugin, small_mbv2_options
from PIL import Image

from automl_kd import Search, get_plugin_manager, load_config
from automl_kd.cli import main
from automl_kd.config import DataConfig
from automl_kd.data import load_fashion_mnist
from automl_kd.errors import ConfigError
from automl_kd.results.finalize import load_finalized
from automl_kd.results.transfer import evaluate_student

DATA = {"dataset": "fashion-mnist", "train_size": 500, "test_size": 200, "crop_padding": 0, "flip": False}
#: folder name -> Fashion-MNIST label of the images written into it
FOLDERS = {"tee": 0, "pants": 1, "sneaker": 7, "boot": 9, "handbag": 8, "mystery": 3}
PER_CLASS = 12


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny student finalized through the CLI (1 epoch on 450 images)."""
    run_dir = tmp_path_factory.mktemp("evaluate") / "run"
    cfg = load_config(
        {
            "name": "ev",
            "run_dir": str(run_dir),
            "device": "cpu",
            "data": DATA,
            "space": {"name": "mbv2", "options": small_mbv2_options()},
            "search": {"proposer": {"name": "random"}, "n_trials": 2},
            "evaluator": {"name": "formula", "options": {"epochs": 1}},
        }
    )
    Search(cfg, pm=get_plugin_manager(extra_plugins=[("tests-formula", FormulaPlugin())])).run()
    assert (
        main(["finalize", "--run-dir", str(run_dir), "--epochs", "1", "--set", "evaluator.options.lr=0.004"])
        == 0
    )
    (folder,) = (run_dir / "final").iterdir()
    return folder


@pytest.fixture(scope="module")
def renamed_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """Real Fashion-MNIST test images as PNGs in class folders with other names; returns the images per folder."""
    root = tmp_path_factory.mktemp("renamed")
    _, _, xte, yte, _ = load_fashion_mnist(DataConfig())
    images = {}
    for name, label in FOLDERS.items():
        (root / name).mkdir()
        picked = xte[np.flatnonzero(yte == label)[:PER_CLASS]]
        for i, img in enumerate(picked):
            Image.fromarray(img[0], mode="L").save(root / name / f"{i:03d}.png")
        images[name] = picked
    return root, images


def expected_predictions(student: Path, images: np.ndarray) -> np.ndarray:
    model, record = load_finalized(student)
    x = torch.from_numpy(images).float() / 255
    mean = torch.tensor(record["data"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(record["data"]["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        return model((x - mean) / std).argmax(1).numpy()


def test_class_map_scores_every_mapped_image(
    student: Path, renamed_folder: tuple[Path, dict[str, np.ndarray]]
) -> None:
    root, images = renamed_folder
    class_map: dict[str, Any] = {"tee": "T-shirt/top", "pants": 1, "sneaker": "Sneaker", "boot": "Sneaker"}
    result = evaluate_student(
        student, {"data": {"dataset": "imagefolder", "root": str(root)}, "class_map": class_map}
    )

    targets = {"tee": 0, "pants": 1, "sneaker": 7, "boot": 7}  # boots merged into the sneaker class
    hits = {name: expected_predictions(student, images[name]) == t for name, t in targets.items()}
    assert result["n"] == 4 * PER_CLASS and result["n_skipped"] == 2 * PER_CLASS
    assert result["skipped_by_class"] == {"handbag": PER_CLASS, "mystery": PER_CLASS}
    all_hits = np.concatenate(list(hits.values()))
    assert result["accuracy"] == pytest.approx(100 * all_hits.mean(), abs=1e-3)
    recalls = {
        "T-shirt/top": hits["tee"].mean(),
        "Trouser": hits["pants"].mean(),
        "Sneaker": np.concatenate([hits["sneaker"], hits["boot"]]).mean(),
    }
    assert set(result["per_class_recall"]) == set(recalls)
    for name, r in recalls.items():
        assert result["per_class_recall"][name]["recall"] == pytest.approx(100 * r, abs=1e-3)
    assert result["per_class_recall"]["Sneaker"]["n"] == 2 * PER_CLASS
    assert result["balanced_accuracy"] == pytest.approx(100 * np.mean(list(recalls.values())), abs=1e-3)
    assert result["per_source_class"]["boot"]["target"] == "Sneaker"
    assert result["conversions"] == []  # grey PNGs of the right size go in untouched

    restricted = evaluate_student(
        student,
        {"data": {"dataset": "imagefolder", "root": str(root)}, "class_map": class_map, "restrict": True},
    )
    assert restricted["predicted_outside_map"] == 0 and restricted["n"] == result["n"]


def test_same_dataset_without_a_map_reproduces_the_test_accuracy(student: Path) -> None:
    # no class_map: classes with identical names map onto each other; the same split gives finalize's number
    result = evaluate_student(student, {"data": DATA, "split": "test"})
    _, record = load_finalized(student)
    assert result["n"] == 200 and result["n_skipped"] == 0
    assert result["accuracy"] == pytest.approx(record["metrics"]["test_acc"], abs=1e-3)


def test_cli_writes_the_result_and_errors_are_clear(
    student: Path,
    renamed_folder: tuple[Path, dict[str, np.ndarray]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = renamed_folder
    run_dir = student.parent.parent
    cfg_path = tmp_path / "imagenet_like.yaml"
    data = {
        "dataset": "imagefolder",
        "root": str(root),
        "image_size": 20,
    }  # resized back to 28 for the student
    cfg_path.write_text(
        yaml.safe_dump({"data": data, "class_map": {"tee": "T-shirt/top", "pants": "Trouser"}})
    )
    assert main(["evaluate", "--run-dir", str(run_dir), "--config", str(cfg_path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((student / "evaluate-imagenet_like.json").read_text())
    assert printed == saved and saved["n"] == 2 * PER_CLASS and saved["n_skipped"] == 4 * PER_CLASS
    assert saved["conversions"] == ["resized 20x20 -> 28x28 (bilinear, antialiased)"]

    base = {"data": {"dataset": "imagefolder", "root": str(root)}}
    with pytest.raises(ConfigError, match=r"'sweater' is not a class of the evaluation data.*boot"):
        evaluate_student(student, {**base, "class_map": {"sweater": "Pullover"}})
    with pytest.raises(ConfigError, match=r"'tee' -> 'Tshirt' is not a training class.*T-shirt/top"):
        evaluate_student(student, {**base, "class_map": {"tee": "Tshirt"}})
    with pytest.raises(ConfigError, match=r"not a training class index \(0\.\.9\)"):
        evaluate_student(student, {**base, "class_map": {"tee": 10}})
    with pytest.raises(ConfigError, match="no class_map given"):
        evaluate_student(student, base)
    cfg_path.write_text(yaml.safe_dump({**base, "clas_map": {}}))
    assert main(["evaluate", "--checkpoint", str(student / "model.pt"), "--config", str(cfg_path)]) == 2
    assert "'clas_map' is unknown" in capsys.readouterr().err
