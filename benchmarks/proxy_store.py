"""Proxy scores of a table's architectures for the ``screen`` proposer in the comparison: read from the ground-truth
store of ``benchmarks/proxy_ground_truth.py``, computed on demand (and kept) for architectures it lacks.

The store's scores are computed on one minibatch of CIFAR-10 (JPEG) training images (64 images drawn with seed 0,
val_fraction 0.1, split_seed 0) with the network initialised with seed 0; a score computed here uses the same
images, the same seed and the same code (``compute_proxies``), so it is the value the store would hold. A score read
from the store is charged the calibrated CPU seconds of that proxy alone on that table (the ground truth's
``standalone_cpu_s``); a score computed here is charged what it took.

Stores read (each a JSON-lines file of ``{"arch": ..., "scores": {...}}``): the committed one in
``benchmarks/results/proxy_ground_truth/``, and those named in ``AUTOML_KD_PROXY_STORES`` (colon-separated, e.g.
a running ground-truth store). Computed scores are appended to ``AUTOML_KD_PROXY_EXTRA`` (default
``runs/proxy-store/<table>-<proxy>.jsonl``). Computing needs ``AUTOML_KD_PROXY_DATA``: the CIFAR-10 (JPEG)
image folder.

``python benchmarks/proxy_store.py --fill nasbench-macro --capped`` computes every missing score of the table
(inside its median-MACs cap with ``--capped``) before a comparison runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automl_kd.config import DataConfig
from automl_kd.data import load_data
from automl_kd.plugins.evaluators.proxy import compute_proxies, minibatch
from automl_kd.space import Candidate, SearchSpace

HERE = Path(__file__).resolve().parent
COMMITTED = HERE / "results" / "proxy_ground_truth"
GROUND_TRUTH = HERE / "results" / "proxy_ground_truth.json"
#: the comparison's benchmark -> the ground-truth table its architectures are scored on
TABLE_OF = {"nasbench-macro": "nasbench-macro", "nb201-cifar10": "nb201-cifar10"}
BATCH_SIZE, SEED = 64, 0


def _table_of(bench_name: str) -> str:
    for prefix, table in TABLE_OF.items():
        if bench_name.startswith(prefix):
            return table
    raise ValueError(f"no proxy ground truth for benchmark {bench_name!r}")


def read_scores(path: Path, proxy: str) -> dict[str, float]:
    """arch -> score of ``proxy`` in a JSON-lines store (a torn last line is skipped; nothing is written)."""
    out: dict[str, float] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        value = rec.get("scores", {}).get(proxy)
        if value is not None:
            out[rec["arch"]] = float(value)
    return out


def standalone_cpu_s(table: str, proxy: str) -> float:
    """The calibrated CPU seconds of ``proxy`` alone on one network of ``table`` (0 when not calibrated)."""
    if not GROUND_TRUTH.is_file():
        return 0.0
    cal = json.loads(GROUND_TRUTH.read_text()).get("standalone_cpu_s", {}).get(table, {})
    return float(cal.get("each_proxy_alone_mean", {}).get(proxy, 0.0))


class StoreScorer:
    """``candidate -> (score, cpu_s)`` for the ``screen`` proposer: store first, else computed and appended."""

    def __init__(self, table: str, space: SearchSpace, proxy: str = "naswot") -> None:
        self.table, self.space, self.proxy = table, space, proxy
        self.extra = Path(
            os.environ.get("AUTOML_KD_PROXY_EXTRA") or f"runs/proxy-store/{table}-{proxy}.jsonl"
        )
        paths = [COMMITTED / f"{table}.jsonl", self.extra]
        paths += [Path(p) for p in os.environ.get("AUTOML_KD_PROXY_STORES", "").split(":") if p]
        self.scores: dict[str, float] = {}
        for p in paths:
            self.scores.update(read_scores(p, proxy))
        self.cpu_s = standalone_cpu_s(table, proxy)
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.computed = 0

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batch is None:
            root = os.environ.get("AUTOML_KD_PROXY_DATA")
            if not root:
                raise RuntimeError(
                    "AUTOML_KD_PROXY_DATA (the CIFAR-10 JPEG folder) is needed to compute scores"
                )
            data = load_data(DataConfig(dataset="imagefolder", root=root, val_fraction=0.1, split_seed=0))
            self._batch = minibatch(data, BATCH_SIZE, SEED)
        return self._batch

    def compute(self, params: dict[str, Any]) -> tuple[float, float]:
        x, y = self.batch()
        c0 = time.process_time()
        torch.manual_seed(SEED)
        model = self.space.build(params)
        value = compute_proxies(model, [self.proxy], x, y)[self.proxy].value
        return value, time.process_time() - c0

    def __call__(self, candidate: Candidate) -> tuple[float, float]:
        key = self.space.table_key(candidate.params)  # type: ignore[attr-defined]
        if key in self.scores:
            return self.scores[key], self.cpu_s
        value, cpu_s = self.compute(dict(candidate.params))
        self.scores[key] = value
        self.computed += 1
        self.extra.parent.mkdir(parents=True, exist_ok=True)
        rec = {
            "arch": key,
            "scores": {self.proxy: value if math.isfinite(value) else str(value)},
            "cpu_s": cpu_s,
        }
        with open(self.extra, "a") as fh:  # one line per write: a concurrent reader skips a torn last line
            fh.write(json.dumps(rec) + "\n")
        return value, cpu_s


def naswot_scorer(bench: Any, space: SearchSpace) -> Callable[[Candidate], tuple[float, float]]:
    """The comparison's ``scorer`` hook (``ProposerSpec.scorer``): naswot from the store."""
    return StoreScorer(_table_of(bench.name), space, "naswot")


