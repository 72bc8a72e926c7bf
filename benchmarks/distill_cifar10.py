"""The headline experiment: distillation at real scale on CIFAR-10 (JPEG), all 50,000 training images, 32 px.

Teacher: the IG-KD authors' released CIFAR-10 network (Hernandez et al. 2025; its checkpoint file is an argument,
58.7 M MACs), as it is and
fine-tuned for a few epochs on the JPEG training split; the one with the better *validation* accuracy teaches.
Students at equal MACs (no more than the truncated student's 14.9 M, 25.4 % of the teacher's):

- ``truncated``: the paper's way, the teacher without its last modules (``paper-truncated``, removed = 15);
- ``nas``: the best student TPE finds in an mbv2 space under the same MACs cap, with short training, selected on
  the validation split only.

Each student is trained with CE alone, KD, KD+AT, KD+IG and KD+IG+AT, ``--seeds`` seeds, equal epochs, through the
product's own search engine (one study per student and method, the candidate fixed). Reported: test accuracy mean,
std, 95 % bootstrap CI, Welch's t against CE alone with Holm's correction, params, MACs, latency at batch 1 and 64
in PyTorch and ONNX Runtime. Selection never touches the test split.

Every stage is resumable: studies live in ``--work`` (outside the repository) and each finished stage is written
to ``benchmarks/results/distill_cifar10.json`` at once, so a rerun of the same command continues where it stopped.

    python benchmarks/distill_cifar10.py --estimate            # the cost of each stage, measured on this machine
    nohup python benchmarks/distill_cifar10.py --work /work/runs/distill-cifar10 &
    python benchmarks/distill_cifar10.py --markdown            # the docs table from the JSON
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from automl_kd import Search, get_plugin_manager, load_config
from automl_kd.cache import ArtifactCache, atomic_write
from automl_kd.compare.stats import holm, welch
from automl_kd.config import TeacherConfig
from automl_kd.data import load_data, unpack_imagefolder
from automl_kd.distill.ig.attribution import IGSettings, attribution_maps
from automl_kd.distill.ig.inference import inference_copy
from automl_kd.distill.loop import accuracy
from automl_kd.distill.teacher import get_teacher
from automl_kd.distill.teacher_info import teacher_info, teacher_normalizer
from automl_kd.engine.repeat import run_index
from automl_kd.metrics import measure_latency
from automl_kd.precision import cpu_has_fast_bf16, cpu_name
from automl_kd.results.leaderboard import trial_state
from automl_kd.trial_attrs import metrics_of

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import common as helpers  # noqa: E402  (beside this script: the benchmarks' shared helpers)
from common import markdown_table, mean_ci, welch_cell  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
RELEASED = SHARED / "igkd-students" / "CIFAR10_KD_IG_AT_T2.5_alpha0.01_p0.1_gamma0.8_TestAcc92.42.pt"
RESULT = REPO / "benchmarks" / "results" / "distill_cifar10.json"
TEACHER_REMOVED = 5  # the released network: paper-truncated with its last 5 modules removed
PLACEHOLDER = "placeholder: this run is in distill_cifar10.json (study lost)"  # a run of a lost study
STUDENT_REMOVED = 15  # the deepest truncation within a quarter of the teacher's MACs (25.4 %, 16,042 params)
#: priority order of the grid (the issue's): NAS vs truncated at equal MACs with CE and KD+IG+AT, then the rest
METHODS = ["ce", "kd+ig+at", "kd", "kd+at", "kd+ig"]
PRIORITY = {"ce": 0, "kd+ig+at": 0, "kd": 1, "kd+at": 1, "kd+ig": 1}
#: the mbv2 space of the NAS students: MobileNetV2's stages, a stride-2 second stage instead of the stem, narrower
#: widths, no head conv; most of its candidates cost 4-23 M MACs at 32 px
NAS_SPACE = {
    "name": "mbv2",
    "options": {
        "stages": [[16, 1, 1], [24, 2, 2], [32, 2, 3], [64, 2, 3], [96, 1, 2], [160, 2, 2]],
        "widths": [0.35, 0.5, 0.75, 1.0],
        "stem_channels": 16,
        "head_channels": None,
    },
}
#: the recipe every student trains with (fixed in advance; nothing is tuned on the test split)
RECIPE = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 5e-4, "schedule": "cosine", "batch_size": 128}
KD = {"alpha": 0.5, "temperature": 4.0}
IG = {"p": 0.1, "w": 0.5, "precompute": "needed"}  # maps only for the images a cached view overlays
AT = {"gamma": 0.8}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_result() -> dict[str, Any]:
    return json.loads(RESULT.read_text()) if RESULT.exists() else {}


def save_result(r: dict[str, Any]) -> None:
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(RESULT, (json.dumps(r, indent=1) + "\n").encode())


def unpack(work: Path) -> Path:
    root = work / "cifar-10-jpeg"
    if not (root / "test").is_dir():
        root = unpack_imagefolder(SHARED / "cifar-10-jpeg" / "cifar-10-jpeg.tar.gz", work)
    return root


#: --smoke: a few minutes end to end on small subsets, to check the script (its figures mean nothing)
SMOKE: dict[str, Any] = {}


def data_cfg(root: Path) -> dict[str, Any]:
    cfg = {"dataset": "imagefolder", "root": str(root), "val_fraction": 0.1, "crop_padding": 4, "flip": True}
    return {**cfg, **SMOKE.get("data", {})}


def teacher_block(finetune_epochs: int) -> dict[str, Any]:
    block: dict[str, Any] = {
        "space": "paper-truncated",
        "params": {"removed": TEACHER_REMOVED},
        "checkpoint": str(RELEASED),
        "input": "unit",
        "outputs": {"mode": "auto", "views": 4},
    }
    if finetune_epochs:
        block["finetune"] = True
        block["train"] = {
            "epochs": finetune_epochs,
            "batch_size": 128,
            "lr": 3e-4,
            "optimizer": "adamw",
            "weight_decay": 5e-4,
            **SMOKE.get("teacher_train", {}),
        }
    return block


def cached_teacher(data: Any, finetune_epochs: int) -> torch.nn.Module:
    """The teacher of ``teacher_block(finetune_epochs)`` on the CPU, from the cache or trained now; always
    ``precision: auto``, as in every cell, so each stage reuses the same cached weights."""
    cfg = TeacherConfig.model_validate(teacher_block(finetune_epochs))
    return get_teacher(
        cfg, data, torch.device("cpu"), ArtifactCache.default(), get_plugin_manager(), precision="auto"
    )


# -- stage 1: the teacher -----------------------------------------------------------------------------------------
def stage_teacher(root: Path, finetune_epochs: int, r: dict[str, Any]) -> dict[str, Any]:
    """The released network as it is and fine-tuned; the better one on the validation split teaches."""
    if "teacher" in r and r["teacher"].get("finetune_epochs") == finetune_epochs:
        return r["teacher"]
    data = load_data(load_config({"data": data_cfg(root)}).data)
    # a candidate already measured (an interrupted run) is kept: each is saved as soon as it is known
    out: dict[str, Any] = r.get("teacher_partial") or {"finetune_epochs": finetune_epochs, "candidates": {}}
    if out.get("finetune_epochs") != finetune_epochs:
        kept = {k: v for k, v in out["candidates"].items() if k == "released"}
        out = {"finetune_epochs": finetune_epochs, "candidates": kept}
    for label, epochs in (("released", 0), ("fine-tuned", finetune_epochs)):
        if (label == "fine-tuned" and not epochs) or label in out["candidates"]:
            continue
        t0 = time.perf_counter()
        teacher = cached_teacher(data, epochs)
        norm = teacher_normalizer(teacher, data)
        info = teacher_info(teacher)
        row = {
            "val_acc": accuracy(teacher, data.val, data, normalize=norm, precision="fp32"),
            "test_acc": accuracy(teacher, data.test, data, normalize=norm, precision="fp32"),  # report only
            "source": info.source if info else None,
            "seconds": round(time.perf_counter() - t0, 1),
            "config": helpers.portable(
                {"teacher": teacher_block(epochs)},
                checkpoint=f"the IG-KD authors' released network, {RELEASED.name}",
            )["teacher"],
        }
        out["candidates"][label] = row
        r["teacher_partial"] = out
        save_result(r)
        log(
            f"teacher {label}: val {row['val_acc']:.2f} %, test {row['test_acc']:.2f} % ({row['seconds']:.0f} s)"
        )
    out["chosen"] = max(out["candidates"], key=lambda k: out["candidates"][k]["val_acc"])
    out["chosen_finetune_epochs"] = finetune_epochs if out["chosen"] == "fine-tuned" else 0
    r.pop("teacher_partial", None)
    r["teacher"] = out
    save_result(r)
    return out


# -- stage 2: IG integration steps ----------------------------------------------------------------------------------
def stage_ig_steps(root: Path, teacher_epochs: int, r: dict[str, Any], n: int = 200) -> dict[str, Any]:
    n = 8 if SMOKE else n
    """Completeness error of IG at 8, 16 and 32 Gauss-Legendre steps on ``n`` validation images; the fewest steps
    whose median relative error is under 15 % are used (the error halves with each doubling here)."""
    if "ig_steps" in r and r["ig_steps"].get("teacher_finetune_epochs") == teacher_epochs:
        return r["ig_steps"]
    data = load_data(load_config({"data": data_cfg(root)}).data)
    teacher = cached_teacher(data, teacher_epochs)
    fast = inference_copy(teacher)
    norm = teacher_normalizer(teacher, data)
    x01, y = data.val.x[:n].float().div(255), data.val.y[:n]
    mean = torch.tensor(data.mean)
    rows = {}
    for steps in (8, 16, 32):
        t0 = time.perf_counter()
        _, err, gap = attribution_maps(fast, x01, y, norm, mean, IGSettings(steps=steps))
        dt = time.perf_counter() - t0
        rel = (err / gap.clamp_min(1e-6)).numpy()
        rows[str(steps)] = {
            "median_rel_error": float(np.median(rel)),
            "mean_rel_error": float(rel.mean()),
            "images_per_s": round(n / dt, 2),
            "hours_for_train_split": round(len(data.train) / (n / dt) / 3600, 2),
        }
        log(
            f"IG {steps} steps: median relative completeness error {np.median(rel):.4f}, {n / dt:.1f} images/s"
        )
    chosen = next((s for s in (8, 16, 32) if rows[str(s)]["median_rel_error"] < 0.15), 32)
    chosen = SMOKE.get("ig_steps", chosen)
    out = {"teacher_finetune_epochs": teacher_epochs, "images": n, "steps": rows, "chosen": chosen}
    r["ig_steps"] = out
    save_result(r)
    return out


# -- stage 3: the NAS student -------------------------------------------------------------------------------------
def base_config(root: Path, work: Path, name: str, teacher_epochs: int, epochs: int) -> dict[str, Any]:
    return {
        "name": name,
        "seed": 0,
        "run_dir": str(work / "studies" / name),
        "precision": "auto",
        "data": data_cfg(root),
        "space": {"name": "paper-truncated", "options": {}},
        "search": {"n_trials": 1, "proposer": {"name": "random"}},
        "evaluator": {
            "name": "train",
            "options": {**RECIPE, "epochs": epochs, "latency": False, **SMOKE.get("student", {})},
        },
        "teacher": teacher_block(teacher_epochs),
    }


def stage_nas(
    root: Path, work: Path, r: dict[str, Any], trials: int, fraction: float, cap: int
) -> dict[str, Any]:
    """TPE in the mbv2 space under the MACs cap, each candidate trained 1 epoch on ``fraction`` of the training
    split with CE alone; the best by validation accuracy is the NAS student."""
    raw = base_config(root, work, "nas-search", 0, 1)
    raw.pop("teacher")
    raw["space"] = NAS_SPACE
    raw["search"] = {
        "n_trials": trials,
        "proposer": {"name": "optuna", "options": {"sampler": "tpe"}},
        "constraints": {"macs": [0, cap]},
    }
    raw["evaluator"]["options"]["train_fraction"] = fraction
    t0 = time.perf_counter()
    study = Search(load_config(raw)).run()
    done = [t for t in study.get_trials() if trial_state(t) == "complete"]
    if not done:
        raise SystemExit("nas: no trial completed; see the study in " + raw["run_dir"])
    best = max(done, key=lambda t: t.user_attrs["val_acc"])
    out = {
        "trials": len(study.get_trials()),
        "completed": len(done),
        "train_fraction": fraction,
        "macs_cap": cap,
        "best": {
            "arch": best.params,
            **{k: metrics_of(best.user_attrs).get(k) for k in ("val_acc", "params", "macs")},
        },
        "all": [
            {
                "number": t.number,
                **{k: metrics_of(t.user_attrs).get(k) for k in ("val_acc", "params", "macs")},
            }
            for t in done
        ],
        "seconds": round(time.perf_counter() - t0, 1),
        "space": NAS_SPACE,
    }
    r["nas"] = out
    save_result(r)
    log(
        f"nas: best of {len(done)} has val {out['best']['val_acc']:.2f} % at {out['best']['macs'] / 1e6:.2f} M MACs"
    )
    return out


# -- stage 4: the grid --------------------------------------------------------------------------------------------
def augmenters(method: str, ig_steps: int) -> list[dict[str, Any]]:
    return helpers.augmenters(method, KD, {**IG, "steps": ig_steps}, AT)


def run_cell(
    root: Path,
    work: Path,
    student: str,
    params: dict[str, Any],
    method: str,
    seeds: int,
    epochs: int,
    teacher_epochs: int,
    ig_steps: int,
    recorded: list[dict[str, Any]],
    save: Any,
    precision: str = "auto",
) -> list[dict[str, Any]]:
    """``seeds`` runs of one fixed student with one method, in one resumable study.

    ``recorded`` holds the runs the JSON already has; ``save(runs)`` is called after every run, so a stop loses at
    most the run in progress. A study lost with its machine (``--work`` gone) is started again with one placeholder
    per recorded run, so trial numbers continue where the JSON stopped, and those runs are not run again. The runs
    are ``Search.repeat``'s: the k-th run of a cell always has the seed of trial k (a killed run is queued again with
    its own seed).
    """
    name = f"{student}-{method.replace('+', '_')}-e{epochs}"
    if len(recorded) >= seeds:
        return recorded[:seeds]
    raw = base_config(root, work, name, teacher_epochs, epochs)
    raw["precision"] = precision
    if student == "nas" or student.startswith("random"):
        raw["space"] = NAS_SPACE
    raw["augmenters"] = augmenters(method, ig_steps)
    search = Search(load_config(raw))
    keys = (
        "val_acc",
        "test_acc",
        "params",
        "macs",
        "seed",
        "train_seconds",
        "loss_terms",
        "teacher_fingerprint",
        "precision",
    )
    missing = len(recorded) - len(search.study.get_trials())
    for _ in range(max(0, missing)):
        search.study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.FAIL,
                user_attrs={"fail_reason": PLACEHOLDER},
            )
        )
    # runs recorded only in the JSON (their study lost) are not run again: the study goes on from the next one
    first = sum(t.user_attrs.get("fail_reason") == PLACEHOLDER for t in search.study.get_trials())
    seen = {x["seed"] for x in recorded}  # a run of a surviving study may be in the JSON already

    def runs_of(trials: list[optuna.trial.FrozenTrial]) -> list[dict[str, Any]]:
        new = [metrics_of(t.user_attrs) for t in trials if t.user_attrs.get("seed") not in seen]
        return (recorded + [{k: m[k] for k in keys if k in m} for m in new])[:seeds]

    def complete() -> list[optuna.trial.FrozenTrial]:
        trials = search.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        return sorted((t for t in trials if run_index(t) >= first), key=run_index)

    t0 = time.perf_counter()

    def on_run(_trial: optuna.trial.FrozenTrial) -> None:
        nonlocal t0
        runs = runs_of(complete())
        save(runs)
        log(f"  {name}: run {len(runs)}/{seeds} in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()

    runs = runs_of(complete())
    if runs:
        save(runs)
    # run k of the cell has the seed of trial k whatever was interrupted (a killed run is queued again with its
    # own seed), so every cell runs the same seeds
    return runs_of(search.repeat(params, seeds, first=first, on_run=on_run))


def grid_teacher(root: Path, teacher_epochs: int, r: dict[str, Any]) -> None:
    """The teacher the KD cells use, trained again when the cache is gone (a new machine): its fingerprint and
    accuracy go into the JSON beside the teacher stage's, so a reproduced teacher can be told from the first."""
    data = load_data(load_config({"data": data_cfg(root)}).data)
    teacher = cached_teacher(data, teacher_epochs)
    info = teacher_info(teacher)
    fp = info.fingerprint if info else None
    used = r.setdefault("grid_teachers", [])
    if any(u["fingerprint"] == fp for u in used):
        return
    norm = teacher_normalizer(teacher, data)
    row = {
        "fingerprint": fp,
        "source": info.source if info else None,
        "val_acc": accuracy(teacher, data.val, data, normalize=norm, precision="fp32"),
        "test_acc": accuracy(teacher, data.test, data, normalize=norm, precision="fp32"),  # report only
        "at": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_name(),
        "fast_bf16": cpu_has_fast_bf16(),  # what precision: auto trained it in
    }
    used.append(row)
    save_result(r)
    log(f"grid teacher {str(fp)[:12]}: val {row['val_acc']:.2f} %, test {row['test_acc']:.2f} %")


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return helpers.summarise(runs, "ce")


