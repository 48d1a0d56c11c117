"""Image classification with timm models (ConvNeXt, EfficientNetV2, any timm name).

The family sees rows through ``RowSource``/``Reader`` (base.py): it decodes
image bytes with PIL in a thread pool while the model computes, and it knows
nothing about SQL. Weights are stored as safetensors (no pickle on load); the
architecture, input size and normalization go into the model's options.
"""

from __future__ import annotations

import io
import math
import os
import random
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from thanosql_pg.algorithms import base as fam
from thanosql_pg.algorithms import registry, weights
from thanosql_pg.algorithms.base import DEFAULT_LIMITS, MediaLimits, Reader, Row, RowSource, Trained
from thanosql_pg.algorithms.weights import CHECKPOINT_EXTENSIONS, WEIGHT_FILES  # noqa: F401 (re-exported)
from thanosql_pg.algorithms.weights import hf_cached as _hf_cached
from thanosql_pg.algorithms.weights import hub_reachable as _hub_reachable
from thanosql_pg.algorithms.weights import local_hub_dir as _local_hub_dir
from thanosql_pg.algorithms.weights import weights_in_dir as _weights_in_dir
from thanosql_pg.errors import (
    DataCorrupted,
    DataError,
    FileError,
    InvalidOption,
    ThanoSQLError,
    WeightsUnavailable,
)

FORMAT = "timm-safetensors-v1"
# Horizontal flips help natural photos but change the meaning of digits, letters
# and icons, which is what small inputs usually are: flip only from this size up.
FLIP_MIN_SIZE = 64
CROP_AREA = (0.7, 1.0)  # "RandomResizedCrop-lite": small inputs have no pixels to spare
CROP_RATIO = (3 / 4, 4 / 3)
WEIGHT_DECAY = 0.05
WARMUP_FRACTION = 0.05


def training_columns(opts: dict[str, Any]) -> tuple[str, str]:
    return opts["image_col"], opts["label_col"]


def evaluation_columns(opts: dict[str, Any]) -> tuple[str, str]:
    return opts["image_col"], opts["label_col"]


