"""SimCLR's augmentations (random resized crop, flip, color jitter, grayscale,
Gaussian blur), written as batched tensor ops with per-image random parameters:
they run on the training device, not in Python per image, and scale with the
input size (see ``Augment``). Grayscale images (digits, letters, scans) get
shared.views' random affine transform, elastic warp and intensity instead: colour jitter
means nothing to them, and a crop of a fifth of a digit is no longer that digit."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from thanosql_pg.algorithms.shared.images import FLIP_MIN_SIZE, random_resized_crop
from thanosql_pg.algorithms.shared.views import GrayView, gray_or, uniform


@dataclass(frozen=True)
class Augment:
    """SimCLR's view generator for ``size`` x ``size`` inputs.

    Sized for small inputs: below FLIP_MIN_SIZE there is no horizontal flip
    (it changes what digits and letters mean) and crops keep at least 20 % of
    the area instead of 8 % (an 8 % crop of a 32-pixel image is a few pixels
    of blur); the blur's sigma scales with the size, as SimCLR's 10 %-of-224
    kernel does, so it fades out on tiny inputs.

    Grayscale images (every pixel's channels equal) take shared.views' GrayView
    instead of the crop, flip and colour jitter: a random affine transform, an
    elastic warp and a brightness and contrast, which is what makes the nearest
    digits share labels.
    """

    size: int
    jitter: float = 0.5  # color-jitter strength s (SimCLR: 1.0 on ImageNet, 0.5 on CIFAR)
    p_jitter: float = 0.8
    p_gray: float = 0.2
    p_blur: float = 0.5
    intensity: float = GrayView.intensity  # grayscale: the brightness and contrast range (1 +- this)

    @property
    def flip(self) -> bool:
        return self.size >= FLIP_MIN_SIZE

    @property
    def crop_scale(self) -> tuple[float, float]:
        return (0.08, 1.0) if self.size >= FLIP_MIN_SIZE else (0.2, 1.0)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One random view of each image of ``x`` (NCHW floats in [0, 1])."""
        # drawn for every image: the random stream does not depend on the data
        gray = GrayView(self.size, intensity=self.intensity)(x, gen)
        y = self._crop_flip(x, gen)
        y = self._color(y, gen)
        return self._blur(gray_or(x, gray, y), gen)

    def _chance(self, gen: torch.Generator, n: int, p: float, device: torch.device) -> torch.Tensor:
        return torch.rand(n, generator=gen, device=device) < p

    def _crop_flip(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random resized crop (area, aspect 3:4..4:3) and flip as one affine resampling."""
        return random_resized_crop(x, gen, self.size, self.crop_scale, flip=self.flip)

    def _color(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Color jitter (brightness, contrast, saturation, hue) with p_jitter, then grayscale with p_gray."""
        n, dev = x.shape[0], x.device
        s = self.jitter
        on = self._chance(gen, n, self.p_jitter, dev).view(n, 1, 1, 1)
        b = uniform(gen, n, 1 - 0.8 * s, 1 + 0.8 * s, dev).view(n, 1, 1, 1)
        c = uniform(gen, n, 1 - 0.8 * s, 1 + 0.8 * s, dev).view(n, 1, 1, 1)
        sat = uniform(gen, n, 1 - 0.8 * s, 1 + 0.8 * s, dev).view(n, 1, 1, 1)
        hue = uniform(gen, n, -0.2 * s, 0.2 * s, dev)
        y = (x * b).clamp(0, 1)
        mean = _gray(y).mean(dim=(2, 3), keepdim=True)
        y = ((y - mean) * c + mean).clamp(0, 1)
        g = _gray(y)
        y = ((y - g) * sat + g).clamp(0, 1)
        y = _rotate_hue(y, hue).clamp(0, 1)
        x = torch.where(on, y, x)
        gray = self._chance(gen, n, self.p_gray, dev).view(n, 1, 1, 1)
        return torch.where(gray, _gray(x).expand_as(x), x)

    def _blur(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Gaussian blur with p_blur: a kernel of ~10 % of the size, sigma 0.1-2.0 at 224 pixels."""
        n, ch, hh, ww = x.shape
        dev = x.device
        k = max(3, 2 * round(0.05 * self.size) + 1)
        if k >= min(hh, ww):
            return x
        scale = self.size / 224
        sigma = uniform(gen, n, 0.1 * scale, 2.0 * scale, dev).clamp(min=1e-3)
        r = torch.arange(k, device=dev, dtype=x.dtype) - k // 2
        kern = torch.exp(-(r.view(1, k) ** 2) / (2 * sigma.view(n, 1) ** 2))
        kern = kern / kern.sum(dim=1, keepdim=True)
        delta = (r == 0).to(x.dtype).expand(n, k)
        kern = torch.where(self._chance(gen, n, self.p_blur, dev).view(n, 1), kern, delta)
        kern = kern.repeat_interleave(ch, dim=0)  # one kernel per (image, channel)
        y = x.reshape(1, n * ch, hh, ww)
        pad = k // 2
        y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), kern.view(n * ch, 1, 1, k), groups=n * ch)
        y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), kern.view(n * ch, 1, k, 1), groups=n * ch)
        return y.view(n, ch, hh, ww)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, N1HW."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _rotate_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift hue by ``shift`` turns: a rotation of the chroma plane in YIQ space, which is
    linear, so one 3x3 matrix per image does it (HSV round trips are not)."""
    n = x.shape[0]
    m = _RGB_TO_YIQ.to(x.device, x.dtype)
    cos, sin = torch.cos(2 * math.pi * shift), torch.sin(2 * math.pi * shift)
    rot = torch.zeros(n, 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    t = torch.linalg.inv(m) @ rot @ m
    return torch.einsum("nij,njhw->nihw", t, x)
