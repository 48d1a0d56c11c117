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

from collections.abc import Mapping
from typing import Any

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
SCRATCH = {"epochs": 20, "learning_rate": 2e-3, "input_size": 32, "embedding_dim": 128}
FINETUNE = {"epochs": 3, "learning_rate": 1e-5}
FIT_EPOCHS = 3  # FIT continues a trained model: its learning rate is the base model's kind's (model.py)

IMAGE = r.option("image_col", "str", "image_path")
TEXT = r.option("text_col", "str", "text")
TRAIN = r.training_options(
    IMAGE, TEXT, r.batch_size(128, MAX_IMAGE_BATCH),
    r.option("epochs", "int?", None, aliases=("max_epochs",), maximum=r.MAX_EPOCHS, positive=True),
    r.option("learning_rate", "float?", None, positive=True),
    r.option("input_size", "int?", None, minimum=MIN_INPUT_SIZE, maximum=MAX_INPUT_SIZE),
    r.option("embedding_dim", "int?", None, minimum=2, maximum=MAX_EMBEDDING_DIM),
    r.PRETRAINED, r.BASE_MODEL, r.OVERWRITE, r.DEVICE,
)
CONVERT_TYPE = r.option("convert_type", "str", "image", choices=("image", "text"))
PAIRS = r.Columns("image_col", "text_col", modality="image")  # BUILD/FIT: images and their captions


def convert_columns(opts: Mapping[str, Any]) -> r.Columns:
    """CONVERT embeds the images of image_col, or the texts of text_col (convert_type)."""
    if str(opts.get("convert_type") or "image").lower() == "text":
        return r.Columns("text_col", modality="text")
    return r.Columns("image_col", modality="image")


def from_scratch(opts: Mapping[str, Any]) -> bool:
    return not opts.get("pretrained") and not opts.get("base_model")


def settle(statement: str, opts: dict[str, Any]) -> None:
    """``Family.check``: BUILD/FIT's defaults that depend on the starting point, filled in
    (BUILD from scratch: SCRATCH's; from a checkpoint: FINETUNE's, input_size and
    embedding_dim the checkpoint's; FIT: FIT_EPOCHS, the rest the base model's), then the
    image batch's bound."""
    if statement == "build":
        defaults = SCRATCH if from_scratch(opts) else FINETUNE
        for key, value in defaults.items():
            if opts.get(key) is None:
                opts[key] = value
    elif statement == "fit" and opts.get("epochs") is None:
        opts["epochs"] = FIT_EPOCHS
    check_image_batch(statement, opts)


FAMILY = r.register(r.Family(
    name="clip",
    model="thanosql_pg.algorithms.clip.model",
    algorithms={"CLIP": {"hub_id": DEFAULT_REPO}},
    options={
        "build": TRAIN,
        "fit": TRAIN,
        "convert": (IMAGE, TEXT, CONVERT_TYPE, r.batch_size(256, MAX_IMAGE_BATCH),
                    r.option("create_index", "bool", True), r.DEVICE),
        "search": (r.DEVICE,),
        # with a label column: how often the nearest images share an image's label (precision@k)
        "evaluate": (IMAGE, r.option("label_col", "str", "label"), r.batch_size(256, MAX_IMAGE_BATCH),
                     r.retrieval_k(), r.DEVICE, r.ON_ERROR, r.report()),
    },
    columns={"build": PAIRS, "fit": PAIRS, "convert": convert_columns,
             "evaluate": r.Columns("image_col", "label_col", modality="image")},
    carry_over=("input_size", "embedding_dim"),
    modalities=("image", "text"),
    check=settle,
))