# --- decoding (runs in pool threads: no plpy, no torch) -----------------------------------
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
    in ``errors`` instead of failing the batch."""
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
            out.targets.append(index[row.target])  # type: ignore[index]
    return out


def _numbered(batch: Sequence[Row]) -> list[tuple[int, Row]]:
    return list(enumerate(batch))


# --- tensors -----------------------------------------------------------------------------
def to_tensor(arr: np.ndarray, device: torch.device, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """NHWC uint8 → normalized NCHW float. permute() of NHWC is already laid out
    channels_last, the faster layout for these convnets on CPU and GPU."""
    x = torch.from_numpy(arr)
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    return (x - mean) / std


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


# --- the model ----------------------------------------------------------------------------
class ImageClassifier:
    """A timm network plus its label set and preprocessing."""

    def __init__(self, net: torch.nn.Module, *, arch: str, labels: list[str], input_size: int,
                 mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        self.net = net.to(device, memory_format=torch.channels_last)
        self.arch = arch
        self.labels = labels
        self.input_size = input_size
        self.mean_list = [float(v) for v in mean]
        self.std_list = [float(v) for v in std]
        self.device = device
        self.mean = torch.tensor(self.mean_list, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.std_list, device=device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def _classify(self, arr: np.ndarray) -> list[int]:
        self.net.eval()
        with _autocast(self.device):
            logits = self.net(to_tensor(arr, self.device, self.mean, self.std))
        return logits.argmax(1).tolist()

    def predict(self, rows: Sequence[Row], reader: Reader, opts: dict[str, Any]) -> tuple[list[str | None],
                                                                                              list[str]]:
        """Labels for ``rows`` (None for skipped rows) and a message per skipped row."""
        registry.check_batch_pixels(len(rows), self.input_size)
        skip = opts.get("on_error") == "skip"
        work = partial(decode_rows, reader=reader, size=self.input_size, index=None, skip=skip)
        parts = [fam.decode_pool().submit(work, c) for c in fam.chunks(_numbered(rows), os.cpu_count() or 1)]
        dec = Decoded.combine([f.result() for f in parts])
        out: list[str | None] = [None] * len(rows)
        arr = dec.array()
        if arr is not None:
            for pos, k in zip(dec.positions, self._classify(arr), strict=True):
                out[pos] = self.labels[k]
        return out, [e.message for _, e in dec.errors]

    def evaluate(self, source: RowSource, opts: dict[str, Any]) -> dict[str, float]:
        registry.check_batch_pixels(opts["batch_size"], self.input_size)
        skip = opts.get("on_error") == "skip"
        work = partial(decode_rows, reader=source.reader, size=self.input_size, index=None, skip=skip)
        confusion: Counter[tuple[str, str]] = Counter()
        skipped, first_error = source.skipped, None
        batches = (_numbered(b) for b in source.batches(opts["batch_size"], shuffle=False))
        # closing(): on an error or cancel, stop the decoding and close the cursor right away
        with closing(fam.prefetch(batches, work, Decoded.combine)) as decoded:
            for dec in decoded:
                source.check_interrupts()
                if dec.errors:
                    skipped += len(dec.errors)
                    first_error = first_error or dec.errors[0][1].message
                arr = dec.array()
                if arr is None:
                    continue
                for truth, k in zip(dec.texts, self._classify(arr), strict=True):
                    confusion[(str(truth), self.labels[k])] += 1
        if skipped:
            first = f"; first: {first_error}" if first_error else ""
            source.notice(f"EVALUATE skipped {skipped} unreadable rows{first}")
        if not confusion:
            raise DataError("no readable images to evaluate", hint="Every row was skipped as unreadable.")
        metrics = classification_metrics(confusion)
        if skip:
            metrics["Skipped"] = float(skipped)
        return metrics

    def payload(self) -> bytes:
        from safetensors.torch import save

        return save({k: v.detach().to("cpu").contiguous() for k, v in self.net.state_dict().items()})


def classification_metrics(confusion: Counter[tuple[str, str]]) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 over the labels that occur as truth
    or prediction (scikit-learn's defaults, zero_division=0)."""
    total = sum(confusion.values())
    labels = sorted({t for t, _ in confusion} | {p for _, p in confusion})
    tp = Counter({t: n for (t, p), n in confusion.items() if t == p})
    true_n: Counter[str] = Counter()
    pred_n: Counter[str] = Counter()
    for (t, p), n in confusion.items():
        true_n[t] += n
        pred_n[p] += n
    precision = [tp[c] / pred_n[c] if pred_n[c] else 0.0 for c in labels]
    recall = [tp[c] / true_n[c] if true_n[c] else 0.0 for c in labels]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall, strict=True)]
    k = len(labels)
    return {
        "Accuracy": sum(tp.values()) / total,
        "Precision": sum(precision) / k,
        "Recall": sum(recall) / k,
        "F1": sum(f1) / k,
    }


# --- loading stored models --------------------------------------------------------------------
def load(record: Any, payload: bytes, device: str) -> ImageClassifier:
    import timm
    from safetensors.torch import load as load_safetensors

    fam.check_format(record, FORMAT)
    opts = record.options
    arch = stored_arch(record)
    registry.check_stored(registry.IMAGE_CLASSIFICATION, record.name, opts, ("input_size",))
    labels = list(record.labels or [])
    state = load_safetensors(payload)
    # Build on the meta device and adopt the stored tensors: skips random
    # initialisation, which costs seconds for the big models.
    with torch.device("meta"):
        net = timm.create_model(arch, pretrained=False, num_classes=len(labels))
    net.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in list(net.parameters()) + list(net.buffers())):
        net = timm.create_model(arch, pretrained=False, num_classes=len(labels))
        net.load_state_dict(state, strict=True)
    net.eval()
    return ImageClassifier(net, arch=arch, labels=labels, input_size=int(opts["input_size"]),
                           mean=opts["mean"], std=opts["std"], device=fam.torch_device(device))


# --- building networks: pretrained weights, checkpoints --------------------------------------
def _weights_hint(name: str, dirs: Sequence[str]) -> str:
    where = f"{dirs[0]}/{name}.safetensors" if dirs else f"$THANOSQL_WEIGHTS_DIR/{name}.safetensors"
    return (f"Put the weights at {where} (or in the server's Hugging Face / torch hub cache), "
            "pass base_model='/path/to/checkpoint.pth', or train from scratch with pretrained=False.")


