"""``automl-kd finalize``: retrain a chosen trial's student from scratch, longer, with its augmenters and teacher.

A search scores candidates with short proxy trainings; the winner is then trained properly (GENIUS: 20-epoch
proxies, 500-epoch final training). Finalizing re-creates exactly what the trial trained (its architecture, its
seed, the augmenters and weights it recorded, the config's teacher and training settings) and trains it for
``epochs`` (default :data:`DEFAULT_EPOCH_FACTOR` times the search's epochs), without the search's
``max_steps_per_epoch`` cap.

Everything lands in ``<run_dir>/final/trial-<N>/``:

- ``model.pt``: the student's state dict (plain tensors; loads with ``torch.load(..., weights_only=True)``);
- ``final.json``: what is needed to rebuild the network and what it scored (val and test accuracy, params, MACs,
  latency), the teacher and the augmenters: :func:`load_finalized` reads it back;
- ``check_images.pt``: a few real test images (uint8) that ``automl-kd export`` compares runtimes on.

Example::

    record = finalize(Path("runs/quick"), trial="best", epochs=10)
    model, record = load_finalized(Path("runs/quick/final/trial-3"))
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from automl_kd._version import __version__
from automl_kd.cache import ArtifactCache, atomic_save
from automl_kd.config import Config, load_config
from automl_kd.data import load_data
from automl_kd.distill.checkpoints import UnsafeFile, load_tensors
from automl_kd.distill.fit import train_and_score
from automl_kd.distill.plan import TrialPlan
from automl_kd.distill.teacher import get_teacher
from automl_kd.distill.teacher import teacher_record as teacher_record_of
from automl_kd.engine.outcome import TrialOutcome
from automl_kd.engine.trial import trial_seed
from automl_kd.errors import AutomlKdError, ConfigError
from automl_kd.manager import PluginManager, get_plugin_manager
from automl_kd.metrics import resolve_device
from automl_kd.space import SearchSpace
from automl_kd.storage.studies import load_study
from automl_kd.trial_attrs import metrics_of

log = logging.getLogger("automl_kd")

#: finalized epochs = this times the search's epochs, unless ``epochs`` is given
DEFAULT_EPOCH_FACTOR = 5
FINAL_RECORD = "final.json"
CHECKPOINT = "model.pt"
CHECK_IMAGES = "check_images.pt"


class CheckpointError(AutomlKdError):
    """A finalized checkpoint is missing, unreadable, or does not fit the architecture it claims."""


# -- choosing a trial and rebuilding its network ----------------------------------------------------------------
def resolve_trial(study: optuna.Study, which: str | int | None = "best") -> FrozenTrial:
    """``"best"`` (highest validation accuracy among completed trials) or a trial number."""
    trials = study.get_trials(deepcopy=False)
    if which in (None, "best"):
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        if not done:
            raise ConfigError(f"study {study.study_name!r} has no completed trial to finalize")
        return max(done, key=lambda t: (float(t.user_attrs.get("val_acc", t.values[0])), -t.number))
    try:
        number = int(which)
    except ValueError:
        raise ConfigError(f"--trial must be a trial number or 'best', not {which!r}") from None
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        raise ConfigError(f"study {study.study_name!r} has no trial {number} (trials 0..{len(trials) - 1})")
    if found.state not in (TrialState.COMPLETE, TrialState.PRUNED):
        raise ConfigError(
            f"trial {number} is {TrialOutcome.of(found)}, not complete; finalize a completed (or pruned) trial"
        )
    return found


def build_space(
    cfg: Config, pm: PluginManager, num_classes: int, in_chans: int, input_size: int
) -> SearchSpace:
    """The config's search space for this data shape, built the way :class:`automl_kd.Search` builds it."""
    host = {"num_classes": num_classes, "in_chans": in_chans, "input_size": input_size}
    space: SearchSpace = pm.spaces.create(cfg.space.name, cfg.space.options, where="space", **host)
    if not getattr(space, "buildable", True):
        raise ConfigError(f"space {cfg.space.name!r} has no networks to train (a table-look-up benchmark)")
    return space


def final_dir(run_dir: Path, number: int) -> Path:
    return run_dir / "final" / f"trial-{number}"


