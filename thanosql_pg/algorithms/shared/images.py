"""Images: decoding (PIL, any format but EPS, size checked from the header first),
the evaluation and training views, batches of decoded rows, tensors, the batched
random crop of the contrastive families, and the embedding loop of CONVERT/SEARCH.

Decoding runs in pool threads: no plpy, no torch there.
"""

from __future__ import annotations

import io
import math
import random
import re
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from PIL import Image

from thanosql_pg.algorithms import registry
from thanosql_pg.algorithms.contract import Reader, Row, RowSource
from thanosql_pg.algorithms.shared import devices
from thanosql_pg.algorithms.shared.limits import DEFAULT_LIMITS, MediaLimits, check_batch_pixels
from thanosql_pg.algorithms.shared.metrics import retrieval_result
from thanosql_pg.errors import DataError, ThanoSQLError

# Horizontal flips help natural photos but change the meaning of digits, letters
# and icons, which is what small inputs usually are: flip only from this size up.
FLIP_MIN_SIZE = 64
CROP_AREA = (0.7, 1.0)  # "RandomResizedCrop-lite": small inputs have no pixels to spare
CROP_RATIO = (3 / 4, 4 / 3)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# PIL checks every image size it reads from a header against Image.MAX_IMAGE_PIXELS
# before allocating: the file's own size in Image.open, and the parts some formats
# decode while opening (an ICO's embedded PNG, GIF frames). open_image sets that
# limit to thanosql.max_image_pixels; PIL only warns between 1x and 2x the limit,
# and in this process that warning is an error, so the setting is the limit, exactly.
warnings.simplefilter("error", Image.DecompressionBombWarning)
_PIL_PIXELS = re.compile(r"\((\d+) pixels\)")


def _formats() -> list[str]:
    """Every format PIL opens except EPS, which PIL decodes by running Ghostscript
    on the file: a PostScript program from any user with a bytea."""
    Image.init()
    return [f for f in Image.OPEN if f != "EPS"]


IMAGE_FORMATS = _formats()


def open_image(data: bytes, *, draft: int | None = None, limits: MediaLimits = DEFAULT_LIMITS,
               what: str = "image") -> Image.Image:
    """Decode any PIL format to RGB, after checking its size from the header
    (``limits``, 54000). Transparency is composited on white so that
    transparent pixels do not turn black."""
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels  # the statement's setting (one statement per backend)
    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
        # PIL's own check in Image.open has refused it already unless something changed
        # PIL's limit or warning filter since: the setting holds either way
        limits.check_image(*img.size, what)
        if draft and img.format == "JPEG":
            img.draft("RGB", (draft, draft))  # decode at a reduced scale that still covers ``draft``
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # PIL's check came first
        m = _PIL_PIXELS.search(str(e))
        raise limits.image_too_large(what, int(m.group(1)) if m else None) from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if mode.startswith("I") or mode == "F":
        # 16/32-bit grayscale: scale into 8 bits instead of clipping at 255
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if mode.startswith("I;16") else max(255.0, float(arr.max(initial=0)))
        return Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def eval_view(img: Image.Image, size: int) -> np.ndarray:
    """The centre square, resized to size x size."""
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return np.asarray(img.resize((size, size), Image.BILINEAR, box=box, reducing_gap=3.0))


def train_view(img: Image.Image, size: int, rng: random.Random, flip: bool) -> np.ndarray:
    """A random crop of 70-100 % of the area, aspect 3:4..4:3, resized to size x size."""
    w, h = img.size
    area = w * h
    box = None
    for _ in range(10):
        target = rng.uniform(*CROP_AREA) * area
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            box = (x0, y0, x0 + cw, y0 + ch)
            break
    if box is None:
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    out = img.resize((size, size), Image.BILINEAR, box=box, reducing_gap=3.0)
    if flip and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out)


