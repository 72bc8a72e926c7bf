"""Bad configs: one clear message naming the key, exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from automl_kd.cli import main
from automl_kd.config import load_config

BAD_CONFIGS = [
    # (yaml text, --set overrides, substring of the message)
    ("serch: {n_trials: 3}\n", [], "'serch' is unknown; allowed here: name, seed"),
    ("search: {n_trails: 3}\n", [], "'search.n_trails' is unknown; allowed here: proposer, n_trials"),
    ("search: {n_trials: 0}\n", [], "'search.n_trials': Input should be greater than or equal to 1"),
    ("search: {n_trials: many}\n", [], "'search.n_trials': Input should be a valid integer"),
    ("search: {pruner: sometimes}\n", [], "'search.pruner': Input should be 'none', 'median' or 'hyperband'"),
    ("search: {objectives: [params]}\n", [], "the first objective must be val_acc"),
    ("search: {objectives: [val_acc, flops]}\n", [], "'search.objectives.1'"),
    ("search: {constraints: {macs: [300, 200]}}\n", [], "must be [low, high]"),
    ("search: {pruner: median, objectives: [val_acc, macs]}\n", [], "pruning works with a single objective"),
    ("search: {constraints: {max_params: -5}}\n", [], "'search.constraints.max_params'"),
    ("data: {dataset: mnist}\n", [], "'data.dataset': Input should be 'fashion-mnist', 'cifar10'"),
    ("data: {val_fraction: 1.5}\n", [], "'data.val_fraction': Input should be less than 0.9"),
    ("device: gpu\n", [], "'device': Value error, must be auto, cpu, cuda"),
    ("storage: {heartbeat_interval: 10, grace_period: 5}\n", [], "grace_period must be larger"),
    ("teacher: {}\n", [], "give exactly one of teacher.model"),
    ("name: 'has spaces'\n", [], "'name': String should match pattern"),
    ("space: {name: nope}\n", [], "unknown search space 'nope'; registered:"),
    ("search: {proposer: {name: gpt5}}\n", [], "unknown proposer 'gpt5'"),
    ("evaluator: {name: train, options: {epoch: 3}}\n", [], "unknown option 'epoch'; allowed: "),
    (
        "evaluator: {name: train, options: {epochs: three}}\n",
        [],
        "evaluator 'train' options.epochs: Input should",
    ),
    (
        "evaluator: {name: train, options: {optimizer: lion}}\n",
        [],
        "options.optimizer: Input should be 'adam'",
    ),
    ("space: {name: mbv2, options: {widths: wide}}\n", [], "space 'mbv2' options.widths"),
    ("search: {proposer: {name: optuna, options: {sampler: bogus}}}\n", [], "sampler 'bogus'"),
    ("- just\n- a list\n", [], "must hold a mapping at the top level"),
    ("search: {n_trials: [\n", [], "is not valid YAML"),
    ("{}\n", ["search.n_trials"], "expected KEY=VALUE"),
    ("{}\n", ["search.n_trials=-1"], "'search.n_trials': Input should be greater than or equal to 1"),
    ("search: {n_trials: 3}\n", ["search.n_trials.x=1"], "'n_trials' is not a mapping"),
]


@pytest.mark.parametrize(("text", "overrides", "message"), BAD_CONFIGS)
def test_bad_config_gives_one_clear_message_and_exit_2(
    text: str, overrides: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    args = ["run", str(path), "--run-dir", str(tmp_path / "run")]
    for o in overrides:
        args += ["--set", o]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert err.count("\n") == 1  # one line


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_overrides_parse_yaml_values() -> None:
    cfg = load_config(
        {"search": {"n_trials": 3}},
        ["search.n_trials=6", "data.flip=false", "search.constraints.macs=[1e6, 2e6]"],
    )
    assert cfg.search.n_trials == 6
    assert cfg.data.flip is False
    assert cfg.search.constraints.macs == (1e6, 2e6)


def test_example_configs_are_valid() -> None:
    from automl_kd.cli import demo_config_path

    for path in [
        demo_config_path(),
        *sorted((Path(__file__).parents[1] / "examples" / "configs").glob("*.yaml")),
    ]:
        load_config(path)
