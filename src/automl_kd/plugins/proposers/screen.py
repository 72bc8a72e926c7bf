"""The ``screen`` proposer: any inner proposer draws ``k`` candidates, a zero-cost proxy ranks them, and only the
best-scoring one not evaluated yet goes to the real evaluator.

The wrapper is an Optuna sampler around another proposer, so one trial is still one real evaluation and
``n_trials`` counts real evaluations only. The ``k`` candidates of a trial come from the inner proposer with the
same history:

- an inner :class:`~automl_kd.proposer.Proposer` (evolution, llm) is asked once for ``k`` candidates
  (``propose(space, history, k)``);
- an inner Optuna sampler (random, tpe, gp, ...) is asked ``k`` times on a scratch in-memory study that holds
  copies of the real study's finished trials. Each ask sees the same finished trials (the scratch trials stay
  running and are dropped), so the ``k`` candidates are ``k`` draws from the sampler's current model.

Candidates that break the search's hard constraints are screened out first (unless none is left). Each candidate
is scored once per run (kept by architecture); the proxy's own artifact cache keeps the scores across runs. The
trial records ``screened`` (the candidates scored for it), ``screen_proxy_cpu_s`` (the CPU seconds of the scores it
needed that the run had not computed before; a score read from the artifact cache counts what its computation
cost) and ``screen_score`` (the chosen candidate's proxy score) as user attributes.

From Python the scorer is any callable ``candidate -> (score, cpu_seconds)``, higher is better, e.g. a look-up in
a table of precomputed scores (:class:`ScreeningSampler`, or the ``scorer`` argument of the factory).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from automl_kd.evaluator import TrialContext
from automl_kd.hookspecs import hookimpl
from automl_kd.plugins.evaluators.proxy import PROXIES, ProxyEvaluator, ProxyName
from automl_kd.proposer import ATTR_PROPOSER, ATTR_RATIONALE, Proposal, Proposer, history_from_trials
from automl_kd.space import Candidate, SearchSpace
from automl_kd.trial_attrs import SCREEN_PROXY_CPU_S as ATTR_PROXY_CPU_S
from automl_kd.trial_attrs import SCREEN_SCORE as ATTR_SCORE
from automl_kd.trial_attrs import SCREENED as ATTR_SCREENED

#: a candidate -> (its proxy score, higher is better; the CPU seconds the score cost)
Scorer = Callable[[Candidate], tuple[float, float]]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class ProxyScorer:
    """Scores a candidate with one proxy of the ``proxy`` evaluator (its code, its artifact cache) on a minibatch of
    the configured data's training split. ``params`` and ``macs`` are read from the space's analytic cost, with no
    network built and no data loaded. ``resource`` is the engine's shared resources (``"data"``, ``"cache"``)."""

    def __init__(
        self,
        space: SearchSpace,
        proxy: str = "naswot",
        batch_size: int = 64,
        seed: int = 0,
        resource: Callable[[str], Any] | None = None,
    ) -> None:
        self.space, self.proxy, self.resource = space, proxy, resource
        self.evaluator = ProxyEvaluator(proxy, batch_size=batch_size, seed=seed)  # type: ignore[arg-type]

    def __call__(self, candidate: Candidate) -> tuple[float, float]:
        if self.proxy in ("params", "macs"):
            c0 = time.process_time()
            cost = self.space.cost(candidate.params)
            return float(cost.params if self.proxy == "params" else cost.macs), time.process_time() - c0
        if self.resource is None:
            raise ValueError(f"the {self.proxy} proxy needs the configured data (pass resource= or a scorer)")
        data = self.resource("data")
        context = TrialContext(
            number=0,
            seed=self.evaluator.seed or 0,
            device=data.train.x.device,
            run_dir=Path("."),
            space=self.space,
            resource=self.resource,
        )
        rec = self.evaluator.evaluate(candidate, context)
        return float(rec["proxy_score"]), float(rec["proxy_cpu_s"])


def _rank(score: float) -> float:
    return score if not math.isnan(score) else -math.inf  # a score that is not a number ranks lowest


