"""IG precompute throughput: ours against captum's IntegratedGradients, same teacher, images, settings, process.

The teacher, data and IG settings are those of ``examples/configs/distill.yaml`` (the teacher is trained once and
cached, or loaded from the cache), with ``--steps`` nodes of Gauss-Legendre quadrature, zero baseline in the
normalised space and the label as target (the paper's settings, except its 50 nodes).

Measured, interleaved in ``--rounds`` rounds (the machine may be shared: every setting runs twice per round, the
second run timed, so that each is timed in its own steady state; the best and the median round are reported):

- captum: ``IntegratedGradients(teacher).attribute(..., internal_batch_size=b)`` on chunks of ``--images-per-call``
  images, for each ``b`` of a small sweep; the best setting is the reference;
- ours, IG only: :func:`automl_kd.distill.ig.attribution.integrated_gradients` on the inference copy, for each row
  batch of a sweep;
- ours, the whole precompute: :func:`automl_kd.distill.ig.maps.precompute_ig_maps` (IG, channel reduction, completeness
  check, fp16 storage in a fresh cache, checksummed atomic write) with the default row batch.

Completeness error of both: mean over images of |sum(attributions) - (f(x) - f(baseline))|, also relative to the
mean |f(x) - f(baseline)|.

    python benchmarks/ig_throughput.py               # torch's default threads -> results/ig_throughput.json
    python benchmarks/ig_throughput.py --threads 1   # one intra-op thread -> results/ig_throughput_1thread.json

Run it on an otherwise idle machine: on a shared 2-core machine two OpenMP threads wait for each other at every
small op (measured here: captum 10.7 images/s with 2 threads against 41 with 1 while another benchmark ran).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from automl_kd import get_plugin_manager, load_config
from automl_kd.cache import ArtifactCache
from automl_kd.data import DataSplits, Split
from automl_kd.distill.ig.attribution import (
    IGSettings,
    completeness_error,
    integrated_gradients,
    make_baseline,
)
from automl_kd.distill.ig.inference import inference_copy
from automl_kd.distill.ig.maps import precompute_ig_maps
from automl_kd.distill.teacher import teacher_for_config
from automl_kd.metrics import device_name

ROOT = Path(__file__).resolve().parents[1]


def _subset(data: DataSplits, n: int) -> DataSplits:
    t = data.train
    sub = Split(t.x[:n], t.y[:n], t.index[:n])
    return DataSplits(
        data.name, sub, data.val, data.test, data.classes, data.mean, data.std, f"{data.fingerprint}:{n}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "examples" / "configs" / "distill.yaml"))
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images-per-call", type=int, default=64)
    # the sweep: 512 and 2048 were 30-50 % slower than 64 in earlier runs on this machine, so they are left out
    p.add_argument("--captum-batches", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--our-batches", type=int, nargs="+", default=[128, 256])
    p.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads for both (0: torch's default)"
    )
    p.add_argument("--out", help="default: benchmarks/results/ig_throughput[_<n>thread].json")
    args = p.parse_args()
    results = ROOT / "benchmarks" / "results"
    args.out = args.out or str(
        results / f"ig_throughput{f'_{args.threads}thread' if args.threads else ''}.json"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    from captum.attr import IntegratedGradients

    cfg = load_config(args.config, ["device=cpu"])
    teacher, data = teacher_for_config(cfg, get_plugin_manager())
    data = _subset(data, args.images)
    part = data.train
    x01 = part.x.float() / 255
    xn = data.normalize(x01)
    bn = data.normalize(make_baseline(x01, "zeros", torch.tensor(data.mean)))
    y = part.y
    n = len(y)

    def run_captum(b: int) -> torch.Tensor:
        ig = IntegratedGradients(teacher)
        out = []
        k = args.images_per_call
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # captum warns when b < images per call and uses the latter
            for s in range(0, n, k):
                a = ig.attribute(
                    xn[s : s + k],
                    bn[s : s + k],
                    target=y[s : s + k],
                    n_steps=args.steps,
                    method="gausslegendre",
                    internal_batch_size=b,
                )
                out.append(a.detach())
        return torch.cat(out)

    fast = inference_copy(teacher)

    def run_ours(b: int) -> torch.Tensor:
        return integrated_gradients(fast, xn, bn, y, args.steps, "gausslegendre", batch_size=b)

    settings = IGSettings(steps=args.steps, baseline="zeros", target="label")

    def run_precompute() -> None:
        with tempfile.TemporaryDirectory() as tmp:  # a fresh cache every time: always computed, never loaded
            precompute_ig_maps(teacher, data, settings, ArtifactCache(tmp))

    jobs: dict[str, Any] = {f"captum b={b}": (lambda b=b: run_captum(b)) for b in args.captum_batches}
    jobs.update({f"ours b={b}": (lambda b=b: run_ours(b)) for b in args.our_batches})
    jobs["ours precompute"] = run_precompute
    for fn in jobs.values():  # warm-up: oneDNN creates its kernels for each new shape on first use
        fn()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(args.rounds):
        for name, fn in jobs.items():
            fn()  # untimed: each setting is timed in its own steady state (allocator, caches), not the previous one's
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    with torch.no_grad():
        gap = (teacher(xn) - teacher(bn)).gather(1, y.view(-1, 1)).abs().mean()

    def error(attr: torch.Tensor) -> dict[str, float]:
        e = completeness_error(teacher, xn, bn, y, attr)
        return {"completeness_error": float(e.mean()), "completeness_error_relative": float(e.mean() / gap)}

    def stats(name: str) -> dict[str, float]:
        return {
            "images_per_s_best": n / min(times[name]),
            "images_per_s_median": n / statistics.median(times[name]),
        }

    captum = {str(b): {**stats(f"captum b={b}"), **error(run_captum(b))} for b in args.captum_batches}
    ours = {str(b): {**stats(f"ours b={b}"), **error(run_ours(b))} for b in args.our_batches}
    best_captum = max(captum, key=lambda b: captum[b]["images_per_s_best"])
    best_ours = max(ours, key=lambda b: ours[b]["images_per_s_best"])
    pre = stats("ours precompute")
    ref = captum[best_captum]
    result = {
        "device": device_name(torch.device("cpu")),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "teacher": {"config": args.config, "params": sum(q.numel() for q in teacher.parameters())},
        "images": n,
        "settings": {
            "steps": args.steps,
            "method": "gausslegendre",
            "baseline": "zeros (normalised space)",
            "target": "label",
            "images_per_captum_call": args.images_per_call,
        },
        "rounds": args.rounds,
        "captum": captum,
        "captum_best_internal_batch_size": int(best_captum),
        "ours_ig_only": ours,
        "ours_best_batch_size": int(best_ours),
        "ours_precompute": {**pre, **error(run_ours(settings.batch_size)), "batch_size": settings.batch_size},
        "speedup_precompute_vs_best_captum": pre["images_per_s_best"] / ref["images_per_s_best"],
        "speedup_precompute_vs_best_captum_median": pre["images_per_s_median"] / ref["images_per_s_median"],
        "speedup_ig_only_vs_best_captum": ours[best_ours]["images_per_s_best"] / ref["images_per_s_best"],
        "completeness_error_ours_le_captum": ours[best_ours]["completeness_error"]
        <= ref["completeness_error"] * (1 + 1e-3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: v for k, v in result.items() if k.startswith(("speedup", "completeness", "captum_best"))}
        )
    )


if __name__ == "__main__":
    main()
