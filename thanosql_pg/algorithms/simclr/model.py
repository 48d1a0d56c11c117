"""SimCLR image embeddings (Chen et al., 2020) on any timm backbone.

BUILD/FIT train a backbone plus a projection head with the NT-Xent loss on
two augmented views of every image (``augment``); CONVERT and SEARCH IMAGE embed
images as L2-normalized ``embedding_dim``-vectors (the projection head's output),
so that cosine similarity is a dot product.

Like every family's model it sees rows only through ``RowSource``/``Reader``
(contract.py) and knows nothing about SQL. Image decoding, timm networks and the
training loop are the shared ones.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from thanosql_pg.algorithms import registry
from thanosql_pg.algorithms import simclr as spec
from thanosql_pg.algorithms.contract import Base, Reader, Row, RowSource, StoredModel, Trained, check_format
from thanosql_pg.algorithms.shared import devices, images, small_nets, training, validation, weights
from thanosql_pg.algorithms.shared.architecture import invalid_model
from thanosql_pg.algorithms.shared.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Decoded,
    ImageInput,
    decode_rows,
    pretrained_normalization,
)
from thanosql_pg.algorithms.simclr import SimCLROptions
from thanosql_pg.algorithms.simclr.augment import Augment
from thanosql_pg.errors import DataCorrupted, FeatureNotAvailable, InvalidOption

FORMAT = "simclr-safetensors-v1"
small_nets.register()  # the default backbone of small inputs is one (the spec's settle)
WEIGHT_DECAY = 1e-6  # SimCLR's own; contrastive training needs little regularisation
WARMUP_FRACTION = 0.05


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
        features: Any = backbone.num_features  # timm's: the width of the features (an int)
        width = int(features)
        self.embedding_dim = embedding_dim
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
                                  nn.Linear(width, embedding_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def new_backbone(name: str, opts: SimCLROptions, reader: Reader,
                 dirs: Sequence[str]) -> tuple[str, nn.Module, str]:
    """(timm architecture, feature extractor without classifier, where its weights came from)."""
    if not opts.base_model and not opts.pretrained and not weights.check_arch(name):
        raise InvalidOption(f'unknown backbone "{name}"',
                            hint="Name a timm model, e.g. backbone='resnet18' (see timm.list_models()).")
    # pretrained: a timm name or a hub repo, never a path
    return weights.timm_network(name, 0, base_model=opts.base_model, pretrained=opts.pretrained,
                                resolve=reader.resolve_path, dirs=dirs)


class ImageEmbedder:
    """A trained SimCLR network plus its preprocessing."""

    def __init__(self, net: SimCLRNet, *, arch: str, inputs: ImageInput) -> None:
        # Module.to takes memory_format (torch's type stubs leave it out)
        self.net = net.to(inputs.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.arch = arch
        self.inputs = inputs
        self.input_size = inputs.size
        self.dim = net.embedding_dim
        self.device = inputs.device
        self._fused: nn.Module | None = None

    def forget_fused(self) -> None:
        """Training changes the weights a fused copy was made from."""
        self._fused = None

    def _inference_net(self) -> nn.Module:
        """The network for embedding: a copy with each BatchNorm folded into the convolution
        before it (torch.fx), which saves about a quarter of a ResNet's CPU time. ``self.net``
        stays as it is, trainable."""
        if self._fused is None:
            self.net.eval()
            try:
                from torch.fx.experimental.optimization import fuse

                # Module.to takes memory_format (torch's type stubs leave it out)
                self._fused = fuse(self.net).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            except Exception:  # a backbone torch.fx cannot trace: embed with the network as it is
                self._fused = self.net
        return self._fused

    @torch.inference_mode()
    def _embed_array(self, arr: np.ndarray) -> np.ndarray:
        net = self._inference_net()
        with devices.autocast(self.device):
            z = net(self.inputs.tensor(arr))
        return F.normalize(z.float(), dim=1).cpu().numpy()

    def embed(self, rows: Sequence[Row], reader: Reader, modality: str = "image") -> list[np.ndarray | None]:
        """One unit vector per row (float32, ``dim``); None where the row's value is None."""
        return images.first(self.embed_batches([rows], reader, modality))

    def embed_batches(self, batches: Iterable[Sequence[Row]], reader: Reader,
                      modality: str = "image") -> Generator[list[np.ndarray | None], None, None]:
        """``embed`` for each batch, the next batch decoded in the pool meanwhile.
        ``batches`` is pulled on the calling thread."""
        if modality not in spec.FAMILY.modalities:
            raise FeatureNotAvailable(f"SimCLR models embed images only, not {modality}")
        return images.embed_batches(batches, reader, self.input_size, self._embed_array)

    def evaluate(self, source: RowSource, opts: registry.Options) -> dict[str, float]:
        """EVALUATE on labelled images: retrieval precision@k (shared.images)."""
        return images.evaluate_retrieval(source, opts, self.input_size, self._embed_array)


def load(record: StoredModel, payload: bytes | memoryview, device: str) -> ImageEmbedder:
    """A stored model, checked as untrusted input before anything is allocated for it: a plain
    timm architecture, BUILD's bounds on input_size and embedding_dim, the normalization, and
    the stored tensors exactly the shapes of that backbone and head (XX001 otherwise). The
    network is built on the meta device and adopts the stored tensors."""
    import timm

    check_format(record, FORMAT)
    arch = weights.stored_arch(record)
    # BUILD's bounds, XX001
    stored = registry.stored(SimCLROptions, spec.FAMILY, record.options, model=record.name)
    dim = stored.embedding_dim
    try:
        mean, std = weights.stored_normalization(record)
        def make() -> SimCLRNet:
            return SimCLRNet(timm.create_model(arch, pretrained=False, num_classes=0), dim)

        net = weights.adopt_state(make, weights.state_dict(payload))
    except DataCorrupted as e:
        raise invalid_model(record.name, e) from None
    inputs = ImageInput(stored.input_size, mean, std, devices.torch_device(device))
    return ImageEmbedder(net, arch=arch, inputs=inputs)