class ScreeningSampler(BaseSampler):
    """Screens ``k`` candidates of ``inner`` (an Optuna sampler or a :class:`Proposer`) by ``scorer`` per trial.

    ``constraints`` (anything with ``check(cost) -> reason | None``, e.g. the engine's hard constraints) screens
    out candidates that would be rejected, while any candidate is left. ``name`` is what trials record as their
    proposer.
    """

    def __init__(
        self,
        inner: BaseSampler | Proposer,
        space: SearchSpace,
        scorer: Scorer,
        k: int = 10,
        seed: int | None = None,
        constraints: Any = None,
        name: str | None = None,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1 (got {k!r})")
        self.space, self.scorer, self.k, self.constraints = space, scorer, k, constraints
        self.inner: BaseSampler | None = None if isinstance(inner, Proposer) else inner
        #: the inner Proposer (the engine reads its budget, the comparison its token usage, through this name)
        self.proposer: Proposer | None = inner if isinstance(inner, Proposer) else None
        inner_name = self.proposer.name if self.proposer is not None else type(inner).__name__
        self.name = name or f"screen({inner_name})"
        self._rng = random.Random(seed)
        self._scores: dict[str, tuple[float, float]] = {}
        self._proposals: dict[int, Proposal] = {}

    # -- what the engine and the comparison read ------------------------------------------------------------------
    def proposal(self, trial_id: int) -> Proposal | None:
        """The proposal this sampler gave trial ``trial_id`` (once; None for a trial with fixed parameters)."""
        return self._proposals.pop(trial_id, None)

    def score(self, candidate: Candidate) -> tuple[float, float, bool]:
        """(score, CPU seconds, whether it was computed now): each architecture is scored once per sampler."""
        key = candidate.key()
        if key in self._scores:
            return (*self._scores[key], False)
        score, cpu_s = self.scorer(candidate)
        self._scores[key] = (float(score), float(cpu_s))
        return float(score), float(cpu_s), True

    # -- BaseSampler ----------------------------------------------------------------------------------------------
    def reseed_rng(self) -> None:
        self._rng = random.Random()
        if self.inner is not None:
            self.inner.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.space.distributions()

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space or "fixed_params" in trial.system_attrs:
            return {}
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state in _FINISHED]
        claimed = {self._key(t.params) for t in trials if t.number != trial.number and t.params}
        pool: list[Candidate] = []
        for _ in range(
            10
        ):  # redraw while every candidate drawn was evaluated already (a small or exhausted space)
            pool = self._unique(self._draw(study, done), claimed)
            if pool:
                break
        if (
            not pool
        ):  # the inner proposer only repeats itself: uniform draws, then a repeat if the space is spent
            pool = self._unique(
                [self.space.candidate(self.space.sample(self._rng)) for _ in range(100)], claimed
            )[: self.k] or [self.space.candidate(self.space.sample(self._rng))]
        feasible = [c for c in pool if self._feasible(c)] or pool
        cpu_s = 0.0
        scored: list[tuple[float, int, Candidate, float]] = []
        for i, cand in enumerate(feasible):
            score, cost, fresh = self.score(cand)
            cpu_s += cost if fresh else 0.0
            scored.append((_rank(score), -i, cand, score))  # ties go to the candidate drawn first
        _, _, best, best_score = max(scored, key=lambda s: (s[0], s[1]))
        storage = study._storage
        storage.set_trial_user_attr(trial._trial_id, ATTR_SCREENED, len(scored))
        storage.set_trial_user_attr(trial._trial_id, ATTR_PROXY_CPU_S, round(cpu_s, 6))
        storage.set_trial_user_attr(
            trial._trial_id, ATTR_SCORE, best_score if math.isfinite(best_score) else str(best_score)
        )
        storage.set_trial_system_attr(trial._trial_id, ATTR_PROPOSER, self.name)
        rationale = f"best of {len(scored)} screened by proxy score {best_score:.6g}"
        if best.rationale:
            rationale = f"{best.rationale}; {rationale}"
        storage.set_trial_system_attr(trial._trial_id, ATTR_RATIONALE, rationale)
        self._proposals[trial._trial_id] = Proposal(self.name, best)
        return best.params

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        # Only reached for parameters outside the space (none in normal use): draw uniformly.
        return optuna.samplers.RandomSampler(seed=self._rng.randrange(2**31)).sample_independent(
            study, trial, param_name, param_distribution
        )

    # -- drawing ----------------------------------------------------------------------------------------------------
    def _draw(self, study: optuna.Study, done: list[FrozenTrial]) -> list[Candidate]:
        """``k`` candidates of the inner proposer, all drawn from the same history."""
        if self.proposer is not None:
            return list(self.proposer.propose(self.space, history_from_trials(done), self.k))
        assert self.inner is not None
        quiet = logging.getLogger(
            "optuna.storages._in_memory"
        )  # "a new study created in memory", every trial
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            scratch = optuna.create_study(directions=study.directions, sampler=self.inner)
        finally:
            quiet.setLevel(level)
        scratch.add_trials(done)
        dists = self.space.distributions()
        out = []
        for _ in range(self.k):
            asked = scratch.ask(fixed_distributions=dists)
            out.append(self.space.candidate({name: asked.params[name] for name in dists}))
        return out

    def _key(self, params: Mapping[str, Any]) -> str:
        names = self.space.distributions()
        arch = {
            k: v for k, v in params.items() if k in names
        }  # searched augmenter options are not architecture
        try:
            return self.space.candidate(arch).key()
        except Exception:  # an invalid assignment recorded by a failed trial: compared as given
            return repr(sorted(arch.items()))

    @staticmethod
    def _unique(pool: list[Candidate], claimed: set[str]) -> list[Candidate]:
        seen = set(claimed)
        out = []
        for cand in pool:
            if cand.key() not in seen:
                seen.add(cand.key())
                out.append(cand)
        return out

    def _feasible(self, candidate: Candidate) -> bool:
        if self.constraints is None:
            return True
        return self.constraints.check(self.space.cost(candidate.params)) is None


