"""Training throughput of the product's own loop, fp32 against bf16 autocast, in interleaved rounds, and what
``precision: auto`` picks for each network.

Four networks: the IG-KD paper's network (``paper-truncated``, removed = 5: the released CIFAR-10 teacher, 58.7 M
MACs at 32 px), its truncated student of the headline experiment (removed = 15, 14.9 M MACs), an mbv2 candidate of
the headline's NAS space (8.5 M MACs at 32 px) and an mbv2 student of the demo's size (Fashion-MNIST, 28 px). Each
round trains every (network, precision) pair for the same number of steps through
:func:`automl_kd.distill.fit.fit` on real images (CIFAR-10 (JPEG) or Fashion-MNIST), so the ratio is what a search
sees; rounds alternate the order so that drift in machine load falls on both sides. fp32 is the loop without
autocast (fp32 with channels_last); bf16 is bf16 autocast with channels_last (AMX or AVX-512 BF16 here). ``auto``
takes bf16 only for networks with at least ``BF16_MIN_DENSE_MACS`` dense multiply-adds per image: this benchmark
is where that threshold comes from.

Accuracy parity: the same seeds and the same short budget in both precisions; the difference of the mean
validation accuracies is compared with the seed-to-seed spread (std of the per-seed results).

    python benchmarks/train_throughput.py                       # about 10 min on 2 cores
    python benchmarks/train_throughput.py --markdown            # the docs table from the JSON
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automl_kd import get_plugin_manager, load_config
from automl_kd.cache import atomic_write
from automl_kd.data import load_data, unpack_imagefolder
from automl_kd.distill.checkpoints import load_weights
from automl_kd.distill.fit import fit
from automl_kd.distill.ig.attribution import IGSettings, attribution_maps, quadrature
from automl_kd.distill.ig.inference import inference_copy
from automl_kd.distill.loop import accuracy
from automl_kd.distill.settings import TrainSettings
from automl_kd.precision import (
    BF16_MIN_DENSE_MACS,
    autocast_dtype,
    cpu_has_fast_bf16,
    cpu_name,
    dense_macs,
    dtype_name,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RESULT = REPO / "benchmarks" / "results" / "train_throughput.json"
RELEASED = SHARED / "igkd-students" / "CIFAR10_KD_IG_AT_T2.5_alpha0.01_p0.1_gamma0.8_TestAcc92.42.pt"
DEMO = REPO / "src" / "automl_kd" / "configs" / "demo.yaml"
#: a fixed candidate of the headline experiment's mbv2 space, 12.9 M MACs at 32 px
NAS_OPTIONS = {
    "stages": [[16, 1, 1], [24, 2, 2], [32, 2, 3], [64, 2, 3], [96, 1, 2], [160, 2, 2]],
    "widths": [0.35, 0.5, 0.75, 1.0],
    "stem_channels": 16,
    "head_channels": None,
}


def cifar_subset(tmp: Path, per_class: int) -> Path:
    """The first ``per_class`` training and test images of each class of the CIFAR-10 (JPEG) copy."""
    archive = SHARED / "cifar-10-jpeg" / "cifar-10-jpeg.tar.gz"
    return unpack_imagefolder(archive, tmp, {"train": per_class, "test": per_class})


def networks(cifar_root: Path, train_size: int) -> dict[str, dict[str, Any]]:
    """name -> the data config and a builder of the network (fresh weights from the seed each time)."""
    pm = get_plugin_manager()
    demo = load_config(DEMO)
    cifar = {"dataset": "imagefolder", "root": str(cifar_root), "val_fraction": 0.1}
    fmnist = {"dataset": "fashion-mnist", "train_size": train_size, "test_size": 100, "val_fraction": 0.1}
    host32 = {"num_classes": 10, "in_chans": 3, "input_size": 32}
    paper = pm.spaces.create("paper-truncated", {}, **host32)
    fmnist_shape = (1, 28, 28)
    nas = pm.spaces.create("mbv2", NAS_OPTIONS, **host32)
    nas_params = {k: d.choices[min(1, len(d.choices) - 1)] for k, d in nas.distributions().items()}  # type: ignore[attr-defined]
    demo_space = pm.spaces.create(
        demo.space.name, demo.space.options, num_classes=10, in_chans=1, input_size=28
    )
    demo_params = {k: d.choices[min(1, len(d.choices) - 1)] for k, d in demo_space.distributions().items()}  # type: ignore[attr-defined]
    return {
        "paper-net (removed=5)": {
            "data": cifar,
            "build": lambda: paper.build({"removed": 5}),
            "macs": paper.cost({"removed": 5}).macs,
            "shape": (3, 32, 32),
        },
        "truncated student (removed=15)": {
            "data": cifar,
            "build": lambda: paper.build({"removed": 15}),
            "macs": paper.cost({"removed": 15}).macs,
            "shape": (3, 32, 32),
        },
        "mbv2 NAS-space student (32 px)": {
            "data": cifar,
            "build": lambda: nas.build(nas_params),
            "macs": nas.cost(nas_params).macs,
            "shape": (3, 32, 32),
        },
        "mbv2 demo-size student (28 px)": {
            "data": {**fmnist, "crop_padding": 0, "flip": False},
            "build": lambda: demo_space.build(demo_params),
            "macs": demo_space.cost(demo_params).macs,
            "shape": fmnist_shape,
        },
    }


def train(
    net: dict[str, Any], data: Any, precision: str, steps: int, seed: int, batch: int
) -> tuple[float, float]:
    """(images per second of ``steps`` training steps, validation accuracy after them)."""
    settings = TrainSettings(
        epochs=1,
        batch_size=batch,
        lr=3e-3,
        optimizer="adamw",
        max_steps_per_epoch=steps,
        precision=precision,  # type: ignore[arg-type]
        crop_padding=4 if data.input_size == 32 else 0,
        flip=data.input_size == 32,
    )
    fitted = fit(net["build"], data, settings, seed=seed, device=torch.device("cpu"))
    # fit's clock includes the validation pass after the epoch: time a second pass and take it off
    t_val = time.perf_counter()
    accuracy(fitted.model, data.val, data, settings.eval_batch_size, precision=precision)
    seconds = fitted.seconds - (time.perf_counter() - t_val)
    return steps * batch / max(seconds, 1e-9), fitted.result.val_acc


def plain_ig(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int, dtype: torch.dtype
) -> torch.Tensor:
    """IG with zero baseline by plain autograd, weights and inputs in ``dtype``, sums in fp32."""
    alphas, weights = quadrature(steps)
    total = torch.zeros_like(x)
    for i in range(len(x)):
        pts = (
            (alphas.view(-1, 1, 1, 1) * x[i : i + 1]).to(dtype).contiguous(memory_format=torch.channels_last)
        )
        pts.requires_grad_(True)
        seed = (model(pts).float()[:, target[i]] * weights).sum()
        (g,) = torch.autograd.grad(seed, pts)
        total[i] = g.float().sum(0)
    return total * x


def ig_precision(root: Path, n: int) -> dict[str, Any]:
    """Completeness error and speed of IG on the released teacher in fp32 and bf16 (plain autograd), beside the
    tuned fp32 precompute path (folded norms, fused conv + clamp, hoisted stem) the product uses."""
    data = load_data(load_config({"data": {"dataset": "imagefolder", "root": str(root)}}).data)
    model = get_plugin_manager().spaces.create("paper-truncated", {}).build({"removed": 5})
    load_weights(model, RELEASED)
    model = model.eval().to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = data.val.x[:n].float().div(255), data.val.y[:n]
    with torch.no_grad():
        gap = model(x.contiguous(memory_format=torch.channels_last)).gather(1, y.view(-1, 1)).squeeze(1)
        gap = gap - model(torch.zeros_like(x[:1]).contiguous(memory_format=torch.channels_last))[0][y]
    out: dict[str, Any] = {"images": n}
    for steps in (16, 32):
        for label, dtype in (("plain fp32", torch.float32), ("plain bf16", torch.bfloat16)):
            m = copy.deepcopy(model).to(dtype)
            t0 = time.perf_counter()
            attr = plain_ig(m, x, y, steps, dtype)
            dt = time.perf_counter() - t0
            rel = ((attr.flatten(1).sum(1) - gap).abs() / gap.abs().clamp_min(1e-6)).numpy()
            out[f"{label}, {steps} steps"] = {
                "median_rel_error": float(np.median(rel)),
                "images_per_s": n / dt,
            }
        t0 = time.perf_counter()
        _, err, g = attribution_maps(
            inference_copy(model), x, y, lambda v: v, torch.zeros(3), IGSettings(steps=steps)
        )
        dt = time.perf_counter() - t0
        rel = (err / g.clamp_min(1e-6)).numpy()
        out[f"tuned fp32, {steps} steps"] = {
            "median_rel_error": float(np.median(rel)),
            "images_per_s": n / dt,
        }
        for k, v in out.items():
            if k.endswith(f"{steps} steps"):
                print(
                    f"IG {k}: median relative completeness error {v['median_rel_error']:.4f}, "
                    f"{v['images_per_s']:.2f} images/s",
                    flush=True,
                )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8, help="training steps per timed run")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--parity-seeds", type=int, default=3)
    ap.add_argument("--parity-steps", type=int, default=60, help="training steps of each parity run")
    ap.add_argument("--ig-images", type=int, default=48, help="images of the IG precision check (0: skip)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(RESULT.read_text())))
        return
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as d:
        root = cifar_subset(Path(d), per_class=300)
        nets = networks(root, train_size=3000)
        loaded = {name: load_data(load_config({"data": n["data"]}).data) for name, n in nets.items()}
        speed: dict[str, dict[str, list[float]]] = {name: {"fp32": [], "bf16": []} for name in nets}
        for name, net in nets.items():  # warm-up: oneDNN builds its kernels on first use
            for p in ("fp32", "bf16"):
                train(net, loaded[name], p, 2, 0, args.batch)
        for rnd in range(args.rounds):
            for name, net in nets.items():
                order = ("fp32", "bf16") if rnd % 2 == 0 else ("bf16", "fp32")
                for p in order:
                    ips, _ = train(net, loaded[name], p, args.steps, rnd, args.batch)
                    speed[name][p].append(ips)
                    print(f"round {rnd} {name} {p}: {ips:.1f} images/s", flush=True)
        parity: dict[str, Any] = {}
        for name, net in nets.items():
            accs: dict[str, list[float]] = {"fp32": [], "bf16": []}
            for seed in range(args.parity_seeds):
                for p in ("fp32", "bf16"):
                    accs[p].append(train(net, loaded[name], p, args.parity_steps, 100 + seed, 64)[1])
            spread = float(np.std(accs["fp32"], ddof=1))
            diff = float(np.mean(accs["bf16"]) - np.mean(accs["fp32"]))
            parity[name] = {
                "val_acc": accs,
                "mean_diff": diff,
                "seed_std_fp32": spread,
                "seed_std_bf16": float(np.std(accs["bf16"], ddof=1)),
                "within_spread": abs(diff) <= max(spread, float(np.std(accs["bf16"], ddof=1))),
            }
            print(f"parity {name}: bf16 - fp32 = {diff:+.2f} points, seed std {spread:.2f}", flush=True)
        ig = ig_precision(root, args.ig_images) if args.ig_images else None
    rows = {}
    for name, s in speed.items():
        ratios = [a / f for a, f in zip(s["bf16"], s["fp32"], strict=True)]
        model = nets[name]["build"]()
        rows[name] = {
            "macs": nets[name]["macs"],
            "dense_macs": dense_macs(model, nets[name]["shape"]),
            "auto_picks": dtype_name(autocast_dtype("auto", cpu, model, nets[name]["shape"])),
            "fp32_images_per_s": s["fp32"],
            "bf16_images_per_s": s["bf16"],
            "best_ratio": max(s["bf16"]) / max(s["fp32"]),
            "median_round_ratio": float(np.median(ratios)),
        }
    result = {
        "command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} {cpu_name()}",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "fast_bf16_cpu": cpu_has_fast_bf16(),
        "bf16_min_dense_macs": BF16_MIN_DENSE_MACS,
        "rounds": args.rounds,
        "steps": args.steps,
        "batch": args.batch,
        "throughput": rows,
        "parity": {"seeds": args.parity_seeds, "steps": args.parity_steps, "batch": 64, "networks": parity},
        "ig_precision": ig,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(RESULT, (json.dumps(result, indent=1) + "\n").encode())
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"Training steps of the product's loop (batch {r['batch']}, {r['steps']} steps per run, {r['rounds']} "
        f"interleaved rounds, {r['torch_threads']} torch threads); `auto` takes bf16 from "
        f"{r['bf16_min_dense_macs'] / 1e6:.0f} M dense MACs:",
        "",
        "| network | MACs | dense MACs | fp32 images/s (best) | bf16 images/s (best) | best / best "
        "| median of round ratios | `auto` picks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in r["throughput"].items():
        lines.append(
            f"| {name} | {row['macs'] / 1e6:.1f} M | {row['dense_macs'] / 1e6:.1f} M | "
            f"{max(row['fp32_images_per_s']):.1f} | {max(row['bf16_images_per_s']):.1f} | {row['best_ratio']:.2f}x "
            f"| {row['median_round_ratio']:.2f}x | {row['auto_picks']} |"
        )
    p = r["parity"]
    lines += [
        "",
        f"Accuracy parity ({p['seeds']} seeds, {p['steps']} steps of batch {p['batch']} each, validation accuracy %):",
        "",
        "| network | fp32 | bf16 | bf16 - fp32 | seed std (fp32 / bf16) | within the spread |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in p["networks"].items():
        f, a = row["val_acc"]["fp32"], row["val_acc"]["bf16"]
        lines.append(
            f"| {name} | {np.mean(f):.2f} | {np.mean(a):.2f} | {row['mean_diff']:+.2f} | "
            f"{row['seed_std_fp32']:.2f} / {row['seed_std_bf16']:.2f} | {'yes' if row['within_spread'] else 'no'} |"
        )
    if r.get("ig_precision"):
        ig = r["ig_precision"]
        lines += [
            "",
            f"IG on the released teacher ({ig['images']} CIFAR-10 (JPEG) validation images, zero baseline, "
            "Gauss-Legendre): median relative completeness error |sum IG - (f(x) - f(0))| / |f(x) - f(0)|:",
            "",
            "| path | median relative error | images/s |",
            "|---|---|---|",
        ]
        for k, v in ig.items():
            if isinstance(v, dict):
                lines.append(f"| {k} | {v['median_rel_error']:.2%} | {v['images_per_s']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
