"""Random views of grayscale images (digits, letters, scans) for the contrastive families
(SimCLR's views, CLIP's training images): batched tensor ops with per-image random
parameters, on the training device.

Colour jitter means nothing to a grayscale image, and a crop of a fifth of a digit is no
longer that digit; what varies between two people's digits is their position, size,
slant, the shape of each stroke and how dark the ink is. ``GrayView`` makes such views: a
random affine transform and an elastic warp (a smooth random displacement field, as
Simard et al. 2003 distort handwritten digits) in one resampling, then a random
brightness and contrast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class GrayView:
    """Views of ``size`` x ``size`` grayscale images: a zoom of ``zoom``, a rotation of up
    to ``rotation`` degrees and a shift of up to ``shift`` of the side, then a warp moving
    pixels by up to ``warp`` of the side, smooth over ``smoothness`` of it (the Gaussian's
    sigma); the area uncovered is the image's own background: the median of its border
    pixels (digits touch the border, so a mean would fill with gray). Then a brightness
    and a contrast factor, each within 1 +- ``intensity``.

    On scikit-learn's digits (bench/simclr_recipe.py, SimCLR's precision@10 on held-out
    digits) the affine part is what makes the nearest neighbours share labels (0.34 ->
    0.52 after 2 epochs); with the small ResNet, the warp (the variation of a stroke's
    shape that the affine part cannot show) lifts 0.85 to 0.88, and the intensity to ~0.92
    (it slows ResNet-18 down instead: SimCLR gives it ``intensity=0``)."""

    size: int
    zoom: tuple[float, float] = (0.8, 1.1)
    rotation: float = 15.0
    shift: float = 0.1
    warp: float = 0.09
    smoothness: float = 0.08
    intensity: float = 0.4

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One random view of each image of ``x`` (NCHW floats in [0, 1])."""
        n, dev = x.shape[0], x.device
        zoom = uniform(gen, n, *self.zoom, dev)
        angle = uniform(gen, n, -self.rotation, self.rotation, dev) * (math.pi / 180)
        tx = uniform(gen, n, -self.shift, self.shift, dev) * 2  # grid units span [-1, 1]
        ty = uniform(gen, n, -self.shift, self.shift, dev) * 2
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        grid = grid + self._warp_field(x, gen)
        border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=2)
        bg = border.median(dim=2).values.view(n, -1, 1, 1)
        y = (F.grid_sample(x - bg, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + bg)
        brightness = uniform(gen, n, 1 - self.intensity, 1 + self.intensity, dev).view(n, 1, 1, 1)
        contrast = uniform(gen, n, 1 - self.intensity, 1 + self.intensity, dev).view(n, 1, 1, 1)
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        return (((y - mean) * contrast + mean) * brightness).clamp(0, 1)

    def _warp_field(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Per image, a displacement of every pixel (N, H, W, 2 in grid units): uniform noise
        smoothed by a Gaussian of ``smoothness`` x the side, scaled so that the largest
        displacement is ``warp`` x the side. The noise is drawn whatever ``warp`` is: the
        random stream does not depend on the settings."""
        n, _, hh, ww = x.shape
        dev, dtype = x.device, x.dtype
        noise = torch.rand(n * 2, 1, hh, ww, generator=gen, device=dev, dtype=dtype) * 2 - 1
        if self.warp <= 0:
            return torch.zeros(n, hh, ww, 2, device=dev, dtype=dtype)
        sigma = max(self.smoothness * self.size, 0.5)
        k = min(2 * round(2 * sigma) + 1, 2 * (min(hh, ww) - 1) + 1)  # reflect padding needs pad < side
        r = torch.arange(k, device=dev, dtype=dtype) - k // 2
        g = torch.exp(-(r**2) / (2 * sigma**2))
        g = g / g.sum()
        pad = k // 2
        d = F.conv2d(F.pad(noise, (pad, pad, 0, 0), mode="reflect"), g.view(1, 1, 1, k))
        d = F.conv2d(F.pad(d, (0, 0, pad, pad), mode="reflect"), g.view(1, 1, k, 1)).view(n, 2, hh, ww)
        peak = d.flatten(1).abs().amax(dim=1).clamp(min=1e-6).view(n, 1, 1, 1)
        return (d / peak * (self.warp * 2)).permute(0, 2, 3, 1)  # grid units: the side spans 2


def uniform(gen: torch.Generator, n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    """``n`` uniform draws from [lo, hi)."""
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def is_gray(x: torch.Tensor) -> torch.Tensor:
    """Per image: whether its channels are all equal (within rounding), i.e. grayscale
    decoded to RGB."""
    if x.shape[1] == 1:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    spread = x.amax(dim=1) - x.amin(dim=1)
    return spread.flatten(1).amax(dim=1) < 1.5 / 255


def gray_or(x: torch.Tensor, gray_view: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per image of ``x``: ``gray_view`` where it is grayscale, else ``other``."""
    return torch.where(is_gray(x).view(-1, 1, 1, 1), gray_view, other)
