"""Shared fixtures: a fast formula evaluator plugin, the repository paths, a clean environment."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from automl_kd import Evaluator, TrialContext, hookimpl
from automl_kd.space import Candidate

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
#: the NAS-Bench-Macro table (``AUTOML_KD_NASBENCH_MACRO`` points elsewhere)
MACRO_JSON = Path(
    os.environ.get("AUTOML_KD_NASBENCH_MACRO")
    or SHARED_DATA / "nas-bench-macro" / "nas-bench-macro_cifar10.json"
)


class FormulaEvaluator(Evaluator):
    """Scores a candidate by its analytic cost, instantly: bigger networks score higher, with diminishing returns.

    Reports ``epochs`` intermediate values so pruners have something to act on. ``fail_on`` makes every
    candidate whose encoded text contains that substring fail, for failure-path tests.
    """

    name = "formula"

    def __init__(self, epochs: int = 3, fail_on: str | None = None, sleep: float = 0.0) -> None:
        self.epochs, self.fail_on, self.sleep = epochs, fail_on, sleep
        self.calls = 0

    def evaluate(self, candidate: Candidate, context: TrialContext) -> dict[str, Any]:
        import time

        self.calls += 1
        if self.fail_on and self.fail_on in context.space.encode(candidate.params):
            raise RuntimeError(f"injected failure for {self.fail_on}")
        cost = context.space.cost(candidate.params)
        final = 100 * (1 - math.exp(-cost.params / 5e3))
        for epoch in range(self.epochs):
            time.sleep(self.sleep)
            context.report(epoch, final * (epoch + 1) / self.epochs)
        return {
            "val_acc": final,
            "test_acc": final - 1,
            "params": cost.params,
            "macs": cost.macs,
            "latency_ms_b1": cost.macs / 1e6,
        }


class FormulaPlugin:
    """Registers the ``formula`` evaluator; the instance keeps the evaluators it built (for call counts)."""

    def __init__(self) -> None:
        self.built: list[FormulaEvaluator] = []

    @hookimpl
    def register_evaluators(self, register: Any) -> None:
        def factory(epochs: int = 3, fail_on: str | None = None, sleep: float = 0.0) -> FormulaEvaluator:
            ev = FormulaEvaluator(epochs, fail_on, sleep)
            self.built.append(ev)
            return ev

        register("formula", factory, description="instant analytic score, for tests")


@pytest.fixture
def formula_plugin() -> FormulaPlugin:
    return FormulaPlugin()


@pytest.fixture
def pm(formula_plugin: FormulaPlugin) -> Any:
    from automl_kd import get_plugin_manager

    return get_plugin_manager(extra_plugins=[("tests-formula", formula_plugin)])


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # every test session gets its own artifact cache, never the user's
    if "AUTOML_KD_CACHE" not in os.environ:
        monkeypatch.setenv("AUTOML_KD_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("AUTOML_KD_DISABLE_PLUGINS", raising=False)


def small_mbv2_options() -> dict[str, Any]:
    return {
        "stem_stride": 2,
        "stem_channels": 8,
        "stages": [[8, 1, 1], [16, 2, 2], [24, 2, 1]],
        "widths": [0.5, 1.0],
        "ops": ["ir_k3_e1", "ir_k3_e3", "ir_k5_e3"],
        "head_channels": 32,
    }


@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL server (tests/pgserver.py) for the module's tests, removed afterwards."""
    from pgserver import PostgresServer

    server = PostgresServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """llama.cpp's server with SmolLM2-135M on a free loopback port, one per session (the real-model tests);
    skipped without the llm-local extra and the model, a failure with AUTOML_KD_REQUIRE_LLM_LOCAL=1."""
    from llm_local import REQUIRE_ENV, LlamaServer, missing

    reason = missing()
    if reason:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but the local LLM server cannot run: {reason}")
        pytest.skip(reason)
    log = tmp_path_factory.mktemp("llama") / "server.log"
    server = LlamaServer(n_ctx=4096, n_threads=1, log_path=log).start()
    try:
        yield server
    finally:
        server.stop()
    assert server.proc is None
