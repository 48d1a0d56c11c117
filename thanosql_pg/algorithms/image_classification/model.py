"""Image classification with timm models (ConvNeXt, EfficientNetV2, any timm name).

The family sees rows through ``RowSource``/``Reader`` (contract.py): it decodes
image bytes with PIL in a thread pool while the model computes (shared.images),
and it knows nothing about SQL. Weights are stored as safetensors (no pickle on
load); the architecture, input size and normalization go into the model's options.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import closing
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from thanosql_pg.algorithms import image_classification as spec
from thanosql_pg.algorithms import registry
from thanosql_pg.algorithms.contract import Base, Reader, Row, RowSource, StoredModel, Trained, check_format
from thanosql_pg.algorithms.shared import devices, training, weights
from thanosql_pg.algorithms.shared.images import (
    FLIP_MIN_SIZE,
    Decoded,
    ImageInput,
    decode_rows,
    pretrained_normalization,
)
from thanosql_pg.algorithms.shared.limits import check_batch_pixels
from thanosql_pg.algorithms.shared.metrics import classification_metrics
from thanosql_pg.errors import DataError, InvalidOption, InvalidParameterValue

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
                opts: Mapping[str, Any]) -> tuple[list[str | None], list[str]]:
        """Labels for ``rows`` (None for skipped rows) and a message per skipped row."""
        check_batch_pixels(len(rows), self.input_size)
        skip = opts.get("on_error") == "skip"
        work = partial(decode_rows, reader=reader, size=self.input_size, index=None, skip=skip)
        dec = devices.decode_now(rows, work, Decoded.combine)
        out: list[str | None] = [None] * len(rows)
        arr = dec.array()
        if arr is not None:
            for pos, k in zip(dec.positions, self._classify(arr), strict=True):
                out[pos] = self.labels[k]
        return out, [e.message for _, e in dec.errors]

    def evaluate(self, source: RowSource, opts: Mapping[str, Any]) -> dict[str, float]:
        check_batch_pixels(opts["batch_size"], self.input_size)
        skip = opts.get("on_error") == "skip"
        work = partial(decode_rows, reader=source.reader, size=self.input_size, index=None, skip=skip)
        confusion: Counter[tuple[str, str]] = Counter()
        skipped = devices.Skipped(source.skipped)
        with closing(devices.evaluation_batches(source, opts["batch_size"], work, Decoded.combine,
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
        metrics = classification_metrics(confusion)
        if skip:
            metrics["Skipped"] = float(skipped.count)
        return metrics


# --- loading stored models --------------------------------------------------------------------
def load(record: StoredModel, payload: bytes, device: str) -> ImageClassifier:
    check_format(record, FORMAT)
    opts = record.options
    arch = weights.stored_arch(record)
    registry.check_stored(spec.FAMILY, record.name, opts, ("input_size",))
    labels = list(record.labels or [])
    net = weights.timm_load(arch, len(labels), weights.state_dict(payload))
    inputs = ImageInput(int(opts["input_size"]), opts["mean"], opts["std"], devices.torch_device(device))
    return ImageClassifier(net, arch=arch, labels=labels, inputs=inputs)


# --- training ---------------------------------------------------------------------------------
def train(algo: registry.Algorithm, opts: dict[str, Any], source: RowSource,
          base: Base | None = None) -> Trained:
    """BUILD (base None) or FIT (base: a loaded model whose .model is an ImageClassifier)."""
    device = devices.torch_device(opts["device"])
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
                f'label column "{opts["label_col"]}" holds a single class ({data_labels[0]}); '
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
                algo.params["timm_name"], len(labels), base_model=opts.get("base_model"),
                pretrained=opts["pretrained"], resolve=source.reader.resolve_path, dirs=source.weights_dirs)
            weights.check_new_arch(arch, origin)
            mean, std = pretrained_normalization(net)
        model = ImageClassifier(net, arch=arch, labels=labels,
                                inputs=ImageInput(opts["input_size"], mean, std, device))
        metrics = _fit(model, algo, opts, source)
    return Trained(
        payload=weights.state_payload(model.net), format=FORMAT, labels=labels, label_type=label_type,
        options={"arch": arch, **model.inputs.options(), "weights": origin}, metrics=metrics,
    )


def _fit(model: ImageClassifier, algo: registry.Algorithm, opts: dict[str, Any],
         source: RowSource) -> dict[str, float]:
    net, device = model.net, model.device
    bs, epochs, size = opts["batch_size"], opts["epochs"], model.input_size
    skip = opts.get("on_error") == "skip"
    per_epoch = training.steps_per_epoch(source.count - source.skipped, bs)
    stepper = training.Stepper(net, learning_rate=opts["learning_rate"], weight_decay=WEIGHT_DECAY,
                               total_steps=epochs * per_epoch, warmup_fraction=WARMUP_FRACTION, device=device)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    index = {lab: i for i, lab in enumerate(model.labels)}
    flip = size >= FLIP_MIN_SIZE
    progress = training.Progress(source.notice, source.progress_interval, label=f"{algo.name} training",
                                 epochs=epochs, steps_per_epoch=per_epoch)
    skipped = devices.Skipped(source.skipped)

    def batches(epoch: int) -> Any:
        net.train()
        work = partial(decode_rows, reader=source.reader, size=size, index=index, skip=skip, seed=epoch + 1,
                       flip=flip)
        rows = (devices.numbered(b) for b in source.batches(bs, shuffle=True, seed=epoch))
        return devices.prefetch(rows, work, Decoded.combine, depth=2 if device.type == "cuda" else 1)

    def step(epoch: int, dec: Decoded) -> tuple[Any, Any, int] | None:
        if epoch == 0:
            skipped.add(dec.errors)
        arr = dec.array()
        if arr is None or (len(arr) < 2 and has_bn):
            return None  # BatchNorm cannot train on a single image
        x = model.inputs.tensor(arr)
        y = torch.as_tensor(dec.targets, device=device)
        with devices.autocast(device):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        stepper.step(loss)
        return loss, (logits.detach().argmax(1) == y).sum(), len(y)

    done = training.run_epochs(source, progress, device, epochs, batches, step)
    if done.items == 0:
        raise DataError("no readable images to train on", hint="Every row was skipped as unreadable.")
    stepper.release()
    net.eval()
    rate = progress.images_per_second()
    skipped.notice(source.notice, f"{algo.name} training")
    source.notice(f"{algo.name} training done: {epochs} epochs, loss {done.loss:.4f}, accuracy"
                  f" {done.score:.4f}, {rate:.1f} images/s")
    metrics = {"train_loss": round(done.loss, 6), "train_accuracy": round(done.score, 6),
               "images_per_second": round(rate, 2)}
    if skip:
        metrics["skipped_rows"] = float(skipped.count)
    return metrics
