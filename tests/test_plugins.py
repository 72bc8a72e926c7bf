"""The plugin system: built-ins, entry points, blocking, duplicates, broken plugins, the hook docs."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from automl_kd import get_plugin_manager, hookimpl, hookspecs
from automl_kd.cli import main
from automl_kd.errors import DuplicateNameError, UnknownNameError
from automl_kd.registry import Registry

BUILTINS = {
    "spaces": {"mbv2", "paper-truncated"},
    "proposers": {"random", "optuna", "evolution", "screen"},
    "evaluators": {"train"},
}


def test_builtins_are_registered_like_any_plugin() -> None:
    pm = get_plugin_manager(entry_points=False)
    assert BUILTINS["spaces"] <= set(pm.spaces.names())
    assert BUILTINS["proposers"] <= set(pm.proposers.names())
    assert BUILTINS["evaluators"] <= set(pm.evaluators.names())
    assert pm.spaces.get("mbv2").plugin == "automl_kd.plugins.spaces.mbv2"
    assert not pm.errors, [f.message() for f in pm.errors]


def test_registry_refuses_duplicates_naming_both_plugins() -> None:
    reg: Registry[Any] = Registry("proposer")
    reg._set_current_plugin("first-plugin")
    reg("dup", dict)
    reg._set_current_plugin("second-plugin")
    with pytest.raises(
        DuplicateNameError,
        match="proposer 'dup' is registered twice: by 'first-plugin' and by 'second-plugin'",
    ):
        reg("dup", dict)
    with pytest.raises(DuplicateNameError, match="invalid proposer name"):
        reg("Bad Name", dict)
    with pytest.raises(UnknownNameError, match="unknown proposer 'nope'; registered: dup"):
        reg.get("nope")


def test_a_duplicate_from_another_plugin_is_an_error_and_the_first_stays() -> None:
    class Clash:
        @hookimpl
        def register_search_spaces(self, register: Any) -> None:
            register("mbv2", dict)

    pm = get_plugin_manager(entry_points=False, extra_plugins=[("clash", Clash())])
    assert pm.spaces.get("mbv2").plugin == "automl_kd.plugins.spaces.mbv2"
    assert any(f.name == "clash" and "registered twice" in f.error for f in pm.errors)


def test_blocking_by_argument_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    pm = get_plugin_manager(disable=["automl_kd.plugins.proposers.evolution"], entry_points=False)
    assert "evolution" not in pm.proposers and "random" in pm.proposers
    monkeypatch.setenv(
        "AUTOML_KD_DISABLE_PLUGINS", "automl_kd.plugins.proposers.random, automl_kd.plugins.spaces.mbv2"
    )
    pm = get_plugin_manager(entry_points=False)
    assert "random" not in pm.proposers and "mbv2" not in pm.spaces and "evolution" in pm.proposers


def test_cli_flag_blocks_a_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--disable-plugin", "automl_kd.plugins.proposers.random", "plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "random" not in {p["name"] for p in data["proposers"]}


def test_hook_errors_and_misspelt_hooks_name_the_plugin_and_the_rest_works() -> None:
    class Raises:
        @hookimpl
        def register_proposers(self, register: Any) -> None:
            raise RuntimeError("boom")

    class Misspelt:
        @hookimpl
        def register_proposer(self, register: Any) -> None:  # missing 's'
            register("never", dict)

    pm = get_plugin_manager(
        entry_points=False, extra_plugins=[("raises", Raises()), ("misspelt", Misspelt())]
    )
    messages = [f.message() for f in pm.errors]
    assert any("plugin 'raises' failed: register_proposers raised RuntimeError: boom" in m for m in messages)
    assert any("plugin 'misspelt'" in m and "register_proposer" in m for m in messages)
    assert "random" in pm.proposers and "never" not in pm.proposers


def _fake_distribution(root: Path, dist: str, module: str, source: str) -> None:
    """A real installed distribution as importlib.metadata sees it: a dist-info folder with an entry point."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[automl_kd]\n{module} = {module}\n")


