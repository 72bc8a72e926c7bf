"""Trials per hour of a CPU search: one worker with every core against one single-thread worker per core.

The search is the demo's (Fashion-MNIST, the demo's mbv2 space, real training, TPE) with cross-entropy alone
(no teacher, no CE baseline: only the search's own trials), run end to end through the command line:
``automl-kd run --workers 1`` (one worker; torch takes every core) against ``--workers N`` with N = the cores
(each worker gets ``floor(cores / N)`` torch threads, see ``automl_kd.storage.workers``). The arms alternate
within each round (the first arm of a round alternates too), and the ratio is taken round by round, so a machine
that gets slower or faster during the benchmark moves both arms of a round alike. Two rates: end to end (each
run's wall-clock, start-up included: data loading, worker processes, as a user's short run sees it) and in the
search (completed trials over the span from the first trial's start to the last trial's end, as a long search
sees it).

    python benchmarks/workers_throughput.py                   # 3 rounds x 2 arms, 6 trials per run
    python benchmarks/workers_throughput.py --rounds 1 --trials 2 --out /tmp/w.json   # a quick look

Run it on an otherwise idle machine: another process on the cores changes the answer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from automl_kd.cache import atomic_write
from automl_kd.precision import cpu_name
from automl_kd.storage.studies import load_study, run_dir_url

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "workers_throughput.json"
DEMO = REPO / "src" / "automl_kd" / "configs" / "demo.yaml"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def config(trials: int) -> dict[str, Any]:
    raw = yaml.safe_load(DEMO.read_text())
    raw.pop("teacher", None)
    raw.pop("augmenters", None)
    raw["name"] = "workers-throughput"
    raw["search"]["n_trials"] = trials
    raw["search"].pop("ce_baseline", None)
    return raw


def one_run(cfg: Path, workers: int, trials: int, work: Path) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"w{workers}-", dir=work))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cmd = [sys.executable, "-m", "automl_kd.cli", "run", str(cfg), "--run-dir", str(run_dir), "--json"]
    cmd += ["--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    completed = int(summary["counts"].get("complete", 0))
    study = load_study(run_dir_url(run_dir), run_dir, "workers-throughput")
    done = [t for t in study.get_trials() if t.datetime_start and t.datetime_complete]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return {
        "in_search_trials_per_hour": round(len(done) / span * 3600, 1),
        "workers": workers,
        "loadavg_after": round(os.getloadavg()[0], 2),
        "wall_s": round(wall, 2),
        "completed": completed,
        "trials_per_hour": round(completed / wall * 3600, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--trials", type=int, default=6, help="trials per run (a multiple of the cores is fairest)"
    )
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    n = cores()
    if n < 2:
        raise SystemExit("one core: there is nothing to share")
    arms = [1, n]
    result: dict[str, Any] = {
        "command": "python benchmarks/workers_throughput.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} {cpu_name()}",
        "cores": n,
        "arms": {"1": f"1 worker x {n} threads", str(n): f"{n} workers x 1 thread"},
        "trials_per_run": args.trials,
        "rounds": [],
    }
    with tempfile.TemporaryDirectory(prefix="workers-throughput-") as tmp:
        work = Path(tmp)
        cfg = work / "search.yaml"
        cfg.write_text(yaml.safe_dump(config(args.trials)))
        for r in range(args.rounds):
            runs = {}
            for workers in arms if r % 2 == 0 else arms[::-1]:
                runs[str(workers)] = one_run(cfg, workers, args.trials, work)
                print(f"round {r + 1}: {runs[str(workers)]}", flush=True)
            ratio = runs[str(n)]["trials_per_hour"] / runs["1"]["trials_per_hour"]
            inside = runs[str(n)]["in_search_trials_per_hour"] / runs["1"]["in_search_trials_per_hour"]
            result["rounds"].append(
                {"runs": runs, "ratio": round(ratio, 3), "in_search_ratio": round(inside, 3)}
            )
            for key in ("ratio", "in_search_ratio"):
                ratios = [x[key] for x in result["rounds"]]
                result[f"{key}_median"] = round(statistics.median(ratios), 3)
                result[f"{key}_range"] = [min(ratios), max(ratios)]
            atomic_write(args.out, (json.dumps(result, indent=1) + "\n").encode())
    print(
        f"{n} workers x 1 thread / 1 worker x {n} threads, trials per hour: median {result['ratio_median']}"
    )


if __name__ == "__main__":
    main()
