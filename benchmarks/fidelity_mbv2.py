"""Fidelity study: how well cheap scores rank the headline's mbv2 students by their result after the full recipe.

Candidates: ``--candidates`` architectures drawn uniformly at random (seeded) from the mbv2 space of the headline
experiment (``distill_cifar10.py``'s ``NAS_SPACE``) under its MACs cap (the truncated student's MACs, 14.93 M), on
CIFAR-10 (JPEG) at 32 px, 10 % of the training split held out for validation. For each candidate:

- ``full``: CE alone with the headline's recipe (AdamW, lr 3e-3, cosine, batch 128) for 6 epochs on all 45,000
  training images, the same recipe as the headline's CE cells (its test accuracy is recorded too, for the
  search-against-random comparison; nothing here selects on it);
- cheaper fidelities of the same recipe: ``e1_f20`` (1 epoch on 20 % of the training split: the headline's NAS
  stage, two seeds, so that its seed noise is measured), ``px16_e2_f50`` (2 epochs on 50 % at 16 px inputs, about
  the cost of ``e1_f20``), ``e2_f50`` (2 epochs on 50 %);
- every zero-cost proxy of the ``proxy`` evaluator at initialisation on one minibatch of 64 training images (the
  same images for every candidate), and the params and MACs baselines.

Reported: Spearman and Kendall rank correlation of each fidelity's validation accuracy (or score) with the full
recipe's validation accuracy, over the candidates that have both, and the CPU seconds each fidelity costs per
candidate. Precision is fp32 on every machine (``precision: auto`` would train in bf16 on some CPUs and not on
others, and a study that spans machines must not mix them).

Every run goes through the product's own engine (one resumable study per candidate and fidelity in ``--work``),
and each finished run is written to ``benchmarks/results/fidelity_mbv2.json`` at once: the same command continues
an interrupted study, on this machine or (from the JSON) on another. ``e1_f20`` runs first for every candidate
(its seed noise needs no full run); then candidates are done one at a time, every fidelity of one before the next,
so a partial study is a smaller study of the same kind.

    OMP_NUM_THREADS=1 nohup python benchmarks/fidelity_mbv2.py --work ../runs/fidelity --threads 1 &
    # two cores: one process per shard (each runs only its own candidates; start both with --shard k/2)
    OMP_NUM_THREADS=1 nohup python benchmarks/fidelity_mbv2.py --work ../runs/fidelity --shard 0/2 &
    OMP_NUM_THREADS=1 nohup python benchmarks/fidelity_mbv2.py --work ../runs/fidelity --shard 1/2 &
    python benchmarks/fidelity_mbv2.py --markdown      # the docs table from the JSON
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from scipy import stats

from automl_kd import Search, get_plugin_manager, load_config
from automl_kd.cache import atomic_write
from automl_kd.data import load_data
from automl_kd.plugins.evaluators.proxy import PROXIES, compute_proxies, minibatch
from automl_kd.precision import cpu_name
from automl_kd.trial_attrs import metrics_of

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import distill_cifar10 as headline  # noqa: E402  (beside this script: the headline's space, recipe and data)

RESULT = REPO / "benchmarks" / "results" / "fidelity_mbv2.json"
#: the cheaper fidelities, in the order they run for each candidate, then the full recipe
FIDELITIES: dict[str, dict[str, Any]] = {
    "e1_f20": {"epochs": 1, "train_fraction": 0.2, "runs": 2},
    "px16_e2_f50": {"epochs": 2, "train_fraction": 0.5, "image_size": 16, "runs": 1},
    "e2_f50": {"epochs": 2, "train_fraction": 0.5, "runs": 1},
    "full": {"epochs": 6, "train_fraction": 1.0, "runs": 1},
}
PROXY_BATCH, PROXY_SEED = 64, 0
KEYS = ("val_acc", "test_acc", "seed", "train_seconds", "precision")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_result() -> dict[str, Any]:
    return json.loads(RESULT.read_text()) if RESULT.exists() else {}


#: (k, n) of ``--shard k/n``: this process runs the candidates whose index is k modulo n
SHARD = (0, 1)


def mine(c: dict[str, Any]) -> bool:
    return c["index"] % SHARD[1] == SHARD[0]


def save_result(r: dict[str, Any]) -> None:
    """Write the JSON, under a lock: the candidates of other shards are taken from the file as it is now (another
    process may have added runs to them), this process's own from ``r``."""
    with open(RESULT.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        disk = load_result().get("candidates", [])
        r["candidates"] = [
            disk[i] if i < len(disk) and not mine(c) else c for i, c in enumerate(r["candidates"])
        ]
        r["summary"] = summarise(r)
        r["complete"] = all(c.get("runs", {}).get("full") for c in r["candidates"])
        atomic_write(RESULT, (json.dumps(r, indent=1) + "\n").encode())


def space() -> Any:
    host = {"num_classes": 10, "in_chans": 3, "input_size": 32}
    return get_plugin_manager().spaces.create("mbv2", headline.NAS_SPACE["options"], **host)


def draw(n: int, cap: int, seed: int) -> list[dict[str, Any]]:
    """``n`` distinct architectures drawn uniformly from the space's choices, rejected above ``cap`` MACs."""
    sp = space()
    dists = sp.distributions()
    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(out) < n:
        params: dict[str, Any] = {}
        for name, d in dists.items():
            if not isinstance(d, optuna.distributions.CategoricalDistribution):
                raise SystemExit(f"the mbv2 space has a non-categorical choice {name}: {d}")
            params[name] = d.choices[int(rng.integers(len(d.choices)))]
        key = json.dumps(params, sort_keys=True)
        if key in seen or sp.cost(params).macs > cap:
            continue
        seen.add(key)
        out.append(params)
    return out


def config(root: Path, work: Path, name: str, fid: dict[str, Any]) -> dict[str, Any]:
    data = headline.data_cfg(root)
    if "image_size" in fid:
        data["image_size"] = fid["image_size"]
    options = {**headline.RECIPE, "epochs": fid["epochs"], "latency": False}
    if fid["train_fraction"] < 1:
        options["train_fraction"] = fid["train_fraction"]
    return {
        "name": name,
        "seed": 0,
        "run_dir": str(work / "studies" / name),
        "precision": "fp32",
        "data": data,
        "space": headline.NAS_SPACE,
        "search": {"n_trials": 1, "proposer": {"name": "random"}},
        "evaluator": {"name": "train", "options": options},
    }


def stage_proxies(root: Path, r: dict[str, Any]) -> None:
    todo = [c for c in r["candidates"] if "proxies" not in c]
    if not todo:
        return
    cfg = load_config(config(root, Path("/nonexistent"), "proxy", FIDELITIES["full"]))
    data = load_data(cfg.data)
    x, y = minibatch(data, PROXY_BATCH, PROXY_SEED)
    sp = space()
    for c in todo:
        torch.manual_seed(PROXY_SEED)
        model = sp.build(sp.validate(c["arch"]))
        res = compute_proxies(model, PROXIES, x, y, shared=True)
        c["proxies"] = {k: (v.value if math.isfinite(v.value) else str(v.value)) for k, v in res.items()}
        c["proxy_cpu_s"] = {k: round(v.cpu_s, 4) for k, v in res.items()}
        save_result(r)
    log(f"proxies: {len(todo)} candidates scored")


def stage_runs(root: Path, work: Path, r: dict[str, Any], c: dict[str, Any], fid_name: str) -> None:
    fid = FIDELITIES[fid_name]
    runs: list[dict[str, Any]] = c.setdefault("runs", {}).setdefault(fid_name, [])
    if len(runs) >= fid["runs"]:
        return
    name = f"c{c['index']:02d}-{fid_name}"
    search = Search(load_config(config(root, work, name, fid)))
    c0, t0 = time.process_time(), time.perf_counter()

    def on_run(t: optuna.trial.FrozenTrial) -> None:
        nonlocal c0, t0
        m = metrics_of(t.user_attrs)
        runs.append(
            {
                **{k: m[k] for k in KEYS if k in m},
                "cpu_s": round(time.process_time() - c0, 1),
                "wall_s": round(time.perf_counter() - t0, 1),
            }
        )
        save_result(r)
        log(f"  {name}: val {m.get('val_acc')} % in {runs[-1]['cpu_s']} CPU s")
        c0, t0 = time.process_time(), time.perf_counter()

    # runs recorded in the JSON (their study may be lost with its machine) are not run again
    search.repeat(c["arch"], fid["runs"], first=len(runs), on_run=on_run)


def _value(v: Any) -> float:
    return float(v) if not isinstance(v, str) else float(v.replace("inf", "Infinity"))


def summarise(r: dict[str, Any]) -> dict[str, Any]:
    """Rank correlation of every fidelity with the full recipe's validation accuracy, over the candidates that
    have both; the mean CPU seconds per candidate; the seed-to-seed correlation of the two ``e1_f20`` runs."""
    done = [c for c in r.get("candidates", []) if c.get("runs", {}).get("full")]
    out: dict[str, Any] = {"candidates_with_full": len(done)}
    paired = [
        c["runs"]["e1_f20"][:2]
        for c in r.get("candidates", [])
        if len(c.get("runs", {}).get("e1_f20", [])) >= 2
    ]
    if paired:
        # the NAS stage's fidelity: how far two seeds of one candidate are apart, against the spread of candidates
        a = np.array([p[0]["val_acc"] for p in paired])
        b = np.array([p[1]["val_acc"] for p in paired])
        seed_var = float(np.mean((a - b) ** 2) / 2)  # the variance of one run around its candidate's mean
        one_seed_var = float(np.var(a, ddof=1)) if len(a) > 1 else float("nan")
        out["e1_f20_seed_noise"] = {
            "candidates": len(paired),
            "mean_abs_seed_difference": round(float(np.mean(np.abs(a - b))), 2),
            "seed_std": round(seed_var**0.5, 2),
            "std_across_candidates_one_seed": round(one_seed_var**0.5, 2) if len(a) > 1 else None,
            # the share of one run's variance across candidates that is seed noise (1: the ranking is all noise)
            "seed_share_of_variance": round(min(1.0, seed_var / one_seed_var), 2) if len(a) > 1 else None,
            "seed_to_seed_spearman": round(float(stats.spearmanr(a, b).statistic), 3) if len(a) > 2 else None,
        }
    if len(done) < 3:
        return out
    full = np.array([c["runs"]["full"][0]["val_acc"] for c in done])
    out["full_val_acc"] = {
        "min": float(full.min()),
        "max": float(full.max()),
        "std": round(float(full.std()), 2),
    }
    scores: dict[str, tuple[np.ndarray, float]] = {}
    for fid_name in FIDELITIES:
        if fid_name == "full":
            continue
        rows = [c for c in done if len(c["runs"].get(fid_name, [])) >= 1]
        if len(rows) == len(done):
            v = np.array([np.mean([x["val_acc"] for x in c["runs"][fid_name]]) for c in rows])
            cpu = float(np.mean([sum(x["cpu_s"] for x in c["runs"][fid_name]) for c in rows]))
            scores[fid_name + (" (mean of 2 seeds)" if FIDELITIES[fid_name]["runs"] == 2 else "")] = (v, cpu)
            if FIDELITIES[fid_name]["runs"] == 2:
                first = np.array([c["runs"][fid_name][0]["val_acc"] for c in rows])
                scores[fid_name + " (one seed)"] = (
                    first,
                    float(np.mean([c["runs"][fid_name][0]["cpu_s"] for c in rows])),
                )
    for p in PROXIES:
        if all("proxies" in c for c in done):
            v = np.array([_value(c["proxies"][p]) for c in done])
            v = np.where(np.isfinite(v), v, np.nanmin(np.where(np.isfinite(v), v, np.nan)) - 1)
            scores[p] = (v, float(np.mean([c["proxy_cpu_s"][p] for c in done])))
    corr: dict[str, Any] = {}
    for k, (v, cpu) in scores.items():
        constant = len(set(v.tolist())) < 2 or len(set(full.tolist())) < 2  # no rank correlation is defined
        corr[k] = {
            "spearman": None if constant else round(float(stats.spearmanr(v, full).statistic), 3),
            "kendall": None if constant else round(float(stats.kendalltau(v, full).statistic), 3),
            "cpu_s_per_candidate": round(cpu, 2),
        }
    out["fidelities"] = corr
    out["full_cpu_s_per_candidate"] = round(float(np.mean([c["runs"]["full"][0]["cpu_s"] for c in done])), 1)
    two = [c for c in done if len(c["runs"].get("e1_f20", [])) >= 2]
    if len(two) >= 3:
        a = [c["runs"]["e1_f20"][0]["val_acc"] for c in two]
        b = [c["runs"]["e1_f20"][1]["val_acc"] for c in two]
        out["e1_f20_seed_to_seed_spearman"] = round(float(stats.spearmanr(a, b).statistic), 3)
    return out


def markdown(r: dict[str, Any]) -> str:
    s = summarise(r)  # from the runs, whichever version of the script wrote the JSON
    n, planned = s.get("candidates_with_full", 0), len(r.get("candidates", []))
    noise = s.get("e1_f20_seed_noise")
    noise_line = (
        [
            f"The NAS stage's fidelity (`e1_f20`, 1 epoch on 20 %), two seeds of each of {noise['candidates']} "
            f"candidates: the two seeds differ by {noise['mean_abs_seed_difference']:.2f} points of validation "
            f"accuracy on average (a seed standard deviation of {noise['seed_std']:.2f}), one seed's values vary "
            f"across candidates by a standard deviation of {noise['std_across_candidates_one_seed']:.2f}, so "
            f"{noise['seed_share_of_variance']:.0%} of that variance is seed noise; the two seeds rank the "
            f"candidates at Spearman {noise['seed_to_seed_spearman']:.2f} with each other.",
            "",
        ]
        if noise and noise.get("seed_to_seed_spearman") is not None
        else []
    )
    lines = [
        f"{n} of {planned} candidates have the full recipe's result"
        + ("" if n >= planned else " (a partial study; the figures below are over those)")
        + f"; CPU: {r.get('machine', '?')}, {r.get('torch_threads', '?')} torch thread(s), fp32.",
        "",
        *noise_line,
    ]
    if "fidelities" not in s:
        return "\n".join([*lines, "Too few candidates have the full recipe's result for a rank correlation."])
    fv = s["full_val_acc"]
    lines += [
        f"Full recipe (6 epochs, 45,000 images): validation {fv['min']:.2f}-{fv['max']:.2f} % (std {fv['std']}), "
        f"{s['full_cpu_s_per_candidate']:,.0f} CPU s per candidate.",
        "",
        "| fidelity | Spearman | Kendall | CPU s per candidate |",
        "|---|---|---|---|",
    ]
    for k, v in s["fidelities"].items():
        rho, tau = (
            f"{x:.3f}" if x is not None else "undefined (constant)" for x in (v["spearman"], v["kendall"])
        )
        lines.append(f"| {k} | {rho} | {tau} | {v['cpu_s_per_candidate']:,.2f} |")
    if "e1_f20_seed_to_seed_spearman" in s:
        lines += [
            "",
            f"Two seeds of `e1_f20` rank the candidates at Spearman {s['e1_f20_seed_to_seed_spearman']:.3f} "
            "with each other (the fidelity's seed noise).",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="studies and the unpacked data (outside the repository)")
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="the seed of the candidates' draw")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument(
        "--shard",
        default="0/1",
        help="k/n: run the candidates whose index is k modulo n (n processes side by side)",
    )
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument(
        "--smoke", action="store_true", help="3 candidates on 600 images into /tmp: checks the script"
    )
    args = ap.parse_args()
    if args.smoke:
        global RESULT
        RESULT = Path("/tmp/fidelity_mbv2_smoke.json")
        headline.SMOKE["data"] = {"train_size": 600, "test_size": 200}
        args.candidates = 3
    r = load_result()
    if args.markdown:
        print(markdown(r))
        return
    if args.work is None:
        ap.error("--work is needed to run the study")
    global SHARD
    k, _, n = args.shard.partition("/")
    SHARD = (int(k), int(n or 1))
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cap = int(headline.load_result().get("nas", {}).get("macs_cap") or 0)
    if not cap:
        raise SystemExit("the headline's MACs cap is not in distill_cifar10.json")
    if r.get("candidates") and (r.get("draw_seed"), r.get("macs_cap")) != (args.seed, cap):
        raise SystemExit(f"{RESULT} holds a study with another draw; move it away to start a new one")
    r.update(
        {
            "command": "python benchmarks/fidelity_mbv2.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()} {cpu_name()}",
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "space": headline.NAS_SPACE,
            "macs_cap": cap,
            "recipe": headline.RECIPE,
            "precision": "fp32",
            "fidelities": FIDELITIES,
            "proxy_minibatch": {"batch_size": PROXY_BATCH, "seed": PROXY_SEED},
            "draw_seed": args.seed,
        }
    )
    sp = space()
    have = r.setdefault("candidates", [])
    for i, arch in enumerate(draw(args.candidates, cap, args.seed)):
        if i >= len(have):
            cost = sp.cost(arch)
            have.append({"index": i, "arch": arch, "params": cost.params, "macs": cost.macs})
    args.work.mkdir(parents=True, exist_ok=True)
    root = headline.unpack(args.work)
    save_result(r)
    stage_proxies(root, r)
    # the NAS stage's own fidelity first, for every candidate (its seed noise needs no full run), then the rest
    for c in list(r["candidates"]):
        if mine(c):
            stage_runs(root, args.work, r, c, "e1_f20")
    for c in list(r["candidates"]):
        if mine(c):
            for fid_name in FIDELITIES:
                stage_runs(root, args.work, r, c, fid_name)
            log(f"candidate {c['index']} done")
    save_result(r)


if __name__ == "__main__":
    main()
