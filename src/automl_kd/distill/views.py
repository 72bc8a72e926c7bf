"""Geometric augmentation (random crop with zero padding, horizontal flip) as batched tensor ops.

The draws are explicit (:func:`crop_flip_draws`) so a cached teacher view can be rebuilt exactly from its stored
draws (:func:`apply_crop_flip`); :func:`random_crop_flip` is the two in one step, for the online training path.
Draws come from a CPU generator, so runs are reproducible on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip_draws(n: int, padding: int, flip: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random crop offsets (0 .. 2 * padding) and flip flags for ``n`` images, drawn on the CPU.

    Nothing is drawn for a disabled part (offsets 0, no flips), so switching one off leaves the other's stream.
    """
    if padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    else:
        dy = dx = torch.zeros(n, dtype=torch.long)
    flips = (torch.rand(n, generator=generator) < 0.5) if flip else torch.zeros(n, dtype=torch.bool)
    return {"dy": dy, "dx": dx, "flip": flips}


def apply_crop_flip(x: torch.Tensor, draws: dict[str, torch.Tensor], padding: int) -> torch.Tensor:
    """Zero-pad by ``padding``, crop at the drawn offsets, flip where drawn; batched tensor ops on x's device."""
    n, _, h, w = x.shape
    if padding > 0:
        dy, dx = draws["dy"].to(x.device).long(), draws["dx"].to(x.device).long()
        padded = F.pad(x, (padding, padding, padding, padding))
        rows = dy[:, None] + torch.arange(h, device=x.device)[None, :]  # n x h
        cols = dx[:, None] + torch.arange(w, device=x.device)[None, :]  # n x w
        b = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    mask = draws["flip"].to(x.device).bool()
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Batched random crop (zero padding) and horizontal flip, one draw per image, as tensor ops on x's device."""
    return apply_crop_flip(x, crop_flip_draws(len(x), padding, flip, generator), padding)