def _local_timm_weights(name: str, cfg: Any, dirs: Sequence[str]) -> str | None:
    """A local file with the pretrained weights of timm model ``name``: the
    weights directories first, then the Hugging Face and torch hub caches."""
    from timm.models import split_model_name_tag

    arch, _ = split_model_name_tag(name)
    stems = [name, arch]
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    url = getattr(cfg, "url", None) if cfg is not None else None
    if hub_id:
        stems += [hub_id.replace("/", "--"), hub_id.split("/")[-1]]
    for d in map(Path, dirs):
        if not d.is_dir():
            continue
        for stem in dict.fromkeys(stems):
            for ext in CHECKPOINT_EXTENSIONS:
                if (d / (stem + ext)).is_file():
                    return str(d / (stem + ext))
            if (d / stem).is_dir() and (w := _weights_in_dir(d / stem)) is not None:
                return str(w)
        if url and (d / os.path.basename(urlparse(url).path)).is_file():
            return str(d / os.path.basename(urlparse(url).path))
    if hub_id:
        filename = getattr(cfg, "hf_hub_filename", None)
        hit = _hf_cached(hub_id, [filename] if filename else ["model.safetensors", "pytorch_model.bin"])
        if hit:
            return hit
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if cached.is_file():
            return str(cached)
    return None


def pretrained_network(name: str, num_classes: int, dirs: Sequence[str]) -> tuple[str, torch.nn.Module, str]:
    """(arch, network with pretrained weights and a new head, where they came from).

    ``name`` is a timm name (``convnext_tiny``, ``convnext_tiny.fb_in22k``) or a
    Hugging Face repo (``timm/convnext_tiny.fb_in1k``, ``hf-hub:org/repo``).
    Local copies win; the hub is used only when reachable.
    """
    import timm

    repo = weights.hub_repo(name)
    if repo is None and not weights.is_model_name(name):
        # never handed to timm or the hub clients, which read "local-dir:" and paths
        raise InvalidOption(f'"{name}" is neither a timm model name nor a Hugging Face repo id (org/name)',
                            hint="Name a timm model (convnext_tiny) or a repo (timm/convnext_tiny.fb_in1k),"
                            " or give a checkpoint file or folder as base_model.")
    try:
        if repo is None:
            try:
                cfg = timm.models.get_pretrained_cfg(name)
            except RuntimeError as e:
                raise InvalidOption(f'unknown pretrained weights "{name}": {e}') from None
            if not timm.models.is_model(timm.models.split_model_name_tag(name)[0]):
                raise InvalidOption(f'unknown timm model "{name}"',
                                    hint="See timm.list_models() for the names timm knows.")
            local = _local_timm_weights(name, cfg, dirs)
            if local:
                net = timm.create_model(name, pretrained=True, num_classes=num_classes,
                                        pretrained_cfg_overlay={"file": local})
                return timm.models.split_model_name_tag(name)[0], net, f"pretrained {name} ({local})"
            if cfg is None or not (cfg.hf_hub_id or cfg.url):
                raise WeightsUnavailable(f"timm has no pretrained weights for {name}",
                                         hint=_weights_hint(name, dirs))
            if not _hub_reachable(weights.hub_endpoint() if cfg.hf_hub_id else cfg.url):
                raise WeightsUnavailable(
                    f"pretrained weights for {name} are not on the server and the model hub is unreachable",
                    hint=_weights_hint(name, dirs))
            net = timm.create_model(name, pretrained=True, num_classes=num_classes)
            return timm.models.split_model_name_tag(name)[0], net, f"pretrained {name} (hub)"
        local_dir = _local_hub_dir(repo, dirs)
        if local_dir:
            net = timm.create_model("local-dir:" + local_dir, pretrained=True, num_classes=num_classes)
            return net.pretrained_cfg.get("architecture", repo), net, f"pretrained {repo} ({local_dir})"
        if not _hub_reachable(weights.hub_endpoint()):
            raise WeightsUnavailable(
                f"weights for {repo} are not on the server and the model hub is unreachable",
                hint=_weights_hint(repo.replace("/", "--"), dirs))
        net = timm.create_model("hf-hub:" + repo, pretrained=True, num_classes=num_classes)
        return net.pretrained_cfg.get("architecture", repo), net, f"pretrained {repo} (hub)"
    except ThanoSQLError:
        raise
    except Exception as e:  # network, cache and format errors from timm / huggingface_hub
        raise WeightsUnavailable(f"could not load pretrained weights {name}: {e}",
                                 hint=_weights_hint(name, dirs)) from None


