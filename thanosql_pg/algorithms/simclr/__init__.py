"""SimCLR image embeddings: the family's spec (pure; the model is in ``model``).

The catalog calls the family "image_embedding" (stored models say so)."""

from __future__ import annotations

from dataclasses import dataclass

from thanosql_pg.algorithms import registry as r
from thanosql_pg.algorithms.shared.limits import (
    MAX_EMBEDDING_DIM,
    MAX_IMAGE_BATCH,
    MAX_INPUT_SIZE,
    check_image_batch,
)


@dataclass(frozen=True, kw_only=True)
class SimCLROptions(r.Options):
    """The family's own options, typed (registry.Options has the conventions)."""

    image_col: str
    label_col: str
    backbone: str
    embedding_dim: int
    input_size: int
    temperature: float


IMAGE = r.option("image_col", str, "image_path")
BATCH = r.batch_size(256, MAX_IMAGE_BATCH)
TRAIN = r.training_options(
    IMAGE, BATCH, r.epochs(5), r.option("pretrained", bool, False), r.OVERWRITE,
    r.option("backbone", str, "resnet18"),
    r.option("embedding_dim", int, 128, maximum=MAX_EMBEDDING_DIM, positive=True),
    r.option("input_size", int, 96, maximum=MAX_INPUT_SIZE, positive=True),
    r.option("temperature", float, 0.5, positive=True), r.learning_rate(3e-4), r.BASE_MODEL, r.DEVICE,
)
IMAGES = r.Columns("image_col", modality="image")

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
    columns={"build": IMAGES, "fit": IMAGES, "convert": IMAGES,
             "evaluate": r.Columns("image_col", "label_col", modality="image")},
    carry_over=("input_size", "backbone", "embedding_dim"),
    modalities=("image",),
    check=check_image_batch,
    typed=SimCLROptions,
))
