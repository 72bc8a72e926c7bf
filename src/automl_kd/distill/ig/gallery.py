"""A PNG gallery of IG maps: for a few training images, the image, its IG map and the overlaid image.

Written by the ``ig-overlay`` augmenter to the run directory (``ig_gallery.png``) so that the maps can be checked by
eye: a map should light up the object, and the overlay is what the student sees when the overlay applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from automl_kd.plotting import pyplot


def overlay(
    x01: torch.Tensor, maps: torch.Tensor, w: float, exponent: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """The IG-KD paper's overlay: ``map ** exponent``, min-max per image, repeated over channels,
    ``(1 - w) * x + w * map``. ``x01`` N x C x H x W in [0, 1], ``maps`` N x H x W, ``exponent`` a number or one
    per image (N x 1 x 1)."""
    m = maps.float().clamp_min(0).pow(exponent)
    lo = m.flatten(1).amin(1).view(-1, 1, 1)
    hi = m.flatten(1).amax(1).view(-1, 1, 1)
    m = (m - lo) / (hi - lo).clamp_min(1e-12)
    return (1 - w) * x01 + w * m.unsqueeze(1).to(x01.dtype)


def write_gallery(
    path: str | Path,
    x01: torch.Tensor,
    maps: torch.Tensor,
    *,
    w: float = 0.5,
    titles: Sequence[str] | None = None,
) -> Path:
    """Write a 3-row PNG: images, IG maps, overlaid images (exponent 1). Return its path."""
    plt = pyplot()
    x01, maps = x01.detach().float().cpu(), maps.detach().float().cpu()
    n = int(x01.shape[0])
    mixed = overlay(x01, maps, w)
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.2), squeeze=False)
    rows = (("image", x01), ("IG map", None), (f"overlay w={w:g}", mixed))
    for r, (label, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if imgs is None:
                ax.imshow(maps[c].numpy(), cmap="inferno")
            else:
                img = imgs[c].clamp(0, 1)
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img.permute(1, 2, 0).numpy())
            if c == 0:
                ax.set_ylabel(label)
            if r == 0 and titles is not None:
                ax.set_title(str(titles[c]), fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
