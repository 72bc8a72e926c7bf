"""``finalize`` retrains a trial's student; ``export`` writes ONNX, .pt2, TorchScript and safetensors that
reproduce the torch outputs on real Fashion-MNIST images, with a model card."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from conftest import FormulaPlugin, small_mbv2_options

from automl_kd import Augmenter, PrepareContext, Search, StepBatch, get_plugin_manager, hookimpl, load_config
from automl_kd.cli import main
from automl_kd.config import DataConfig
from automl_kd.data import load_data
from automl_kd.distill.loop import accuracy
from automl_kd.results.finalize import CHECKPOINT, CheckpointError, finalize, load_finalized

DATA = {"dataset": "fashion-mnist", "train_size": 500, "test_size": 200, "crop_padding": 0, "flip": False}


def tiny_study(run_dir: Path, n_trials: int = 3) -> Any:
    """A study whose trials are scored instantly by the formula evaluator; finalizing trains for real."""
    cfg = load_config(
        {
            "name": "tiny",
            "run_dir": str(run_dir),
            "device": "cpu",
            "data": DATA,
            "space": {"name": "mbv2", "options": small_mbv2_options()},
            "search": {"proposer": {"name": "random"}, "n_trials": n_trials},
            "evaluator": {"name": "formula", "options": {"epochs": 1}},
        }
    )
    pm = get_plugin_manager(extra_plugins=[("tests-formula", FormulaPlugin())])
    return Search(cfg, pm=pm).run()


@pytest.fixture(scope="module")
def finalized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("export") / "run"
    tiny_study(run_dir)
    return run_dir, finalize(
        run_dir, trial="best", epochs=1, overrides=["evaluator.options.lr=0.004"], latency_batch_sizes=(1, 8)
    )


def test_finalize_retrains_the_best_trial_and_saves_a_loadable_student(
    finalized: tuple[Path, dict[str, Any]],
) -> None:
    run_dir, rec = finalized
    from automl_kd.storage.studies import load_study

    study = load_study(None, run_dir, None)
    best = max(study.trials, key=lambda t: t.user_attrs["val_acc"])
    assert rec["trial"] == best.number and rec["seed"] == best.user_attrs["seed"]
    assert rec["params"] == best.params and rec["train"]["epochs"] == 1 and rec["train"]["lr"] == 0.004
    folder = run_dir / "final" / f"trial-{best.number}"
    state = torch.load(folder / CHECKPOINT, weights_only=True)  # plain tensors, no pickled code
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    model, record = load_finalized(folder)
    data = load_data(DataConfig(**DATA))
    assert record["metrics"]["test_acc"] == pytest.approx(accuracy(model, data.test, data), abs=1e-3)
    assert record["metrics"]["params"] == sum(p.numel() for p in model.parameters())
    for key in ("val_acc", "macs", "latency_ms_b1", "latency_ms_b8", "latency_device"):
        assert key in record["metrics"], key


class L2Term(Augmenter):
    """A distillation-free augmenter (no teacher needed): an L2 penalty on the student's weights."""

    name = "l2-term"

    def __init__(self, weight: float = 0.01) -> None:
        self.weight = weight
        self.params: list[torch.Tensor] = []

    def prepare(self, ctx: PrepareContext) -> None:
        self.params = list(ctx.student.parameters())

    def losses(self, batch: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
        return {"l2": (self.weight, sum((p**2).sum() for p in self.params) / len(self.params))}


class L2Plugin:
    @hookimpl
    def register_augmenters(self, register: Any) -> None:
        register("l2-term", L2Term)


def test_finalize_trains_with_the_augmenters_the_trial_recorded(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    study = tiny_study(run_dir, n_trials=1)
    done = study.trials[0]
    recorded = [{"name": "l2-term", "options": {"weight": 0.05}}]
    study.add_trial(
        optuna.trial.create_trial(
            params=done.params,
            distributions=done.distributions,
            value=1.0,
            user_attrs={"val_acc": 1.0, "seed": 7, "augmenters": recorded, "proposer": "random"},
        )
    )
    pm = get_plugin_manager(extra_plugins=[("tests-l2", L2Plugin())])
    rec = finalize(run_dir, trial=1, epochs=1, pm=pm, latency_batch_sizes=(1,))
    assert rec["augmenters"] == recorded and rec["seed"] == 7 and rec["teacher"] is None
    assert set(rec["metrics"]["loss_terms"]) == {"ce", "l2", "total"}
    # a config override of the augmenters wins over the record
    rec = finalize(run_dir, trial=1, epochs=1, pm=pm, overrides=["augmenters=[]"], latency_batch_sizes=(1,))
    assert rec["augmenters"] == [] and set(rec["metrics"]["loss_terms"]) == {"ce", "total"}


def test_export_matches_torch_on_real_images(
    finalized: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort
    from safetensors.torch import load_file, safe_open

    run_dir, rec = finalized
    args = ["export", "--run-dir", str(run_dir), "--json", "--format", "onnx", "--format", "pt2"]
    assert main([*args, "--format", "torchscript", "--format", "safetensors"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    folder = Path(out["dir"])
    card = out["card"]
    assert folder == run_dir / "final" / f"trial-{rec['trial']}" / "export"

    # our own check, independent of the exporter's: 40 real test images, two batch sizes (the batch is dynamic)
    model, _ = load_finalized(folder.parent)
    data = load_data(DataConfig(**DATA))
    x = data.test.x[:40].float() / 255
    with torch.no_grad():
        ref = model(data.normalize(x))
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for batch in (x, x[:3]):
        got = sess.run(None, {name: batch.numpy()})[0]
        diff = float(np.abs(got - ref[: len(batch)].numpy()).max())
        assert diff < 1e-4, diff
    assert card["checks"]["onnx"]["max_abs_diff"] < 1e-4 and card["checks"]["onnx"]["argmax_agrees"]
    assert "16 real test images" in card["checks"]["images"]

    program = torch.export.load(str(folder / "model.pt2")).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.14, still loads
        scripted = torch.jit.load(str(folder / "model.torchscript.pt"))
    with torch.no_grad():
        assert float((program(x) - ref).abs().max()) < 1e-5
        assert float((scripted(x) - ref).abs().max()) < 1e-5

    bare, _ = load_finalized(folder.parent)
    bare.load_state_dict(load_file(str(folder / "model.safetensors")))
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["mean"]) == pytest.approx(list(data.mean))
    with torch.no_grad():
        assert torch.equal(bare(data.normalize(x)), ref)

    text = (folder / "model_card.md").read_text()
    for needle in (
        "architecture",
        "validation accuracy",
        "parameters",
        "multiply-adds",
        "latency",
        "teacher",
        "augmenters",
        "model.onnx",
        "max abs diff",
    ):
        assert needle in text, needle
    assert card["cost"]["params"] == rec["metrics"]["params"] and card["teacher"] is None
    assert (
        json.loads((folder / "model_card.json").read_text())["accuracy"]["test_acc"]
        == rec["metrics"]["test_acc"]
    )

    # the study's report lists the finalized, exported student
    from automl_kd.results.html import write_report
    from automl_kd.storage.studies import load_study

    page = write_report(load_study(None, run_dir, None), run_dir).read_text()
    final = page[page.index('<section id="final">') :]
    assert f"<td>{rec['trial']}</td>" in final.replace(' class=""', "") and ">yes<" in final


def test_export_errors_are_clear(
    finalized: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, rec = finalized
    other = next(n for n in range(3) if n != rec["trial"])
    assert main(["export", "--run-dir", str(run_dir), "--trial", str(other)]) == 1
    err = capsys.readouterr().err
    assert f"trial {other} has not been finalized" in err and "automl-kd finalize" in err
    assert f"finalized trials: {rec['trial']}" in err and "Traceback" not in err

    # a checkpoint that does not fit its recorded architecture
    src = run_dir / "final" / f"trial-{rec['trial']}"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "final.json").write_text((src / "final.json").read_text())
    state = torch.load(src / CHECKPOINT, weights_only=True)
    state.pop(next(k for k in state if k.startswith("classifier")))
    torch.save(state, bad / CHECKPOINT)
    with pytest.raises(CheckpointError, match="does not fit the architecture"):
        load_finalized(bad)
    (bad / "final.json").unlink()
    with pytest.raises(CheckpointError, match=r"no final\.json"):
        load_finalized(bad / CHECKPOINT)
    assert main(["finalize", "--run-dir", str(run_dir), "--trial", "99"]) == 2
    assert "has no trial 99" in capsys.readouterr().err
