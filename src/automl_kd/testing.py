"""Contract test suites for plugin authors (in the style of ``optuna.testing``).

Subclass a suite in your own tests and supply its fixture; every built-in plugin runs the same suites in
automl-kd's own test-suite. Needs pytest (``pip install "automl-kd[testing]"``).

Example::

    from automl_kd.testing import SearchSpaceContract

    class TestMySpace(SearchSpaceContract):
        @pytest.fixture
        def space(self):
            return MySpace(num_classes=10, in_chans=3, input_size=32)
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from .distill.augmenter import Augmenter, Outputs, Progress, StepBatch, call_losses
from .errors import InvalidCandidate, PluginError
from .evaluator import Evaluator, TrialContext
from .metrics import count_macs, count_params
from .proposer import Proposer, ProposerSampler
from .space import Candidate, Cost, SearchSpace, suggest


class ToySpace(SearchSpace):
    """Three categorical parameters and one integer, no network: for proposer tests."""

    name = "toy"
    buildable = False

    def distributions(self) -> dict[str, BaseDistribution]:
        return {
            "a": CategoricalDistribution(["x", "y", "z"]),
            "b": CategoricalDistribution([1, 2, 3, 4]),
            "c": CategoricalDistribution(["skip", "conv3", "conv5"]),
            "d": IntDistribution(0, 7),
        }

    def cost(self, params: Any) -> Cost:
        return Cost(params=100 * params["b"] + params["d"], macs=1000 * params["b"])

    def score(self, params: dict[str, Any]) -> float:
        """A deterministic objective with a unique optimum (a=z, b=4, c=conv5, d=7)."""
        return (
            ["x", "y", "z"].index(params["a"])
            + params["b"]
            + ["skip", "conv3", "conv5"].index(params["c"])
            + params["d"] / 7
        )


class SearchSpaceContract:
    """What every search space must satisfy. Supply the ``space`` fixture."""

    @pytest.fixture
    def space(self) -> SearchSpace:
        raise NotImplementedError("override the `space` fixture")

    def test_distributions_are_fixed(self, space: SearchSpace) -> None:
        first, second = space.distributions(), space.distributions()
        assert first and list(first) == list(second) and first == second

    def test_samples_validate(self, space: SearchSpace) -> None:
        rng = random.Random(0)
        for _ in range(5):
            params = space.sample(rng)
            assert space.validate(params) == params
            assert Candidate.from_params(space.name, params).key() == space.candidate(params).key()

    def test_encode_decode_roundtrip(self, space: SearchSpace) -> None:
        rng = random.Random(1)
        for _ in range(5):
            params = space.sample(rng)
            text = space.encode(params)
            assert isinstance(text, str) and text
            assert space.decode(text) == params

    def test_text_form_is_encodes_output(self, space: SearchSpace) -> None:
        """A stated text form (``text_form()``) is exactly what ``encode`` writes and ``decode`` reads."""
        form = space.text_form()
        if form is None:
            return
        rng = random.Random(3)
        for _ in range(5):
            params = space.sample(rng)
            text = space.encode(params)
            values = form.split(text)
            assert values is not None and form.text(values) == text and len(text) <= form.max_length()
            assert re.fullmatch(form.pattern(), text) and space.decode(text) == params

    def test_describe_is_text(self, space: SearchSpace) -> None:
        text = space.describe()
        assert isinstance(text, str) and len(text) > 20

    def test_validate_names_the_bad_parameter(self, space: SearchSpace) -> None:
        params = space.sample(random.Random(2))
        with pytest.raises(InvalidCandidate, match="no_such_param"):
            space.validate({**params, "no_such_param": 1})
        key = next(iter(space.distributions()))
        with pytest.raises(InvalidCandidate, match=key):
            space.validate({**params, key: "<not a value>"})

    def test_cost_is_positive(self, space: SearchSpace) -> None:
        cost = space.cost(space.sample(random.Random(3)))
        assert isinstance(cost.params, int) and cost.params > 0
        assert isinstance(cost.macs, int) and cost.macs >= 0

    def test_build_agrees_with_cost(self, space: SearchSpace) -> None:
        if not space.buildable:
            pytest.skip(f"space {space.name!r} is a table-look-up space without build()")
        params = space.sample(random.Random(4))
        model = space.build(params)
        cost = space.cost(params)
        assert count_params(model) == cost.params
        in_chans, size = getattr(space, "in_chans", None), getattr(space, "input_size", None)
        if in_chans and size:
            traced = count_macs(model, (in_chans, size, size))
            assert abs(traced - cost.macs) <= 0.01 * max(traced, 1)


class ProposerContract:
    """What every proposer must satisfy. Supply ``proposer_factory(space, seed)``, returning a sampler or a
    :class:`Proposer`; the suite runs it on :class:`ToySpace`."""

    n_trials = 12

    @pytest.fixture
    def proposer_factory(self) -> Callable[[SearchSpace, int], Any]:
        raise NotImplementedError("override the `proposer_factory` fixture")

    @staticmethod
    def _run(factory: Callable[[SearchSpace, int], Any], seed: int, n: int) -> list[dict[str, Any]]:
        space = ToySpace()
        obj = factory(space, seed)
        sampler = ProposerSampler(obj, space, seed=seed) if isinstance(obj, Proposer) else obj
        study = optuna.create_study(direction="maximize", sampler=sampler)
        out = []
        for _ in range(n):
            trial = study.ask()
            params = {k: suggest(trial, k, d) for k, d in space.distributions().items()}
            study.tell(trial, space.score(params))
            out.append(params)
        return out

    def test_proposes_valid_candidates(self, proposer_factory: Callable[[SearchSpace, int], Any]) -> None:
        space = ToySpace()
        for params in self._run(proposer_factory, 0, self.n_trials):
            assert space.validate(params) == params

    def test_same_seed_same_candidates(self, proposer_factory: Callable[[SearchSpace, int], Any]) -> None:
        assert self._run(proposer_factory, 7, 6) == self._run(proposer_factory, 7, 6)


class EvaluatorContract:
    """What every evaluator must satisfy. Supply ``evaluator``, ``space`` and ``resources`` (a dict of the shared
    resources it needs, e.g. ``data`` and ``data_config`` for a training evaluator)."""

    @pytest.fixture
    def evaluator(self) -> Evaluator:
        raise NotImplementedError("override the `evaluator` fixture")

    @pytest.fixture
    def space(self) -> SearchSpace:
        raise NotImplementedError("override the `space` fixture")

    @pytest.fixture
    def resources(self) -> dict[str, Any]:
        return {}

    def test_returns_finite_val_acc(
        self, evaluator: Evaluator, space: SearchSpace, resources: dict[str, Any], tmp_path: Path
    ) -> None:
        reported: list[tuple[int, float]] = []
        recorded: dict[str, Any] = {}
        ctx = TrialContext(
            number=0,
            seed=0,
            device=torch.device("cpu"),
            run_dir=tmp_path,
            space=space,
            report=lambda s, v: reported.append((s, v)),
            record=recorded.__setitem__,
            resource=lambda name: resources.get(name),
        )
        params = space.sample(random.Random(0))
        metrics = evaluator.evaluate(space.candidate(params), ctx)
        assert math.isfinite(float(metrics["val_acc"]))
        assert 0.0 <= float(metrics["val_acc"]) <= 100.0
        for step, value in reported:
            assert isinstance(step, int) and math.isfinite(value)


class AugmenterContract:
    """What every augmenter must satisfy on a tiny batch. Supply ``augmenter`` (already prepared if it needs
    preparation) and optionally ``batch`` (x, y, index) and feature maps."""

    @pytest.fixture
    def augmenter(self) -> Augmenter:
        raise NotImplementedError("override the `augmenter` fixture")

    @pytest.fixture
    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        return torch.rand(4, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 3]), torch.arange(4)

    def test_transform_keeps_shape_and_range(
        self, augmenter: Augmenter, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> None:
        x, y, idx = batch
        out = augmenter.transform(x.clone(), idx, y, torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == x.dtype
        assert float(out.min()) >= -1e-6 and float(out.max()) <= 1 + 1e-6

    def test_task_weight_is_a_weight(self, augmenter: Augmenter) -> None:
        assert 0.0 <= augmenter.task_weight() <= 1.0

    @staticmethod
    def _step(
        augmenter: Augmenter, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], progress: Progress
    ) -> StepBatch:
        """A step as the training loop builds it: student logits with gradients, the teacher's logits and the
        declared features (the training loop hides them from an augmenter that declares none)."""
        x, y, idx = batch
        g = torch.Generator().manual_seed(1)
        feats = {n: torch.randn(len(y), 8, 4, 4, generator=g) for n in augmenter.student_layers()}
        tfeats = {n: torch.randn(len(y), 16, 4, 4, generator=g) for n in augmenter.teacher_layers()}
        classes = max(10, int(y.max()) + 1)
        student = Outputs(torch.randn(len(y), classes, generator=g, requires_grad=True), feats)
        teacher = Outputs(torch.randn(len(y), classes, generator=g), tfeats)
        return StepBatch(x, y, idx, student, teacher, progress)

    def test_losses_are_named_finite_scalars(
        self, augmenter: Augmenter, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> None:
        """At the first, a middle and the last step of a run (a warm-up must not break a term)."""
        epochs, per_epoch = 30, 5
        for step in (0, epochs * per_epoch // 2, epochs * per_epoch - 1):
            progress = Progress(epoch=step // per_epoch, epochs=epochs, step=step, steps_per_epoch=per_epoch)
            terms = self._call_losses(augmenter, self._step(augmenter, batch, progress))
            for name, (weight, value) in terms.items():
                assert isinstance(name, str) and name != "ce"
                assert isinstance(weight, float | int) and weight >= 0
                assert value.dim() == 0 and torch.isfinite(value)

    def test_reads_only_the_teacher_outputs_it_declares(
        self, augmenter: Augmenter, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> None:
        """An augmenter that declares neither ``needs_teacher_logits`` nor ``teacher_layers()`` gets
        ``batch.teacher = None`` in a real run, whatever the other augmenters need; its ``losses`` must work so."""
        if augmenter.needs_teacher():
            pytest.skip(f"augmenter {augmenter.name!r} declares the teacher outputs it reads")
        self._call_losses(augmenter, self._step(augmenter, batch, Progress()))

    @staticmethod
    def _call_losses(augmenter: Augmenter, step: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
        try:
            return call_losses(augmenter, step)
        except PluginError as exc:  # call_losses names the missing declaration
            pytest.fail(str(exc), pytrace=False)
        except Exception as exc:
            if augmenter.needs_teacher():
                raise
            pytest.fail(
                f"augmenter {augmenter.name!r} declares no teacher outputs (needs_teacher_logits = False, "
                f"teacher_layers() empty), so its losses() gets batch.teacher = None, and it raised "
                f"{type(exc).__name__}: {exc}. If it reads the teacher's logits, set `needs_teacher_logits = "
                "True` on the class; if it reads teacher features, return their layers from teacher_layers()",
                pytrace=False,
            )

    def test_views_drawn_keeps_the_views_replayable(
        self, augmenter: Augmenter, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> None:
        """After ``views_drawn`` (the cached views' draws, given before the teacher runs on them), ``apply_view``
        of each view's draws still equals ``transform`` with the generator that drew them."""
        if augmenter.replay_key() is None:
            pytest.skip("not replayable: its teacher outputs are computed online")
        x, y, idx = batch
        seeds = (4, 5)
        draws = [augmenter.sample_view(idx, y, torch.Generator().manual_seed(s)) for s in seeds]
        if draws[0]:
            augmenter.views_drawn(idx, {k: torch.stack([d[k] for d in draws]) for k in draws[0]})
        for s, d in zip(seeds, draws, strict=True):
            direct = augmenter.transform(x.clone(), idx, y, torch.Generator().manual_seed(s))
            assert torch.equal(augmenter.apply_view(x.clone(), idx, y, d), direct)
