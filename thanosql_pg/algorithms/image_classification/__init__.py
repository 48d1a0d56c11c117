"""Image classification with timm models: the family's spec (pure; the model is in ``model``)."""

from __future__ import annotations

from dataclasses import dataclass

from thanosql_pg.algorithms import registry as r
from thanosql_pg.algorithms.shared.limits import MAX_IMAGE_BATCH, MAX_INPUT_SIZE, check_image_batch


@dataclass(frozen=True, kw_only=True)
class ImageClassificationOptions(r.Options):
    """The family's own options, typed (registry.Options has the conventions)."""

    image_col: str
    label_col: str
    input_size: int
    class_weight: str


FAMILY = r.register(r.Family(
    name="image_classification",
    model="thanosql_pg.algorithms.image_classification.model",
    algorithms={
        "ConvNeXt_Tiny": {"timm_name": "convnext_tiny"},
        "ConvNeXt_Base": {"timm_name": "convnext_base"},
        "EfficientNetV2S": {"timm_name": "tf_efficientnetv2_s"},
        "EfficientNetV2M": {"timm_name": "tf_efficientnetv2_m"},
    },
    **r.supervised(
        r.option("image_col", str, "image"), r.option("label_col", str, "label"),
        r.batch_size(16, MAX_IMAGE_BATCH),
        training=(r.epochs(3), r.learning_rate(1e-4), r.OVERWRITE,
                  r.option("input_size", int, 224, maximum=MAX_INPUT_SIZE, positive=True), r.PRETRAINED,
                  r.BASE_MODEL, r.DEVICE, r.ON_ERROR,
                  # 'balanced': each class's loss weighted by n_samples / (n_classes * its count)
                  r.option("class_weight", str, "none", choices=("none", "balanced"))),
        reports=("per_class", "confusion_matrix"),
    ),
    carry_over=("input_size",),
    check=check_image_batch,
    typed=ImageClassificationOptions,
))
