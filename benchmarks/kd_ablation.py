"""The IG-KD paper's ablation (Hernandez et al. 2025: KD, IG and AT in every combination), done properly, through
the product's own search engine.

Student alone, KD, IG, AT and every combination (8 methods), N seeds each, on the ``paper-truncated`` space: the
paper's MobileNetV2 teacher and its student with the last k modules removed. Each run is one trial of a study whose
candidate is fixed (``removed = k``), so runs use the same training loop, caches and records as any search.

- Selection never touches the test split: every hyperparameter is fixed in advance by the recipe, each run trains
  for a fixed number of epochs and is scored on the validation split; the test accuracy is reported only.
- Per method: mean, std and a 95 % bootstrap interval of test accuracy over seeds; Welch's t-test against the
  student alone (the runs are not paired: different seeds give different initialisations and batch orders).
- ``--parts sweep``: student alone and KD at all 8 truncation depths (compression 2.2x .. 1122x).
- ``--parts monte-carlo``: each run trains on a fresh stratified random 80 % of the training split, drawn from its
  seed (the paper's Monte Carlo design; evaluator option ``train_fraction``), with the teacher, its caches, the
  validation and the test split those of the whole split.
- Latency of teacher and student at batch 1 and 64 after warm-up, synchronised (``automl_kd.metrics``).

Two recipes: ``paper`` (Adam 1e-3, no schedule, batch 64, alpha 0.01, T 2.5, p 0.1, w 0.5, gamma 0.8) and ``ours``
(AdamW with a cosine schedule, alpha 0.5, T 4; the other knobs as the paper's).

    python benchmarks/kd_ablation.py --scale fmnist --seeds 5          # CPU scale: about 45 min on 2 cores
    python benchmarks/kd_ablation.py --scale fmnist --parts sweep,monte-carlo
    python benchmarks/kd_ablation.py --scale cifar10-jpeg --seeds 5    # CIFAR-10 (JPEG), beside the checkout
    python benchmarks/kd_ablation.py --scale paper-gpu --seeds 10      # the full recipe, for a GPU
    python benchmarks/kd_ablation.py --scale fmnist --markdown         # the docs tables from the JSON files

Each part writes ``benchmarks/results/kd_ablation_<scale>[_sweep|_montecarlo].json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from automl_kd import Search, load_config
from automl_kd.data import unpack_imagefolder
from automl_kd.metrics import measure_latency, resolve_device
from automl_kd.precision import cpu_name
from automl_kd.trial_attrs import metrics_of

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import common as helpers  # noqa: E402  (beside this script: the benchmarks' shared helpers)
from common import markdown_table, mean_ci, welch_cell  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SWEEP_DEPTHS = [3, 5, 7, 9, 11, 13, 15, 17]
METHODS = ["student", "kd", "ig", "at", "kd+ig", "kd+at", "ig+at", "kd+ig+at"]
PAPER_MEANS = {
    "student": 91.18,
    "kd": 91.62,
    "ig": 91.35,
    "at": 91.16,
    "kd+ig": 92.02,
    "kd+at": 91.75,
    "ig+at": 91.46,
    "kd+ig+at": 91.86,
}  # CIFAR-10 test %, means of 10 runs, as the IG-KD paper reports them

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"optimizer": "adam", "lr": 1e-3, "schedule": "none", "batch_size": 64, "alpha": 0.01, "T": 2.5},
    "ours": {
        "optimizer": "adamw",
        "lr": 3e-3,
        "schedule": "cosine",
        "batch_size": 64,
        "alpha": 0.5,
        "T": 4.0,
    },
}

#: scale -> data, epochs, teacher training, IG steps, truncation, stem stride. The CPU scales are sized so that the
#: default run (2 recipes x 8 methods x 5 seeds) finishes within about 60 minutes on a 2-core machine.
#: the CPU scales share everything but the dataset and its crop padding
_CPU_SCALE: dict[str, Any] = {
    "data": {"train_size": 5000, "test_size": 5000, "val_fraction": 0.2, "flip": True},
    "epochs": 3,
    "teacher_epochs": 25,
    "ig_steps": 8,
    "stem_stride": 2,
    "removed": 5,
}
SCALES: dict[str, dict[str, Any]] = {
    "fmnist": {**_CPU_SCALE, "data": {**_CPU_SCALE["data"], "dataset": "fashion-mnist", "crop_padding": 2}},
    "cifar10-jpeg": {
        **_CPU_SCALE,
        "data": {**_CPU_SCALE["data"], "dataset": "imagefolder", "crop_padding": 4},
    },
    "paper-gpu": {
        "data": {
            "dataset": "cifar10",
            "root": "data/cifar10",
            "download": True,
            "val_fraction": 0.1,
            "crop_padding": 4,
            "flip": True,
        },
        "epochs": 100,
        "teacher_epochs": 100,
        "ig_steps": 50,
        "stem_stride": 1,
        "removed": 5,
    },
}


def augmenters(method: str, recipe: dict[str, Any], ig_steps: int) -> list[dict[str, Any]]:
    kd = {"alpha": recipe["alpha"], "temperature": recipe["T"]}
    return helpers.augmenters(method, kd, {"steps": ig_steps, "p": 0.1, "w": 0.5}, {"gamma": 0.8})


def run_method(
    base: dict[str, Any],
    method: str,
    recipe_name: str,
    seeds: int,
    scale: dict[str, Any],
    removed: int,
    tmp: Path,
    train_fraction: float = 1.0,
) -> list[dict[str, Any]]:
    """``seeds`` trials of one fixed student in one study (trial seeds differ); returns their records."""
    recipe = RECIPES[recipe_name]
    raw = json.loads(json.dumps(base))
    raw["name"] = f"{recipe_name}-{method.replace('+', '_')}-k{removed}" + (
        f"-f{train_fraction:g}" if train_fraction < 1 else ""
    )
    raw["run_dir"] = str(tmp / raw["name"])
    raw["search"]["n_trials"] = seeds
    raw["augmenters"] = augmenters(method, recipe, scale["ig_steps"])
    raw["evaluator"]["options"].update(
        optimizer=recipe["optimizer"],
        lr=recipe["lr"],
        schedule=recipe["schedule"],
        batch_size=recipe["batch_size"],
        train_fraction=train_fraction,
    )
    search = Search(load_config(raw))
    t0 = time.perf_counter()
    # run k has the seed of trial k, also when a run was interrupted and is run again
    trials = search.repeat({"removed": removed}, seeds)
    if len(trials) < seeds:  # a stop request ended the runs early
        raise RuntimeError(f"{raw['name']}: stopped after {len(trials)} of {seeds} runs")
    print(f"  {raw['name']}: {seeds} runs in {time.perf_counter() - t0:.0f} s", flush=True)
    records = []
    for t in trials:
        records.append(
            {
                k: metrics_of(t.user_attrs).get(k)
                for k in (
                    "val_acc",
                    "test_acc",
                    "params",
                    "macs",
                    "seed",
                    "compression_factor",
                    "loss_terms",
                    "train_seconds",
                )
            }
        )
    return records


def summarise(records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    # Holm-Bonferroni over the methods compared with the student alone (one family per recipe or mode)
    return helpers.summarise(records, "student")


def resummarise(path: Path) -> None:
    """Recompute the summaries of a result file from its runs (after a change to the statistics)."""
    r = json.loads(path.read_text())
    for block in [*r.get("ablation", {}).values(), r.get("monte_carlo")]:
        if block:
            block["summary"] = summarise(block["runs"])
    path.write_text(json.dumps(r, indent=1) + "\n")


PARTS = ("ablation", "sweep", "monte-carlo")


def result_path(out: Path, scale: str, part: str) -> Path:
    suffix = {"ablation": "", "sweep": "_sweep", "monte-carlo": "_montecarlo"}[part]
    return out / f"kd_ablation_{scale}{suffix}.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=list(SCALES), default="fmnist")
    ap.add_argument("--parts", default="ablation", help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--recipes", default="paper,ours")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--epochs", type=int, help="override the scale's student epochs")
    ap.add_argument("--train-size", type=int, help="override the scale's training subset (smoke runs)")
    ap.add_argument("--teacher-epochs", type=int, help="override the scale's teacher epochs (smoke runs)")
    ap.add_argument("--sweep-seeds", type=int, default=3)
    ap.add_argument(
        "--sweep-depths", default=",".join(map(str, SWEEP_DEPTHS)), help="truncation depths k of the sweep"
    )
    ap.add_argument("--mc-fraction", type=float, default=0.8, help="Monte Carlo: fraction of the train split")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--markdown", action="store_true", help="print the tables of the result files and exit")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the recipes of an existing ablation file that this run does not redo (add a recipe later)",
    )
    ap.add_argument(
        "--resummarise",
        action="store_true",
        help="recompute the statistics of the result files from their runs",
    )
    args = ap.parse_args()
    out_dir = Path(args.out)
    if args.resummarise:
        for part in PARTS:
            if (path := result_path(out_dir, args.scale, part)).exists():
                resummarise(path)
    if args.markdown or args.resummarise:
        print(markdown(out_dir, args.scale))
        return
    parts = args.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        ap.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scale = SCALES[args.scale]
    epochs = args.epochs or scale["epochs"]
    methods = args.methods.split(",")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = dict(scale["data"])
        if args.train_size:
            data["train_size"] = args.train_size
            data["test_size"] = min(data.get("test_size") or args.train_size, args.train_size)
        if args.scale == "cifar10-jpeg":
            archive = SHARED / "cifar-10-jpeg" / "cifar-10-jpeg.tar.gz"
            data["root"] = str(unpack_imagefolder(archive, tmp / "cifar"))
        space_opts = {"stem_stride": scale["stem_stride"]}
        base = {
            "seed": 0,
            "data": data,
            "space": {"name": "paper-truncated", "options": space_opts},
            "search": {"n_trials": args.seeds, "proposer": {"name": "random"}},
            "evaluator": {"name": "train", "options": {"epochs": epochs, "latency": False}},
            "teacher": {
                "space": "paper-truncated",
                "params": {"removed": 0},
                "space_options": space_opts,
                "train": {
                    "epochs": args.teacher_epochs or scale["teacher_epochs"],
                    "batch_size": 128,
                    "lr": 2e-3,
                    "optimizer": "adamw",
                },
            },
        }
        common: dict[str, Any] = {
            "scale": args.scale,
            "epochs": epochs,
            "torch_threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {cpu_name()}",
            "command": "python benchmarks/kd_ablation.py " + " ".join(sys.argv[1:]),
            "config": helpers.portable(base),
            "paper_cifar10_means": PAPER_MEANS,
            "recipes": RECIPES,
        }
        common["teacher"] = teacher_accuracy(base)
        print(f"teacher: {common['teacher']}", flush=True)
        for part in parts:
            t0 = time.perf_counter()
            results: dict[str, Any] = {**common, "part": part}
            if part == "ablation":
                results["seeds"] = args.seeds
                results["ablation"] = {}
                for recipe in args.recipes.split(","):
                    t_recipe = time.perf_counter()
                    recs = {
                        m: run_method(base, m, recipe, args.seeds, scale, scale["removed"], tmp)
                        for m in methods
                    }
                    results["ablation"][recipe] = {
                        "summary": summarise(recs),
                        "runs": recs,
                        "wall_clock_s": round(time.perf_counter() - t_recipe, 1),
                        "torch_threads": torch.get_num_threads(),
                    }
                old = result_path(out_dir, args.scale, part)
                if args.merge and old.exists():
                    previous = json.loads(old.read_text())
                    same = (previous["seeds"], previous["epochs"], previous["config"])
                    if same != (args.seeds, epochs, common["config"]):
                        raise SystemExit(f"--merge: {old} was run with other seeds, epochs or config")
                    for recipe, block in previous["ablation"].items():
                        block.setdefault(
                            "wall_clock_s", previous["wall_clock_s"]
                        )  # files written before these
                        block.setdefault("torch_threads", previous["torch_threads"])  # two keys existed
                        results["ablation"].setdefault(recipe, block)
                results["latency"] = latency(base, scale["removed"])
            elif part == "sweep":
                results["seeds"] = args.sweep_seeds
                results["recipe"] = "ours"
                sweep: dict[str, Any] = {}
                depths = [int(k) for k in args.sweep_depths.split(",")]
                for k, m in itertools.product(depths, ["student", "kd"]):
                    recs = run_method(base, m, "ours", args.sweep_seeds, scale, k, tmp)
                    sweep.setdefault(str(k), {})[m] = summarise({m: recs})[m] | {
                        "params": recs[0]["params"],
                        "macs": recs[0]["macs"],
                        "cf": recs[0]["compression_factor"],
                    }
                results["sweep"] = sweep
            else:
                results["seeds"] = args.seeds
                results["recipe"] = "ours"
                results["train_fraction"] = args.mc_fraction
                mc = {
                    m: run_method(base, m, "ours", args.seeds, scale, scale["removed"], tmp, args.mc_fraction)
                    for m in methods
                }
                results["monte_carlo"] = {"summary": summarise(mc), "runs": mc}
            results["wall_clock_s"] = round(time.perf_counter() - t0, 1)
            path = result_path(out_dir, args.scale, part)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1) + "\n")
            print(f"{part}: {results['wall_clock_s']:.0f} s, wrote {path}", flush=True)
    print(markdown(out_dir, args.scale))


def teacher_accuracy(base: dict[str, Any]) -> dict[str, Any]:
    """The teacher's validation and test accuracy (trained and cached on first use, like in every trial)."""
    from automl_kd import get_plugin_manager
    from automl_kd.distill.loop import accuracy
    from automl_kd.distill.teacher import teacher_for_config

    teacher, data = teacher_for_config(load_config(base), get_plugin_manager())
    return {
        "val_acc": accuracy(teacher, data.val, data),
        "test_acc": accuracy(teacher, data.test, data),
        "params": sum(p.numel() for p in teacher.parameters()),
    }


