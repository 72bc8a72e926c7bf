"""The answer a study report leads with: its best student, beside its teacher and its cross-entropy-alone twin.

:func:`best_student` gathers what is known about the highest-ranked completed trial (the leaderboard's ranking:
validation accuracy; test accuracy is shown for the report only): its scores, its teacher's and those of the
same architecture trained with cross-entropy alone (the stored CE-alone baseline, with the KD gain and its noise
band exactly as the leaderboard shows them), its size, latency, finalized retraining and ONNX file. Each fact is
plain text; one that is not known says so and names the command that gives it (commands and config keys between
backticks). :mod:`automl_kd.results.html` renders it as the page's first panel.

Example::

    best = best_student(study, Path("runs/quick"), get_plugin_manager())
    for fact in best.facts if best else []:
        print(f"{fact.label}: {fact.text}")
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from automl_kd.manager import PluginManager

from . import leaderboard
from .finalize import FINAL_RECORD, final_dir

log = logging.getLogger("automl_kd")


@dataclass(frozen=True)
class Score:
    """One row of the accuracy table: who, validation and test accuracy (percent), parameters (None: unknown)."""

    label: str
    val_acc: float | None
    test_acc: float | None
    params: int | None


@dataclass(frozen=True)
class Fact:
    """One line of the card; ``known`` is False for a hint (what is missing and the command that gives it)."""

    label: str
    text: str
    known: bool = True


@dataclass(frozen=True)
class BestStudent:
    trial: int
    proposer: str
    completed: int  # completed trials it was ranked among
    val_acc: float | None
    params: int | None
    architecture: str
    scores: list[Score]
    facts: list[Fact]


def best_student(study: optuna.Study, run_dir: Path, pm: PluginManager) -> BestStudent | None:
    """What is known about the study's best completed trial (None before any trial completed)."""
    rows = leaderboard.leaderboard(study, top=1)
    if not rows:
        return None
    best = rows[0]
    number = int(best["trial"])
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    final = final_record(run_dir, number)
    cfg = study.user_attrs.get("config")
    cfg = cfg if isinstance(cfg, dict) else {}
    teacher = leaderboard.teacher_record(study) or (final or {}).get("teacher")
    kd = leaderboard.kd_result(leaderboard.ce_baselines(study), number)

    scores = [Score(f"best student (trial {number}, as searched)", *_acc(best, best.get("params")))]
    if final:
        m = final.get("metrics") or {}
        epochs = _epochs((final.get("train") or {}).get("epochs"))
        scores.append(Score(f"the same student finalized ({epochs})", *_acc(m, m.get("params"))))
    if isinstance(teacher, dict) and _num(teacher.get("val_acc")):
        scores.append(Score("teacher", *_acc(teacher, teacher.get("params"))))
    if _num(kd["ce_val_acc"]):
        ce = {"val_acc": kd["ce_val_acc"], "test_acc": kd["ce_test_acc"]}
        scores.append(Score("the same architecture, cross-entropy alone", *_acc(ce, best.get("params"))))

    run = str(run_dir)
    distilled = bool(cfg.get("teacher") or cfg.get("augmenters") or trial.user_attrs.get("augmenters"))
    facts = [
        _teacher_fact(teacher, cfg),
        _kd_fact(kd, distilled),
        _size_fact(best),
        _latency_fact(trial),
        _final_fact(final, run, number),
        _onnx_fact(run_dir, final, run, number),
    ]
    return BestStudent(
        trial=number,
        proposer=str(best.get("proposer") or "?"),
        completed=len(leaderboard.completed(study)),
        val_acc=leaderboard.finite_number(best.get("val_acc")),
        params=_int(best.get("params")),
        architecture=architecture_text(study, trial, final, pm),
        scores=scores,
        facts=facts,
    )