def screen(
    space: SearchSpace,
    seed: int | None = None,
    directions: Any = None,
    constraints: Any = None,
    run_dir: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    plugins: Any = None,
    resource: Callable[[str], Any] | None = None,
    proposer: dict[str, Any] | None = None,
    proxy: ProxyName = "naswot",
    k: int = 10,
    batch_size: int = 64,
    proxy_seed: int = 0,
    scorer: Scorer | None = None,
) -> ScreeningSampler:
    """Screen ``k`` candidates of an inner ``proposer`` ({name, options}; default random) by a zero-cost ``proxy``
    on a minibatch of ``batch_size`` training images drawn with ``proxy_seed``; only the best is evaluated."""
    ref = dict(proposer or {"name": "random"})
    unknown = sorted(set(ref) - {"name", "options"})
    if unknown or not isinstance(ref.get("name"), str):
        raise ValueError(f"proposer must be {{name: ..., options: {{...}}}} (got {proposer!r})")
    if ref["name"] == "screen":
        raise ValueError("the screen proposer cannot wrap itself")
    if proxy not in PROXIES:
        raise ValueError(f"proxy must be one of {', '.join(PROXIES)} (got {proxy!r})")
    if plugins is None:
        from automl_kd.manager import get_plugin_manager  # the engine passes its own; a bare call builds one

        plugins = get_plugin_manager()
    host = {
        "space": space,
        "seed": seed,
        "directions": directions,
        "constraints": constraints,
        "run_dir": run_dir,
        "should_stop": should_stop,
    }
    inner = plugins.proposers.create(
        ref["name"],
        ref.get("options") or {},
        where="proposer.options.proposer",
        **{k_: v for k_, v in host.items() if v is not None},
    )
    if scorer is None:
        scorer = ProxyScorer(space, proxy, batch_size=batch_size, seed=proxy_seed, resource=resource)
    return ScreeningSampler(
        inner, space, scorer, k=k, seed=seed, constraints=constraints, name=f"screen({ref['name']})"
    )


@hookimpl
def register_proposers(register: Any) -> None:
    register(
        "screen",
        screen,
        description="screens k candidates of any inner proposer by a zero-cost proxy; evaluates only the best",
    )
