"""The shape of the package: no import cycle, the public API, the plugin list, hooks through pluggy, outcomes,
the command hook, and one training path that is reproducible from its seed."""

from __future__ import annotations

import ast
import importlib
import io
import json
import pkgutil
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import REPO, FormulaPlugin, small_mbv2_options

import automl_kd
from automl_kd import Search, TrialOutcome, get_plugin_manager, hookimpl, load_config
from automl_kd.cli import main
from automl_kd.compare import BENCHMARKS, BenchmarkSpec, benchmarks_of
from automl_kd.config import default_run_dir
from automl_kd.engine.outcome import is_finished
from automl_kd.manager import BUILTIN_PLUGINS
from automl_kd.options import host_arguments

SRC = REPO / "src" / "automl_kd"

#: ``automl_kd.__all__`` before the core became subpackages: every name must stay importable from the top
PUBLIC_API = [
    "Augmenter",
    "AutomlKdError",
    "BudgetExhausted",
    "Candidate",
    "CandidateRejected",
    "Config",
    "ConfigError",
    "Constraints",
    "Cost",
    "DataError",
    "Evaluator",
    "HistoryEntry",
    "InfeasibleCandidate",
    "InvalidCandidate",
    "LLMSampler",
    "Outputs",
    "PluginError",
    "PluginManager",
    "PrepareContext",
    "Proposer",
    "ProposerSampler",
    "Search",
    "SearchSpace",
    "StepBatch",
    "TrialContext",
    "__version__",
    "get_plugin_manager",
    "hookimpl",
    "load_config",
]


# -- the import graph -------------------------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str, modules: set[str]) -> Iterator[str]:
    """Every automl_kd module ``path`` imports, at module level or inside functions (TYPE_CHECKING blocks
    excepted: they never run). ``from a import b`` is an import of ``a.b`` when that is a module."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        yield from (t for t in targets if t in modules and t != name)


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(files)
    return {name: set(_imports(path, name, modules)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_of_src_has_no_cycle() -> None:
    graph = import_graph()
    assert graph.get("automl_kd.engine.search")
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# -- public API -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PUBLIC_API)
def test_every_public_name_of_before_still_imports(name: str) -> None:
    if name == "LLMSampler":
        pytest.importorskip("openai")
    assert name in automl_kd.__all__
    assert getattr(automl_kd, name) is not None


def test_user_facing_errors_are_exported() -> None:
    for name in (
        "TrainingDiverged",
        "StorageUnavailable",
        "TrialInterrupted",
        "CacheError",
        "UnknownNameError",
    ):
        assert name in automl_kd.__all__ and issubclass(getattr(automl_kd, name), automl_kd.AutomlKdError)


# -- plugins ----------------------------------------------------------------------------------------------------
def test_every_builtin_plugin_module_is_listed() -> None:
    pkg = importlib.import_module("automl_kd.plugins")
    with_hooks = set()
    for info in pkgutil.walk_packages(pkg.__path__, prefix="automl_kd.plugins."):
        module = importlib.import_module(info.name)
        if any(getattr(getattr(module, a), "automl_kd_impl", None) is not None for a in dir(module)):
            with_hooks.add(info.name)
    assert with_hooks == set(BUILTIN_PLUGINS)


class Wrapping:
    """A hook wrapper around every ``register_search_spaces`` call, and a plugin whose hook fails."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl(wrapper=True)
    def register_search_spaces(self, register: Any) -> Any:
        self.seen.append("before")
        try:
            return (yield)
        finally:  # the broken plugin's call raises through the wrapper
            self.seen.append("after")


class Broken:
    @hookimpl
    def register_search_spaces(self, register: Any) -> None:
        raise RuntimeError("broken on purpose")


def test_hooks_run_through_pluggy_so_wrappers_apply_and_a_failure_stays_its_own() -> None:
    wrapper = Wrapping()
    pm = get_plugin_manager(entry_points=False, extra_plugins=[("wrapper", wrapper), ("broken", Broken())])
    spaces_plugins = [i for i in pm.pm.hook.register_search_spaces.get_hookimpls() if not i.wrapper]
    assert wrapper.seen == ["before", "after"] * len(spaces_plugins)
    assert {"mbv2", "paper-truncated"} <= set(pm.spaces.names())
    (failure,) = [f for f in pm.errors if f.name == "broken"]
    assert "register_search_spaces raised RuntimeError: broken on purpose" in failure.error