def fill(bench_name: str, capped: bool, macro_path: str | None) -> None:
    """Compute every score the stores lack (inside the median-MACs cap with ``capped``)."""
    import dataclasses

    from automl_kd.compare import BENCHMARKS, plugin_manager
    from automl_kd.compare.runner import macs_cap, table_rows

    torch.set_num_threads(1)
    bench = BENCHMARKS[bench_name]
    if macro_path and bench.path_argument:
        bench = dataclasses.replace(bench, evaluator_options={**bench.evaluator_options, "path": macro_path})
    pm = plugin_manager()
    space = pm.spaces.create(bench.space, bench.space_options)
    scorer = StoreScorer(_table_of(bench_name), space, "naswot")
    cap = macs_cap(dataclasses.replace(bench, macs_cap="median"), pm) if capped else None
    rows = [p for p, _, macs in table_rows(bench, pm) if cap is None or macs <= cap]
    todo = [p for p in rows if space.table_key(p) not in scorer.scores]  # type: ignore[attr-defined]
    # the first architecture of the store, computed again: the same value, or the store is not comparable
    known = next(p for p in rows if space.table_key(p) in scorer.scores)  # type: ignore[attr-defined]
    again, _ = scorer.compute(known)
    stored = scorer.scores[space.table_key(known)]  # type: ignore[attr-defined]
    print(f"check: stored {stored!r}, computed {again!r}", flush=True)
    if not np.isclose(again, stored, rtol=1e-6):
        raise SystemExit("the computed score differs from the store's: not the same minibatch or code")
    print(f"{len(rows)} architectures, {len(todo)} to compute", flush=True)
    t0 = time.perf_counter()
    for i, params in enumerate(todo, 1):
        if space.table_key(params) not in scorer.scores:  # type: ignore[attr-defined]
            scorer(space.candidate(params))
        if i % 50 == 0:
            print(f"{i}/{len(todo)} ({i / (time.perf_counter() - t0):.2f}/s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fill", metavar="BENCHMARK", required=True)
    ap.add_argument("--capped", action="store_true", help="only the architectures inside the median MACs")
    ap.add_argument("--macro-path", default=None, help="nas-bench-macro_cifar10.json")
    args = ap.parse_args()
    fill(args.fill, args.capped, args.macro_path)


if __name__ == "__main__":
    main()
