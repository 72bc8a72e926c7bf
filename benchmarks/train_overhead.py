"""Training-step cost of every augmenter combination, as a ratio to plain cross-entropy training.

Same student, same data, same process: the teacher, data and augmenter options of ``examples/configs/distill.yaml``
(IG maps and teacher come from the cache when the example has run; otherwise they are computed first). Each
combination trains ``--steps`` steps with the teacher's outputs computed online and read from the teacher-output
cache (FKD-style views, built before timing). A step's time is the median interval between consecutive steps,
measured by a no-op augmenter inside the training loop (so per-epoch validation and set-up are not counted);
combinations are interleaved in ``--rounds`` rounds and each ratio is the median over rounds of
``step(combination) / step(cross-entropy)`` within a round. Writes ``benchmarks/results/train_overhead.json``.

    python benchmarks/train_overhead.py --steps 25 --rounds 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from automl_kd import get_plugin_manager, load_config
from automl_kd.cache import ArtifactCache
from automl_kd.distill.augmenter import Augmenter, PrepareContext, StepBatch
from automl_kd.distill.loop import train_student
from automl_kd.distill.settings import TrainSettings
from automl_kd.distill.teacher import teacher_for_config
from automl_kd.engine.searched_options import resolve_augmenter_options
from automl_kd.metrics import device_name

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("kd", "attention", "ig-overlay")


class StepClock(Augmenter):
    """Notes the time at the same point of every step; adds nothing to the loss, transforms nothing."""

    name = "step-clock"

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def losses(self, batch: StepBatch) -> dict[str, tuple[float, torch.Tensor]]:
        self.stamps.append(time.perf_counter())
        return {}

    def step_time(self, skip: int = 3) -> float:
        gaps = [b - a for a, b in itertools.pairwise(self.stamps)][skip:]
        return statistics.median(gaps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "examples" / "configs" / "distill.yaml"))
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_overhead.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, ["device=cpu"])
    pm = get_plugin_manager()
    teacher, data = teacher_for_config(cfg, pm)
    cache = ArtifactCache.default()
    space = pm.spaces.create(cfg.space.name, cfg.space.options, num_classes=10, in_chans=1, input_size=28)
    student_params = space.reference()  # the largest student of the example's space
    options = {r.name: resolve_augmenter_options(r.name, r.options, {}) for r in cfg.augmenters}
    settings = TrainSettings(
        epochs=1,
        batch_size=args.batch_size,
        max_steps_per_epoch=args.steps,
        crop_padding=cfg.data.crop_padding,
        flip=cfg.data.flip,
    )
    combos = [c for r in range(len(NAMES) + 1) for c in itertools.combinations(NAMES, r)]

    def run(combo: tuple[str, ...], mode: str) -> float:
        torch.manual_seed(0)
        student = space.build(student_params)
        augs = [pm.augmenters.create(n, options.get(n, {})) for n in combo]
        ctx = PrepareContext(teacher, student, data, cache, torch.device("cpu"), None, lambda m: None)
        for a in augs:
            a.prepare(ctx)
        clock = StepClock()
        train_student(
            student,
            data,
            settings,
            seed=0,
            augmenters=[*augs, clock],
            teacher=teacher,
            teacher_outputs=mode,
            cache=cache,
        )
        return clock.step_time()

    jobs = [
        (c, m) for c in combos for m in ("online", "cached") if m == "online" or {"kd", "attention"} & set(c)
    ]
    for c, m in jobs:  # warm-up: builds the IG maps and the teacher-output caches, creates oneDNN kernels
        run(c, m)
    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds):
        rounds.append({f"{'+'.join(c) or 'ce'}|{m}": run(c, m) for c, m in jobs})
    base = [r["ce|online"] for r in rounds]
    rows: dict[str, Any] = {}
    for c, m in jobs:
        key = f"{'+'.join(c) or 'ce'}|{m}"
        rows[key] = {
            "augmenters": list(c),
            "teacher_outputs": m if {"kd", "attention"} & set(c) else "not needed",
            "step_ms_median": 1000 * statistics.median(r[key] for r in rounds),
            "ratio_to_ce": statistics.median(r[key] / b for r, b in zip(rounds, base, strict=True)),
        }
    full = "kd+attention+ig-overlay"
    result = {
        "device": device_name(torch.device("cpu")),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "config": args.config,
        "student_params": sum(q.numel() for q in space.build(student_params).parameters()),
        "teacher_params": sum(q.numel() for q in teacher.parameters()),
        "batch_size": args.batch_size,
        "steps_per_run": args.steps,
        "rounds": args.rounds,
        "views_per_image": cfg.teacher.outputs.views if cfg.teacher else None,
        "combinations": rows,
        "kd_attention_ig_ratio_cached": rows[f"{full}|cached"]["ratio_to_ce"],
        "kd_attention_ig_ratio_online": rows[f"{full}|online"]["ratio_to_ce"],
        "target_cached_ratio_at_most": 1.3,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.startswith("kd_attention")}))


if __name__ == "__main__":
    main()
