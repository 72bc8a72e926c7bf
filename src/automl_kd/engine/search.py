"""The search engine: a proposer, a space and an evaluator over an Optuna study.

The trial store is Optuna storage, so a run is resumable by construction: rerunning a study continues it, and
``n_trials`` is its target number of finished trials. A process killed mid-trial loses only that trial: its
heartbeat goes silent, and the next worker fails it and queues its parameters once more.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from automl_kd.config import Config
from automl_kd.distill.checkpoints import read_state_dict
from automl_kd.errors import (
    BudgetExhausted,
    CandidateRejected,
    ConfigError,
    NoTrialCompleted,
    ProposerFailed,
    StorageError,
    TrainingDiverged,
    TrialInterrupted,
    raised_by_ctrl_c,
)
from automl_kd.evaluator import Evaluator, TrialContext
from automl_kd.manager import PluginManager, get_plugin_manager
from automl_kd.metrics import resolve_device
from automl_kd.proposer import Proposer, ProposerSampler
from automl_kd.space import Candidate, SearchSpace, suggest
from automl_kd.storage.heartbeat import fail_stale_trials, queue_trial, seed_origin
from automl_kd.storage.outage import is_storage_error, retrying, storage_fault
from automl_kd.storage.studies import default_url, open_storage, open_study
from automl_kd.trial_attrs import stored_name

from .constraints import Constraints
from .outcome import TrialOutcome, is_claimed, is_finished, none_completed
from .pruners import make_pruner
from .resources import Resources
from .run_trial import Drawn, run_trial
from .search_space import make_space
from .searched_options import augmenter_distributions, resolve_augmenter_options
from .trial import TrialSurplus, failure_reason, jsonable, trial_seed

log = logging.getLogger("automl_kd")

MAX_CONSECUTIVE_FAILURES = 5


class Search:
    """A search over one Optuna study.

    Example::

        cfg = load_config("examples/configs/quick.yaml")
        search = Search(cfg)
        study = search.run()
        print(study.best_trial.user_attrs["val_acc"])
    """

    def __init__(
        self,
        config: Config,
        *,
        pm: PluginManager | None = None,
        storage: str | None = None,
        study_name: str | None = None,
        progress: Any = None,
        check_only: bool = False,
    ) -> None:
        self.config = config
        self._check_only = check_only  # `automl-kd check`: no storage, no data read, nothing written
        self.pm = pm or get_plugin_manager()
        self.run_dir = config.resolved_run_dir
        self.study_name = study_name or config.name
        self.storage_url = storage or config.storage.url
        self.progress = progress
        self.device = resolve_device(config.device)
        self.resources = Resources(config, self.device, self.pm, lambda: self.space, lambda: self._stop)
        self._stop = False
        self._consecutive_failures = 0
        self.stop_reason = ""
        self._stop_request = ""
        self._waiting_logged = False
        self._target: int | None = None
        self.directions: list[Any] = ["maximize", *["minimize"] * (len(config.search.objectives) - 1)]
        self.constraints = Constraints.from_config(config.search.constraints)

        self.evaluator: Evaluator = self.pm.evaluators.create(config.evaluator.name, config.evaluator.options)
        preflight = getattr(self.evaluator, "preflight", None)
        if callable(preflight):  # e.g. a table evaluator's file: fail now, in one line, not in every trial
            preflight()
        self.space: SearchSpace = make_space(config, self.pm, self.evaluator, self.resource, self._check_only)
        #: searched augmenter options (``{search: [...]}`` or ``{low: .., high: ..}``): ``aug.<name>.<option>``
        self.aug_distributions = augmenter_distributions(config.augmenters)
        for ref in config.augmenters:  # validate names and options now, build fresh ones per trial
            self.pm.augmenters.create(ref.name, resolve_augmenter_options(ref.name, ref.options, {}))
        if config.augmenters and not getattr(self.evaluator, "trains", False):
            raise ConfigError(
                f"augmenters need a training evaluator; {config.evaluator.name!r} does not train"
            )
        self.sampler = self._make_sampler()
        if config.teacher is not None and config.teacher.checkpoint is not None:  # now, not in trial 0
            read_state_dict(config.teacher.checkpoint, "teacher.checkpoint")
        if self._check_only:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the run directory {self.run_dir}: {exc.strerror}") from None
        self.storage = open_storage(self.storage_url, self.run_dir, config.storage)
        self._url = self.storage_url or default_url(self.run_dir)
        # the start-up is under the outage rule too: a server that goes away now is retried like any other call
        self.study = open_study(
            self.storage,
            self._url,
            self.study_name,
            self.directions,
            make_pruner(config, self.evaluator.steps),  # Hyperband: over the evaluator's epochs
            config,
            self._sampler_for,
        )

    def _sampler_for(self, existing: int) -> optuna.samplers.BaseSampler:
        if existing:
            # a resumed study's sampler is seeded from the study seed and its trial count (no replayed proposals)
            self.sampler = self._make_sampler(seed=trial_seed(self.config.seed, existing))
        return self.sampler

    # -- construction ----------------------------------------------------------------------------------------
    def _make_sampler(self, seed: int | None = None) -> optuna.samplers.BaseSampler:
        seed = self.config.seed if seed is None else seed
        ref = self.config.search.proposer
        obj = self.pm.proposers.create(
            ref.name,
            ref.options,
            space=self.space,
            seed=seed,
            directions=self.directions,
            constraints=self.constraints,
            run_dir=self.run_dir,
            should_stop=lambda: self._stop,  # SIGTERM, Ctrl-C: e.g. an LLM request is abandoned at once
            plugins=self.pm,  # a wrapper (screen) builds its inner proposer with them
            resource=self.resource,  # the data and the cache, e.g. for the screen proposer's proxy
        )
        if isinstance(obj, Proposer):
            return ProposerSampler(obj, self.space, seed=seed)
        if isinstance(obj, optuna.samplers.BaseSampler):
            return obj
        raise ConfigError(f"proposer {ref.name!r} returned {type(obj).__name__}, not a sampler or Proposer")

    def resource(self, name: str) -> Any:
        """Objects shared by every trial of this process, built on first use (see :class:`Resources`)."""
        return self.resources(name)

    # -- one trial -------------------------------------------------------------------------------------------
    def _trial(self, trial: optuna.Trial, drawn: Drawn) -> float | list[float]:
        """The body of one trial: draw, check, evaluate, return the objective values. How it ends (whatever it
        raises) is decided in one place, ``run_trial.ending``."""
        t0 = time.perf_counter()
        try:  # Optuna samples lazily: the proposer runs inside the first suggest call
            params = {name: suggest(trial, name, d) for name, d in self.space.distributions().items()}
        except BudgetExhausted:
            raise
        except TrialInterrupted:  # a stop cut the proposer's call short: nothing drawn, nothing to queue
            raise
        except Exception as exc:  # the proposer, unless the storage (it reads the history) failed under it
            if is_storage_error(exc) or storage_fault(exc):
                raise
            name = self.config.search.proposer.name
            raise ProposerFailed(
                f"the proposer {name!r} failed at trial {trial.number}: {failure_reason(exc)}"
            ) from exc
        take = getattr(self.sampler, "proposal", None)
        proposal = take(trial._trial_id) if callable(take) else None
        # the retry origin is the queued trial's own record (a system attribute; Optuna 5 keeps those off Trial)
        origin = seed_origin(self.study._storage.get_trial_system_attrs(trial._trial_id), trial.number)
        if self._is_surplus(trial):
            raise TrialSurplus(
                f"the study already has its {self._target} trials (another worker started one first)"
            )
        seed = trial_seed(self.config.seed, origin)
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("proposer", proposal.proposer if proposal else self.config.search.proposer.name)
        aug_values = {name: suggest(trial, name, d) for name, d in self.aug_distributions.items()}
        drawn.params, drawn.seed_of = {**params, **aug_values}, origin
        aug_options = [
            resolve_augmenter_options(a.name, a.options, aug_values) for a in self.config.augmenters
        ]
        trial.set_user_attr(
            "augmenters",
            [
                {"name": a.name, "options": o}
                for a, o in zip(self.config.augmenters, aug_options, strict=True)
            ],
        )
        if self.progress:
            self.progress.trial_started(trial.number)
        try:
            rationale = proposal.candidate.rationale if proposal else ""
            candidate = self.space.candidate(params, rationale=rationale)
            cost = self.space.cost(candidate.params)
            trial.set_user_attr(stored_name("params"), cost.params)
            trial.set_user_attr("macs", cost.macs)
            reason = self.constraints.check(cost)
            if reason:
                raise CandidateRejected(reason)
            metrics = self._evaluate(trial, candidate, seed, aug_options)
        finally:
            trial.set_user_attr("wall_clock_s", round(time.perf_counter() - t0, 3))
        values = [float(metrics["val_acc"])]
        for obj in self.config.search.objectives[1:]:
            key = "latency_ms_b1" if obj == "latency" else obj
            if key not in metrics:
                raise ConfigError(
                    f"objective {obj!r} needs metric {key!r}, which evaluator "
                    f"{self.config.evaluator.name!r} does not report"
                )
            values.append(float(metrics[key]))
        return values[0] if len(values) == 1 else values

    def _evaluate(
        self,
        trial: optuna.Trial,
        candidate: Candidate,
        seed: int,
        aug_options: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        def report(step: int, value: float) -> None:
            if len(self.directions) == 1:  # Optuna keeps intermediate values of single-objective studies
                trial.report(value, step)
            if self.progress:
                self.progress.epoch_done(trial.number, step, value)
            if len(self.directions) == 1 and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {step + 1} at val_acc {value:.2f}")

        refs = self.config.augmenters
        options = aug_options or [resolve_augmenter_options(r.name, r.options, {}) for r in refs]
        augmenters = [self.pm.augmenters.create(ref.name, o) for ref, o in zip(refs, options, strict=True)]
        ctx = TrialContext(
            number=trial.number,
            seed=seed,
            device=self.device,
            run_dir=self.run_dir,
            space=self.space,
            report=report,
            record=trial.set_user_attr,
            resource=self.resource,
            augmenters=augmenters,
            should_stop=lambda: self._stop,
        )
        metrics = self.evaluator.evaluate(candidate, ctx)
        if self._stop:  # training stopped early on request: these metrics are not the candidate's
            raise TrialInterrupted(f"{self._stop_request or 'stopped'} before the trial finished")
        if "val_acc" not in metrics or not math.isfinite(float(metrics["val_acc"])):
            raise TrainingDiverged(f"evaluator {self.config.evaluator.name!r} returned no finite val_acc")
        ref_params = self.resource("reference_params")
        if ref_params and metrics.get("params"):
            metrics["compression_factor"] = round(ref_params / float(metrics["params"]), 4)
        for key, value in metrics.items():
            trial.set_user_attr(stored_name(key), jsonable(value))
        return metrics

    def _budget_spent(self) -> str | None:
        """A proposer with a budget says so before a trial is created for it (``budget_exhausted()``)."""
        proposer = getattr(self.sampler, "proposer", self.sampler)
        check = getattr(proposer, "budget_exhausted", None)
        return check() if callable(check) else None

    def _is_surplus(self, trial: optuna.Trial) -> bool:
        """Two workers may ask for the last trial at once; trial numbers are atomic, so the later one yields."""
        if self._target is None:
            return False
        before = self.study.get_trials(deepcopy=False)[: trial.number]
        return sum(1 for t in before if is_claimed(t)) >= self._target

    def _distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {**self.space.distributions(), **self.aug_distributions}

    def enqueue(self, params: dict[str, Any], *, seed_of: int) -> None:
        """Queue a fixed student (searched augmenter options may be among ``params``) with the seed of trial
        ``seed_of``, as a retry has: run k of a repeated configuration has the same seed whatever was interrupted."""
        try:
            queue_trial(self.study, params, self._distributions(), seed_of=seed_of)
        except ValueError as exc:  # a parameter the search does not have, or a value outside its distribution
            raise ConfigError(f"enqueue: {exc}") from None

    def repeat(
        self,
        params: dict[str, Any],
        runs: int,
        *,
        first: int = 0,
        on_run: Callable[[FrozenTrial], Any] | None = None,
    ) -> list[FrozenTrial]:
        """Run one fixed candidate ``runs`` times, run k with the seed of trial k, resumable after an interruption;
        return the complete trials in run order (see :func:`automl_kd.engine.repeat.repeat`)."""
        from .repeat import repeat

        return repeat(self, params, runs, first=first, on_run=on_run)

    def _after_trial(self, frozen: FrozenTrial, outcome: TrialOutcome) -> None:
        if outcome == TrialOutcome.FAILED:
            self._consecutive_failures += 1
        elif outcome != TrialOutcome.REJECTED:
            self._consecutive_failures = 0
        if self.progress:
            self.progress.trial_finished(frozen)
        if outcome == TrialOutcome.SURPLUS:  # never evaluated: nothing for observers
            return
        self.pm.on_trial_end(
            self.study_name, frozen.number, str(outcome), frozen.values, dict(frozen.user_attrs)
        )

    # -- the loop --------------------------------------------------------------------------------------------
    def finished_count(self) -> int:
        return sum(1 for t in self.study.get_trials(deepcopy=False) if is_finished(t))

    def stop(self, reason: str = "stopped") -> None:
        """Ask the loop to stop; the running trial's training stops at its next batch and the trial is recorded
        as interrupted and queued again."""
        self._stop = True
        self._stop_request = self._stop_request or reason
        self.stop_reason = self.stop_reason or reason

    def run(
        self,
        n_trials: int | None = None,
        timeout: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> optuna.Study:
        """Run until the study has ``n_trials`` finished trials (default: the config's), or ``timeout`` seconds.

        A trial that fails (training error, infeasible) is recorded with its reason and the search goes on;
        ``MAX_CONSECUTIVE_FAILURES`` failures in a row stop it with an error. A spent proposer budget stops it
        cleanly. Each step is under the outage rule; ``stop_reason`` says "target reached" only when it was.
        A search that ends with finished trials but not one completed (all failed or rejected) raises
        :class:`~automl_kd.errors.NoTrialCompleted` (exit code 7), whose message, also the ``stop_reason``, counts
        them and names the most common reason; the study is still ``self.study``.
        """
        target = n_trials or self.config.search.n_trials
        timeout = timeout if timeout is not None else self.config.search.timeout
        start = time.monotonic()
        self._consecutive_failures = 0
        self.stop_reason = self._stop_request if self._stop else ""
        retry = self.config.storage.retry_timeout
        try:
            done = retrying(self.finished_count, self._url, retry, log.warning)
            if self.progress:
                self.progress.started(self, target, done)
            while not retrying(lambda: self._step(target, start, timeout, should_stop), self._url, retry):
                pass
            if self.stop_reason in ("target reached", "timeout") or self.stop_reason.startswith(
                "proposer budget"
            ):
                why = retrying(
                    lambda: none_completed(self.study.get_trials(deepcopy=False)), self._url, retry
                )
                if why:  # every finished trial failed or was rejected: the search found nothing
                    self.stop_reason = why
                    raise NoTrialCompleted(why)
        except BaseException as exc:  # a Ctrl-C inside optuna's own bookkeeping can surface as another error
            if isinstance(exc, KeyboardInterrupt) or raised_by_ctrl_c(exc):
                self.stop_reason = "interrupted by SIGINT (Ctrl-C)"
            elif isinstance(exc, Exception):
                self.stop_reason = self.stop_reason or f"stopped by an error: {failure_reason(exc)}"
            raise
        finally:
            self.stop_reason = self.stop_reason or "stopped"
            if self.progress:
                self.progress.finished(self)
        return self.study

    def _step(
        self, target: int, start: float, timeout: float | None, should_stop: Callable[[], bool] | None
    ) -> bool:
        """Run one trial; return True when the loop should end (target, stop request, timeout, budget)."""
        trials = self.study.get_trials(deepcopy=False)
        if sum(1 for t in trials if is_finished(t)) >= target:
            self.stop_reason = self.stop_reason or "target reached"
            return True
        if self._stop or (should_stop and should_stop()):
            self.stop_reason = self.stop_reason or "stopped"
            return True
        spent = self._budget_spent()
        if spent:
            self.stop_reason = f"proposer budget spent: {spent}"
            log.warning("search stopped: %s", spent)
            return True
        if timeout is not None and time.monotonic() - start >= timeout:
            self.stop_reason = "timeout"
            return True
        fail_stale_trials(self.study, self.config.storage.grace_period)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if not waiting and sum(1 for t in trials if is_claimed(t)) >= target:
            # the last trials are running in other processes (or in a dead one, which its heartbeat will expose
            # and queue again): wait for them rather than overshoot the target
            if not self._waiting_logged:
                log.info("waiting for the running trials of other workers to finish")
                self._waiting_logged = True
            time.sleep(min(1.0, float(self.config.storage.heartbeat_interval)))
            return False
        self._target = target
        frozen, end = run_trial(
            self.study,
            self._trial,
            url=self._url,
            heartbeat_interval=self.config.storage.heartbeat_interval,
            distributions=self._distributions,
        )
        if frozen is not None and end.outcome is not None:
            self._after_trial(frozen, end.outcome)
        if end.stop:
            self.stop_reason = end.stop
        if end.error is not None:
            raise end.error
        if end.stop:
            log.warning("search stopped: %s", end.stop)
            return True
        if self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            raise TrainingDiverged(
                f"{MAX_CONSECUTIVE_FAILURES} trials failed in a row; the last failed with: "
                f"{end.reason or 'no reason recorded'}"
            )
        return False