def checkpoint_network(path: str, arch: str, num_classes: int) -> tuple[str, torch.nn.Module, str]:
    """A network initialised from a checkpoint file or folder on the server.

    A folder with config.json is a timm/Hugging Face model folder (its own
    architecture); otherwise the file holds a state dict for ``arch``. The
    classifier is kept when its shape fits the label count, else replaced.
    """
    import timm

    p = Path(path)
    if not p.exists():
        raise FileError(f'checkpoint "{path}" does not exist')
    if p.is_dir() and (p / "config.json").is_file():
        try:
            net = timm.create_model("local-dir:" + str(p), pretrained=True, num_classes=num_classes)
        except Exception as e:  # timm's errors for a malformed folder
            raise DataError(f'cannot load the model folder "{path}": {e}') from None
        return net.pretrained_cfg.get("architecture", arch), net, f"checkpoint {path}"
    if p.is_dir():
        w = _weights_in_dir(p)
        if w is None:
            raise FileError(f'checkpoint folder "{path}" holds no weights file',
                            hint="Expected model.safetensors, pytorch_model.bin or a *.pth/*.pt file.")
        p = w
    try:
        state = timm.models.load_state_dict(str(p), weights_only=True)
    except Exception as e:  # pickle refusals, truncated files, wrong formats
        raise DataError(f'cannot read checkpoint "{p}": {e}',
                        hint="Save a state dict: torch.save(model.state_dict(), path), or safetensors."
                        ) from None
    net = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    own = net.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if len(fitting) < 0.5 * len(own):
        raise DataError(
            f'checkpoint "{p}" does not fit architecture {arch}: {len(fitting)} of {len(own)} tensors match',
            hint="Use a checkpoint of the same architecture, or a model folder with config.json.")
    net.load_state_dict(fitting, strict=False)
    return arch, net, f"checkpoint {p}"


def check_arch(arch: Any) -> bool:
    """Whether ``arch`` is a plain timm architecture (a model name timm registers):
    what a model stores and ``load`` passes to timm.create_model, which would also
    read "local-dir:<path>" and "hf-hub:<repo>"."""
    import timm

    return isinstance(arch, str) and weights.is_model_name(arch) and timm.models.is_model(arch)


def stored_arch(record: Any) -> str:
    """A stored model's architecture, refused (XX001) unless it is a plain timm name:
    the catalog row is the owner's to edit, and timm would follow a path in it."""
    arch = record.options.get("arch")
    if not check_arch(arch):
        raise DataCorrupted(f'model "{record.name}" stores {arch!r} as its architecture, which is not a timm'
                            " model name", hint="BUILD the model again.")
    return arch


def new_network(algo: Any, opts: dict[str, Any], num_classes: int, reader: Reader,
                dirs: Sequence[str]) -> tuple[str, torch.nn.Module, str]:
    import timm

    arch = algo.params["timm_name"]
    base_model = opts.get("base_model")
    if base_model:
        kind, where = weights.locate(base_model, reader.resolve_path)
        if kind == "path":
            return checkpoint_network(where, arch, num_classes)
        return pretrained_network(base_model, num_classes, dirs)
    if opts["pretrained"]:
        return pretrained_network(arch, num_classes, dirs)
    return arch, timm.create_model(arch, pretrained=False, num_classes=num_classes), "random initialisation"


# --- training ---------------------------------------------------------------------------------
def train(algo: Any, opts: dict[str, Any], source: RowSource, base: Any = None) -> Trained:
    """BUILD (base None) or FIT (base: a loaded Predictor whose .model is an ImageClassifier)."""
    device = fam.torch_device(opts["device"])
    data_labels = source.labels()
    if base is not None:
        if opts.get("base_model"):
            raise InvalidOption('option "base_model" does not apply to FIT MODEL',
                                hint="FIT MODEL starts from the model named after USING.")
        clf: ImageClassifier = base.model
        known = set(clf.labels)
        unknown = [lab for lab in data_labels if lab not in known]
        if unknown:
            raise DataError(
                f'the data has {len(unknown)} label(s) that model "{base.record.name}" does not know: '
                + ", ".join(unknown[:20]) + (" ..." if len(unknown) > 20 else ""),
                detail="The model's labels: " + ", ".join(clf.labels[:50]) + (" ..." if len(clf.labels) > 50
                                                                             else ""),
                hint="FIT MODEL keeps the base model's label set; BUILD a new model to add classes.",
                sqlstate="22023",
            )
        labels, label_type = list(clf.labels), base.record.label_type
    else:
        if len(data_labels) < 2:
            raise InvalidOption(
                f'label column "{opts["label_col"]}" holds a single class ({data_labels[0]}); '
                "classification needs at least two",
                hint="Check the query's WHERE clause, or the label_col option.",
            )
        labels, label_type = data_labels, source.label_type
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # Same data, same options → same model: seed this statement's RNG
        # without disturbing the session's.
        torch.manual_seed(0)
        if base is not None:
            clf = base.model
            arch, net, origin = clf.arch, clf.net, f'model "{base.record.name}"'
            mean, std = clf.mean_list, clf.std_list
        else:
            arch, net, origin = new_network(algo, opts, len(labels), source.reader, source.weights_dirs)
            if not check_arch(arch):  # a model folder's config.json names it: it must load again later
                raise DataError(f"the architecture of {origin}, {arch!r}, is not a timm model name")
            cfg = getattr(net, "pretrained_cfg", None) or {}
            mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        model = ImageClassifier(net, arch=arch, labels=labels, input_size=opts["input_size"], mean=mean,
                                std=std, device=device)
        metrics = _fit(model, algo, opts, source)
    return Trained(
        payload=model.payload(), format=FORMAT, labels=labels, label_type=label_type,
        options={"arch": arch, "input_size": model.input_size, "mean": model.mean_list, "std": model.std_list,
                 "weights": origin},
        metrics=metrics,
    )


