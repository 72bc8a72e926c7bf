"""A bounded fuzz of the config loader: random mutations of examples/configs/*.yaml.

Each mutation (a wrong type, a deleted or added key, a huge or negative number, an odd string, or a damaged line
of the YAML text) goes through the command line's own entry point, ``automl-kd check CONFIG``, in this process so
that a few hundred cases take seconds: the outcome is either a valid config (exit 0) or exit 2 with one
``error:`` line; an exception escaping ``main`` is the traceback a user would see. A few mutations that pass the
check are then run for real, with a tiny budget, in a subprocess.
"""

from __future__ import annotations

import copy
import math
import random
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import REPO
from fault_support import Result, assert_no_traceback, cli, error_lines

from automl_kd.cli import main

EXAMPLES = sorted((REPO / "examples" / "configs").glob("*.yaml"))
SEED = 20261202
COUNT = 240
SECONDS = 40.0

ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "é☃\u202e",
    "../..",
    "/",
    "a" * 3000,
    "{x}",
    "%s%n",
    "-1",
    "1e999",
    "nan",
    "yes",
    "cuda:99",
    "sqlite://",
    "${HOME}",
]
ODD_VALUES: list[Any] = [
    *ODD_STRINGS,
    0,
    -1,
    -(10**9),
    10**30,
    2**63,
    1e308,
    -1e-308,
    math.inf,
    -math.inf,
    math.nan,
    0.5,
    True,
    False,
    None,
    [],
    {},
    [1, 2, 3],
    [[1, 2]],
    {"x": 1},
    {"search": []},
    {"low": 1, "high": 0},
]


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a nested dict/list tree."""
    out = [path] if path else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _nodes(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _nodes(v, (*path, i))
    return out


def _parent(tree: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        tree = tree[part]
    return tree


def mutate_tree(raw: dict[str, Any], rng: random.Random) -> tuple[str, str]:
    tree = copy.deepcopy(raw)
    path = rng.choice(_nodes(tree))
    parent, key = _parent(tree, path), path[-1]
    kind = rng.choice(["delete", "add", "replace", "replace", "replace", "wrap"])
    where = ".".join(map(str, path))
    if kind == "delete":
        del parent[key]
    elif kind == "add":
        target = parent if isinstance(parent, dict) else tree
        name = rng.choice(["extra", "Name", "n_trial", "options", "épsilon", "1", "search"])
        target[name] = rng.choice(ODD_VALUES)
        where = f"{where} (+{name})"
    elif kind == "wrap":
        parent[key] = [parent[key]] if rng.random() < 0.5 else {"value": parent[key]}
    else:
        parent[key] = rng.choice(ODD_VALUES)
    text = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)
    return f"{kind} {where}", text


def mutate_text(text: str, rng: random.Random) -> tuple[str, str]:
    lines = text.splitlines()
    i = rng.randrange(len(lines))
    kind = rng.choice(["truncate", "drop-line", "dup-line", "indent", "tab", "colon", "byte", "bracket"])
    if kind == "truncate":
        return kind, text[: rng.randrange(len(text))]
    if kind == "drop-line":
        del lines[i]
    elif kind == "dup-line":
        lines.insert(i, lines[i])
    elif kind == "indent":
        lines[i] = "   " + lines[i]
    elif kind == "tab":
        lines[i] = "\t" + lines[i]
    elif kind == "colon":
        lines[i] = lines[i].replace(":", "", 1)
    elif kind == "bracket":
        lines[i] = lines[i] + " ]["
    else:
        pos = rng.randrange(len(lines[i]) + 1)
        lines[i] = (
            lines[i][:pos]
            + chr(rng.choice([0, 7, 0xFEFF, 0xD7FF, 0x85, ord("&"), ord("*")]))
            + lines[i][pos:]
        )
    return f"{kind} line {i + 1}", "\n".join(lines) + "\n"


def mutations(n: int) -> list[tuple[Path, str, str]]:
    rng = random.Random(SEED)
    sources = [(p, p.read_text(), yaml.safe_load(p.read_text())) for p in EXAMPLES]
    out = []
    for _ in range(n):
        path, text, raw = rng.choice(sources)
        what, new = mutate_text(text, rng) if rng.random() < 0.3 else mutate_tree(raw, rng)
        out.append((path, what, new))
    return out


def check_in_process(path: Path, capfd: pytest.CaptureFixture[str]) -> Result:
    capfd.readouterr()
    t0 = time.monotonic()
    rc = main(["check", str(path)])
    out, err = capfd.readouterr()
    return Result(rc, out, err, time.monotonic() - t0)


def assert_valid_or_one_line(res: Result, what: str, text: str) -> None:
    context = f"mutation {what}:\n{text[:2000]}\n{res}"
    assert_no_traceback(res)
    assert res.rc in (0, 2), context
    lines = error_lines(res.err)
    if res.rc == 2:
        assert len(lines) == 1 and res.err.strip().splitlines()[-1] == lines[0], context
        assert "\n" not in lines[0] and len(lines[0]) < 600, context
    else:
        assert not lines, context


def test_example_configs_pass_the_check(capfd: pytest.CaptureFixture[str]) -> None:
    assert EXAMPLES, "no example configs"
    for path in EXAMPLES:
        res = check_in_process(path, capfd)
        assert res.rc == 0, res


def test_mutated_configs_are_valid_or_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    deadline = time.monotonic() + SECONDS
    outcomes = {0: 0, 2: 0}
    for i, (source, what, text) in enumerate(mutations(COUNT)):
        if time.monotonic() > deadline:
            break
        path = tmp_path / f"m{i:03d}-{source.name}"
        path.write_text(text)
        try:
            res = check_in_process(path, capfd)
        except BaseException as exc:  # what a user would see as a traceback
            pytest.fail(f"mutation {what} of {source.name} raised {type(exc).__name__}: {exc}\n{text[:2000]}")
        assert_valid_or_one_line(res, f"{what} of {source.name}", text)
        outcomes[res.rc] += 1
        path.unlink()
    done = sum(outcomes.values())
    assert done >= 60, f"only {done} mutations checked in {SECONDS:.0f} s"
    assert outcomes[0] and outcomes[2], outcomes  # the mutations reach both outcomes
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the check wrote files"


@pytest.mark.slow
def test_mutations_that_pass_the_check_also_run(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A run of a config the check accepted runs: exit 0, no error line, its trial complete (tiny budget). An
    error at run time would be a config the check should have refused."""
    tiny = [
        "search.n_trials=1",
        "data.train_size=300",
        "data.test_size=100",
        "evaluator.options.epochs=1",
        "evaluator.options.max_steps_per_epoch=2",
    ]
    ran = 0
    for i, (source, what, text) in enumerate(mutations(COUNT)):
        if source.name != "quick.yaml" or ran >= 2:
            continue
        path = tmp_path / f"m{i:03d}.yaml"
        path.write_text(text)
        if check_in_process(path, capfd).rc != 0:
            continue
        sets = [a for s in tiny for a in ("--set", s)]
        run = tmp_path / f"r{i}"
        res = cli("run", str(path), "--run-dir", str(run), *sets, cwd=tmp_path, timeout=120)
        context = f"mutation {what} of {source.name}:\n{text[:2000]}\n{res}"
        assert_no_traceback(res)
        assert res.rc == 0 and not error_lines(res.err), context
        url = f"sqlite:///{run / 'study.db'}"
        (summary,) = optuna.get_all_study_summaries(url)
        states = [t.state for t in optuna.load_study(study_name=summary.study_name, storage=url).trials]
        assert states == [optuna.trial.TrialState.COMPLETE], context
        ran += 1
    assert ran == 2