def compare_students(grid: dict[str, Any]) -> dict[str, Any]:
    """The first priority's question: NAS against truncated student at equal MACs, per method, Welch's t on test
    accuracy with Holm's correction over the methods both students have at least 2 runs of."""
    if not {"nas", "truncated"} <= set(grid):
        return {}
    nas, trunc = grid["nas"]["runs"], grid["truncated"]["runs"]
    out: dict[str, Any] = {}
    for m in METHODS:
        if m in nas and m in trunc:
            a = np.array([x["test_acc"] for x in nas[m]])
            b = np.array([x["test_acc"] for x in trunc[m]])
            out[m] = {"n": [len(a), len(b)], "diff": float(a.mean() - b.mean()), **welch(a, b)}
    tested = [m for m in out if not np.isnan(out[m]["p"])]
    for m, adj in zip(tested, holm([out[m]["p"] for m in tested]), strict=True):
        out[m]["p_holm"] = adj
    return out


# -- stage 6: the search's pick against random students of the same space under the same MACs cap -------------
FIDELITY = REPO / "benchmarks" / "results" / "fidelity_mbv2.json"
RANDOM_METHODS = ("ce", "kd")


def random_students(k: int) -> list[dict[str, Any]]:
    """The first ``k`` candidates of the fidelity study (``fidelity_mbv2.py``): drawn uniformly from the NAS space
    under the same MACs cap, with their full-recipe CE run (the grid's CE recipe in fp32) when it is there."""
    f = json.loads(FIDELITY.read_text()) if FIDELITY.exists() else {}
    return f.get("candidates", [])[:k]


