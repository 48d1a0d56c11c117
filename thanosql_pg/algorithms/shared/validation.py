"""Retrieval scored on a validation pass: what embedding families (SimCLR, CLIP) track per
epoch with validation_split, so that early stopping keeps the epoch that ranks best.

A contrastive loss falls for as long as the views of each image move apart from the
others, also after its nearest neighbours stop sharing their labels: the loss does not
say when a model ranks best, retrieval does. Each judge takes the steps' ``keep``s
(``training.Step``) of one validation pass and scores them as a whole (training.Judge).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

from thanosql_pg.algorithms.shared.metrics import retrieval_precision
from thanosql_pg.algorithms.shared.training import Metric

K = 10  # precision@K among the held-out images, as EVALUATE's default top_k

# With a label column: how often an image's K nearest held-out images share its label,
# as EVALUATE ... top_k=10 scores a model afterwards.
LABEL_PRECISION = Metric(f"precision_at_{K}", f"precision@{K}", higher_is_better=True)
# Without labels: how often a random view of a held-out image has that image's own plain
# view as its nearest one among all the plain views (the instance is found again).
VIEW_PRECISION = Metric("view_precision_at_1", "view precision@1", higher_is_better=True)
# CLIP: how often an image's nearest caption, among the distinct held-out captions, is its own.
TEXT_PRECISION = Metric("text_precision_at_1", "image-to-text precision@1", higher_is_better=True)


def _stack(parts: Sequence[Any]) -> Any:
    import numpy as np

    return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])


def label_precision(kept: list[tuple[Any, Sequence[Hashable | None]]]) -> float:
    """``kept``: (embeddings, their labels) per batch; leave-one-out precision@K among the
    labelled ones (NaN with fewer than two)."""
    vectors = [v for emb, labels in kept for v, lab in zip(emb, labels, strict=True) if lab is not None]
    labels = [lab for _, ls in kept for lab in ls if lab is not None]
    if len(labels) < 2:
        return math.nan
    return retrieval_precision(_stack([vectors]), labels, (K,))[K]


def view_precision(kept: list[tuple[Any, Any]]) -> float:
    """``kept``: (a random view's embeddings, the plain view's) per batch: each random view
    queries all the plain views, and finds its own image first or not."""
    if not kept:
        return math.nan
    views, plain = _stack([v for v, _ in kept]), _stack([p for _, p in kept])
    if len(plain) < 2:
        return math.nan
    ids = list(range(len(plain)))
    return retrieval_precision(views, ids, (1,), gallery=plain, gallery_labels=ids)[1]


def text_precision(kept: list[tuple[Any, Sequence[Hashable], Any, Sequence[Hashable]]]) -> float:
    """``kept``: (image embeddings, each image's caption key, the batch's distinct caption
    embeddings, their keys) per batch: each image queries every distinct caption of the
    pass (a caption in several batches counts once)."""
    captions: dict[Hashable, Any] = {}
    for _, _, txt, keys in kept:
        for key, vector in zip(keys, txt, strict=True):
            captions.setdefault(key, vector)
    if not kept or len(captions) < 2:
        return math.nan
    images = _stack([img for img, _, _, _ in kept])
    labels = [key for _, keys, _, _ in kept for key in keys]
    keys = list(captions)
    return retrieval_precision(images, labels, (1,), gallery=_stack([[captions[k] for k in keys]]),
                               gallery_labels=keys)[1]
