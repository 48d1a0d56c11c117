"""SimCLR image embeddings (Chen et al., 2020) on any timm backbone.

BUILD/FIT train a backbone plus a projection head with the NT-Xent loss on
two augmented views of every image; CONVERT and SEARCH IMAGE embed images
as L2-normalized ``embedding_dim``-vectors (the projection head's output), so
that cosine similarity is a dot product.

The augmentations are the standard SimCLR ones (random resized crop, flip,
color jitter, grayscale, Gaussian blur), written as batched tensor ops with
per-image random parameters: they run on the training device, not in Python
per image, and scale with the input size (see ``Augment``).

Like every family module it sees rows only through ``RowSource``/``Reader``
(base.py) and knows nothing about SQL. Image decoding is image_classification's.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from thanosql_pg.algorithms import base as fam
from thanosql_pg.algorithms import registry, weights
from thanosql_pg.algorithms.base import Reader, Row, RowSource, Trained
from thanosql_pg.algorithms.image_classification import (
    FLIP_MIN_SIZE,
    Decoded,
    _autocast,
    check_arch,
    checkpoint_network,
    decode_rows,
    pretrained_network,
    stored_arch,
    to_tensor,
)
from thanosql_pg.errors import DataError, InvalidOption

FORMAT = "simclr-safetensors-v1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_DECAY = 1e-6  # SimCLR's own; contrastive training needs little regularisation
WARMUP_FRACTION = 0.05


def training_columns(opts: dict[str, Any]) -> tuple[str, None]:
    return opts["image_col"], None  # self-supervised: no label column


# --- augmentations --------------------------------------------------------------------------
@dataclass(frozen=True)
class Augment:
    """SimCLR's view generator for ``size`` x ``size`` inputs.

    Sized for small inputs: below FLIP_MIN_SIZE there is no horizontal flip
    (it changes what digits and letters mean) and crops keep at least 20 % of
    the area instead of 8 % (an 8 % crop of a 32-pixel image is a few pixels
    of blur); the blur's sigma scales with the size, as SimCLR's 10 %-of-224
    kernel does, so it fades out on tiny inputs.
    """

    size: int
    jitter: float = 0.5  # color-jitter strength s (SimCLR: 1.0 on ImageNet, 0.5 on CIFAR)
    p_jitter: float = 0.8
    p_gray: float = 0.2
    p_blur: float = 0.5

    @property
    def flip(self) -> bool:
        return self.size >= FLIP_MIN_SIZE

    @property
    def crop_scale(self) -> tuple[float, float]:
        return (0.08, 1.0) if self.size >= FLIP_MIN_SIZE else (0.2, 1.0)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One random view of each image of ``x`` (NCHW floats in [0, 1])."""
        x = self._crop_flip(x, gen)
        x = self._color(x, gen)
        return self._blur(x, gen)

    @staticmethod
    def _uniform(gen: torch.Generator, n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
        return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo

    def _chance(self, gen: torch.Generator, n: int, p: float, device: torch.device) -> torch.Tensor:
        return torch.rand(n, generator=gen, device=device) < p

    def _crop_flip(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random resized crop (area, aspect 3:4..4:3) and flip as one affine resampling."""
        n, dev = x.shape[0], x.device
        area = self._uniform(gen, n, *self.crop_scale, dev)
        ratio = self._uniform(gen, n, math.log(3 / 4), math.log(4 / 3), dev).exp()
        w = (area * ratio).sqrt().clamp(max=1.0)  # crop size as a fraction of the image
        h = (area / ratio).sqrt().clamp(max=1.0)
        cx = self._uniform(gen, n, -1.0, 1.0, dev) * (1 - w)  # centre, in [-1, 1] grid units
        cy = self._uniform(gen, n, -1.0, 1.0, dev) * (1 - h)
        sx = w
        if self.flip:
            sx = torch.where(self._chance(gen, n, 0.5, dev), -w, w)
        theta = torch.zeros(n, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, h, cy
        grid = F.affine_grid(theta, [n, x.shape[1], self.size, self.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _color(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Color jitter (brightness, contrast, saturation, hue) with p_jitter, then grayscale with p_gray."""
        n, dev = x.shape[0], x.device
        s = self.jitter
        on = self._chance(gen, n, self.p_jitter, dev).view(n, 1, 1, 1)
        b = self._uniform(gen, n, 1 - 0.8 * s, 1 + 0.8 * s, dev).view(n, 1, 1, 1)
        c = self._uniform(gen, n, 1 - 0.8 * s, 1 + 0.8 * s, dev).view(n, 1, 1, 1)
        sat = self._uniform(gen, n, 1 - 0.8 * s, 1 + 0.8 * s, dev).view(n, 1, 1, 1)
        hue = self._uniform(gen, n, -0.2 * s, 0.2 * s, dev)
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
        sigma = self._uniform(gen, n, 0.1 * scale, 2.0 * scale, dev).clamp(min=1e-3)
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


def nt_xent(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent over 2N projections (views i and i+N are positives): the loss, and the
    share of views whose nearest other view is their positive (a training accuracy)."""
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0] // 2
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))  # a view is not its own candidate
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    loss = F.cross_entropy(sim, target)
    accuracy = (sim.detach().argmax(1) == target).float().mean()
    return loss, accuracy


# --- the model --------------------------------------------------------------------------------
class SimCLRNet(nn.Module):
    """Backbone (features h) + projection head g; the embedding is g(h), L2-normalized."""

    def __init__(self, backbone: nn.Module, embedding_dim: int) -> None:
        super().__init__()
        width = int(backbone.num_features)
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
                                  nn.Linear(width, embedding_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def new_backbone(name: str, opts: dict[str, Any], reader: Reader,
                 dirs: Sequence[str]) -> tuple[str, nn.Module, str]:
    """(timm architecture, feature extractor without classifier, where its weights came from)."""
    import timm

    base_model = opts.get("base_model")
    if base_model:
        kind, where = weights.locate(base_model, reader.resolve_path)
        if kind == "path":
            return checkpoint_network(where, name, 0)
        return pretrained_network(base_model, 0, dirs)
    if opts["pretrained"]:
        return pretrained_network(name, 0, dirs)  # a timm name or a hub repo, never a path
    if not check_arch(name):
        raise InvalidOption(f'unknown backbone "{name}"',
                            hint="Name a timm model, e.g. backbone='resnet18' (see timm.list_models()).")
    return name, timm.create_model(name, pretrained=False, num_classes=0), "random initialisation"


class ImageEmbedder:
    """A trained SimCLR network plus its preprocessing."""

    def __init__(self, net: SimCLRNet, *, arch: str, input_size: int, mean: Sequence[float],
                 std: Sequence[float], device: torch.device) -> None:
        self.net = net.to(device, memory_format=torch.channels_last)
        self.arch = arch
        self.input_size = input_size
        self.dim = int(net.head[-1].out_features)
        self.mean_list = [float(v) for v in mean]
        self.std_list = [float(v) for v in std]
        self.device = device
        self.mean = torch.tensor(self.mean_list, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.std_list, device=device).view(1, 3, 1, 1)
        self._fused: nn.Module | None = None

    def _inference_net(self) -> nn.Module:
        """The network for embedding: a copy with each BatchNorm folded into the convolution
        before it (torch.fx), which saves about a quarter of a ResNet's CPU time. ``self.net``
        stays as it is, trainable."""
        if self._fused is None:
            self.net.eval()
            try:
                from torch.fx.experimental.optimization import fuse

                self._fused = fuse(self.net).to(memory_format=torch.channels_last)
            except Exception:  # a backbone torch.fx cannot trace: embed with the network as it is
                self._fused = self.net
        return self._fused

    @torch.inference_mode()
    def _embed_array(self, arr: np.ndarray) -> np.ndarray:
        net = self._inference_net()
        with _autocast(self.device):
            z = net(to_tensor(arr, self.device, self.mean, self.std))
        return F.normalize(z.float(), dim=1).cpu().numpy()

    def _assemble(self, n: int, dec: Decoded) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = [None] * n
        arr = dec.array()
        if arr is not None:
            for pos, vec in zip(dec.positions, self._embed_array(arr), strict=True):
                out[pos] = vec
        return out

    def embed(self, rows: Sequence[Row], reader: Reader) -> list[np.ndarray | None]:
        """One unit vector per row (float32, ``dim``); None where the row's value is None."""
        batches = self.embed_batches([rows], reader)
        try:
            return next(batches)
        finally:
            batches.close()  # finishes prefetch's clean-up now, not at garbage collection

    def embed_batches(self, batches: Iterable[Sequence[Row]],
                      reader: Reader) -> Generator[list[np.ndarray | None], None, None]:
        """``embed`` for each batch, the next batch decoded in the pool meanwhile.
        ``batches`` is pulled on the calling thread."""
        work = partial(decode_rows, reader=reader, size=self.input_size, index=None, skip=False)

        def numbered(batch: Sequence[Row]) -> list[tuple[int, Row]]:
            return [(i, r) for i, r in enumerate(batch) if r.value is not None]

        sizes: list[int] = []

        def tracked() -> Iterator[list[tuple[int, Row]]]:
            for b in batches:
                registry.check_batch_pixels(len(b), self.input_size)
                sizes.append(len(b))
                yield numbered(b)

        for dec in fam.prefetch(tracked(), work, Decoded.combine):
            yield self._assemble(sizes.pop(0), dec)

    def payload(self) -> bytes:
        from safetensors.torch import save

        return save({k: v.detach().to("cpu").contiguous() for k, v in self.net.state_dict().items()})


def load(record: Any, payload: bytes, device: str) -> ImageEmbedder:
    import timm
    from safetensors.torch import load as load_safetensors

    fam.check_format(record, FORMAT)
    opts = record.options
    arch = stored_arch(record)
    registry.check_stored(registry.IMAGE_EMBEDDING, record.name, opts, ("input_size", "embedding_dim"))
    state = load_safetensors(payload)
    backbone = timm.create_model(arch, pretrained=False, num_classes=0)
    net = SimCLRNet(backbone, int(opts["embedding_dim"]))
    net.load_state_dict(state, strict=True)
    net.eval()
    return ImageEmbedder(net, arch=arch, input_size=int(opts["input_size"]), mean=opts["mean"],
                         std=opts["std"], device=fam.torch_device(device))


# --- training ---------------------------------------------------------------------------------
def train(algo: Any, opts: dict[str, Any], source: RowSource, base: Any = None) -> Trained:
    """BUILD (base None) or FIT (base: a loaded Predictor whose .model is an ImageEmbedder)."""
    device = fam.torch_device(opts["device"])
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)  # same data and options → same model, without touching the session's RNG
        if base is not None:
            if opts.get("base_model"):
                raise InvalidOption('option "base_model" does not apply to FIT MODEL',
                                    hint="FIT MODEL starts from the model named after USING.")
            prev: ImageEmbedder = base.model
            # entry.fit_model fills these from the base model unless given: a different value is a new model
            backbone = base.record.options.get("backbone", opts["backbone"])
            if opts["embedding_dim"] != prev.dim or opts["backbone"] != backbone:
                raise InvalidOption(
                    f"FIT MODEL keeps the base model's backbone ({backbone}) and embedding_dim ({prev.dim})",
                    hint="Leave backbone and embedding_dim out of FIT MODEL, or BUILD a new model.")
            model = ImageEmbedder(prev.net, arch=prev.arch, input_size=opts["input_size"],
                                  mean=prev.mean_list, std=prev.std_list, device=device)
            origin = f'model "{base.record.name}"'
        else:
            arch, backbone, origin = new_backbone(opts["backbone"], opts, source.reader, source.weights_dirs)
            if not check_arch(arch):  # a model folder's config.json names it: it must load again later
                raise DataError(f"the architecture of {origin}, {arch!r}, is not a timm model name")
            # pretrained weights come with their normalization; from scratch ImageNet's is as good as any
            scratch = origin == "random initialisation"
            cfg = {} if scratch else (getattr(backbone, "pretrained_cfg", None) or {})
            mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
            model = ImageEmbedder(SimCLRNet(backbone, opts["embedding_dim"]), arch=arch,
                                  input_size=opts["input_size"], mean=mean, std=std, device=device)
        metrics = _fit(model, algo, opts, source)
    return Trained(
        payload=model.payload(), format=FORMAT, labels=None, label_type=None,
        options={"arch": model.arch, "input_size": model.input_size, "embedding_dim": model.dim,
                 "mean": model.mean_list, "std": model.std_list, "weights": origin},
        metrics=metrics,
    )


def _param_groups(net: nn.Module) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in net.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on norms and biases
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


def _fit(model: ImageEmbedder, algo: Any, opts: dict[str, Any], source: RowSource) -> dict[str, float]:
    net, device = model.net, model.device
    model._fused = None  # training changes the weights a fused copy was made from
    bs, epochs, size = opts["batch_size"], opts["epochs"], model.input_size
    rows = max(1, source.count - source.skipped)
    steps_per_epoch = math.ceil(rows / bs)
    total_steps = max(1, epochs * steps_per_epoch)
    opt, sched, scaler = fam.optimizer_schedule(_param_groups(net), opts["learning_rate"], total_steps,
                                                WARMUP_FRACTION, device)
    augment = Augment(size)
    gen = torch.Generator(device=device)
    work = partial(decode_rows, reader=source.reader, size=size, index=None, skip=False)
    progress = fam.Progress(source.notice, source.progress_interval, label=f"{algo.name} training",
                            epochs=epochs, steps_per_epoch=steps_per_epoch)
    loss_avg = acc_avg = float("nan")
    trained_images = 0
    for epoch in range(epochs):
        net.train()
        gen.manual_seed(epoch + 1)
        loss_sum = torch.zeros((), device=device)
        acc_sum = torch.zeros((), device=device)
        seen = step = 0
        batches = (list(enumerate(b)) for b in source.batches(bs, shuffle=True, seed=epoch))
        for dec in fam.prefetch(batches, work, Decoded.combine, depth=2 if device.type == "cuda" else 1):
            source.check_interrupts()  # a pending cancel stops training here, within one batch
            arr = dec.array()
            if arr is None:
                continue
            x = torch.from_numpy(arr).to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
            views = torch.cat([augment(x, gen), augment(x, gen)])
            views = ((views - model.mean) / model.std).contiguous(memory_format=torch.channels_last)
            with _autocast(device):
                z = net(views)
            loss, acc = nt_xent(z, opts["temperature"])
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
            loss_sum += loss.detach() * len(arr)
            acc_sum += acc * len(arr)
            seen += len(arr)
            step += 1
            progress.step(len(arr))
            if progress.due():
                progress.report(epoch, step, (loss_sum / seen).item(), (acc_sum / seen).item())
        trained_images += seen
        if seen:
            loss_avg, acc_avg = (loss_sum / seen).item(), (acc_sum / seen).item()
    if trained_images == 0:
        raise DataError("no readable images to train on")
    net.eval()
    rate = progress.images_per_second()
    source.notice(f"{algo.name} training done: {epochs} epochs, NT-Xent loss {loss_avg:.4f},"
                  f" contrastive accuracy {acc_avg:.4f}, {rate:.1f} images/s")
    return {"train_loss": round(loss_avg, 6), "contrastive_accuracy": round(acc_avg, 6),
            "images_per_second": round(rate, 2)}