def test_a_plugin_that_fails_to_import_is_named_with_its_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_distribution(tmp_path, "automl-kd-broken", "broken_plugin", "raise ImportError('needs libfoo')\n")
    _fake_distribution(
        tmp_path,
        "automl-kd-fine",
        "fine_plugin",
        textwrap.dedent("""
        from automl_kd import hookimpl
        from automl_kd.plugins.proposers.random import random_sampler

        @hookimpl
        def register_proposers(register):
            register("fine-random", random_sampler)
    """),
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = get_plugin_manager()
    failure = next(f for f in pm.errors if f.name == "broken_plugin")
    assert failure.distribution == "automl-kd-broken"
    assert (
        failure.message()
        == "plugin 'broken_plugin' (distribution automl-kd-broken) failed: import failed: ImportError: needs libfoo"
    )
    assert "fine-random" in pm.proposers and pm.distribution_of("fine_plugin") == "automl-kd-fine"
    assert "mbv2" in pm.spaces


@pytest.mark.slow
def test_example_plugin_installs_and_is_discovered(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO / "examples" / "automl-kd-example-plugin"),
        ],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-m", "automl_kd.cli", "plugins", "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    spaces = {s["name"]: s for s in data["spaces"]}
    assert spaces["example-mlp"]["distribution"] == "automl-kd-example-plugin"
    assert "example-sweep" in {p["name"] for p in data["proposers"]}
    assert {"mbv2", "paper-truncated"} <= set(spaces)
    blocked = subprocess.run(
        [sys.executable, "-m", "automl_kd.cli", "plugins", "--json"],
        env={**env, "AUTOML_KD_DISABLE_PLUGINS": "example"},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "example-mlp" not in {s["name"] for s in json.loads(blocked.strip().splitlines()[-1])["spaces"]}


def hook_signatures() -> dict[str, str]:
    out = {}
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if hasattr(fn, "automl_kd_spec"):
            params = ", ".join(inspect.signature(fn).parameters)
            out[name] = f"{name}({params})"
    return out


def test_every_hook_is_documented_with_its_exact_signature() -> None:
    docs = (REPO / "docs" / "plugins.md").read_text()
    sigs = hook_signatures()
    assert set(sigs) == {
        "register_search_spaces",
        "register_proposers",
        "register_evaluators",
        "register_augmenters",
        "register_benchmarks",
        "register_commands",
        "on_trial_end",
    }
    for name, sig in sigs.items():
        assert sig in docs, f"docs/plugins.md lacks the signature {sig}"
        first_line = (getattr(hookspecs, name).__doc__ or "").strip().splitlines()[0]
        assert first_line, f"hook {name} has no docstring"


def test_every_hook_is_exercised_by_a_test() -> None:
    tests = "".join(p.read_text() for p in (REPO / "tests").glob("test_*.py"))
    for name in hook_signatures():
        assert f"def {name}(" in tests, f"no test implements hook {name}"


# -- what `automl-kd plugins` shows, and a disabled plugin's name in a config -------------------------------------
def _plugins_text(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], columns: int) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["--disable-plugin", "automl_kd.plugins.proposers.llm", "plugins"]) == 0
    return capsys.readouterr().out


def test_plugins_shows_the_names_disable_plugin_takes_whole_at_80_columns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _plugins_text(monkeypatch, capsys, 80)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    assert "--disable-plugin NAME" in lines[0]
    pm = get_plugin_manager()
    names = [*pm.infos, "automl_kd.plugins.proposers.llm"]
    assert "nasbench" in names  # the entry-point name of the plugin in plugins/, not its distribution's
    for name in names:  # each name whole at the start of its own line, as --disable-plugin takes it
        assert any(line.split()[:1] == [name] for line in lines), name
    assert "  automl_kd.plugins.proposers.llm  (built in, disabled)" in lines
    assert "  nasbench  (automl-kd-nasbench 0.1.0)" in lines
    # every registered name comes with its plugin's name, whole
    assert "plugin: automl_kd.plugins.augmenters.kd" in out and "plugin: nasbench" in out