def finalized_trials(run_dir: Path) -> list[int]:
    """Numbers of the trials finalized in ``run_dir``."""
    out = []
    for rec in (run_dir / "final").glob(f"trial-*/{FINAL_RECORD}"):
        try:
            out.append(int(rec.parent.name.removeprefix("trial-")))
        except ValueError:
            continue
    return sorted(out)


def locate_final(
    run_dir: Path, trial: str | int | None = "best", storage: str | None = None, study_name: str | None = None
) -> Path:
    """The finalized directory of ``trial`` (``"best"`` is resolved through the study) or a clear error."""
    if trial in (None, "best"):
        number = resolve_trial(load_study(storage, run_dir, study_name), "best").number
    else:
        try:
            number = int(trial)
        except ValueError:
            raise ConfigError(f"--trial must be a trial number or 'best', not {trial!r}") from None
    path = final_dir(run_dir, number)
    if not (path / FINAL_RECORD).is_file():
        done = ", ".join(map(str, finalized_trials(run_dir))) or "none"
        raise CheckpointError(
            f"trial {number} has not been finalized (no {path / FINAL_RECORD}); run "
            f"`automl-kd finalize --run-dir {run_dir} --trial {number}` first (finalized trials: {done})"
        )
    return path


def load_finalized(
    path: Path, pm: PluginManager | None = None, device: torch.device | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a finalized student (in eval mode) from its directory or its ``model.pt``; return it and its record."""
    path = Path(path)
    folder, ckpt = (path, path / CHECKPOINT) if path.is_dir() else (path.parent, path)
    rec_path = folder / FINAL_RECORD
    if not ckpt.is_file():
        raise CheckpointError(f"checkpoint {ckpt} does not exist")
    if not rec_path.is_file():
        raise CheckpointError(
            f"no {FINAL_RECORD} beside {ckpt}: the architecture is unknown; checkpoints come from "
            "`automl-kd finalize`"
        )
    try:
        record = json.loads(rec_path.read_text())
        cfg = load_config(record["config"])
        sp = record["space"]
        space = build_space(
            cfg, pm or get_plugin_manager(), sp["num_classes"], sp["in_chans"], sp["input_size"]
        )
        model = space.build(record["params"])
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{rec_path} is unreadable or incomplete: {exc}") from None
    try:
        state = load_tensors(ckpt)
    except (UnsafeFile, OSError) as exc:  # a truncated, foreign or unsafe file
        raise CheckpointError(f"cannot read checkpoint {ckpt}: {exc}") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(
            f"checkpoint {ckpt} does not fit the architecture recorded in {rec_path}: {detail}"
        ) from None
    return model.to(device or torch.device("cpu")).eval(), record


# -- finalizing -------------------------------------------------------------------------------------------------
def _augmenter_refs(cfg: Config, trial: FrozenTrial, overrides: Sequence[str]) -> list[dict[str, Any]]:
    # the trial's record is the truth about what it trained with, unless the user overrode the augmenters
    recorded = trial.user_attrs.get("augmenters")
    if isinstance(recorded, list) and not any(o.strip().startswith("augmenters") for o in overrides):
        return [{"name": str(a["name"]), "options": dict(a.get("options") or {})} for a in recorded]
    return [{"name": a.name, "options": dict(a.options)} for a in cfg.augmenters]


def finalize(
    run_dir: Path,
    *,
    trial: str | int | None = "best",
    epochs: int | None = None,
    overrides: Sequence[str] = (),
    storage: str | None = None,
    study_name: str | None = None,
    pm: PluginManager | None = None,
    latency_batch_sizes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Retrain ``trial`` of the study in ``run_dir`` from scratch for ``epochs``; return the saved record.

    ``overrides`` are ``--set key=value`` changes to the study's stored config (for example
    ``data.train_size=null`` to finalize on the whole training set, or ``device=cuda``). Latency is measured at
    ``latency_batch_sizes`` (default: the evaluator's ``latency_batch_sizes`` option, else 1 and 64).
    """
    run_dir = Path(run_dir)
    pm = pm or get_plugin_manager()
    study = load_study(storage, run_dir, study_name)
    raw = study.user_attrs.get("config")
    if not isinstance(raw, dict):
        raise ConfigError(f"study {study.study_name!r} stored no config; was it created by automl-kd?")
    cfg = load_config(raw, overrides)
    chosen = resolve_trial(study, trial)
    seed = int(chosen.user_attrs.get("seed", trial_seed(cfg.seed, chosen.number)))
    device = resolve_device(cfg.device)

    opts = dict(cfg.evaluator.options)
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    # the search's own training settings, longer, over the whole training split and without the step cap
    searched = TrialPlan.for_config(cfg, seed=seed, device=device)
    plan = searched.with_settings(
        epochs=epochs or DEFAULT_EPOCH_FACTOR * searched.settings.epochs,
        max_steps_per_epoch=None,
        train_fraction=1.0,
    )
    data = load_data(cfg.data).to(device)
    space = build_space(cfg, pm, data.num_classes, data.in_chans, data.input_size)
    params = space.validate(chosen.params)

    refs = _augmenter_refs(cfg, chosen, overrides)
    augmenters = [pm.augmenters.create(r["name"], r["options"]) for r in refs]
    teacher = None
    teacher_record: dict[str, Any] | None = None
    if augmenters and cfg.teacher is not None:
        # without a teacher in the config, an augmenter that needs one fails in training with a message naming it
        teacher = get_teacher(
            cfg.teacher, data, device, ArtifactCache.default(), pm=pm, precision=cfg.precision
        )
        teacher_record = {
            "config": cfg.teacher.model_dump(mode="json"),
            **teacher_record_of(teacher, data, cfg.precision),
        }

    log.info(
        "finalize trial %d: %d epochs, seed %d, augmenters %s",
        chosen.number,
        plan.settings.epochs,
        seed,
        ", ".join(r["name"] for r in refs) or "none",
    )
    try:
        model, metrics = train_and_score(
            lambda: space.build(params),
            data,
            plan,
            latency_batch_sizes=latency_batch_sizes or opts.get("latency_batch_sizes") or (1, 64),
            plain_weights=True,  # saved as plain tensors
            augmenters=augmenters,
            teacher=teacher,
            cache=ArtifactCache.default(),
            run_dir=run_dir,
            log=lambda msg: log.info("finalize trial %d: %s", chosen.number, msg),
        )
    except ValueError as exc:  # e.g. an augmenter needs a teacher the config lacks
        raise ConfigError(f"finalize trial {chosen.number}: {exc}") from exc
    for key in ("val_acc", "test_acc"):
        metrics[key] = round(metrics[key], 4)

    out = final_dir(run_dir, chosen.number)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out / CHECKPOINT)
    n_check = min(16, len(data.test))
    atomic_save({"x": data.test.x[:n_check].cpu(), "y": data.test.y[:n_check].cpu()}, out / CHECK_IMAGES)
    record: dict[str, Any] = {
        "study": study.study_name,
        "trial": chosen.number,
        "seed": seed,
        "proposer": chosen.user_attrs.get("proposer"),
        "params": params,
        "architecture": space.encode(params),
        "space": {
            "name": cfg.space.name,
            "options": dict(cfg.space.options),
            "num_classes": data.num_classes,
            "in_chans": data.in_chans,
            "input_size": data.input_size,
        },
        "data": {
            "dataset": cfg.data.dataset,
            "classes": list(data.classes),
            "mean": list(data.mean),
            "std": list(data.std),
            "fingerprint": data.fingerprint,
            "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        },
        "train": {
            k: getattr(plan.settings, k) for k in ("epochs", "batch_size", "lr", "optimizer", "schedule")
        },
        "augmenters": refs,
        "teacher": teacher_record,
        "metrics": metrics,
        "search": {
            k: metrics_of(chosen.user_attrs).get(k)
            for k in ("val_acc", "test_acc", "epochs", "params", "macs")
        },
        "checkpoint": CHECKPOINT,
        "config": cfg.to_dict(),
        "versions": _versions(),
    }
    atomic_save(record, out / FINAL_RECORD)
    log.info(
        "finalized trial %d: val %.2f%%, test %.2f%% -> %s",
        chosen.number,
        metrics["val_acc"],
        metrics["test_acc"],
        out,
    )
    return record


def _versions() -> dict[str, str]:
    # the installed version, without importing timm (seconds) only to read it
    return {"automl_kd": __version__, "torch": torch.__version__, "timm": importlib.metadata.version("timm")}
