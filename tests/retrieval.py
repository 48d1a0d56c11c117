"""Leave-one-out retrieval precision computed here, independently of the extension
(shared.metrics), to check EVALUATE's figures against embeddings read back from SQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def precision_at(x: np.ndarray, labels: Sequence[Any], k: int) -> float:
    """Mean share of each row's k nearest other rows (cosine; rows are unit vectors) that
    have its label."""
    labels = np.asarray(labels)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    ranked = np.argsort(-sim, axis=1)
    return float(np.mean([(labels[ranked[i, :k]] == labels[i]).mean() for i in range(len(x))]))
