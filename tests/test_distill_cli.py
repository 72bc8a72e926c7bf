"""``automl-kd teacher train`` and ``automl-kd ig precompute``: train/cache once, then reuse (visible in the log)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from distill_support import STUDENT_SPACE, TEACHER_SPACE, one_thread

from automl_kd.cli import main


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def test_teacher_train_and_ig_precompute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AUTOML_KD_CACHE", str(tmp_path / "cache"))
    cfg = {
        "name": "cli-distill",
        "run_dir": str(tmp_path / "run"),
        "data": {"train_size": 200, "test_size": 100, "val_fraction": 0.2},
        "space": {"name": "mbv2", "options": STUDENT_SPACE},
        "teacher": {
            "space": "mbv2",
            "space_options": TEACHER_SPACE,
            "train": {"epochs": 1, "batch_size": 32},
        },
        "augmenters": [{"name": "ig-overlay", "options": {"steps": 2, "p": {"search": [0.1, 0.2]}}}],
    }
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["teacher", "train", str(path), "--json"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["source"] == "trained" and 0 <= first["val_acc"] <= 100
    assert main(["teacher", "train", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["source"] == "cache"

    assert main(["ig", "precompute", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    maps = json.loads(out.strip().splitlines()[-1])
    assert maps["images"] == 160 and "computed and cached" in err
    assert main(["ig", "precompute", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["key"] == maps["key"]
    assert "no recomputation" in err and "computed and cached" not in err
    assert (tmp_path / "run" / "ig_gallery.png").is_file()
    # IG settings cannot be searched when precomputing
    path.write_text(
        yaml.safe_dump(
            {**cfg, "augmenters": [{"name": "ig-overlay", "options": {"steps": {"search": [2, 4]}}}]}
        )
    )
    assert main(["ig", "precompute", str(path)]) == 2
    assert "must be fixed" in capsys.readouterr().err