def _param_groups(net: torch.nn.Module) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in net.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on norms and biases
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


def _fit(model: ImageClassifier, algo: Any, opts: dict[str, Any], source: RowSource) -> dict[str, float]:
    net, device = model.net, model.device
    bs, epochs, size = opts["batch_size"], opts["epochs"], model.input_size
    skip = opts.get("on_error") == "skip"
    rows = max(1, source.count - source.skipped)
    steps_per_epoch = math.ceil(rows / bs)
    total_steps = max(1, epochs * steps_per_epoch)
    opt, sched, scaler = fam.optimizer_schedule(_param_groups(net), opts["learning_rate"], total_steps,
                                                WARMUP_FRACTION, device)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    index = {lab: i for i, lab in enumerate(model.labels)}
    flip = size >= FLIP_MIN_SIZE
    progress = fam.Progress(source.notice, source.progress_interval, label=f"{algo.name} training",
                            epochs=epochs, steps_per_epoch=steps_per_epoch)
    skipped, first_error = source.skipped, None
    loss_avg = acc_avg = float("nan")
    trained_images = 0
    for epoch in range(epochs):
        net.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = step = 0
        work = partial(decode_rows, reader=source.reader, size=size, index=index, skip=skip, seed=epoch + 1,
                       flip=flip)
        batches = (_numbered(b) for b in source.batches(bs, shuffle=True, seed=epoch))
        decoded = fam.prefetch(batches, work, Decoded.combine, depth=2 if device.type == "cuda" else 1)
        with closing(decoded):  # on an error or cancel: stop decoding, close the cursor now
            for dec in decoded:
                source.check_interrupts()  # a pending cancel stops training here, within one batch
                if dec.errors and epoch == 0:
                    skipped += len(dec.errors)
                    first_error = first_error or dec.errors[0][1].message
                arr = dec.array()
                if arr is None or (len(arr) < 2 and has_bn):
                    continue  # BatchNorm cannot train on a single image
                x = to_tensor(arr, device, model.mean, model.std)
                y = torch.as_tensor(dec.targets, device=device)
                with _autocast(device):
                    logits = net(x)
                loss = F.cross_entropy(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                sched.step()
                # accumulate on the device: no GPU sync per step
                loss_sum += loss.detach() * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(y)
                step += 1
                progress.step(len(y))
                if progress.due():
                    progress.report(epoch, step, (loss_sum / seen).item(), (correct / seen).item())
        trained_images += seen
        if seen:
            loss_avg, acc_avg = (loss_sum / seen).item(), (correct / seen).item()
    if trained_images == 0:
        raise DataError("no readable images to train on", hint="Every row was skipped as unreadable.")
    # Free gradients and optimizer state (3x the weights) before the weights are serialized
    opt.zero_grad(set_to_none=True)
    opt.state.clear()
    net.eval()
    rate = progress.images_per_second()
    if skipped:
        source.notice(f"{algo.name} training skipped {skipped} unreadable rows"
                      + (f"; first: {first_error}" if first_error else ""))
    source.notice(f"{algo.name} training done: {epochs} epochs, loss {loss_avg:.4f}, accuracy {acc_avg:.4f},"
                  f" {rate:.1f} images/s")
    metrics = {"train_loss": round(loss_avg, 6), "train_accuracy": round(acc_avg, 6),
               "images_per_second": round(rate, 2)}
    if skip:
        metrics["skipped_rows"] = float(skipped)
    return metrics

