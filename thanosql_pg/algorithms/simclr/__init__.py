"""SimCLR image embeddings: the family's spec (pure; the model is in ``model``).

The catalog calls the family "image_embedding" (stored models say so)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from thanosql_pg.algorithms import registry as r
from thanosql_pg.algorithms.shared.limits import (
    MAX_EMBEDDING_DIM,
    MAX_IMAGE_BATCH,
    MAX_INPUT_SIZE,
    check_image_batch,
)
from thanosql_pg.algorithms.shared.small_nets import SMALL_RESNET
from thanosql_pg.errors import InvalidOption


@dataclass(frozen=True, kw_only=True)
class SimCLROptions(r.Options):
    """The family's own options, typed (registry.Options has the conventions)."""

    image_col: str
    label_col: str | None  # BUILD/FIT: None unless given (labels only score the validation part)
    backbone: str | None  # BUILD: None until ``settle`` picks one for the input size
    embedding_dim: int
    input_size: int
    temperature: float


IMAGE = r.option("image_col", str, "image_path")
# BUILD/FIT learn without labels; with validation_split, a label column makes each epoch's
# validation score the held-out images' precision@10 (shared.validation) instead of how
# often a random view finds its own image
TRAIN_LABELS = r.option("label_col", str, None, nullable=True,
                        doc="with validation_split: the labels each epoch's precision@10 is scored by")
BATCH = r.batch_size(256, MAX_IMAGE_BATCH)
# The training recipe (issue 21, bench/simclr_recipe.py): on small data, batches of 64 take 4x the
# steps of 256 for the same work; a temperature of 0.2 (SimCLR's CIFAR-10 value) ranked better than
# 0.5 and 0.1. The backbone, the epochs and the learning rate depend on the input size (``settle``):
# ResNet-18 ranked worse at 3e-3 than at 1e-3, the small ResNet better at 2e-3 (the digits'
# precision@10 0.93, 0.91 at 1e-3). CONVERT/EVALUATE keep BATCH: there it is speed only.
SMALL_INPUT = 32  # input_size up to this (CIFAR's): the small ResNet by default ...
SMALL_EPOCHS, SMALL_LR = 15, 2e-3  # ... for 15 epochs at 2e-3
LARGE_BACKBONE, LARGE_EPOCHS, LARGE_LR = "resnet18", 6, 1e-3  # larger inputs, or pretrained weights
TRAIN = r.training_options(
    IMAGE, TRAIN_LABELS, r.batch_size(64, MAX_IMAGE_BATCH),
    replace(r.epochs(None), doc=f"passes over the rows; default {SMALL_EPOCHS} for the small ResNet,"
            f" else {LARGE_EPOCHS} (with early_stopping: at most)"),
    r.option("pretrained", bool, False), r.OVERWRITE,
    r.option("backbone", str, None, nullable=True,
             doc=f"the timm network that embeds the images; default {SMALL_RESNET} up to input_size"
                 f" {SMALL_INPUT} from scratch, else {LARGE_BACKBONE}"),
    r.option("embedding_dim", int, 128, maximum=MAX_EMBEDDING_DIM, positive=True),
    r.option("input_size", int, 96, maximum=MAX_INPUT_SIZE, positive=True),
    r.option("temperature", float, 0.2, positive=True),
    replace(r.learning_rate(None), doc=f"the optimizer's peak learning rate; default {SMALL_LR:g} for the"
            f" small ResNet, else {LARGE_LR:g}"), r.BASE_MODEL, r.DEVICE,
)
IMAGES = r.Columns("image_col", modality="image")


def training_columns(opts: r.Options) -> r.Columns:
    """BUILD/FIT read image_col, and label_col where given."""
    if isinstance(opts, SimCLROptions) and opts.label_col:
        return r.Columns("image_col", "label_col", modality="image")
    return IMAGES


def settle(opts: r.Options) -> r.Options:
    """``Family.check``: BUILD's backbone by the input size unless given (up to SMALL_INPUT
    pixels from scratch: the small ResNet, shared.small_nets, which keeps a small image's
    detail; else ResNet-18, which has pretrained weights), the epochs and learning rate by
    the backbone (FIT: its base model's backbone), then the image batch's bound."""
    assert isinstance(opts, SimCLROptions)
    if opts.statement in ("build", "fit"):
        if opts.label_col and not opts.validation_split:
            raise InvalidOption(
                'option "label_col" of SimCLR scores the held-out images only, and needs option'
                ' "validation_split" > 0', hint="SimCLR learns without labels: add validation_split=0.1 (say)"
                " to track precision@10 per epoch by label_col, or leave label_col out.")
        from_scratch = not opts.pretrained and not opts.base_model  # the small ResNet has no weights
        backbone = opts.backbone or (SMALL_RESNET if opts.input_size <= SMALL_INPUT and from_scratch
                                     else LARGE_BACKBONE)
        small = backbone == SMALL_RESNET
        epochs = opts.epochs if opts.epochs is not None else (SMALL_EPOCHS if small else LARGE_EPOCHS)
        lr = opts.learning_rate if opts.learning_rate is not None else (SMALL_LR if small else LARGE_LR)
        opts = replace(opts, backbone=backbone, epochs=epochs, learning_rate=lr)
    check_image_batch(opts)
    return opts


FAMILY = r.register(r.Family(
    name="image_embedding",
    model="thanosql_pg.algorithms.simclr.model",
    algorithms={"SimCLR": {}},
    options={
        "build": TRAIN,
        "fit": TRAIN,
        "convert": (IMAGE, BATCH, r.CREATE_INDEX, r.DEVICE),
        "search": (r.DEVICE,),
        # with a label column: how often the nearest images share an image's label (precision@k)
        "evaluate": (IMAGE, r.option("label_col", str, "label"), BATCH, r.retrieval_k(), r.DEVICE,
                     r.ON_ERROR, r.report()),
    },
    columns={"build": training_columns, "fit": training_columns, "convert": IMAGES,
             "evaluate": r.Columns("image_col", "label_col", modality="image")},
    carry_over=("input_size", "backbone", "embedding_dim"),
    modalities=("image",),
    check=settle,
    typed=SimCLROptions,
))
