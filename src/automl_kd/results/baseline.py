"""The CE-alone baseline: a searched architecture retrained with cross-entropy only, to show what distillation gave.

A trial of a distillation search trains its student with the configured augmenters (kd, attention, ig-overlay).
Whether they helped is only visible beside the same network trained without them. ``search.ce_baseline`` (``best``,
``all`` or ``none``) asks for that after the search: each chosen trial's architecture is retrained from scratch
with the same seed, the same data and the evaluator's same training settings, and no augmenter. Finished Optuna
trials cannot be edited, so the results live in the study's user attribute :data:`ATTR_CE_BASELINE`, a mapping
from trial number (as a string) to what the retraining scored; the leaderboard, ``automl-kd show`` and the HTML
report read it from there (a "CE alone" column and the KD gain, distilled minus CE alone, in points). With a
teacher in the config, its validation and test accuracy go into :data:`ATTR_TEACHER` beside them.

Example::

    study = load_study(None, Path("runs/demo"), None)
    baselines = run_ce_baseline(study, "best")   # {"2": {"val_acc": 84.1, "test_acc": 83.5, ...}}
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from automl_kd.cache import ArtifactCache
from automl_kd.config import Config, load_config
from automl_kd.data import load_data
from automl_kd.distill.fit import train_and_score
from automl_kd.distill.plan import TrialPlan
from automl_kd.distill.teacher import get_teacher, teacher_record
from automl_kd.engine.trial import trial_seed
from automl_kd.errors import ConfigError
from automl_kd.manager import PluginManager, get_plugin_manager
from automl_kd.metrics import resolve_device

from .finalize import build_space
from .leaderboard import ATTR_CE_BASELINE, ATTR_TEACHER, ce_baselines

log = logging.getLogger("automl_kd")


def noise_band(acc_a: float, acc_b: float, n: int) -> float:
    """Two standard errors (points) of the difference of two accuracies (percent) on ``n`` images: a KD gain
    inside it is not evidence of anything (one seed each; seed-to-seed spread comes on top)."""
    p = min(max((acc_a + acc_b) / 200, 1e-3), 1 - 1e-3)
    return 200 * math.sqrt(2 * p * (1 - p) / max(n, 1))


def _chosen(study: optuna.Study, which: str) -> list[FrozenTrial]:
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    done.sort(key=lambda t: (-float(t.user_attrs.get("val_acc", t.values[0] if t.values else 0.0)), t.number))
    if which == "best":
        return done[:1]
    if which == "all":
        return done
    if which == "none":
        return []
    raise ConfigError(f"search.ce_baseline must be one of best, all, none; got {which!r}")


def run_ce_baseline(
    study: optuna.Study,
    which: str = "best",
    *,
    config: Config | None = None,
    pm: PluginManager | None = None,
) -> dict[int, dict[str, Any]]:
    """Retrain the ``which`` trials (``best``/``all``) of ``study`` with cross-entropy alone; store and return all
    stored baselines. A trial that already has one is not retrained (a rerun of the search only adds new ones)."""
    raw = study.user_attrs.get("config")
    cfg = config or (load_config(raw) if isinstance(raw, dict) else None)
    if cfg is None:
        raise ConfigError(f"study {study.study_name!r} stored no config; was it created by automl-kd?")
    stored = ce_baselines(study)
    todo = [t for t in _chosen(study, which) if t.number not in stored]
    if not todo:
        return stored
    if cfg.evaluator.name != "train":
        raise ConfigError(
            f"search.ce_baseline retrains students, which needs the train evaluator, not {cfg.evaluator.name!r}"
        )
    pm = pm or get_plugin_manager()
    device = resolve_device(cfg.device)
    # exactly the train evaluator's settings (distill/settings.py), only without augmenters and teacher; each
    # retraining gets its trial's seed
    plan = TrialPlan.for_config(cfg, seed=cfg.seed, device=device)
    data = load_data(cfg.data).to(device)
    space = build_space(cfg, pm, data.num_classes, data.in_chans, data.input_size)
    if cfg.teacher is not None and ATTR_TEACHER not in study.user_attrs:
        # the teacher's own score beside the students': KD means little from a teacher no better than they are
        teacher = get_teacher(
            cfg.teacher, data, device, ArtifactCache.default(), pm=pm, precision=cfg.precision
        )
        study.set_user_attr(ATTR_TEACHER, teacher_record(teacher, data, cfg.precision))
        del teacher
    for t in todo:
        seed = int(t.user_attrs.get("seed", trial_seed(cfg.seed, t.number)))
        params = space.validate(t.params)
        log.info("CE-alone baseline of trial %d: %d epochs, seed %d", t.number, plan.settings.epochs, seed)
        t0 = time.perf_counter()
        model, metrics = train_and_score(functools.partial(space.build, params), data, plan.with_seed(seed))
        distilled = t.user_attrs.get("val_acc")
        rec: dict[str, Any] = {
            "val_acc": round(metrics["val_acc"], 4),
            "test_acc": round(metrics["test_acc"], 4),  # report only
            "epochs": metrics["epochs"],
            "seed": seed,
            "train_seconds": metrics["train_seconds"],
            "wall_clock_s": round(time.perf_counter() - t0, 3),
        }
        rec["n_val"] = len(data.val)
        if isinstance(distilled, int | float):
            rec["kd_gain"] = round(float(distilled) - rec["val_acc"], 4)
            rec["noise_band"] = round(noise_band(float(distilled), rec["val_acc"], len(data.val)), 4)
        stored[t.number] = rec
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # written after each retraining, so an interrupted run keeps what it finished
        study.set_user_attr(ATTR_CE_BASELINE, {str(k): v for k, v in sorted(stored.items())})
        log.info(
            "trial %d: val %.2f%% distilled, %.2f%% CE alone", t.number, float(distilled or 0), rec["val_acc"]
        )
    return stored
