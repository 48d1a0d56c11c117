"""Metrics that EVALUATE reports and training prints: classification (accuracy, macro
precision/recall/F1), speech (edit distance, WER, CER), retrieval (precision@k).
Pure Python."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any


def classification_metrics(confusion: Counter[tuple[str, str]]) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 over the labels that occur as truth
    or prediction (scikit-learn's defaults, zero_division=0)."""
    total = sum(confusion.values())
    labels = sorted({t for t, _ in confusion} | {p for _, p in confusion})
    tp = Counter({t: n for (t, p), n in confusion.items() if t == p})
    true_n: Counter[str] = Counter()
    pred_n: Counter[str] = Counter()
    for (t, p), n in confusion.items():
        true_n[t] += n
        pred_n[p] += n
    precision = [tp[c] / pred_n[c] if pred_n[c] else 0.0 for c in labels]
    recall = [tp[c] / true_n[c] if true_n[c] else 0.0 for c in labels]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall, strict=True)]
    k = len(labels)
    return {
        "Accuracy": sum(tp.values()) / total,
        "Precision": sum(precision) / k,
        "Recall": sum(recall) / k,
        "F1": sum(f1) / k,
    }


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


@dataclass
class ErrorRates:
    """Corpus-level WER and CER: total edits over total reference length (as
    jiwer computes them); CER counts spaces as characters."""

    word_edits: int = 0
    words: int = 0
    char_edits: int = 0
    chars: int = 0

    def add(self, reference: str, hypothesis: str) -> None:
        ref_words, hyp_words = reference.split(), hypothesis.split()
        self.word_edits += edit_distance(ref_words, hyp_words)
        self.words += len(ref_words)
        self.add_chars(reference, hypothesis)

    def add_chars(self, reference: Sequence[Any], hypothesis: Sequence[Any]) -> None:
        """Character (or token) edits only."""
        self.char_edits += edit_distance(reference, hypothesis)
        self.chars += len(reference)

    @staticmethod
    def _rate(edits: int, total: int) -> float:
        return edits / total if total else float(edits > 0)

    def wer(self) -> float:
        return self._rate(self.word_edits, self.words)

    def cer(self) -> float:
        return self._rate(self.char_edits, self.chars)


def precision_at_k(ranked: Sequence[Hashable], relevant: Hashable, k: int) -> float:
    """The share of the first ``k`` results (labels, best first) that are ``relevant``."""
    top = list(ranked[:k])
    return sum(r == relevant for r in top) / k if k > 0 else 0.0
