"""``ig-overlay``: blend each training image with its integrated-gradients map, as the IG-KD paper (Hernandez et al.
2025) does, without its defects.

``prepare`` computes the teacher's IG map of every training image once (or reads it from the artifact cache: one
entry per teacher weights, data split and IG settings, shared by every trial and run; see
:mod:`automl_kd.distill.ig.maps`); with ``precompute: needed`` a map is computed when an image is first overlaid,
and kept for later runs. During training, each image independently, with probability ``p``: the map
is raised to a power ``s`` drawn log-uniformly from ``exponent``, min-max normalised per image to [0, 1], repeated
over the colour channels and blended ``x' = (1 - w) * x + w * map`` on the [0, 1] image.

The overlay runs *before* crop and flip (defect 2 of the paper: its maps were blended after the geometric
augmentation without being cropped or flipped), and maps are looked up by each image's dataset index (defect 1: its
maps were stored in the order of a shuffled loader and read back by index).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from typing import Any

import torch
from rich.progress import Progress

from automl_kd.cache import ArtifactCache
from automl_kd.cli.common import config_options, emit_facts, plugin_manager
from automl_kd.config import Config, load_config
from automl_kd.distill.augmenter import Augmenter, PrepareContext
from automl_kd.distill.ig.attribution import Baseline, IGSettings, Method, Reduction, Target
from automl_kd.distill.ig.gallery import overlay, write_gallery
from automl_kd.distill.ig.maps import IGMaps, on_demand_ig_maps, precompute_ig_maps
from automl_kd.distill.teacher import teacher_for_config
from automl_kd.engine.searched_options import resolve_augmenter_options, searched_option
from automl_kd.errors import ConfigError
from automl_kd.hookspecs import hookimpl
from automl_kd.manager import PluginManager, get_plugin_manager

GALLERY_FILE = "ig_gallery.png"
log = logging.getLogger("automl_kd")


class IGOverlay(Augmenter):
    """Overlay the teacher's IG maps on training images.

    Options (IG maps):
        steps: quadrature nodes (the paper: 50). method: ``gausslegendre`` or ``riemann_left``/``right``/
        ``middle``/``trapezoid``. baseline: ``zeros`` (zero in the normalised space: the paper), ``black``,
        ``blurred`` (Gaussian, ``blur_sigma`` pixels), ``mean`` (each image's mean colour). target: ``label`` or
        ``prediction`` (the teacher's). reduction over channels: ``sum_abs`` (the paper), ``abs_sum``,
        ``max_abs``, ``l2``. fp16: store maps as float16. batch_size: (image, node) rows per IG pass.
        precompute: ``all`` (every training image's map before training starts) or ``needed`` (each map when an
        image is first overlaid: the same maps, sooner, when a short training overlays a fraction of the images).
    Options (overlay):
        p: probability per image (the paper: 0.1). w: blend weight (0.5). exponent: ``[low, high]`` of the
        log-uniform power (``[1, 2]``). gallery: images in the run directory's ``ig_gallery.png`` (0: none).
    """

    name = "ig-overlay"

    def __init__(
        self,
        steps: int = 32,
        method: Method = "gausslegendre",
        baseline: Baseline = "zeros",
        blur_sigma: float = 2.0,
        target: Target = "label",
        reduction: Reduction = "sum_abs",
        fp16: bool = True,
        batch_size: int = 256,
        p: float = 0.1,
        w: float = 0.5,
        exponent: tuple[float, float] = (1.0, 2.0),
        gallery: int = 8,
        precompute: str = "all",
    ) -> None:
        if not 0.0 <= p <= 1.0 or not 0.0 <= w <= 1.0:
            raise ValueError(f"p and w must be in [0, 1], got p={p}, w={w}")
        lo, hi = float(exponent[0]), float(exponent[1])
        if not 0 < lo <= hi:
            raise ValueError(f"exponent must be [low, high] with 0 < low <= high, got {list(exponent)}")
        if steps < 1 or batch_size < 1 or blur_sigma <= 0 or gallery < 0:
            raise ValueError("steps and batch_size must be >= 1, blur_sigma > 0, gallery >= 0")
        if precompute not in ("all", "needed"):
            raise ValueError(f"precompute must be 'all' or 'needed', got {precompute!r}")
        self.precompute = precompute
        self.settings = IGSettings(steps, method, baseline, blur_sigma, target, reduction, fp16, batch_size)
        self.p, self.w, self.exponent, self.gallery = float(p), float(w), (lo, hi), gallery
        self.maps: IGMaps | None = None
        self._warned = False

    def prepare(self, ctx: PrepareContext) -> None:
        if ctx.teacher is None:
            raise ValueError("ig-overlay needs a teacher (its IG maps); set `teacher:` in the config")
        cache = ctx.cache if ctx.cache is not None else ArtifactCache.default()
        compute = on_demand_ig_maps if self.precompute == "needed" else precompute_ig_maps
        self.maps = compute(ctx.teacher, ctx.data, self.settings, cache, log=ctx.log)
        if self.gallery and ctx.run_dir is not None:
            path = ctx.run_dir / GALLERY_FILE
            if not path.exists():
                part = ctx.data.train
                n = min(self.gallery, len(part))
                titles = [f"#{int(i)}" for i in part.index[:n]]
                write_gallery(
                    path, part.x[:n].float() / 255, self.maps.lookup(part.index[:n]), w=self.w, titles=titles
                )
                ctx.log(f"ig-overlay: gallery of {n} training images in {path}")

    # the random draws, and the deterministic overlay given them (replayable: teacher outputs can be cached)
    def sample_view(
        self, index: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        n = int(index.shape[0])
        apply = torch.rand(n, generator=generator) < self.p
        lo, hi = math.log(self.exponent[0]), math.log(self.exponent[1])
        s = torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator))
        return {"apply": apply, "s": s}

    def views_drawn(self, index: torch.Tensor, draws: dict[str, torch.Tensor]) -> None:
        if self.maps is not None and "apply" in draws:  # maps on demand: every overlaid image's, at once
            self.maps.prefetch(index[draws["apply"].bool().any(0).to(index.device)])

    def apply_view(
        self, x: torch.Tensor, index: torch.Tensor, y: torch.Tensor, params: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        apply = params["apply"].to(x.device).bool()
        if self.maps is None:
            if not self._warned:
                log.warning(
                    "ig-overlay: prepare() was not called, so there are no IG maps; images stay unchanged"
                )
                self._warned = True
            return x
        rows = apply.nonzero().squeeze(1)
        if len(rows) == 0:
            return x
        s = params["s"].to(x.device)[rows].view(-1, 1, 1)
        out = x.clone()
        out[rows] = overlay(x[rows], self.maps.lookup(index[rows]), self.w, exponent=s)
        return out

    def transform(
        self, x: torch.Tensor, index: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        return self.apply_view(x, index, y, self.sample_view(index, y, generator))

    def replay_key(self) -> dict[str, Any]:
        return {
            "maps": self.maps.key if self.maps else None,
            "p": self.p,
            "w": self.w,
            "exponent": self.exponent,
        }


__all__ = ["IGOverlay", "overlay"]


@hookimpl
def register_augmenters(register: Any) -> None:
    register(
        "ig-overlay", IGOverlay, description="blend training images with the teacher's IG maps (p, w, s)"
    )


# -- `automl-kd ig precompute` ------------------------------------------------------------------------------------
#: ig-overlay options that determine the maps; they cannot be searched by ``automl-kd ig precompute``
MAP_OPTIONS = ("steps", "method", "baseline", "blur_sigma", "target", "reduction", "fp16")


def precompute_for_config(
    config: Config,
    pm: PluginManager | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> IGMaps:
    """``automl-kd ig precompute``: the IG maps of a config's ``ig-overlay`` augmenter, for its teacher and data,
    computed (resumably) or found in the cache; also writes the gallery into the run directory."""
    pm = pm or get_plugin_manager()
    refs = [r for r in config.augmenters if r.name == "ig-overlay"]
    if not refs:
        raise ConfigError(
            "augmenters: the config has no ig-overlay augmenter, so there are no IG maps to compute"
        )
    searched = [k for k, v in refs[0].options.items() if k in MAP_OPTIONS and searched_option(v) is not None]
    if searched:
        raise ConfigError(
            f"augmenters.ig-overlay.{searched[0]}: IG map settings must be fixed to precompute them"
        )
    aug = pm.augmenters.create("ig-overlay", resolve_augmenter_options("ig-overlay", refs[0].options, {}))
    teacher, data = teacher_for_config(config, pm)
    maps = precompute_ig_maps(
        teacher, data, aug.settings, ArtifactCache.default(), progress=progress, log=log
    )
    n = min(8, len(data.train))
    if n:
        idx = data.train.index[:n]
        path = config.resolved_run_dir / GALLERY_FILE
        write_gallery(
            path,
            data.train.x[:n].float() / 255,
            maps.lookup(idx),
            w=aug.w,
            titles=[f"#{int(i)}" for i in idx],
        )
    return maps


def cmd_ig_precompute(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, list(args.set or []))
    with Progress(disable=not sys.stderr.isatty()) as bar:  # a live bar on a terminal; log lines otherwise
        task = bar.add_task("IG maps", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            if bar.disable:
                log.info("IG maps: %d/%d images", done, total)

        maps = precompute_for_config(cfg, plugin_manager(args), progress=progress, log=log.info)
    out = {"key": maps.key, "images": len(maps), **{k: v for k, v in maps.meta.items() if k != "settings"}}
    emit_facts(args, out)
    return 0


@hookimpl
def register_commands(cli: Any) -> None:
    sp = cli.add_parser("ig", help="integrated-gradients tools")
    ig_sub = sp.add_subparsers(dest="ig_command", required=True)
    ip = ig_sub.add_parser(
        "precompute", help="compute (or resume) the IG maps of the config's ig-overlay augmenter"
    )
    config_options(ip)
    ip.set_defaults(func=cmd_ig_precompute)
