"""Image classification with timm models (ConvNeXt, EfficientNetV2, any timm name).

The family sees rows through ``RowSource``/``Reader`` (contract.py): it decodes
image bytes with PIL in a thread pool while the model computes (shared.images),
and it knows nothing about SQL. Weights are stored as safetensors (no pickle on
load); the architecture, input size and normalization go into the model's options.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from thanosql_pg.algorithms import image_classification as spec
from thanosql_pg.algorithms import registry
from thanosql_pg.algorithms.contract import (
    Base,
    Evaluation,
    Reader,
    Row,
    RowSource,
    StoredModel,
    Trained,
    check_format,
)
from thanosql_pg.algorithms.shared import devices, training, weights
from thanosql_pg.algorithms.shared.architecture import invalid_model
from thanosql_pg.algorithms.shared.images import (
    FLIP_MIN_SIZE,
    Decoded,
    ImageInput,
    decode_rows,
    pretrained_normalization,
)
from thanosql_pg.algorithms.shared.limits import check_batch_pixels
from thanosql_pg.algorithms.shared.metrics import classification_result
from thanosql_pg.errors import DataCorrupted, DataError, InvalidOption, InvalidParameterValue

FORMAT = "timm-safetensors-v1"
WEIGHT_DECAY = 0.05
WARMUP_FRACTION = 0.05


class ImageClassifier:
    """A timm network plus its label set and preprocessing."""

    def __init__(self, net: torch.nn.Module, *, arch: str, labels: list[str], inputs: ImageInput) -> None:
        self.net = net.to(inputs.device, memory_format=torch.channels_last)
        self.arch = arch
        self.labels = labels
        self.inputs = inputs
        self.input_size = inputs.size
        self.device = inputs.device

    @torch.inference_mode()
    def _classify(self, arr: np.ndarray) -> list[int]:
        self.net.eval()
        with devices.autocast(self.device):
            logits = self.net(self.inputs.tensor(arr))
        return logits.argmax(1).tolist()

    def predict(self, rows: Sequence[Row], reader: Reader,
                opts: registry.Options) -> tuple[list[str | None], list[str]]:
        """Labels for ``rows`` (None for skipped rows) and a message per skipped row."""
        check_batch_pixels(len(rows), self.input_size)
        skip = opts.on_error == "skip"
        work = partial(decode_rows, reader=reader, size=self.input_size, index=None, skip=skip)
        dec = devices.decode_now(rows, work, Decoded.combine)
        out: list[str | None] = [None] * len(rows)
        arr = dec.array()
        if arr is not None:
            for pos, k in zip(dec.positions, self._classify(arr), strict=True):
                out[pos] = self.labels[k]
        return out, [e.message for _, e in dec.errors]

    def evaluate(self, source: RowSource, opts: registry.Options) -> dict[str, float] | Evaluation:
        """The summary (accuracy, macro precision/recall/F1), or report='per_class' or
        'confusion_matrix' (shared.metrics makes each from the confusion counts)."""
        check_batch_pixels(opts.batch_size, self.input_size)
        skip = opts.on_error == "skip"
        work = partial(decode_rows, reader=source.reader, size=self.input_size, index=None, skip=skip)
        confusion: Counter[tuple[str, str]] = Counter()
        skipped = devices.Skipped(source.skipped)
        with closing(devices.evaluation_batches(source, opts.batch_size, work, Decoded.combine,
                                                skipped)) as decoded:
            for dec in decoded:
                arr = dec.array()
                if arr is None:
                    continue
                for truth, k in zip(dec.texts, self._classify(arr), strict=True):
                    confusion[(str(truth), self.labels[k])] += 1
        skipped.notice(source.notice, "EVALUATE")
        if not confusion:
            raise DataError("no readable images to evaluate", hint="Every row was skipped as unreadable.")
        return classification_result(confusion, opts.report, self.labels,
                                     extra={"Skipped": float(skipped.count)} if skip else None)


# --- loading stored models --------------------------------------------------------------------
def load(record: StoredModel, payload: bytes | memoryview, device: str) -> ImageClassifier:
    """A stored model, checked as untrusted input before anything is allocated for it: a plain
    timm architecture, BUILD's bounds on input_size, the normalization, and the stored tensors
    exactly the shapes of that architecture with a head per label (XX001 otherwise)."""
    check_format(record, FORMAT)
    arch = weights.stored_arch(record)
    opts = registry.stored(spec.ImageClassificationOptions, spec.FAMILY, record.options, model=record.name)
    labels = list(record.labels or [])
    try:
        mean, std = weights.stored_normalization(record)
        if len(labels) < 2:
            raise DataCorrupted(f"it has {len(labels)} label(s); a classifier has at least two")
        net = weights.timm_load(arch, len(labels), weights.state_dict(payload))
    except DataCorrupted as e:
        raise invalid_model(record.name, e) from None
    inputs = ImageInput(opts.input_size, mean, std, devices.torch_device(device))
    return ImageClassifier(net, arch=arch, labels=labels, inputs=inputs)


# --- training ---------------------------------------------------------------------------------
def train(algo: registry.Algorithm, opts: registry.Options, source: RowSource,
          base: Base | None = None) -> Trained:
    """BUILD (base None) or FIT (base: a loaded model whose .model is an ImageClassifier)."""
    assert isinstance(opts, spec.ImageClassificationOptions)
    device = devices.torch_device(opts.device)
    data_labels = source.labels()
    if base is not None:
        training.refuse_base_model(opts)
        clf: ImageClassifier = base.model
        known = set(clf.labels)
        unknown = [lab for lab in data_labels if lab not in known]
        if unknown:
            raise InvalidParameterValue(
                f'the data has {len(unknown)} label(s) that model "{base.record.name}" does not know: '
                + ", ".join(unknown[:20]) + (" ..." if len(unknown) > 20 else ""),
                detail="The model's labels: " + ", ".join(clf.labels[:50]) + (" ..." if len(clf.labels) > 50
                                                                             else ""),
                hint="FIT MODEL keeps the base model's label set; BUILD a new model to add classes.",
            )
        labels, label_type = list(clf.labels), base.record.label_type
    else:
        if len(data_labels) < 2:
            raise InvalidOption(
                f'label column "{opts.label_col}" holds a single class ({data_labels[0]}); '
                "classification needs at least two",
                hint="Check the query's WHERE clause, or the label_col option.",
            )
        labels, label_type = data_labels, source.label_type
    with training.seeded(device):
        if base is not None:
            clf = base.model
            arch, net, origin = clf.arch, clf.net, f'model "{base.record.name}"'
            mean, std = clf.inputs.mean_list, clf.inputs.std_list
        else:
            arch, net, origin = weights.timm_network(
                algo.params["timm_name"], len(labels), base_model=opts.base_model,
                pretrained=opts.pretrained, resolve=source.reader.resolve_path, dirs=source.weights_dirs)
            weights.check_new_arch(arch, origin)
            mean, std = pretrained_normalization(net)
        model = ImageClassifier(net, arch=arch, labels=labels,
                                inputs=ImageInput(opts.input_size, mean, std, device))
        metrics, epochs = _fit(model, algo, opts, source)
    return Trained(
        payload=weights.state_payload(model.net), format=FORMAT, labels=labels, label_type=label_type,
        options={"arch": arch, **model.inputs.options(), "weights": origin}, metrics=metrics, epochs=epochs,
    )


def _fit(model: ImageClassifier, algo: registry.Algorithm, opts: spec.ImageClassificationOptions,
         source: RowSource) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    net, device = model.net, model.device
    size = model.input_size
    skip = opts.on_error == "skip"
    trainer = training.Trainer(net, opts, source, device=device, label=f"{algo.name} training",
                               metric=training.ACCURACY, weight_decay=WEIGHT_DECAY,
                               warmup_fraction=WARMUP_FRACTION)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    index = {lab: i for i, lab in enumerate(model.labels)}
    flip = size >= FLIP_MIN_SIZE
    skipped = devices.Skipped(source.skipped)
    balanced = opts.class_weight == "balanced"
    class_weights = _class_weights(trainer.parts.train, index, device) if balanced else None

    def batches(part: RowSource, epoch: int, train: bool) -> Any:
        # training: shuffled, with augmentation; validation: in order, as PREDICT sees images
        work = partial(decode_rows, reader=source.reader, size=size, index=index, skip=skip,
                       seed=epoch + 1 if train else None, flip=flip and train)
        rows = (devices.numbered(b) for b in part.batches(opts.batch_size, shuffle=train, seed=epoch))
        return devices.prefetch(rows, work, Decoded.combine, depth=2 if device.type == "cuda" else 1)

    def forward(epoch: int, dec: Decoded, train: bool) -> training.Step | None:
        if epoch == 0:
            skipped.add(dec.errors)
        arr = dec.array()
        if arr is None or (train and len(arr) < 2 and has_bn):
            return None  # BatchNorm cannot train on a single image
        x = model.inputs.tensor(arr)
        y = torch.as_tensor(dec.targets, device=device)
        with devices.autocast(device):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y, weight=class_weights)
        return training.Step(loss, len(y), (logits.detach().argmax(1) == y).sum(), len(y))

    done = trainer.run(batches, forward)
    skipped.notice(source.notice, f"{algo.name} training")
    metrics = {**done.metrics(), "images_per_second": round(done.rate, 2)}
    if skip:
        metrics["skipped_rows"] = float(skipped.count)
    return metrics, done.rows()


def _class_weights(part: RowSource, index: dict[str, int], device: torch.device) -> torch.Tensor:
    """class_weight='balanced': n_samples / (n_classes * count_c) per class, as scikit-learn's,
    counted over the rows trained on (a class none of them has weighs nothing)."""
    counts = np.zeros(len(index), dtype=np.float64)
    for label, n in part.label_counts().items():
        counts[index[label]] = n
    present = counts > 0
    weight = np.zeros_like(counts)
    weight[present] = counts.sum() / (present.sum() * counts[present])
    return torch.as_tensor(weight, dtype=torch.float32, device=device)