# --- training ---------------------------------------------------------------------------------
def train(algo: registry.Algorithm, opts: registry.Options, source: RowSource,
          base: Base | None = None) -> Trained:
    """BUILD (base None) or FIT (base: a loaded model whose .model is an ImageEmbedder)."""
    assert isinstance(opts, SimCLROptions)
    device = devices.torch_device(opts.device)
    with training.seeded(device):
        if base is not None:
            training.refuse_base_model(opts)
            prev: ImageEmbedder = base.model
            # the server fills these from the base model unless given (the spec's carry_over):
            # a different value is a new model
            backbone = registry.stored(SimCLROptions, spec.FAMILY, base.record.options,
                                       model=base.record.name).backbone
            if opts.embedding_dim != prev.dim or opts.backbone != backbone:
                raise InvalidOption(
                    f"FIT MODEL keeps the base model's backbone ({backbone}) and embedding_dim ({prev.dim})",
                    hint="Leave backbone and embedding_dim out of FIT MODEL, or BUILD a new model.")
            inputs = ImageInput(opts.input_size, prev.inputs.mean_list, prev.inputs.std_list, device)
            model = ImageEmbedder(prev.net, arch=prev.arch, inputs=inputs)
            origin = f'model "{base.record.name}"'
        else:
            assert opts.backbone is not None  # the spec's settle chose one
            arch, net, origin = new_backbone(opts.backbone, opts, source.reader, source.weights_dirs)
            weights.check_new_arch(arch, origin)
            # pretrained weights come with their normalization; from scratch ImageNet's is as good as any
            scratch = origin == "random initialisation"
            mean, std = (IMAGENET_MEAN, IMAGENET_STD) if scratch else pretrained_normalization(net)
            model = ImageEmbedder(SimCLRNet(net, opts.embedding_dim), arch=arch,
                                  inputs=ImageInput(opts.input_size, mean, std, device))
        done = _fit(model, algo, opts, source)
    return Trained(
        payload=weights.state_payload(model.net), format=FORMAT, labels=None, label_type=None,
        options={"arch": model.arch, **model.inputs.options(), "embedding_dim": model.dim, "weights": origin},
        metrics={**done.metrics(), "images_per_second": round(done.rate, 2)}, epochs=done.rows(),
    )


def _fit(model: ImageEmbedder, algo: registry.Algorithm, opts: SimCLROptions,
         source: RowSource) -> training.Outcome:
    """NT-Xent on two augmented views of each image. Validation scores the same loss on the
    held-out images, with the same augmentations every epoch (comparable epochs), and, as
    the epoch's metric, their retrieval (shared.validation): precision@10 by label_col
    where given, else how often a random view finds its own image among the plain ones."""
    net, device = model.net, model.device
    model.forget_fused()
    # grayscale brightness/contrast: with the small ResNet it lifts the digits' precision@10 from
    # 0.885 to 0.916, while ResNet-18's 6 epochs end at 0.545 with it and 0.733 without (0.603
    # with half of it; bench/simclr_recipe.py's history): the small ResNet's views only
    small = model.arch == small_nets.SMALL_RESNET
    augment = Augment(model.input_size) if small else Augment(model.input_size, intensity=0.0)
    gen = torch.Generator(device=device)
    work = partial(decode_rows, reader=source.reader, size=model.input_size, index=None, skip=False)
    labelled = bool(opts.label_col)
    retrieval = bool(opts.validation_split)
    metric = (validation.LABEL_PRECISION if labelled else validation.VIEW_PRECISION) if retrieval \
        else training.CONTRASTIVE_LOSS
    trainer = training.Trainer(net, opts, source, device=device, label=f"{algo.name} training",
                               metric=metric, weight_decay=WEIGHT_DECAY, warmup_fraction=WARMUP_FRACTION)

    def batches(part: RowSource, epoch: int, train: bool) -> Any:
        gen.manual_seed(epoch + 1 if train else 0)
        rows = (devices.numbered(b) for b in part.batches(opts.batch_size, shuffle=train, seed=epoch))
        return devices.prefetch(rows, work, Decoded.combine, depth=2 if device.type == "cuda" else 1)

    def normalized(x: torch.Tensor) -> torch.Tensor:
        return ((x - model.inputs.mean) / model.inputs.std).contiguous(memory_format=torch.channels_last)

    def forward(epoch: int, dec: Decoded, train: bool) -> training.Step | None:
        arr = dec.array()
        if arr is None:
            return None
        x = torch.from_numpy(arr).to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        with devices.autocast(device):
            z = net(normalized(torch.cat([augment(x, gen), augment(x, gen)])))
        loss, acc = nt_xent(z, opts.temperature)
        n = len(arr)
        extra = {"contrastive_accuracy": acc * n}
        if not retrieval:
            return training.Step(loss, n, loss.detach() * n, n, extra=extra)
        keep = None
        if not train:  # the plain views, embedded as CONVERT and SEARCH will
            with devices.autocast(device):
                plain = F.normalize(net(normalized(x)).float(), dim=1).cpu().numpy()
            keep = ((plain, list(dec.texts)) if labelled
                    else (F.normalize(z[:n].detach().float(), dim=1).cpu().numpy(), plain))
        return training.Step(loss, n, 0.0, 0.0, extra=extra, keep=keep)

    judge = validation.label_precision if labelled else validation.view_precision
    return trainer.run(batches, forward, judge if retrieval else None)
