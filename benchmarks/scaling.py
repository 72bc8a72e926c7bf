"""Trials per hour with 1, 2 and 4 local workers, on SQLite, a Journal file and PostgreSQL.

The evaluator costs mostly waiting (the built-in ``synthetic`` evaluator: an analytic score plus a fixed sleep), so
the ideal speed-up is the number of workers; what is lost is storage and coordination overhead. Throughput is
measured from the trials' own timestamps (first start to last completion), so process start-up is not counted.
Ratios are against 1 worker on the same storage in the same run.

    python benchmarks/scaling.py                 # writes benchmarks/results/scaling.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def run(storage: str, workers: int, n_trials: int, sleep: float, tmp: Path, name: str) -> dict[str, float]:
    cfg = {
        "name": name,
        "run_dir": str(tmp / name),
        "space": {
            "name": "mbv2",
            "options": {"stages": [[16, 1, 1], [24, 2, 2], [32, 2, 2]], "head_channels": 64},
        },
        "search": {"n_trials": n_trials, "proposer": {"name": "random"}},
        "evaluator": {"name": "synthetic", "options": {"sleep": sleep}},
        "storage": {"heartbeat_interval": 2, "grace_period": 10},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [
        sys.executable,
        "-m",
        "automl_kd.cli",
        "run",
        str(path),
        "--storage",
        storage,
        "--workers",
        str(workers),
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=1200)
    wall = time.perf_counter() - t0
    st = optuna.storages.get_storage(storage) if not storage.startswith("journal:") else None
    if st is None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        st = JournalStorage(JournalFileBackend(storage.removeprefix("journal:")))
    trials = [
        t
        for t in optuna.load_study(study_name=name, storage=st).get_trials()
        if t.state == optuna.trial.TrialState.COMPLETE
    ]
    start = min(t.datetime_start for t in trials if t.datetime_start)
    end = max(t.datetime_complete for t in trials if t.datetime_complete)
    span = (end - start).total_seconds()
    return {
        "complete": len(trials),
        "span_s": round(span, 3),
        "wall_s": round(wall, 2),
        "trials_per_hour": round(len(trials) / span * 3600, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials-per-worker", type=int, default=8)
    ap.add_argument("--sleep", type=float, default=1.0)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--storages", default="sqlite,journal,postgresql")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scaling.json"))
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    results: dict[str, dict[str, dict[str, float]]] = {}
    pg = None
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for kind in args.storages.split(","):
            if kind == "postgresql":
                from pgserver import PostgresServer

                pg = PostgresServer()
                pg.start()
            results[kind] = {}
            for n in counts:
                name = f"{kind}-{n}"
                url = {
                    "sqlite": f"sqlite:///{tmp / name}.db",
                    "journal": f"journal:{tmp / name}.log",
                    "postgresql": pg.url if pg else "",
                }[kind]
                r = run(url, n, args.trials_per_worker * n, args.sleep, tmp, name)
                results[kind][str(n)] = r
                print(kind, n, r, flush=True)
            base = results[kind][str(counts[0])]["trials_per_hour"]
            for n in counts:
                results[kind][str(n)]["ratio_vs_1"] = round(
                    results[kind][str(n)]["trials_per_hour"] / base, 3
                )
            if pg:
                pg.cleanup()
                pg = None
    out = {
        "what": "trials per hour of a waiting-dominated evaluator (synthetic, fixed sleep) with N local workers",
        "sleep_s_per_trial": args.sleep,
        "trials_per_worker": args.trials_per_worker,
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "optuna": optuna.__version__,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
