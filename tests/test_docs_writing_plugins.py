"""docs/writing-plugins.md's code, run as written: the loss-only augmenter plugin installed through the entry point
the page gives, its contract test run with pytest the way the page says, the plugin in a config and a training run,
and the built-in proposer as a plain Optuna sampler. The code is read from the page itself."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import tomllib
import torch
import yaml
from conftest import REPO
from distill_support import one_thread, tiny_data, tiny_student, tiny_teacher
from fault_support import assert_no_traceback, base_config, cli_in_process, write_yaml

from automl_kd import ProposerSampler, get_plugin_manager
from automl_kd.distill.augmenter import Outputs, Progress, StepBatch, call_losses
from automl_kd.distill.loop import train_student
from automl_kd.distill.settings import TrainSettings
from automl_kd.errors import PluginError

DOC = REPO / "docs" / "writing-plugins.md"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def files() -> dict[str, str]:
    """The page's Python blocks that name their file (``# file: NAME`` on the first line)."""
    out = {}
    for code in blocks("python"):
        first = code.splitlines()[0]
        if first.startswith("# file: "):
            out[first.removeprefix("# file: ").strip()] = code
    return out


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The page's plugin module and test file written out, and the plugin installed as the page's
    ``pyproject.toml`` lines declare it (a dist-info folder with that entry point, as ``pip install`` writes)."""
    for name, code in files().items():
        (tmp_path / name).write_text(code)
    [toml] = [t for t in blocks("toml") if "my_augmenter" in t]
    points = tomllib.loads(toml)["project"]["entry-points"]["automl_kd"]
    info = tmp_path / "my_augmenter_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-augmenter-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[automl_kd]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_the_page_has_the_augmenter_its_test_and_the_sampler() -> None:
    assert {"my_augmenter.py", "test_my_augmenter.py"} <= set(files())
    assert any("ProposerSampler(" in code and "create_study" in code for code in blocks("python"))


def test_the_augmenters_contract_test_passes_with_pytest_as_written(installed: Path) -> None:
    [console] = [c for c in blocks("console") if "pytest" in c]
    [command] = [line.removeprefix("$ ") for line in console.splitlines() if line.startswith("$ pytest")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-m", *shlex.split(command), "-p", "no:cacheprovider"]
    res = subprocess.run(args, cwd=installed, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"\d+ passed", res.stdout) and "failed" not in res.stdout, res.stdout


def test_the_contract_test_fails_when_the_flag_is_dropped(installed: Path) -> None:
    """The page's plugin without its ``needs_teacher_logits = True`` line: its contract test fails, naming it."""
    module = installed / "my_augmenter.py"
    source = module.read_text()
    flag = "    needs_teacher_logits = True"
    assert flag in source
    module.write_text(source.replace(flag, "    pass"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-m", "pytest", "-q", "test_my_augmenter.py", "-p", "no:cacheprovider"]
    res = subprocess.run(args, cwd=installed, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "set `needs_teacher_logits = True` on the class" in res.stdout, res.stdout


def test_the_installed_augmenter_is_checked_in_a_config_and_trains(
    installed: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    pm = get_plugin_manager()
    assert "warm-kd" in pm.augmenters, pm.errors
    [snippet] = [y for y in blocks("yaml") if "warm-kd" in y]
    doc = yaml.safe_load(snippet)
    cfg = write_yaml(installed / "cfg.yaml", base_config("warm", **doc))
    res = cli_in_process("check", str(cfg), cwd=installed, capfd=capfd)
    assert_no_traceback(res)
    assert res.rc == 0, res
    data = tiny_data()
    settings = TrainSettings(epochs=2, batch_size=32, lr=0.005, max_steps_per_epoch=3)
    aug = pm.augmenters.create("warm-kd", {"weight": 0.5, "warmup": 0.5})
    result = train_student(
        tiny_student(data), data, settings, seed=0, augmenters=[aug], teacher=tiny_teacher(data)
    )
    assert result.loss_terms["warm_kd"] > 0


def test_the_proposer_snippet_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    [code] = [c for c in blocks("python") if "ProposerSampler(" in c and "create_study" in c]
    scope: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), scope)
    study = scope["study"]
    assert isinstance(study, optuna.Study) and isinstance(study.sampler, ProposerSampler)
    assert len(study.trials) == 12 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert str(study.best_params) in capsys.readouterr().out


def test_the_step_batch_table_names_every_field() -> None:
    text = DOC.read_text()
    table = text[text.index("**`StepBatch`**") : text.index("**The declarations**")]
    for field in dataclasses.fields(StepBatch):
        assert f"| `{field.name}` |" in table, field.name
    names = [f.name for f in dataclasses.fields(Progress)]
    names += [n for n, v in vars(Progress).items() if isinstance(v, property)]
    for name in names:
        assert f"`{name}`" in table, name


def test_the_pages_error_message_is_the_one_a_run_prints() -> None:
    """The page's plugin without its flag, called the way the training loop calls it: the page quotes the error."""
    source = files()["my_augmenter.py"].replace("    needs_teacher_logits = True", "    pass")
    scope: dict[str, Any] = {}
    exec(compile(source, "my_augmenter.py", "exec"), scope)
    logits = torch.zeros(2, 3)
    batch = StepBatch(
        torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), torch.arange(2), Outputs(logits), Outputs(logits)
    )
    with pytest.raises(PluginError) as caught:
        call_losses(scope["WarmKD"](), batch)
    [quoted] = [t for t in blocks("text") if t.startswith("PluginError:")]
    assert " ".join(quoted.split()) == f"PluginError: {caught.value}"