def decode_row(row: Row, reader: Reader, size: int, *, rng: random.Random | None = None,
               flip: bool = False) -> np.ndarray:
    data = reader.read(row)
    try:
        img = open_image(data, draft=size * 2 if rng is not None else size, limits=reader.limits,
                         what=f"image {reader.describe(row)}")
        return train_view(img, size, rng, flip) if rng is not None else eval_view(img, size)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot decode image {reader.describe(row)}: {e}",
                        hint="Check the file: it must be an image format that Pillow reads.") from None


@dataclass
class Decoded:
    """A decoded (part of a) batch: images, class indices, rows that failed."""

    images: list[np.ndarray]
    targets: list[int]  # class indices (training)
    texts: list[str | None]  # labels as text (evaluation)
    positions: list[int]  # index of each image in its batch
    errors: list[tuple[int, ThanoSQLError]]

    @staticmethod
    def empty() -> Decoded:
        return Decoded([], [], [], [], [])

    @staticmethod
    def combine(parts: list[Decoded]) -> Decoded:
        out = Decoded.empty()
        for p in parts:
            out.images += p.images
            out.targets += p.targets
            out.texts += p.texts
            out.positions += p.positions
            out.errors += p.errors
        return out

    def array(self) -> np.ndarray | None:
        return np.stack(self.images) if self.images else None


def decode_rows(rows: Sequence[tuple[int, Row]], *, reader: Reader, size: int, index: dict[str, int] | None,
                skip: bool, seed: int | None = None, flip: bool = False) -> Decoded:
    """Decode (position, row) pairs. With ``skip`` unreadable rows are reported
    in ``errors`` instead of failing the batch; rows whose value is None are left out."""
    out = Decoded.empty()
    for pos, row in rows:
        try:
            rng = random.Random(seed * 1_000_003 + row.rn) if seed is not None else None
            img = decode_row(row, reader, size, rng=rng, flip=flip)
        except DataError as e:
            if not skip:
                raise
            out.errors.append((pos, e))
            continue
        out.images.append(img)
        out.positions.append(pos)
        out.texts.append(row.target)
        if index is not None:
            out.targets.append(index[row.target])  # type: ignore[index]  # labelled rows: target is set
    return out


# --- tensors -----------------------------------------------------------------------------
def to_tensor(arr: np.ndarray, device: Any, mean: Any, std: Any) -> Any:
    """NHWC uint8 → normalized NCHW float. permute() of NHWC is already laid out
    channels_last, the faster layout for these convnets on CPU and GPU."""
    import torch

    x = torch.from_numpy(arr)
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    return (x - mean) / std


class ImageInput:
    """How a model takes images: size x size pixels, normalized by ``mean``/``std``
    (per channel), on ``device``."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], device: Any) -> None:
        import torch

        self.size = size
        self.device = device
        self.mean_list = [float(v) for v in mean]
        self.std_list = [float(v) for v in std]
        self.mean = torch.tensor(self.mean_list, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.std_list, device=device).view(1, 3, 1, 1)

    def tensor(self, arr: np.ndarray) -> Any:
        return to_tensor(arr, self.device, self.mean, self.std)

    def options(self) -> dict[str, Any]:
        """What a stored model keeps of it (its options)."""
        return {"input_size": self.size, "mean": self.mean_list, "std": self.std_list}


def pretrained_normalization(net: Any) -> tuple[Sequence[float], Sequence[float]]:
    """The mean and std a timm network's pretrained weights expect (ImageNet's by default)."""
    pretrained = getattr(net, "pretrained_cfg", None) or {}  # timm's dict, not options
    return pretrained.get("mean", IMAGENET_MEAN), pretrained.get("std", IMAGENET_STD)


# --- training views on the device --------------------------------------------------------------
def random_resized_crop(x: Any, gen: Any, size: int, scale: tuple[float, float], *, flip: bool) -> Any:
    """One random crop of each image of ``x`` (NCHW floats), of ``scale`` of its area and
    aspect 3:4..4:3, resized to ``size`` x ``size``, flipped horizontally with even odds
    when ``flip``: one batched affine resampling on the device, with per-image random
    parameters from ``gen`` (the contrastive families' augmentation)."""
    import torch
    import torch.nn.functional as F

    n, dev = x.shape[0], x.device

    def uniform(lo: float, hi: float) -> Any:
        return torch.rand(n, generator=gen, device=dev) * (hi - lo) + lo

    area = uniform(*scale)
    ratio = uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])).exp()
    w = (area * ratio).sqrt().clamp(max=1.0)  # crop size as a fraction of the image
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = uniform(-1.0, 1.0) * (1 - w)  # centre, in [-1, 1] grid units
    cy = uniform(-1.0, 1.0) * (1 - h)
    sx = torch.where(torch.rand(n, generator=gen, device=dev) < 0.5, -w, w) if flip else w
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, h, cy
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