def mean_diff_ci(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean of ``a`` minus mean of ``b`` with its 95 % Welch (Satterthwaite) interval and Welch's t-test."""
    from scipy import stats

    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return {"diff": diff, "ci95": [float("nan"), float("nan")], **welch(a, b)}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = float(np.sqrt(va + vb))
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else float("inf")
    half = float(stats.t.ppf(0.975, dof)) * se
    return {"diff": diff, "ci95": [diff - half, diff + half], **welch(a, b)}


def search_vs_random(r: dict[str, Any]) -> dict[str, Any]:
    """Per method, the NAS pick's test accuracy (its seeds) against the random students' (one run each)."""
    pick = r.get("grid", {}).get("nas", {}).get("runs", {})
    rand = r.get("random_students", {}).get("students", [])
    out: dict[str, Any] = {}
    for m in RANDOM_METHODS:
        a = np.array([x["test_acc"] for x in pick.get(m, [])])
        b = np.array([s["runs"][m][0]["test_acc"] for s in rand if s.get("runs", {}).get(m)])
        if len(a) and len(b):
            out[m] = {"n": [len(a), len(b)], **mean_diff_ci(a, b)}
    return out


def stage_random(
    root: Path, work: Path, r: dict[str, Any], k: int, epochs: int, teacher_epochs: int, ig_steps: int
) -> None:
    """``k`` random students with CE (the fidelity study's full-recipe run) and KD (one run each, fp32, the KD
    cells' recipe and teacher), then the comparison with the NAS pick."""
    chosen = random_students(k)
    if len(chosen) < k:
        raise SystemExit(f"random: the fidelity study has {len(chosen)} candidates, {k} wanted")
    block = r.setdefault("random_students", {"students": []})
    block["source"] = "the first candidates of fidelity_mbv2.json (uniform draws under the MACs cap)"
    for i, c in enumerate(chosen):
        if i >= len(block["students"]):
            block["students"].append(
                {"arch": c["arch"], "params": c["params"], "macs": c["macs"], "runs": {}}
            )
        s = block["students"][i]
        full = c.get("runs", {}).get("full")
        if full and "ce" not in s["runs"]:
            s["runs"]["ce"] = [{**full[0], "precision": "fp32", "from": "fidelity_mbv2.json"}]
        for m in RANDOM_METHODS:
            if m == "ce" and "ce" in s["runs"]:
                continue
            if m != "ce":
                grid_teacher(root, teacher_epochs, r)

            def save(runs: list[dict[str, Any]], s: dict[str, Any] = s, m: str = m) -> None:
                s["runs"][m] = runs
                r["search_vs_random"] = search_vs_random(r)
                save_result(r)

            run_cell(
                root,
                work,
                f"random{i}",
                c["arch"],
                m,
                1,
                epochs,
                teacher_epochs,
                ig_steps,
                s["runs"].get(m, []),
                save,
                precision="fp32",
            )
    r["search_vs_random"] = search_vs_random(r)
    save_result(r)


# -- stage 5: cost of the students: params, MACs, latency in PyTorch and ONNX Runtime ------------------------------
def ort_latency(model: torch.nn.Module, shape: tuple[int, int, int], work: Path) -> dict[str, float]:
    import onnxruntime as ort

    path = work / "latency.onnx"
    model = model.eval()
    x = torch.randn(2, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=True,
            input_names=["image"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            external_data=False,
            verbose=False,
        )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = {}
    for bs in (1, 64):
        feed = {"image": np.random.default_rng(0).standard_normal((bs, *shape), dtype=np.float32)}
        for _ in range(3):
            sess.run(None, feed)
        times = []
        start = time.perf_counter()
        while len(times) < 10 and (len(times) < 3 or time.perf_counter() - start < 5):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append((time.perf_counter() - t0) * 1000)
        out[f"ort_ms_b{bs}"] = round(float(np.median(times)), 4)
    return out


def stage_costs(work: Path, nas_params: dict[str, Any], r: dict[str, Any]) -> dict[str, Any]:
    pm = get_plugin_manager()
    shape = (3, 32, 32)
    host = {"num_classes": 10, "in_chans": 3, "input_size": 32}
    truncated = pm.spaces.create("paper-truncated", {}, **host)
    nas = pm.spaces.create("mbv2", NAS_SPACE["options"], **host)
    models = {
        "teacher": (truncated, {"removed": TEACHER_REMOVED}),
        "truncated": (truncated, {"removed": STUDENT_REMOVED}),
        "nas": (nas, nas_params),
    }
    out: dict[str, Any] = {}
    cpu = torch.device("cpu")
    for label, (space, params) in models.items():
        model = space.build(space.validate(params)).eval()
        with torch.no_grad():
            row = {
                **space.cost(params).as_dict(),
                **measure_latency(model, shape, cpu),
                **ort_latency(model, shape, work),
            }
        out[label] = row
    curve = {}
    for k in range(TEACHER_REMOVED, 18):
        c = truncated.cost({"removed": k})
        curve[str(k)] = {"params": c.params, "macs": c.macs}
    out["truncation_curve"] = curve
    out["threads"] = torch.get_num_threads()
    r["costs"] = out
    save_result(r)
    return out


# -- the markdown table --------------------------------------------------------------------------------------------
def run_teachers(method: str, runs: list[dict[str, Any]]) -> str:
    """Which fine-tuned teacher each run distilled from (fingerprint prefix), in run order. A fingerprint added to a
    run afterwards, from the session's log, is marked so; a run with none says so rather than guess."""
    if method == "ce":
        return "none (CE)"

    def one(x: dict[str, Any]) -> str:
        fp = x.get("teacher_fingerprint")
        if not fp:
            return "not recorded"
        return str(fp)[:6] + (" (from the log)" if x.get("teacher_fingerprint_from") else "")

    return ", ".join(one(x) for x in runs)


def markdown(r: dict[str, Any]) -> str:
    if not r:
        return f"no results in {RESULT}"
    lines = []
    t = r.get("teacher")
    if t:
        cands = "; ".join(
            f"{k}: val {v['val_acc']:.2f} %, test {v['test_acc']:.2f} %" for k, v in t["candidates"].items()
        )
        lines += [
            f"Teacher (CIFAR-10 (JPEG), fp32 evaluation): {cands}; chosen by validation: **{t['chosen']}**.",
            "",
        ]
    used = r.get("grid_teachers") or []
    if used:  # fine-tuned again on each new machine (bf16 or fp32, as `precision: auto` finds the CPU)
        rows = "; ".join(
            f"{str(u['fingerprint'])[:12]} (val {u['val_acc']:.2f} %, test {u['test_acc']:.2f} %"
            + (f", {u['cpu']}, {'bf16' if u['fast_bf16'] else 'fp32'}" if "cpu" in u else "")
            + ")"  # when each was trained is in the JSON's `at`, not in the docs
            for u in used
        )
        lines += [
            f"Fine-tuned teachers of the KD cells, one per new machine (weight fingerprint): {rows}.",
            "",
        ]
    ig = r.get("ig_steps")
    if ig:
        cells = ", ".join(
            f"{s} steps {v['median_rel_error']:.1%} ({v['hours_for_train_split']:.1f} h for the training split)"
            for s, v in ig["steps"].items()
        )
        lines += [
            f"IG median relative completeness error on {ig['images']} validation images: {cells}; "
            f"chosen: {ig['chosen']} steps.",
            "",
        ]
    nas = r.get("nas")
    if nas:
        b = nas["best"]
        lines += [
            f"NAS student: best of {nas['completed']} TPE trials (1 epoch on {nas['train_fraction']:.0%} of the "
            f"training split, CE alone, MACs <= {nas['macs_cap'] / 1e6:.2f} M): val {b['val_acc']:.2f} %, "
            f"{b['params']:,} params, {b['macs'] / 1e6:.2f} M MACs.",
            "",
        ]
    grid = r.get("grid", {})
    if grid:
        rows = []
        for student, block in grid.items():
            for m in METHODS:
                row = block.get("summary", {}).get(m)
                if not row:
                    rows.append([student, m, "0", "not run yet", "—", "—"])
                    continue
                cells = [mean_ci(row), welch_cell(row.get("welch_vs_ce")), run_teachers(m, block["runs"][m])]
                rows.append([student, m, str(row["n"]), *cells])
        lines += [
            f"Students ({r.get('epochs')} epochs each, {r.get('seeds')} seeds; test accuracy %: mean ± std "
            "[95 % bootstrap CI]; Welch's t / p / Holm-adjusted p against CE alone of the same student):",
            "",
            *markdown_table(
                ["student", "method", "runs", "test %", "t / p / p Holm vs CE", "teacher of each run"], rows
            ),
        ]
    vs = compare_students(grid)
    if vs:
        lines += [
            "",
            "NAS against truncated student at equal MACs (test accuracy, NAS minus truncated; Welch's t / p / "
            "Holm-adjusted p over the methods):",
            "",
            *markdown_table(
                ["method", "runs (NAS, truncated)", "difference, points", "t / p / p Holm"],
                [
                    [
                        m,
                        f"{c['n'][0]}, {c['n'][1]}",
                        f"{c['diff']:+.2f}",
                        welch_cell(c, missing="— (needs 2 runs of each)"),
                    ]
                    for m, c in vs.items()
                ],
            ),
        ]
    costs = r.get("costs")
    if costs:
        lines += [
            "",
            *markdown_table(
                ["network", "params", "MACs", "PyTorch ms b1 / b64", "ONNX Runtime ms b1 / b64"],
                [
                    [
                        k,
                        f"{c['params']:,}",
                        f"{c['macs'] / 1e6:.2f} M",
                        f"{c['latency_ms_b1']:.2f} / {c['latency_ms_b64']:.1f}",
                        f"{c['ort_ms_b1']:.2f} / {c['ort_ms_b64']:.1f}",
                    ]
                    for k, c in ((k, costs[k]) for k in ("teacher", "truncated", "nas"))
                ],
            ),
        ]
        curve = costs.get("truncation_curve", {})
        if curve:
            t_macs = costs["teacher"]["macs"]
            n = costs["nas"]
            rows = [
                [
                    f"paper-truncated, removed = {k}",
                    f"{c['params']:,}",
                    f"{c['macs'] / 1e6:.2f} M",
                    f"{c['macs'] / t_macs:.1%}",
                ]
                for k, c in curve.items()
            ]
            rows.append(
                ["NAS (mbv2)", f"{n['params']:,}", f"{n['macs'] / 1e6:.2f} M", f"{n['macs'] / t_macs:.1%}"]
            )
            lines += [
                "",
                "Truncation cuts parameters much faster than MACs (the paper's way), against the NAS student at the "
                "same MACs cap:",
                "",
                *markdown_table(["student", "params", "MACs", "MACs / teacher"], rows),
            ]
    svr = r.get("search_vs_random")
    if svr:
        k = len(r.get("random_students", {}).get("students", []))
        rows = [
            [
                m,
                f"{v['n'][0]}, {v['n'][1]}",
                f"{v['diff']:+.2f}",
                f"[{v['ci95'][0]:+.2f}, {v['ci95'][1]:+.2f}]",
                f"{v['t']:.2f} / {v['p']:.3f}",
            ]
            for m, v in svr.items()
        ]
        lines += [
            "",
            f"The NAS pick against {k} random students of the same space under the same MACs cap (test accuracy, "
            "pick minus random; the pick's seeds against one run per random student; 95 % Welch interval):",
            "",
            *markdown_table(
                ["method", "runs (pick, random)", "difference, points", "95 % CI", "Welch's t / p"], rows
            ),
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "automl-kd-distill-cifar10"),
        help="studies, unpacked data (outside the repository; keep it to resume)",
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6, help="student epochs, equal for every method")
    ap.add_argument(
        "--finetune-epochs", type=int, default=2, help="teacher fine-tuning epochs (0: released only)"
    )
    ap.add_argument("--nas-trials", type=int, default=16)
    ap.add_argument("--nas-fraction", type=float, default=0.2)
    ap.add_argument("--priority", type=int, default=1, help="0: only NAS vs truncated with CE and KD+IG+AT")
    ap.add_argument(
        "--stages",
        default="teacher,ig,nas,costs,grid",
        help="random: the NAS pick against --random-students random students (after the fidelity study)",
    )
    ap.add_argument("--random-students", type=int, default=3)
    ap.add_argument(
        "--cells",
        default="",
        help="grid cells in this order, e.g. nas:kd+ig+at,truncated:ce (default: the priority order)",
    )
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny subsets, results into --work (checks the script)"
    )
    args = ap.parse_args()
    global RESULT
    if args.smoke:
        SMOKE.update(
            data={"train_size": 400, "test_size": 200},
            ig_steps=2,
            teacher_train={"max_steps_per_epoch": 3},
            student={"max_steps_per_epoch": 3},
        )
        RESULT = Path(args.work) / "smoke.json"
    r = load_result()
    if args.markdown:
        print(markdown(r))
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the library's progress (teacher epochs, IG and teacher-view precomputes) into the log, with the time
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
    logging.getLogger("automl_kd").handlers[:] = [handler]
    logging.getLogger("automl_kd").setLevel(logging.INFO)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    root = unpack(work)
    r.update(
        {
            "dataset": "CIFAR-10 (JPEG): 45,000 train / 5,000 validation (stratified, from the training set) / "
            "10,000 test, 32 px",
            "command": "python benchmarks/distill_cifar10.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()} {cpu_name()}",
            "torch_threads": torch.get_num_threads(),
            "recipe": RECIPE,
            "kd": KD,
            "ig": IG,
            "at": AT,
        }
    )
    if r.get("epochs") not in (None, args.epochs) or r.get("seeds") not in (None, args.seeds):
        raise SystemExit(
            f"{RESULT} holds {r.get('epochs')} epochs x {r.get('seeds')} seeds; move it away to change"
        )
    r["epochs"], r["seeds"] = args.epochs, args.seeds
    save_result(r)
    teacher = stage_teacher(root, args.finetune_epochs, r) if "teacher" in stages else r["teacher"]
    t_epochs = teacher["chosen_finetune_epochs"]
    ig = stage_ig_steps(root, t_epochs, r) if "ig" in stages else r["ig_steps"]
    pm = get_plugin_manager()
    cap = (
        pm.spaces.create("paper-truncated", {}, num_classes=10, in_chans=3, input_size=32)
        .cost({"removed": STUDENT_REMOVED})
        .macs
    )
    nas = (
        (r.get("nas") or stage_nas(root, work, r, args.nas_trials, args.nas_fraction, cap))
        if "nas" in stages
        else r["nas"]
    )
    if "costs" in stages:
        stage_costs(work, nas["best"]["arch"], r)
    if "grid" in stages:
        students = {"nas": nas["best"]["arch"], "truncated": {"removed": STUDENT_REMOVED}}
        cells = (
            [tuple(c.split(":")) for c in args.cells.split(",")]
            if args.cells
            else [
                (student, method)
                for level in range(args.priority + 1)
                for method in METHODS
                if PRIORITY[method] == level
                for student in students
            ]
        )
        for student, method in cells:
            if student not in students or method not in METHODS:
                raise SystemExit(
                    f"--cells: {student}:{method} is not a cell (students {list(students)}, "
                    f"methods {METHODS})"
                )
            block = r.setdefault("grid", {}).setdefault(student, {"runs": {}})
            block["params"] = students[student]
            recorded = block["runs"].get(method, [])
            if method != "ce" and len(recorded) < args.seeds:
                grid_teacher(root, t_epochs, r)

            def save(runs: list[dict[str, Any]], block: dict[str, Any] = block, method: str = method) -> None:
                block["runs"][method] = runs
                block["summary"] = summarise(block["runs"])
                r["nas_vs_truncated"] = compare_students(r["grid"])
                save_result(r)

            t0 = time.perf_counter()
            runs = run_cell(
                root,
                work,
                student,
                students[student],
                method,
                args.seeds,
                args.epochs,
                t_epochs,
                ig["chosen"],
                recorded,
                save,
            )
            log(f"{student} {method}: {len(runs)} runs, {time.perf_counter() - t0:.0f} s")
    if "random" in stages:
        stage_random(root, work, r, args.random_students, args.epochs, t_epochs, ig["chosen"])
    print(markdown(r))


if __name__ == "__main__":
    main()
