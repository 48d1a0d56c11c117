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
# The training recipe (issue 21, bench/simclr_recipe.py): on small data, batches of 64 take 4x the
# steps of 256 for the same work, at a learning rate of 1e-3 (3e-3 ranked worse); a temperature of
# 0.2 (SimCLR's CIFAR-10 value) ranked at least as well as 0.5 and 0.1; 6 epochs (the digits'
# precision@10 flattens out after 6-8). CONVERT/EVALUATE keep BATCH: there it is speed only.
TRAIN = r.training_options(
    IMAGE, r.batch_size(64, MAX_IMAGE_BATCH), r.epochs(6), r.option("pretrained", bool, False), r.OVERWRITE,
    r.option("backbone", str, "resnet18"),
    r.option("embedding_dim", int, 128, maximum=MAX_EMBEDDING_DIM, positive=True),
    r.option("input_size", int, 96, maximum=MAX_INPUT_SIZE, positive=True),
    r.option("temperature", float, 0.2, positive=True), r.learning_rate(1e-3), r.BASE_MODEL, r.DEVICE,
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