# --- embedding (CONVERT, SEARCH IMAGE) ---------------------------------------------------------
Vectors = list[np.ndarray | None]


def embed_batches(batches: Iterable[Sequence[Row]], reader: Reader, size: int,
                  embed: Callable[[np.ndarray], np.ndarray]) -> Generator[Vectors, None, None]:
    """One vector per row of each batch (None where the row's value is None): the images
    decoded at ``size`` x ``size`` in the pool, the next batch meanwhile, then ``embed``
    (NHWC uint8 → one row per image) on the calling thread, which also pulls ``batches``."""
    work = partial(decode_rows, reader=reader, size=size, index=None, skip=False)
    sizes: list[int] = []

    def tracked() -> Iterator[list[tuple[int, Row]]]:
        for b in batches:
            check_batch_pixels(len(b), size)
            sizes.append(len(b))
            yield [(i, r) for i, r in enumerate(b) if r.value is not None]

    with closing(devices.prefetch(tracked(), work, Decoded.combine)) as decoded:
        for dec in decoded:
            out: Vectors = [None] * sizes.pop(0)
            arr = dec.array()
            if arr is not None:
                for pos, vec in zip(dec.positions, embed(arr), strict=True):
                    out[pos] = vec
            yield out


def first(batches: Generator[Vectors, None, None]) -> Vectors:
    """The vectors of the one batch ``batches`` was given (an Embedder's ``embed``), its
    decoding finished now rather than at garbage collection."""
    try:
        return next(batches)
    finally:
        batches.close()


def evaluate_retrieval(source: RowSource, opts: registry.Options, size: int,
                       embed: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]:
    """EVALUATE of an image-embedding model on labelled images (SimCLR, CLIP): each image's
    nearest other images by cosine similarity (as SEARCH IMAGE ranks them) that share its
    label, as Precision@1 and Precision@top_k (shared.metrics). The images are decoded at
    ``size`` in the pool, ``embed`` (NHWC uint8 → unit vectors) runs on the calling thread."""
    check_batch_pixels(opts.batch_size, size)
    skip = opts.on_error == "skip"
    work = partial(decode_rows, reader=source.reader, size=size, index=None, skip=skip)
    vectors: list[np.ndarray] = []
    labels: list[str] = []
    skipped = devices.Skipped(source.skipped)
    with closing(devices.evaluation_batches(source, opts.batch_size, work, Decoded.combine,
                                            skipped)) as decoded:
        for dec in decoded:
            arr = dec.array()
            if arr is not None:
                vectors.append(embed(arr))
                labels += [str(t) for t in dec.texts]
    skipped.notice(source.notice, "EVALUATE")
    if not vectors:
        raise DataError("no readable images to evaluate", hint="Every row was skipped as unreadable.")
    return retrieval_result(np.concatenate(vectors), labels, opts.report, opts.top_k or 1,
                            check=source.check_interrupts,
                            extra={"Skipped": float(skipped.count)} if skip else None)
