"""shared.views' grayscale views (SimCLR's augmentation of digits and scans): what each part
does, checked on tensors (the recipe's effect on ranking is tests/test_simclr.py's)."""

from __future__ import annotations

import pytest
import torch

from thanosql_pg.algorithms.shared.views import GrayView, gray_or, is_gray
from thanosql_pg.algorithms.simclr.augment import Augment


def gray_batch(n: int, side: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, side, side, generator=g).expand(n, 3, side, side).contiguous()


def test_nothing_random_is_the_identity() -> None:
    """With every range at zero the resampling returns the image: the affine grid and the
    warp field are composed in grid units, pixel centres on pixel centres."""
    x = gray_batch(4, 16)
    still = GrayView(16, zoom=(1.0, 1.0), rotation=0.0, shift=0.0, warp=0.0, intensity=0.0)
    y = still(x, torch.Generator().manual_seed(1))
    assert torch.allclose(y, x, atol=1e-5)


def test_warp_moves_pixels_by_at_most_its_share_of_the_side() -> None:
    """A horizontal ramp (value = the pixel's x in [0, 1]) read through the warp alone: each
    interior pixel's value moves by at most ``warp`` (x spans 1), and it does move."""
    side = 32
    ramp = torch.linspace(0.0, 1.0, side).view(1, 1, 1, side).expand(8, 3, side, side).contiguous()
    warp = 0.1
    view = GrayView(side, zoom=(1.0, 1.0), rotation=0.0, shift=0.0, warp=warp, intensity=0.0)
    y = view(ramp, torch.Generator().manual_seed(2))
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # away from the border's fill
    moved = (y - ramp)[inner].abs()
    assert moved.max() <= warp * side / (side - 1) + 1e-4
    assert moved.max() > warp / 4


def test_views_stay_grayscale_in_range_and_differ() -> None:
    """SimCLR's Augment on grayscale images: two views are grayscale, within [0, 1], and not
    the same image; the same seed gives the same views."""
    x = gray_batch(16, 16)
    aug = Augment(16)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(4))
    again = aug(x, torch.Generator().manual_seed(3))
    assert bool(is_gray(a).all()) and bool(is_gray(b).all())
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert (a - b).abs().mean() > 0.02
    assert torch.equal(a, again)


def test_colour_images_take_the_other_view() -> None:
    """gray_or picks per image: a colour image of the batch keeps the colour pipeline's view."""
    x = gray_batch(2, 8)
    x[1, 0] = 1.0  # red channel full: not grayscale
    assert is_gray(x).tolist() == [True, False]
    out = gray_or(x, torch.zeros_like(x), torch.ones_like(x))
    assert float(out[0].max()) == 0.0 and float(out[1].min()) == 1.0


@pytest.mark.parametrize("side", [1, 2, 3, 5, 96])
def test_any_input_size(side: int) -> None:
    """From a single pixel up: the warp's kernel fits the side (reflect padding needs it)."""
    y = Augment(side)(gray_batch(3, side), torch.Generator().manual_seed(5))
    assert y.shape == (3, 3, side, side) and bool(torch.isfinite(y).all())
