"""CLIP: image-text contrastive embeddings (Radford et al., 2021); the family's spec
(pure: no torch, transformers or tokenizers; the model is in ``model``).

An image tower and a text tower project into one space, trained so that an image and
its caption are nearest neighbours: images and texts then embed as unit vectors in
the same space, compared by dot product. CONVERT embeds either (``convert_type``),
SEARCH IMAGE searches image rows by a text (``search_by='text'``) or by an image.

Defaults that depend on the starting point (a published CLIP checkpoint, or a small
model trained from scratch) are left None in the option sets and filled in by
``settle`` once the options are known, so that BUILD's result and the stored options
show the values used.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from thanosql_pg.algorithms import registry as r
from thanosql_pg.algorithms.shared.limits import (
    MAX_EMBEDDING_DIM,
    MAX_IMAGE_BATCH,
    MAX_INPUT_SIZE,
    check_image_batch,
)

DEFAULT_REPO = "openai/clip-vit-base-patch32"  # pretrained=True without base_model
MIN_INPUT_SIZE = 8  # pixels per side: a smaller image has nothing left for a patch grid

# BUILD's defaults by starting point. From scratch: chosen on scikit-learn's digits (1,437
# training images, 3 caption templates per class) on 2 CPU cores: held-out precision@10
# searching by a class's text ~0.9 after 20 epochs of 12 steps (tests/test_clip.py); the
# first ~5 epochs are CLIP's usual plateau, where both towers still embed everything
# alike, and 15 epochs end near 0.7. Fine-tuning a published CLIP: a small learning rate,
# or the alignment it came with is lost.
@dataclass(frozen=True, kw_only=True)
class ClipOptions(r.Options):
    """The family's own options, typed (registry.Options has the conventions). input_size
    and embedding_dim are None until a starting point decides them (``settle``)."""

    image_col: str
    text_col: str
    label_col: str
    input_size: int | None
    embedding_dim: int | None
    convert_type: str


@dataclass(frozen=True)
class Defaults:
    """BUILD's defaults of one kind of starting point (None: the checkpoint's)."""

    epochs: int
    learning_rate: float
    input_size: int | None = None
    embedding_dim: int | None = None


SCRATCH = Defaults(epochs=20, learning_rate=2e-3, input_size=32, embedding_dim=128)
FINETUNE = Defaults(epochs=3, learning_rate=1e-5)
FIT_EPOCHS = 3  # FIT continues a trained model: its learning rate is the base model's kind's (model.py)

IMAGE = r.option("image_col", str, "image_path")
TEXT = r.option("text_col", str, "text")
TRAIN = r.training_options(
    IMAGE, TEXT, r.batch_size(128, MAX_IMAGE_BATCH), r.epochs(None), r.learning_rate(None),
    r.option("input_size", int, None, minimum=MIN_INPUT_SIZE, maximum=MAX_INPUT_SIZE, nullable=True),
    r.option("embedding_dim", int, None, minimum=2, maximum=MAX_EMBEDDING_DIM, nullable=True),
    r.PRETRAINED, r.BASE_MODEL, r.OVERWRITE, r.DEVICE,
)
CONVERT_TYPE = r.option("convert_type", str, "image", choices=("image", "text"))
PAIRS = r.Columns("image_col", "text_col", modality="image")  # BUILD/FIT: images and their captions


def convert_columns(opts: r.Options) -> r.Columns:
    """CONVERT embeds the images of image_col, or the texts of text_col (convert_type)."""
    if isinstance(opts, ClipOptions) and opts.convert_type == "text":
        return r.Columns("text_col", modality="text")
    return r.Columns("image_col", modality="image")


def from_scratch(opts: r.Options) -> bool:
    return not opts.pretrained and not opts.base_model


def settle(opts: r.Options) -> r.Options:
    """``Family.check``: BUILD/FIT's defaults that depend on the starting point, filled in
    (BUILD from scratch: SCRATCH's; from a checkpoint: FINETUNE's, input_size and
    embedding_dim the checkpoint's; FIT: FIT_EPOCHS, the rest the base model's), then the
    image batch's bound."""
    assert isinstance(opts, ClipOptions)
    if opts.statement == "build":
        d = SCRATCH if from_scratch(opts) else FINETUNE
        opts = replace(
            opts, epochs=opts.epochs if opts.epochs is not None else d.epochs,
            learning_rate=opts.learning_rate if opts.learning_rate is not None else d.learning_rate,
            input_size=opts.input_size if opts.input_size is not None else d.input_size,
            embedding_dim=opts.embedding_dim if opts.embedding_dim is not None else d.embedding_dim)
    elif opts.statement == "fit" and opts.epochs is None:
        opts = replace(opts, epochs=FIT_EPOCHS)
    check_image_batch(opts)
    return opts


FAMILY = r.register(r.Family(
    name="clip",
    model="thanosql_pg.algorithms.clip.model",
    algorithms={"CLIP": {"hub_id": DEFAULT_REPO}},
    options={
        "build": TRAIN,
        "fit": TRAIN,
        "convert": (IMAGE, TEXT, CONVERT_TYPE, r.batch_size(256, MAX_IMAGE_BATCH),
                    r.CREATE_INDEX, r.DEVICE),
        "search": (r.DEVICE,),
        # with a label column: how often the nearest images share an image's label (precision@k)
        "evaluate": (IMAGE, r.option("label_col", str, "label"), r.batch_size(256, MAX_IMAGE_BATCH),
                     r.retrieval_k(), r.DEVICE, r.ON_ERROR, r.report()),
    },
    columns={"build": PAIRS, "fit": PAIRS, "convert": convert_columns,
             "evaluate": r.Columns("image_col", "label_col", modality="image")},
    carry_over=("input_size", "embedding_dim"),
    modalities=("image", "text"),
    check=settle,
    typed=ClipOptions,
))
