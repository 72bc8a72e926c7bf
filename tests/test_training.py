"""The training loop and the `train` evaluator on real Fashion-MNIST data, with a third-party augmenter."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import small_mbv2_options

from automl_kd import (
    Augmenter,
    NoTrialCompleted,
    Search,
    StepBatch,
    get_plugin_manager,
    hookimpl,
    load_config,
)
from automl_kd.config import DataConfig
from automl_kd.data import load_data
from automl_kd.distill.loop import train_student
from automl_kd.distill.settings import TrainSettings
from automl_kd.metrics import count_macs, count_params, measure_latency
from automl_kd.plugins.spaces.mbv2 import MBV2Space
from automl_kd.results.leaderboard import trial_state


def _space() -> MBV2Space:
    return MBV2Space(num_classes=10, in_chans=1, input_size=28, **small_mbv2_options())


def test_cross_entropy_training_learns_on_real_data() -> None:
    data = load_data(DataConfig(train_size=3000, val_fraction=0.2, crop_padding=0, flip=False))
    model = _space().build(_space().sample(random.Random(0)))
    result = train_student(
        model, data, TrainSettings(epochs=3, batch_size=64, lr=0.005, crop_padding=0, flip=False), seed=0
    )
    curve = [h["ce"] for h in result.history]
    assert curve[0] > curve[-1]  # training loss goes down epoch over epoch
    assert result.val_acc > 50.0  # ten classes: chance is 10 %
    assert set(result.loss_terms) == {"ce", "total"}


class Entropy(Augmenter):
    """A third-party augmenter: penalises confident predictions (adds a named loss term)."""

    name = "entropy"

    def __init__(self, weight: float = 0.1) -> None:
        self.weight = weight

    def losses(self, batch: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
        p = batch.student.logits.float().softmax(1)
        return {"neg_entropy": (self.weight, (p * p.clamp_min(1e-8).log()).sum(1).mean())}


class Exploding(Augmenter):
    name = "exploding"

    def losses(self, batch: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
        return {"boom": (1.0, batch.student.logits.sum() * float("nan"))}


class AugmenterPlugin:
    @hookimpl
    def register_augmenters(self, register: Any) -> None:
        register("entropy", Entropy)
        register("exploding", Exploding)


def _train_config(tmp_path: Path, augmenters: list[dict[str, Any]], n: int = 1) -> Any:
    return load_config(
        {
            "name": "train-test",
            "run_dir": str(tmp_path / "run"),
            "data": {"train_size": 1000, "test_size": 500, "val_fraction": 0.2, "crop_padding": 2},
            "space": {"name": "mbv2", "options": small_mbv2_options()},
            "search": {"n_trials": n, "proposer": {"name": "random"}},
            "evaluator": {
                "name": "train",
                "options": {"epochs": 2, "batch_size": 64, "latency_batch_sizes": [1, 8]},
            },
            "augmenters": augmenters,
        }
    )


def test_train_evaluator_records_metrics_and_named_loss_terms(tmp_path: Path) -> None:
    pm = get_plugin_manager(extra_plugins=[("aug", AugmenterPlugin())])
    study = Search(_train_config(tmp_path, [{"name": "entropy", "options": {"weight": 0.05}}]), pm=pm).run()
    t = study.get_trials()[0]
    assert trial_state(t) == "complete"
    attrs = t.user_attrs
    for key in (
        "val_acc",
        "test_acc",
        "n_params",
        "macs",
        "latency_ms_b1",
        "latency_ms_b8",
        "latency_device",
        "compression_factor",
        "seed",
        "wall_clock_s",
        "val_acc_curve",
        "epochs",
        "train_seconds",
    ):
        assert key in attrs, key
    assert set(attrs["loss_terms"]) == {"ce", "neg_entropy", "total"}
    assert attrs["augmenters"] == [{"name": "entropy", "options": {"weight": 0.05}}]
    assert len(attrs["val_acc_curve"]) == 2 and attrs["val_acc"] == attrs["val_acc_curve"][-1]
    assert list(t.intermediate_values) == [0, 1]  # per-epoch validation accuracy, for pruners


def test_nan_loss_fails_the_trial_with_the_reason(tmp_path: Path) -> None:
    pm = get_plugin_manager(extra_plugins=[("aug", AugmenterPlugin())])
    search = Search(_train_config(tmp_path, [{"name": "exploding"}]), pm=pm)
    with pytest.raises(NoTrialCompleted, match="the most common reason"):  # its only trial diverged
        search.run(n_trials=1)
    t = search.study.get_trials()[0]
    assert trial_state(t) == "failed"
    assert t.user_attrs["fail_reason"].startswith("TrainingDiverged: loss is nan at epoch 0 step 0 (ce=")


def test_metrics_count_and_time_a_model() -> None:
    space = _space()
    params = space.sample(random.Random(1))
    model = space.build(params)
    assert count_params(model) == space.cost(params).params
    assert count_macs(model, (1, 28, 28)) == space.cost(params).macs
    lat = measure_latency(model, (1, 28, 28), torch.device("cpu"), batch_sizes=(1, 4), repeats=3)
    assert lat["latency_ms_b1"] > 0 and lat["latency_ms_b4"] > 0 and "CPU" in lat["latency_device"]


def test_train_fraction_draws_a_fresh_stratified_subset_per_seed() -> None:
    """Monte Carlo runs: each seed trains on its own stratified 80 % of the training split, indices kept."""
    from automl_kd.distill.loop import training_subset

    data = load_data(DataConfig(train_size=1000, val_fraction=0.2, crop_padding=0, flip=False))
    a, b, again = (training_subset(data.train, 0.8, s) for s in (1, 2, 1))
    assert len(a) == len(b) == round(0.8 * len(data.train))
    assert torch.equal(a.index, again.index)  # same seed, same subset
    assert not torch.equal(a.index, b.index)  # another seed, another subset
    full = torch.bincount(data.train.y, minlength=10).float()
    assert torch.allclose(torch.bincount(a.y, minlength=10).float(), 0.8 * full, atol=1.0)
    rows = {int(i): r for r, i in enumerate(data.train.index)}
    for i, y in zip(a.index[:50].tolist(), a.y[:50].tolist(), strict=True):
        assert int(data.train.y[rows[i]]) == y  # each row keeps its dataset index (caches stay aligned)
    assert training_subset(data.train, 1.0, 3) is data.train
    settings = TrainSettings(epochs=1, batch_size=50, crop_padding=0, flip=False, train_fraction=0.5)
    result = train_student(_space().build(_space().sample(random.Random(0))), data, settings, seed=0)
    assert result.steps == 8  # 400 of the 800 training images, batches of 50
    with pytest.raises(ValueError, match="train_fraction"):
        training_subset(data.train, 0.0, 0)


def test_momentum_and_eval_batch_size_are_train_evaluator_options_that_reach_the_optimizer(
    tmp_path: Path,
) -> None:
    """Every training setting is a field of TrainSettings and so a `train` evaluator option from a config."""
    from automl_kd import TrialContext
    from automl_kd.distill.loop import make_optimizer
    from automl_kd.distill.plan import TrialPlan

    path = tmp_path / "momentum.yaml"
    path.write_text(
        "evaluator: {name: train, options: {optimizer: sgd, momentum: 0.8, eval_batch_size: 64, epochs: 1}}\n"
        "data: {crop_padding: 0, flip: false}\nprecision: bf16\n"
    )
    cfg = load_config(path)
    evaluator = get_plugin_manager().evaluators.create(cfg.evaluator.name, cfg.evaluator.options)
    resources = {"data_config": cfg.data, "precision": cfg.precision}
    context = TrialContext(0, 5, torch.device("cpu"), tmp_path, _space(), resource=resources.get)
    plan = evaluator.plan(context)
    assert (plan.seed, plan.device, plan.dtype, plan.precision) == (
        5,
        torch.device("cpu"),
        torch.bfloat16,
        "bf16",
    )
    assert plan.settings.eval_batch_size == 64 and not plan.settings.flip and plan.settings.crop_padding == 0
    optimizer = make_optimizer(_space().build(_space().sample(random.Random(0))), plan.settings)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["momentum"] == 0.8
    # finalize and the CE-alone baseline retrain with the very plan the trial had (finalize: longer)
    assert TrialPlan.for_config(cfg, seed=5, device=torch.device("cpu")) == plan
    longer = plan.with_settings(epochs=10)
    assert longer.settings.momentum == 0.8 and longer.dtype is torch.bfloat16 and longer.settings.epochs == 10
    with pytest.raises(ValueError, match="precision"):
        plan.with_settings(precision="fp32")


def test_train_evaluator_options_are_checked_in_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from fault_support import assert_one_error, base_config, cli_in_process, write_yaml

    base = write_yaml(tmp_path / "base.yaml", base_config())
    for override, pattern in (
        ("evaluator.options.momentum=1.5", r"^error: evaluator 'train': momentum must be < 1 \(got 1\.5\)$"),
        (
            "evaluator.options.eval_batch_size=0",
            r"^error: evaluator 'train': eval_batch_size must be >= 1 \(got 0\)$",
        ),
        (
            "evaluator.options.momentom=0.8",
            r"^error: evaluator 'train' options: unknown option 'momentom'; allowed: ",
        ),
        ("evaluator.options.flip=true", r"unknown option 'flip'; allowed: .*momentum"),  # data.flip sets it
    ):
        res = cli_in_process(
            "run", str(base), "--run-dir", str(tmp_path / "run"), "--set", override, cwd=tmp_path, capfd=capfd
        )
        assert_one_error(res, 2, pattern)


def test_train_evaluator_options_are_the_train_settings_and_docs_list_each_once() -> None:
    """The options come from TrainSettings' fields (not a hand-written signature); docs/config.md's table of them
    names each option once, with TrainSettings' default."""
    from automl_kd.distill.settings import HOST_SET
    from automl_kd.options import option_fields
    from automl_kd.plugins.evaluators.train import TrainEvaluator

    fields = option_fields(TrainEvaluator)
    settings = {k: f.default for k, f in TrainSettings.model_fields.items() if k not in HOST_SET}
    assert {k: fields[k][1] for k in settings} == settings
    assert set(fields) == set(settings) | {"latency", "latency_batch_sizes"}
    text = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    table = text.split("## `train` evaluator options", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert sorted(row.split("`")[1] for row in rows) == sorted(fields)  # each option once
    for name, field in TrainSettings.model_fields.items():
        if name not in HOST_SET:  # the settings' rows are their declaration: default and description
            d = field.default
            default = "none" if d is None else f"`{d}`" if isinstance(d, str) else str(d)
            assert f"| `{name}` | {default} | {field.description} |" in rows, name


def test_a_trial_resolves_its_precision_once_per_network() -> None:
    """`precision: auto` on a CPU with fast bf16 kernels looks at the network once (a hooked batch-1 forward);
    the training loop and every accuracy pass read the plan instead."""
    from automl_kd.distill.fit import fit
    from automl_kd.distill.plan import TrialPlan
    from automl_kd.precision import network_decides

    data = load_data(DataConfig(train_size=200, val_fraction=0.2, crop_padding=0, flip=False))
    probes: list[int] = []

    def build() -> torch.nn.Module:
        model = _space().build(_space().sample(random.Random(0)))
        model.register_forward_pre_hook(lambda _m, args: probes.append(1) if args[0].shape[0] == 1 else None)
        return model

    settings = TrainSettings(epochs=3, batch_size=50, crop_padding=0, flip=False, precision="auto")
    cpu = torch.device("cpu")
    plan = TrialPlan.make(settings, seed=0, device=cpu)
    assert plan.pending == network_decides("auto", cpu)
    fitted = fit(build, data, plan)
    assert len(probes) == (1 if plan.pending else 0) and not fitted.plan.pending
    assert fitted.result.precision == fitted.plan.precision
    assert TrainSettings().precision == load_config({}).precision  # one default


class _Draws(torch.nn.Module):
    """Records one draw of torch's global generator per training forward (what dropout draws from)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(float(torch.rand(())))
        return x


def _drawing_net() -> torch.nn.Module:
    return torch.nn.Sequential(_Draws(), torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))


def test_a_run_is_seeded_at_one_point() -> None:
    """fit seeds the global generators once, before the build; the training continues that stream (dropout's
    draws follow the initialisation's) and takes its batch order and augmentation draws from a generator of the
    plan's own. train_student on its own seeds at its start, once."""
    from automl_kd.distill.fit import fit
    from automl_kd.distill.plan import TrialPlan

    data = load_data(DataConfig(train_size=200, val_fraction=0.2, crop_padding=0, flip=False))
    settings = TrainSettings(epochs=1, batch_size=50, crop_padding=0, flip=False, precision="fp32")
    plan = TrialPlan.make(settings, seed=11, device=torch.device("cpu"))
    fitted = fit(_drawing_net, data, plan)
    seen = fitted.model[0].seen
    torch.manual_seed(11)
    _drawing_net()  # the build's draws (the linear layer's initialisation)
    assert seen == [float(torch.rand(())) for _ in seen] and len(seen) == 4
    assert fit(_drawing_net, data, plan).model[0].seen == seen  # the same seed, the same run
    alone = _drawing_net()
    train_student(alone, data, plan)
    torch.manual_seed(11)
    assert alone[0].seen == [float(torch.rand(())) for _ in alone[0].seen] != seen