def test_plugins_uses_a_wide_terminal_for_tables_that_cut_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _plugins_text(monkeypatch, capsys, 160)
    assert max(len(line) for line in out.splitlines()) <= 160
    row = next(line for line in out.splitlines() if line.startswith("│ kd "))
    assert "automl_kd.plugins.augmenters.kd" in row and "knowledge distillation" in row and "…" not in out


def test_plugins_json_lists_plugins_with_their_names_and_the_disabled_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--disable-plugin", "nasbench", "plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {p["name"]: p for p in data["plugins"]}
    assert rows["nasbench"]["disabled"] and rows["nasbench"]["distribution"] == "automl-kd-nasbench"
    kd = rows["automl_kd.plugins.augmenters.kd"]
    assert not kd["disabled"] and kd["registers"] == {"augmenters": ["kd"]} and kd["distribution"] is None


def test_a_name_from_a_disabled_plugin_says_the_plugin_is_disabled(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from fault_support import assert_one_error, cli_in_process, synthetic_config, write_yaml

    kd = synthetic_config("kd", 1)
    kd["augmenters"] = [{"name": "kd"}]
    write_yaml(tmp_path / "kd.yaml", kd)
    res = cli_in_process(
        "--disable-plugin", "automl_kd.plugins.augmenters.kd", "check", "kd.yaml", cwd=tmp_path, capfd=capfd
    )
    assert_one_error(
        res,
        2,
        r"augmenter 'kd' comes from plugin 'automl_kd.plugins.augmenters.kd' \(built in\), which is disabled "
        r"\(--disable-plugin or AUTOML_KD_DISABLE_PLUGINS\)",
    )
    # a third-party plugin, by its entry-point name; what it registers is read from it, whatever it is called
    nb = {**synthetic_config("nb", 1), "space": {"name": "nasbench201"}}
    write_yaml(tmp_path / "nb.yaml", nb)
    res = cli_in_process("--disable-plugin", "nasbench", "check", "nb.yaml", cwd=tmp_path, capfd=capfd)
    assert_one_error(
        res,
        2,
        r"search space 'nasbench201' comes from plugin 'nasbench' \(distribution automl-kd-nasbench\), ",
    )
    # a name nobody provides is still unknown
    write_yaml(tmp_path / "no.yaml", {**synthetic_config("no", 1), "space": {"name": "nosuch"}})
    res = cli_in_process("--disable-plugin", "nasbench", "check", "no.yaml", cwd=tmp_path, capfd=capfd)
    assert_one_error(res, 2, r"unknown search space 'nosuch'")


def test_a_disabled_plugin_that_fails_to_load_is_named_by_its_own_name() -> None:
    pm = get_plugin_manager(entry_points=False)
    pm.add_disabled("fancy-kd", "automl-kd-fancy", lambda: 1 / 0)
    with pytest.raises(
        UnknownNameError,
        match=r"augmenter 'fancy-kd' comes from plugin 'fancy-kd' \(distribution automl-kd-fancy\)",
    ):
        pm.augmenters.get("fancy-kd")
    with pytest.raises(UnknownNameError, match=r"^unknown augmenter 'other'"):
        pm.augmenters.get("other")


def test_a_disable_name_that_matches_no_plugin_is_a_warning_with_the_module_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="automl_kd"):
        pm = get_plugin_manager(disable=["kd", "nasbench"])
    assert "kd" in pm.augmenters and "nasbench" in pm.disabled
    warned = [r.getMessage() for r in caplog.records if "matches no plugin" in r.getMessage()]
    assert warned == [
        "--disable-plugin 'kd' matches no plugin (see automl-kd plugins); built-ins are named by module: "
        "automl_kd.plugins.augmenters.kd"
    ]
