"""Teacher outputs for the exact view the student sees: online, or cached for fixed views (FKD-style).

A defect of the IG-KD paper's code (Hernandez et al. 2025): its soft labels came from un-augmented images while the
student saw augmented ones.
Here the teacher's outputs always belong to the student's view:

- ``online``: the teacher runs on every training batch, after augmentation;
- ``cached``: each training image gets ``views`` fixed augmented views. A view is every random draw of the input
  pipeline (the augmenters' ``sample_view``, e.g. whether and how the IG overlay applies, then the crop offsets
  and the flip). The draws are stored with the teacher's logits and reduced features (attention maps) for that
  view; during training each image picks one of its views per step and the student trains on exactly that view,
  rebuilt from the stored draws. No teacher forward pass is left in the training step.

Two artifacts (see :mod:`automl_kd.cache`): ``teacher-views`` (draws and logits, keyed by the teacher's weights,
the data split, the number of views, their seed, the crop/flip settings and the transforming augmenters'
``replay_key``) and one ``teacher-feats`` entry per teacher layer (the reduced features on those same views), so
a trial that taps another teacher layer adds one entry and reuses the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from automl_kd.cache import Artifact, ArtifactCache
from automl_kd.data import DataSplits
from automl_kd.distill.augmenter import Augmenter, Outputs
from automl_kd.errors import ConfigError
from automl_kd.precision import autocast, dtype_name

from .taps import forward, model_fingerprint
from .teacher_info import teacher_dtype, teacher_info, teacher_input, teacher_normalizer
from .views import apply_crop_flip, crop_flip_draws

log = logging.getLogger("automl_kd")

Reducer = Callable[[torch.Tensor], torch.Tensor]


# -- which augmenter reduces which teacher layer ---------------------------------------------------------------
def teacher_reducers(augmenters: Sequence[Augmenter]) -> dict[str, tuple[Augmenter, Reducer]]:
    """Teacher layer -> (the augmenter that reads it, its reduction). Two augmenters may share a layer only when
    neither reduces it."""
    out: dict[str, tuple[Augmenter, Reducer]] = {}
    for a in augmenters:
        for layer in a.teacher_layers():
            reducer = _bind(a, layer)
            if layer in out:
                other = out[layer][0]
                if _reduces(a) or _reduces(other):
                    raise ConfigError(
                        f"augmenters {other.name!r} and {a.name!r} both read teacher layer {layer!r} and at "
                        "least one reduces it; give them different layers"
                    )
                continue
            out[layer] = (a, reducer)
    return out


def _bind(a: Augmenter, layer: str) -> Reducer:
    def reduce(feature: torch.Tensor) -> torch.Tensor:
        return a.reduce_teacher(layer, feature)

    return reduce


def _reduces(a: Augmenter) -> bool:
    return type(a).reduce_teacher is not Augmenter.reduce_teacher


def _transforms(a: Augmenter) -> bool:
    cls = type(a)
    return cls.transform is not Augmenter.transform or cls.sample_view is not Augmenter.sample_view


def reduce_outputs(out: Outputs, reducers: dict[str, tuple[Augmenter, Reducer]]) -> Outputs:
    """Apply each layer's reduction (online path: ``losses`` then sees what the cache would hold)."""
    return Outputs(
        out.logits, {k: reducers[k][1](v) if k in reducers else v for k, v in out.features.items()}
    )