def final_record(run_dir: Path, number: int) -> dict[str, Any] | None:
    """``final.json`` of trial ``number`` when it was finalized in ``run_dir``."""
    try:
        rec = json.loads((final_dir(run_dir, number) / FINAL_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def architecture_text(
    study: optuna.Study, trial: FrozenTrial, final: dict[str, Any] | None, pm: PluginManager
) -> str:
    """The architecture in its space's own text form (as finalize recorded it, else from the space plugin), or
    the trial's parameters as JSON when the space cannot be built here (a plugin missing on this machine)."""
    if final and isinstance(final.get("architecture"), str) and final.get("params") == trial.params:
        return str(final["architecture"])
    space = (study.user_attrs.get("config") or {}).get("space") or {}
    try:
        built = pm.spaces.create(str(space["name"]), space.get("options") or {}, where="space")
        return str(built.encode(trial.params))
    except Exception as exc:  # any plugin's failure: the report still shows the parameters
        log.debug("report: cannot name trial %d's architecture in its space's form: %s", trial.number, exc)
        return json.dumps(trial.params, separators=(", ", ": "))


# -- the facts ----------------------------------------------------------------------------------------------------
def _num(v: Any) -> bool:
    return leaderboard.finite_number(v) is not None


def _int(v: Any) -> int | None:
    return int(v) if _num(v) else None


def _acc(rec: dict[str, Any], params: Any) -> tuple[float | None, float | None, int | None]:
    return (
        leaderboard.finite_number(rec.get("val_acc")),
        leaderboard.finite_number(rec.get("test_acc")),
        _int(params),
    )


def _epochs(n: Any) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _teacher_fact(teacher: Any, cfg: dict[str, Any]) -> Fact:
    if isinstance(teacher, dict) and _num(teacher.get("val_acc")):
        size = f", {int(teacher['params']):,} parameters" if _num(teacher.get("params")) else ""
        source = f" (source: {teacher['source']})" if teacher.get("source") else ""
        return Fact("Teacher", f"{float(teacher['val_acc']):.2f} % validation{size}{source}")
    if cfg.get("teacher"):
        return Fact(
            "Teacher",
            "in the config; its accuracy is not measured yet: `search.ce_baseline: best` (with `automl-kd run`) "
            "or `automl-kd finalize` measures it",
            known=False,
        )
    return Fact("Teacher", "none: this study trains its students without a teacher")


def _kd_fact(kd: dict[str, Any], distilled: bool) -> Fact:
    gain, band, n_val = kd["kd_gain"], kd["noise_band"], kd["n_val"]
    if _num(gain):
        text = f"{float(gain):+.2f} points (distilled minus cross-entropy alone, validation accuracy)"
        if _num(band):
            images = f" on {int(n_val):,} validation images" if _num(n_val) else ""
            verdict = leaderboard.kd_verdict(float(gain), float(band))
            where = "within" if verdict == "no difference shown" else "beyond"
            text += f"; noise band +/-{float(band):.2f} points{images}: {where} it, {verdict}"
        return Fact("KD gain", text)
    if not distilled:
        return Fact("KD gain", "none: no teacher and no augmenter, so nothing was distilled")
    return Fact(
        "KD gain",
        "not measured: `search.ce_baseline: best` retrains the best architecture with cross-entropy alone after "
        "`automl-kd run`'s search (train evaluator)",
        known=False,
    )


def _size_fact(best: dict[str, Any]) -> Fact:
    parts = []
    if _num(best.get("params")):
        parts.append(f"{int(best['params']):,} parameters")
    if _num(best.get("macs")):
        parts.append(f"{int(best['macs']):,} MACs")
    if _num(best.get("compression_factor")):
        parts.append(f"compression factor {float(best['compression_factor']):.2f}")
    return Fact("Size", ", ".join(parts)) if parts else Fact("Size", "not measured", known=False)


def _latency_fact(trial: FrozenTrial) -> Fact:
    prefix = "latency_ms_b"
    sizes = sorted(
        int(k[len(prefix) :]) for k in trial.user_attrs if k.startswith(prefix) and k[len(prefix) :].isdigit()
    )
    parts = [
        f"{float(trial.user_attrs[f'{prefix}{b}']):.2f} ms at batch {b}"
        for b in sizes
        if _num(trial.user_attrs[f"{prefix}{b}"])
    ]
    if not parts:
        return Fact("Latency", "not measured (the evaluator's `latency` option measures it)", known=False)
    device = trial.user_attrs.get("latency_device")
    return Fact("Latency", ", ".join(parts) + " (median per batch" + (f", {device}" if device else "") + ")")


def _final_fact(final: dict[str, Any] | None, run: str, number: int) -> Fact:
    if final:
        epochs = _epochs((final.get("train") or {}).get("epochs"))
        return Fact(
            "Finalized", f"trained again from scratch for {epochs} (its scores are in the table above)"
        )
    return Fact(
        "Finalized",
        f"not finalized yet: run `automl-kd finalize --run-dir {run} --trial {number}`",
        known=False,
    )


def _onnx_fact(run_dir: Path, final: dict[str, Any] | None, run: str, number: int) -> Fact:
    """The exported ONNX file where ``automl-kd export`` writes it by default (``final/trial-N/export/``)."""
    export = final_dir(run_dir, number) / "export"
    try:
        check = json.loads((export / "model_card.json").read_text())["checks"]["onnx"]
        path = export / str(check["file"])
    except (OSError, ValueError, KeyError, TypeError):
        check, path = {}, export / "model.onnx"
    if path.is_file():
        diff = check.get("max_abs_diff") if isinstance(check, dict) else None
        checked = f" (checked against torch: max abs diff {diff:.1e})" if _num(diff) else ""
        return Fact("ONNX file", f"`{path}`{checked}")
    then = "" if final else f"`automl-kd finalize --run-dir {run} --trial {number}`, then "
    return Fact(
        "ONNX file",
        f"not exported yet: run {then}`automl-kd export --run-dir {run} --trial {number}`",
        known=False,
    )
