"""The contract suites of automl_kd.testing, run over every registered plugin of each kind.

A plugin that needs options to be built gets them from OPTIONS; a new plugin without a working default fails here
until it is listed, so no registered plugin escapes the contracts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import MACRO_JSON

from automl_kd import get_plugin_manager
from automl_kd.config import DataConfig
from automl_kd.data import DATA_SHAPES
from automl_kd.distill.augmenter import Augmenter, StepBatch
from automl_kd.plugins.augmenters.kd import kd_loss
from automl_kd.space import SearchSpace
from automl_kd.testing import AugmenterContract, EvaluatorContract, ProposerContract, SearchSpaceContract

PM = get_plugin_manager()
MACRO = str(MACRO_JSON)

#: options for plugins that cannot be built from defaults alone (or whose defaults are too big for a unit test)
OPTIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("space", "mbv2"): {"stages": [[16, 1, 1], [24, 2, 2]], "head_channels": 64},
    ("evaluator", "train"): {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 3, "latency": False},
    ("evaluator", "nasbench-macro"): {"path": MACRO},
    # an endpoint that refuses every connection at once: after its initial population every child is the
    # classical mutation (the model's children are tested against a scripted and a real server in
    # tests/test_llm_evolution.py)
    ("proposer", "llm-evolution"): {
        "population": 4,
        "sample_size": 2,
        "llm": {"base_url": "http://127.0.0.1:9/v1", "max_retries": 0, "cache": "off"},
    },
    ("proposer", "screen"): {"proxy": "params", "k": 4},  # the toy space has a cost but builds no network
}
#: proposers whose contract runs elsewhere, with the reason
ELSEWHERE = {"llm": "needs an HTTP endpoint: tests/test_llm_*.py run the proposer against a local server"}


def _shape_kwargs(factory: Any) -> dict[str, Any]:
    from automl_kd.options import parameter_names

    names = parameter_names(factory)
    n, c, s = DATA_SHAPES["fashion-mnist"]
    return {k: v for k, v in {"num_classes": n, "in_chans": c, "input_size": s}.items() if k in names}


def make_space(name: str) -> SearchSpace:
    entry = PM.spaces.get(name)
    from automl_kd.options import build_with_options

    opts = OPTIONS.get(("space", name), {})
    host = {k: v for k, v in _shape_kwargs(entry.factory).items() if k not in opts}
    return build_with_options(entry, opts, "space", **host)  # type: ignore[no-any-return]


class TestEverySpace(SearchSpaceContract):
    @pytest.fixture(params=PM.spaces.names())
    def space(self, request: pytest.FixtureRequest) -> SearchSpace:
        return make_space(request.param)


class TestEveryProposer(ProposerContract):
    @pytest.fixture(params=PM.proposers.names())
    def proposer_factory(self, request: pytest.FixtureRequest) -> Callable[[SearchSpace, int], Any]:
        if request.param in ELSEWHERE:
            pytest.skip(ELSEWHERE[request.param])
        opts = OPTIONS.get(("proposer", request.param), {})
        return lambda space, seed: PM.proposers.create(
            request.param, opts, space=space, seed=seed, directions=["maximize"]
        )


def _evaluator_space(name: str) -> SearchSpace:
    # table evaluators score their own space; the train evaluator trains candidates of a small mbv2
    for space_name in (name, name.removesuffix("-permuted") + "-permuted"):
        if space_name in PM.spaces:
            return make_space(name)
    return make_space("mbv2")


@pytest.fixture(scope="module")
def tiny_data() -> Any:
    from automl_kd.data import load_data

    return load_data(DataConfig(train_size=200, test_size=100, val_fraction=0.25))


class TestEveryEvaluator(EvaluatorContract):
    @pytest.fixture(params=PM.evaluators.names())
    def name(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def evaluator(self, name: str) -> Any:
        return PM.evaluators.create(name, OPTIONS.get(("evaluator", name), {}))

    @pytest.fixture
    def space(self, name: str) -> SearchSpace:
        return _evaluator_space(name)

    @pytest.fixture
    def resources(self, evaluator: Any, tiny_data: Any) -> dict[str, Any]:
        if getattr(evaluator, "trains", False):
            return {"data": tiny_data, "data_config": DataConfig(), "cache": None, "teacher": None}
        return {}


class TestEveryAugmenter(AugmenterContract):
    @pytest.fixture(params=PM.augmenters.names())
    def augmenter(self, request: pytest.FixtureRequest) -> Any:
        aug = PM.augmenters.create(request.param, OPTIONS.get(("augmenter", request.param), {}))
        prepare = getattr(self, f"prepare_{request.param.replace('-', '_')}", None)
        if prepare:
            prepare(aug)
        return aug


def test_contract_suites_cover_every_kind() -> None:
    assert PM.spaces.names() and PM.proposers.names() and PM.evaluators.names()
    assert torch.__version__  # the suites run on the installed torch


class _ForgetsTheFlag(Augmenter):
    """A loss-only augmenter that reads the teacher's logits but does not declare ``needs_teacher_logits``."""

    name = "forgets-the-flag"

    def losses(self, batch: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
        return {"soft": (0.5, kd_loss(batch.student.logits, batch.teacher.logits, 4.0))}  # type: ignore[union-attr]


class _GuardsButForgetsTheFlag(_ForgetsTheFlag):
    """Checks for the teacher the way the built-in kd does, but still without the flag."""

    name = "guards-but-forgets-the-flag"

    def losses(self, batch: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
        if batch.teacher is None:
            raise ValueError("this augmenter needs a teacher; set `teacher:` in the config")
        return super().losses(batch)


class _DeclaresTheFlag(_ForgetsTheFlag):
    name = "declares-the-flag"
    needs_teacher_logits = True


def _tiny_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 3]), torch.arange(4)


@pytest.mark.parametrize("broken", [_ForgetsTheFlag, _GuardsButForgetsTheFlag])
@pytest.mark.parametrize(
    "check", ["test_losses_are_named_finite_scalars", "test_reads_only_the_teacher_outputs_it_declares"]
)
def test_the_augmenter_contract_fails_without_the_teacher_flag(broken: type[Augmenter], check: str) -> None:
    """The suite hands ``losses`` a teacher only where the augmenter declares one, as a real run does, and says
    which declaration is missing."""
    with pytest.raises(pytest.fail.Exception, match=r"set `needs_teacher_logits = True` on the class"):
        getattr(AugmenterContract(), check)(broken(), _tiny_batch())


def test_the_augmenter_contract_passes_with_the_teacher_flag() -> None:
    suite = AugmenterContract()
    suite.test_losses_are_named_finite_scalars(_DeclaresTheFlag(), _tiny_batch())
    with pytest.raises(pytest.skip.Exception, match="declares the teacher outputs"):
        suite.test_reads_only_the_teacher_outputs_it_declares(_DeclaresTheFlag(), _tiny_batch())