# -- the cache -------------------------------------------------------------------------------------------------
class TeacherOutputCache:
    """Stored views of every training image and the teacher's outputs on them, on the training device."""

    def __init__(
        self,
        index: torch.Tensor,
        draws: dict[str, torch.Tensor],
        logits: torch.Tensor,
        features: dict[str, torch.Tensor],
        augmenters: Sequence[Augmenter],
        padding: int,
    ) -> None:
        self.index, self.draws, self.logits, self.features = index, draws, logits, features
        self.views = int(logits.shape[0])
        self.augmenters = list(augmenters)
        self.padding = padding
        self._rows = torch.full((int(index.max()) + 1 if len(index) else 0,), -1, dtype=torch.long)
        self._rows[index.cpu()] = torch.arange(len(index))
        self._rows = self._rows.to(logits.device)

    def choose(self, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of these dataset indices, and one stored view per image drawn from ``generator``."""
        rows = self._rows[index.to(self._rows.device)]
        if bool((rows < 0).any()):
            raise KeyError(f"no cached teacher outputs for dataset index {int(index[rows.cpu() < 0][0])}")
        views = torch.randint(0, self.views, (len(index),), generator=generator).to(rows.device)
        return rows, views

    def make_view(
        self, x01: torch.Tensor, index: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, views: torch.Tensor
    ) -> torch.Tensor:
        """Rebuild the stored views of [0, 1] images: each augmenter's ``apply_view``, then crop and flip."""
        return build_view(x01, index, y, _gather(self.draws, views, rows), self.augmenters, self.padding)

    def outputs(self, rows: torch.Tensor, views: torch.Tensor) -> Outputs:
        feats = {k: v[views, rows].float() for k, v in self.features.items()}
        return Outputs(self.logits[views, rows].float(), feats)


def _gather(
    draws: dict[str, torch.Tensor], views: torch.Tensor, rows: torch.Tensor
) -> dict[str, torch.Tensor]:
    return {k: v[views.to(v.device), rows.to(v.device)] for k, v in draws.items()}


def build_view(
    x01: torch.Tensor,
    index: torch.Tensor,
    y: torch.Tensor,
    draws: dict[str, torch.Tensor],
    augmenters: Sequence[Augmenter],
    padding: int,
) -> torch.Tensor:
    """The one function that turns draws into a view, for the cache builder and the training loop alike."""
    for i, a in enumerate(augmenters):
        prefix = f"aug{i}."
        x01 = a.apply_view(
            x01, index, y, {k[len(prefix) :]: v for k, v in draws.items() if k.startswith(prefix)}
        )
    return apply_crop_flip(x01, {k: draws[f"crop.{k}"] for k in ("dy", "dx", "flip")}, padding)


def sample_draws(
    n: int,
    index: torch.Tensor,
    y: torch.Tensor,
    augmenters: Sequence[Augmenter],
    padding: int,
    flip: bool,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Every random draw of the input pipeline for a batch, in pipeline order, keyed ``aug<i>.<name>``/``crop.*``."""
    out: dict[str, torch.Tensor] = {}
    for i, a in enumerate(augmenters):
        out.update({f"aug{i}.{k}": v.cpu() for k, v in a.sample_view(index, y, generator).items()})
    out.update({f"crop.{k}": v for k, v in crop_flip_draws(n, padding, flip, generator).items()})
    return out


def resolve_mode(
    mode: str, augmenters: Sequence[Augmenter], padding: int, flip: bool, views: int
) -> tuple[str, int]:
    """``(online|cached, number of views)`` for a configured mode; ``auto`` picks cached unless an augmenter's
    transform cannot be replayed, with one view when the input pipeline has no randomness."""
    unreplayable = [a.name for a in augmenters if a.replay_key() is None]
    if mode == "online" or (mode == "auto" and unreplayable):
        return "online", 0
    if unreplayable:
        raise ConfigError(
            f"teacher.outputs.mode: cached needs replayable transforms; augmenter(s) {', '.join(unreplayable)} "
            "only implement transform(); use mode online or auto"
        )
    random_input = padding > 0 or flip or any(_transforms(a) for a in augmenters)
    return "cached", (views if random_input else 1)


def build_teacher_outputs(
    teacher: nn.Module,
    augmenters: Sequence[Augmenter],
    data: DataSplits,
    cache: Any,
    *,
    views: int,
    seed: int,
    padding: int,
    flip: bool,
    dtype: torch.dtype = torch.float16,
    batch_size: int = 512,
    say: Callable[[str], None] = lambda m: None,
    precision: str = "fp32",
) -> TeacherOutputCache:
    """Load the teacher-output cache for the training split, building what is missing (once, under a lock).

    The teacher runs under autocast in ``precision`` (resolved once per teacher:
    :func:`~automl_kd.distill.teacher_info.teacher_dtype`), on inputs in its own convention (``teacher.input``);
    both are part of the key when they are not the defaults."""
    part = data.train
    device = part.x.device
    run_dtype = teacher_dtype(teacher, precision, device, tuple(part.x.shape[1:]))
    reducers = teacher_reducers(augmenters)
    moving = [a for a in augmenters if _transforms(a)]
    base = {
        "teacher": model_fingerprint(teacher),
        "data": data.fingerprint,
        "split": "train",
        "views": views,
        "seed": seed,
        "padding": padding,
        "flip": flip,
        "transforms": [[a.name, a.replay_key()] for a in moving],
    }
    if (convention := teacher_input(teacher)) != "dataset":
        base["input"] = convention
    if run_dtype is not None:
        base["precision"] = dtype_name(run_dtype)
    vkey = cache.key("teacher-views", base)
    fkeys = {
        layer: cache.key(
            "teacher-feats",
            {**base, "layer": layer, "reducer": [a.name, a.replay_key()], "dtype": str(dtype)},
        )
        for layer, (a, _) in sorted(reducers.items())
    }

    def load_all() -> tuple[Any, dict[str, torch.Tensor]]:
        views_art = cache.load("teacher-views", vkey)
        if views_art is not None and not torch.equal(views_art.tensors["index"], part.index.cpu()):
            cache.discard("teacher-views", vkey, "its dataset indices differ from the split's")
            views_art = None
        feats: dict[str, torch.Tensor] = {}
        for layer, k in fkeys.items():
            art = cache.load("teacher-feats", k) if views_art is not None else None
            if art is not None:
                feats[layer] = art.tensors["features"]
        return views_art, feats

    views_art, feats = load_all()
    if views_art is None or len(feats) < len(fkeys):
        with cache.lock("teacher-views", vkey):
            views_art, feats = load_all()
            if views_art is None or len(feats) < len(fkeys):
                views_art, feats = _build(
                    teacher,
                    moving,
                    data,
                    cache,
                    vkey,
                    fkeys,
                    views_art,
                    feats,
                    views,
                    seed,
                    padding,
                    flip,
                    dtype,
                    batch_size,
                    reducers,
                    say,
                    run_dtype,
                )
    else:
        say(f"teacher outputs: reusing cache entry {vkey[:12]} ({views} view(s) x {len(part)} images)")
    t = views_art.tensors
    draws = {k.removeprefix("draw:"): v.to(device) for k, v in t.items() if k.startswith("draw:")}
    return TeacherOutputCache(
        t["index"],
        draws,
        t["logits"].to(device),
        {k: v.to(device) for k, v in feats.items()},
        moving,
        padding,
    )


@torch.no_grad()
def _build(
    teacher: nn.Module,
    moving: list[Augmenter],
    data: DataSplits,
    cache: Any,
    vkey: str,
    fkeys: dict[str, str],
    views_art: Any,
    feats: dict[str, torch.Tensor],
    views: int,
    seed: int,
    padding: int,
    flip: bool,
    dtype: torch.dtype,
    batch_size: int,
    reducers: dict[str, tuple[Augmenter, Reducer]],
    say: Callable[[str], None],
    run_dtype: torch.dtype | None = None,
) -> tuple[Any, dict[str, torch.Tensor]]:
    part = data.train
    normalize = teacher_normalizer(teacher, data)
    n = len(part)
    missing = [layer for layer in fkeys if layer not in feats]
    say(
        f"teacher outputs: computing {views} view(s) x {n} images (layers: {', '.join(missing) or 'logits only'})"
    )
    if views_art is not None:  # reuse the stored draws so every entry describes the very same views
        draws_all = {
            k.removeprefix("draw:"): v for k, v in views_art.tensors.items() if k.startswith("draw:")
        }
    else:
        per_view: list[dict[str, torch.Tensor]] = []
        for v in range(views):
            g = torch.Generator().manual_seed(seed * 1_000_003 + v)
            chunks = [
                sample_draws(
                    min(batch_size, n - s),
                    part.index[s : s + batch_size],
                    part.y[s : s + batch_size],
                    moving,
                    padding,
                    flip,
                    g,
                )
                for s in range(0, n, batch_size)
            ]
            per_view.append({k: torch.cat([c[k] for c in chunks]) for k in chunks[0]} if chunks else {})
        draws_all = {k: torch.stack([pv[k] for pv in per_view]) for k in per_view[0]}
    for i, a in enumerate(moving):  # e.g. ig-overlay computes, in large batches, the maps these views overlay
        mine = {k.split(".", 1)[1]: t for k, t in draws_all.items() if k.startswith(f"aug{i}.")}
        if mine:
            a.views_drawn(part.index, mine)
    logits = torch.zeros(views, n, data.num_classes)
    out_feats: dict[str, list[torch.Tensor]] = {layer: [] for layer in missing}
    for v in range(views):
        per_layer: dict[str, list[torch.Tensor]] = {layer: [] for layer in missing}
        for s in range(0, n, batch_size):
            sl = slice(s, min(s + batch_size, n))
            d = {k: t[v, sl].to(part.x.device) for k, t in draws_all.items()}
            x = build_view(part.x[sl].float().div(255), part.index[sl], part.y[sl], d, moving, padding)
            x = normalize(x).contiguous(memory_format=torch.channels_last)
            with autocast(part.x.device, run_dtype):
                out = forward(teacher, x, missing)
            logits[v, sl] = out.logits.float().cpu()
            for layer in missing:
                per_layer[layer].append(reducers[layer][1](out.features[layer]).to(dtype).cpu())
        for layer in missing:
            out_feats[layer].append(torch.cat(per_layer[layer]))
    if views_art is None:
        tensors = {
            "index": part.index.cpu(),
            "logits": logits,
            **{f"draw:{k}": t for k, t in draws_all.items()},
        }
        cache.save("teacher-views", vkey, tensors, {"views": views, "images": n})
        views_art = Artifact(tensors, {"views": views})
    elif not torch.allclose(views_art.tensors["logits"], logits, rtol=1e-3, atol=1e-3):
        # the stored logits must be reproducible from the stored draws; if not, nothing here can be trusted
        cache.discard("teacher-views", vkey, "its logits do not match the teacher on its own views")
        views_art.tensors["logits"] = logits
        cache.save("teacher-views", vkey, views_art.tensors, {"views": views, "images": n})
    for layer in missing:
        feats[layer] = torch.stack(out_feats[layer])
        cache.save("teacher-feats", fkeys[layer], {"features": feats[layer]}, {"layer": layer})
    say(f"teacher outputs: cached as {vkey[:12]}")
    return views_art, feats


def teacher_output_provider(
    teacher: nn.Module,
    augmenters: Sequence[Augmenter],
    data: DataSplits,
    padding: int,
    flip: bool,
    *,
    mode: str | None = None,
    cache: Any = None,
    say: Callable[[str], None] | None = None,
    precision: str = "fp32",
) -> TeacherOutputCache | None:
    """The teacher-output cache the training loop should read, or None to run the teacher online.

    ``mode`` overrides ``teacher.outputs.mode`` of a teacher from :func:`automl_kd.distill.teacher.get_teacher`; a plain
    module without that config runs online unless ``mode`` says otherwise.
    """
    info = teacher_info(teacher)
    cfg = getattr(getattr(info, "config", None), "outputs", None)
    chosen = mode or (cfg.mode if cfg is not None else "online")
    resolved, views = resolve_mode(chosen, augmenters, padding, flip, cfg.views if cfg is not None else 4)
    if resolved == "online":
        return None
    if cache is None:
        cache = info.cache if info is not None and info.cache is not None else ArtifactCache.default()
    fp32 = cfg is not None and cfg.dtype == "float32"
    return build_teacher_outputs(
        teacher,
        augmenters,
        data,
        cache,
        views=views,
        seed=cfg.seed if cfg is not None else 0,
        padding=padding,
        flip=flip,
        dtype=torch.float32 if fp32 else torch.float16,
        say=say or (lambda m: log.info("%s", m)),
        precision=precision,
    )