def test_host_arguments_are_injected_in_one_place() -> None:
    # the one site: host_arguments is called by options.create and nowhere else in the package
    callers = [
        f"{path.relative_to(SRC)}:{node.lineno}"
        for path in sorted(SRC.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "host_arguments"
    ]
    assert len(callers) == 1 and callers[0].startswith("options.py:"), callers
    # and no plugin factory is called with arguments around it (where host arguments would be passed by hand)
    factory_calls = [
        f"{path.relative_to(SRC)}:{node.lineno}"
        for path in sorted(SRC.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", None) == "factory"
        and (node.args or node.keywords)
    ]
    assert all(c.startswith("options.py:") for c in factory_calls), factory_calls

    def factory(space: Any, seed: int, depth: int = 1) -> None: ...

    def open_factory(**kwargs: Any) -> None: ...

    host = {"space": "S", "seed": 3, "directions": ["maximize"]}
    assert host_arguments(factory, host, {}) == {"space": "S", "seed": 3}
    assert host_arguments(open_factory, host, {"seed": 9}) == {"space": "S", "directions": ["maximize"]}


class TableBench:
    @hookimpl
    def register_benchmarks(self, register: Any) -> None:
        register("tiny-bench", lambda: BenchmarkSpec("tiny-bench", "mbv2", "synthetic"))


class Hello:
    @hookimpl
    def register_commands(self, cli: Any) -> None:
        sp = cli.add_parser("hello", help="say hello")
        sp.add_argument("--name", default="world")
        sp.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)


def test_benchmarks_come_from_plugins() -> None:
    pm = get_plugin_manager(extra_plugins=[("bench", TableBench())])
    specs = benchmarks_of(pm)
    assert specs["tiny-bench"].evaluator == "synthetic"
    assert {"nasbench-macro", "nb201-cifar10"} <= set(specs) and set(BENCHMARKS) >= {"nasbench-macro"}
    assert (
        specs["nasbench-macro"].path_argument == "macro_path"
    )  # --macro-path is the plugin's, not the core's


def test_a_plugin_adds_a_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = get_plugin_manager
    monkeypatch.setattr(
        "automl_kd.cli.common.get_plugin_manager",
        lambda **kw: real(**kw, extra_plugins=[("hello", Hello())]),
    )
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["hello", "--name", "plugin"]) == 0
    assert out.getvalue().strip() == "hello plugin"


def test_the_nasbench_plugin_adds_its_own_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nasbench", "benchmarks", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"nasbench-macro", "nb201-cifar10"} <= {r["name"] for r in rows}


def test_a_command_name_already_taken_is_a_plugin_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Clash:
        @hookimpl
        def register_commands(self, cli: Any) -> None:
            cli.add_parser("run", help="taken")

    real = get_plugin_manager
    monkeypatch.setattr(
        "automl_kd.cli.common.get_plugin_manager", lambda **kw: real(**kw, extra_plugins=[("clash", Clash())])
    )
    from automl_kd.cli import build_parser

    parser = build_parser([])  # no command yet (usage, help): every plugin's commands are loaded
    args = parser.parse_args(["plugins"])
    assert any(f.name == "clash" and "register_commands" in f.error for f in args._pm.errors)


# -- outcomes and run directories -------------------------------------------------------------------------------
def test_trial_outcome_is_one_enum_read_back_from_storage(tmp_path: Path) -> None:
    plugin = FormulaPlugin()
    pm = get_plugin_manager(extra_plugins=[("formula", plugin)])
    cfg = load_config(
        {
            "name": "outcomes",
            "run_dir": str(tmp_path / "run"),
            "space": {"name": "mbv2", "options": small_mbv2_options()},
            "evaluator": {"name": "formula"},
            "search": {"n_trials": 3, "proposer": {"name": "random"}, "constraints": {"max_params": 6000}},
        }
    )
    study = Search(cfg, pm=pm).run()
    outcomes = {TrialOutcome.of(t) for t in study.get_trials()}
    assert outcomes <= {TrialOutcome.COMPLETE, TrialOutcome.REJECTED} and outcomes
    for t in study.get_trials():
        assert t.user_attrs["outcome"] == TrialOutcome.of(t) and is_finished(t)
    failed = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={})
    assert TrialOutcome.of(failed) == "interrupted" and not is_finished(failed)


def test_run_and_show_agree_on_the_default_run_directory() -> None:
    assert load_config({"name": "abc"}).resolved_run_dir == default_run_dir("abc") == Path("runs/abc")
    assert load_config({}).resolved_run_dir == default_run_dir(None) == Path("runs/automl-kd")


# -- one training path, reproducible ----------------------------------------------------------------------------
def test_the_same_trial_twice_gives_identical_metrics_on_the_cpu(tmp_path: Path) -> None:
    def once(run: str) -> optuna.trial.FrozenTrial:
        cfg = load_config(
            {
                "name": "seeded",
                "device": "cpu",
                "seed": 5,
                "run_dir": str(tmp_path / run),
                "data": {"train_size": 200, "test_size": 50, "val_fraction": 0.2},
                "space": {"name": "mbv2", "options": small_mbv2_options()},
                "search": {"n_trials": 1, "proposer": {"name": "random"}},
                "evaluator": {
                    "name": "train",
                    "options": {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 3, "latency": False},
                },
            }
        )
        (trial,) = Search(cfg).run().get_trials()
        return trial

    a, b = once("a"), once("b")
    assert a.params == b.params and a.user_attrs["seed"] == b.user_attrs["seed"]
    assert a.user_attrs["val_acc"] == b.user_attrs["val_acc"]
    assert a.user_attrs["loss_terms"] == b.user_attrs["loss_terms"]
    assert a.user_attrs["test_acc"] == b.user_attrs["test_acc"]