def _timing(r: dict[str, Any]) -> str:
    blocks = r["ablation"]
    if all("wall_clock_s" in b for b in blocks.values()):
        return ", ".join(
            f"{k} recipe {b['wall_clock_s'] / 60:.0f} min with {b['torch_threads']} torch thread(s)"
            for k, b in blocks.items()
        )
    return f"{' and '.join(blocks)} recipes {r['wall_clock_s'] / 60:.0f} min with {r['torch_threads']} torch thread(s)"


def _p(row: dict[str, Any]) -> str:
    return welch_cell(row.get("welch_vs_student"), holm_digits=2)


def markdown(out: Path, scale: str) -> str:
    """Markdown tables of whatever result files of ``scale`` exist (the tables in docs/benchmarks.md)."""
    lines: list[str] = []
    path = result_path(out, scale, "ablation")
    if path.exists():
        r = json.loads(path.read_text())
        t = r["teacher"]
        lines += [
            f"Ablation, {scale}: {r['seeds']} seeds per method, {r['epochs']} epochs; "
            + _timing(r)
            + ". Teacher: "
            f"{t['test_acc']:.2f} % test ({t['params']:,} params). Test accuracy %: mean ± std [95 % bootstrap CI]; "
            "Welch's t / p / Holm-adjusted p against the student alone.",
            "",
        ]
        rows = []
        for m in METHODS:
            cells = [m]
            for rec in r["ablation"].values():
                row = rec["summary"].get(m)
                cells += [mean_ci(row), _p(row)] if row else ["—", "—"]
            rows.append([*cells, f"{PAPER_MEANS[m]:.2f}"])
        head = ["method", *(c for k in r["ablation"] for c in (f"{k} recipe", "t / p / p Holm"))]
        lines += markdown_table([*head, "paper (CIFAR-10, mean of 10)"], rows)
        lat = r["latency"]
        lines += [
            "",
            f"Latency ({lat['student']['latency_device']}): teacher {lat['teacher']['latency_ms_b1']:.2f} ms at "
            f"batch 1, {lat['teacher']['latency_ms_b64']:.1f} ms at 64; student {lat['student']['latency_ms_b1']:.2f}"
            f" / {lat['student']['latency_ms_b64']:.1f} ms ({lat['speedup_b1']:.2f}x / {lat['speedup_b64']:.2f}x); "
            f"MACs {lat['teacher']['macs'] / 1e6:.1f}M -> {lat['student']['macs'] / 1e6:.1f}M.",
        ]
    path = result_path(out, scale, "monte-carlo")
    if path.exists():
        r = json.loads(path.read_text())
        lines += [
            "",
            f"Monte Carlo, {scale}: each of {r['seeds']} runs per method trains on a fresh stratified "
            f"{r['train_fraction']:.0%} of the training split ({r['recipe']} recipe), "
            f"{r['wall_clock_s'] / 60:.0f} min.",
            "",
            *markdown_table(
                ["method", "test % mean ± std [95 % CI]", "Welch t / p / p Holm vs student"],
                [[m, mean_ci(row), _p(row)] for m, row in r["monte_carlo"]["summary"].items()],
            ),
        ]
    path = result_path(out, scale, "sweep")
    if path.exists():
        r = json.loads(path.read_text())
        lines += [
            "",
            f"Compression sweep, {scale}: {r['seeds']} seeds per cell ({r['recipe']} recipe), "
            f"{r['wall_clock_s'] / 60:.0f} min.",
            "",
            *markdown_table(
                ["k removed", "params", "CF", "MACs", "student test %", "KD test %"],
                [
                    [
                        k,
                        f"{s['params']:,}",
                        f"{s['cf']:.1f}",
                        f"{s['macs'] / 1e6:.2f}M",
                        mean_ci(s),
                        mean_ci(row["kd"]),
                    ]
                    for k, row in r["sweep"].items()
                    for s in (row["student"],)
                ],
            ),
        ]
    return "\n".join(lines) if lines else f"no results for {scale} in {out}"


def latency(base: dict[str, Any], removed: int) -> dict[str, Any]:
    from automl_kd import get_plugin_manager
    from automl_kd.data import DATA_SHAPES

    n, c, s = DATA_SHAPES.get(base["data"]["dataset"], (10, 3, 32))
    space = get_plugin_manager().spaces.create(
        "paper-truncated", base["space"]["options"], num_classes=n, in_chans=c, input_size=s
    )
    device = resolve_device("auto")
    out = {}
    for label, k in (("teacher", 0), ("student", removed)):
        model = space.build({"removed": k}).to(device)
        out[label] = {**measure_latency(model, (c, s, s), device), **space.cost({"removed": k}).as_dict()}
    out["speedup_b1"] = out["teacher"]["latency_ms_b1"] / out["student"]["latency_ms_b1"]
    out["speedup_b64"] = out["teacher"]["latency_ms_b64"] / out["student"]["latency_ms_b64"]
    return out


if __name__ == "__main__":
    main()
