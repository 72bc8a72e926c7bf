"""One table writer: the compare report and the distillation benchmarks write their markdown tables with
automl_kd.compare.report.markdown_table, and docs/benchmarks.md shows what they write from the committed JSONs."""

from __future__ import annotations

import importlib.util
import json
import sys
from types import ModuleType

from conftest import REPO

from automl_kd.compare.report import markdown_report, markdown_table, pair_tests_table

RESULTS = REPO / "benchmarks" / "results"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_tables_{name}", REPO / "benchmarks" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_a_table_is_its_header_its_rule_and_its_rows() -> None:
    assert markdown_table(["a", "b"], [["1", "2"], ["3", "4"]]) == [
        "| a | b |",
        "|---|---|",
        "| 1 | 2 |",
        "| 3 | 4 |",
    ]
    test = {"at": 10, "a": "tpe", "b": "random", "median_a": 93.5, "median_b": 93.0, "U": 12.0, "p": 0.0123}
    lines = pair_tests_table([{**test, "p_holm": 0.0246, "a12": 0.71, "verdict": "a better"}])
    assert lines[0] == "| at | a vs b | median a | median b | U | p | p (Holm) | A12 | verdict |"
    assert lines[2] == "| 10 | tpe vs random | 93.50 | 93.00 | 12.0 | 0.0123 | 0.0246 | 0.71 | a better |"


def test_the_distillation_tables_in_the_docs_are_what_the_benchmarks_write() -> None:
    docs = set((REPO / "docs" / "benchmarks.md").read_text().splitlines())
    cifar = _script("distill_cifar10")
    ablation = _script("kd_ablation")
    written = _table_lines(cifar.markdown(cifar.load_result()))
    for scale in ("fmnist", "cifar10-jpeg"):
        written += _table_lines(ablation.markdown(RESULTS, scale))
    assert len(written) > 60
    assert [line for line in written if line not in docs] == []


def test_the_compare_report_writes_each_benchmark_table_and_its_tests() -> None:
    results = json.loads((RESULTS / "compare_proposers.json").read_text())
    text = markdown_report(results, {b: f"compare_proposers_{b}.png" for b in results["benchmarks"]})
    committed = (RESULTS / "compare_proposers.md").read_text()
    assert text in committed  # the LLM rows' section follows it in the committed file
    for bench, entry in results["benchmarks"].items():
        assert f"## {bench}" in text
        for line in pair_tests_table(entry["tests"])[2:]:
            assert line in text
