"""Metrics that EVALUATE reports and training prints: classification (accuracy, macro
precision/recall/F1, per class, the confusion matrix), speech (edit distance, WER, CER,
per utterance), retrieval (precision@k). Each is computed here once, for every family;
the rows of EVALUATE's reports (option ``report``, ``registry.REPORTS``) are made here
too. Pure Python (retrieval imports numpy when it runs)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from thanosql_pg.algorithms.contract import Evaluation
from thanosql_pg.errors import DataError, FeatureNotAvailable

Confusion = Counter[tuple[str, str]]  # (actual, predicted) -> rows


# --- classification -------------------------------------------------------------------------------
def _label_key(label: str) -> tuple[int, float, str]:
    """Numbers in numeric order, then text."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def class_order(confusion: Confusion, order: Iterable[Any] = ()) -> list[str]:
    """The labels that occur as truth or prediction: those of ``order`` (a model's label
    set) first, in its order, then the others (numbers in numeric order, then text)."""
    seen = {t for t, _ in confusion} | {p for _, p in confusion}
    first = [str(c) for c in dict.fromkeys(str(c) for c in order) if str(c) in seen]
    return first + sorted(seen - set(first), key=_label_key)


def class_scores(confusion: Confusion,
                 order: Iterable[Any] = ()) -> list[tuple[str, float, float, float, int]]:
    """(class, precision, recall, F1, support) of each label that occurs as truth or
    prediction, as scikit-learn's precision_recall_fscore_support computes them
    (zero_division=0); ``order`` as in ``class_order``."""
    tp: Counter[str] = Counter()
    true_n: Counter[str] = Counter()
    pred_n: Counter[str] = Counter()
    for (t, p), n in confusion.items():
        true_n[t] += n
        pred_n[p] += n
        if t == p:
            tp[t] += n
    out = []
    for c in class_order(confusion, order):
        precision = tp[c] / pred_n[c] if pred_n[c] else 0.0
        recall = tp[c] / true_n[c] if true_n[c] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append((c, precision, recall, f1, true_n[c]))
    return out


def classification_metrics(confusion: Confusion) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 over the labels that occur as truth
    or prediction (scikit-learn's defaults, zero_division=0)."""
    total = sum(confusion.values())
    scores = class_scores(confusion)
    k = len(scores)
    return {
        "Accuracy": sum(n for (t, p), n in confusion.items() if t == p) / total,
        "Precision": sum(s[1] for s in scores) / k,
        "Recall": sum(s[2] for s in scores) / k,
        "F1": sum(s[3] for s in scores) / k,
    }


# the averages report='per_class' adds after the classes, named as in scikit-learn's
# classification_report
MACRO_AVG = "macro avg"
WEIGHTED_AVG = "weighted avg"


def per_class_rows(confusion: Confusion,
                   order: Iterable[Any] = ()) -> list[tuple[str, float, float, float, int]]:
    """report='per_class': ``class_scores``, then their macro average (the summary's
    Precision, Recall and F1) and their average weighted by support; both averages'
    support is the number of rows."""
    scores = class_scores(confusion, order)
    total = sum(confusion.values())
    k = len(scores)
    macro = tuple(sum(s[i] for s in scores) / k for i in (1, 2, 3))
    weighted = tuple(sum(s[i] * s[4] for s in scores) / total for i in (1, 2, 3))
    return [*scores, (MACRO_AVG, *macro, total), (WEIGHTED_AVG, *weighted, total)]


def confusion_rows(confusion: Confusion, order: Iterable[Any] = ()) -> list[tuple[str, str, int]]:
    """report='confusion_matrix': (actual, predicted, count) for each pair that occurs
    (a pair missing is a 0), by actual then predicted class (``class_order``)."""
    rank = {c: i for i, c in enumerate(class_order(confusion, order))}
    return sorted(((t, p, n) for (t, p), n in confusion.items() if n),
                  key=lambda r: (rank[r[0]], rank[r[1]]))


def classification_result(confusion: Confusion, report: str, order: Iterable[Any] = (),
                          extra: Mapping[str, float] | None = None) -> dict[str, float] | Evaluation:
    """What a classifier's ``evaluate`` returns for ``report`` ('summary', 'per_class' or
    'confusion_matrix'): the summary metrics (plus ``extra``, say rows skipped), or the
    report's rows with them. ``order``: the model's label set, which orders the classes."""
    metrics = {**classification_metrics(confusion), **(extra or {})}
    if report == "summary":
        return metrics
    if report == "per_class":
        return Evaluation(report, list(per_class_rows(confusion, order)), metrics)
    if report == "confusion_matrix":
        return Evaluation(report, list(confusion_rows(confusion, order)), metrics)
    raise _no_report(report, "classification")


def _no_report(report: str, what: str) -> FeatureNotAvailable:
    return FeatureNotAvailable(f"{what} models have no EVALUATE report '{report}'")


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1) of two strings
    or sequences of hashable items (words, token ids): rapidfuzz's, in C and bit-parallel,
    where a Python double loop took seconds on long transcripts (bench/wer_speed.py)."""
    from rapidfuzz.distance import Levenshtein

    return int(Levenshtein.distance(a, b))


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

    @classmethod
    def of(cls, reference: str, hypothesis: str) -> ErrorRates:
        """One utterance's edits."""
        one = cls()
        one.add(reference, hypothesis)
        return one

    def merge(self, other: ErrorRates) -> None:
        """Add ``other``'s edits and lengths (the corpus rates are totals over totals)."""
        self.word_edits += other.word_edits
        self.words += other.words
        self.char_edits += other.char_edits
        self.chars += other.chars


@dataclass(frozen=True)
class Utterance:
    """One evaluated row of a transcribing model: its 1-based position in the query's
    rows, its input (a path; None for the content itself), reference and hypothesis."""

    rn: int
    input: str | None
    reference: str
    hypothesis: str
    rates: ErrorRates


class UtteranceScores:
    """EVALUATE of a transcribing model (speech recognition; OCR would be one): the corpus
    WER and CER, and for report='per_row' each utterance's, the worst first."""

    def __init__(self, report: str) -> None:
        if report not in ("summary", "per_row"):
            raise _no_report(report, "transcription")
        self.report = report
        self.rates = ErrorRates()
        self.rows: list[Utterance] = []

    def add(self, rn: int, value: Any, reference: str, hypothesis: str) -> None:
        one = ErrorRates.of(reference, hypothesis)
        self.rates.merge(one)
        if self.report == "per_row":
            self.rows.append(Utterance(rn, value if isinstance(value, str) else None, reference, hypothesis,
                                       one))

    def result(self, extra: Mapping[str, float] | None = None) -> dict[str, float] | Evaluation:
        metrics = {"WER": self.rates.wer(), "CER": self.rates.cer(), **(extra or {})}
        if self.report == "summary":
            return metrics
        return Evaluation(self.report, per_row_rows(self.rows), metrics)


def per_row_rows(utterances: Iterable[Utterance]) -> list[tuple[int, str | None, str, str, float, float]]:
    """report='per_row': (row_number, input, reference, hypothesis, wer, cer), the worst
    first (highest WER, then CER, then the first row)."""
    rows = [(u.rn, u.input, u.reference, u.hypothesis, u.rates.wer(), u.rates.cer()) for u in utterances]
    return sorted(rows, key=lambda r: (-r[4], -r[5], r[0]))


# --- retrieval --------------------------------------------------------------------------------------
# similarities computed at once: a block of queries against the whole gallery (64 MiB of float32)
_BLOCK_CELLS = 1 << 24


def retrieval_precision(queries: Any, query_labels: Sequence[Hashable], ks: Iterable[int], *,
                        gallery: Any = None, gallery_labels: Sequence[Hashable] | None = None,
                        check: Callable[[], None] | None = None) -> dict[int, float]:
    """``retrieval_scores``' precision@k for each k of ``ks``."""
    return retrieval_scores(queries, query_labels, ks, gallery=gallery, gallery_labels=gallery_labels,
                            check=check).precision


# The similarities of the neighbours retrieved are counted in bins of this width over [-1, 1]:
# their medians to 0.001, in memory that does not grow with the rows.
_SIMILARITY_BINS = 2000


@dataclass
class Retrieval:
    """Nearest-neighbour retrieval's scores: precision@k for each k, and the spread of the
    scores: the median cosine similarity of the retrieved neighbours (each query's top
    max(k)) that share the query's label, and of those that do not (None: no such
    neighbour). Well-separated embeddings give a clearly lower median to other labels."""

    precision: dict[int, float]
    same_label_similarity: float | None
    other_label_similarity: float | None


def _median_of_bins(counts: Any) -> float | None:
    import numpy as np

    total = int(counts.sum())
    if total == 0:
        return None
    at = int(np.searchsorted(np.cumsum(counts), (total + 1) / 2))
    return round(-1.0 + (at + 0.5) * 2.0 / _SIMILARITY_BINS, 4)


def retrieval_scores(queries: Any, query_labels: Sequence[Hashable], ks: Iterable[int], *,
                     gallery: Any = None, gallery_labels: Sequence[Hashable] | None = None,
                     check: Callable[[], None] | None = None) -> Retrieval:
    """Mean precision@k of nearest-neighbour retrieval by cosine similarity, for each k
    of ``ks``: for each query, the share of its k most similar gallery items whose label
    is the query's (as SEARCH IMAGE would rank them), averaged over the queries.

    ``queries``: an (n, d) array of embeddings (normalized here). ``gallery`` None: the
    queries themselves, leave-one-out (no query retrieves itself), which is EVALUATE of
    an embedding model on labelled rows; else an (m, d) array with ``gallery_labels``
    (CLIP: images as queries, texts as the gallery, say). A k beyond the gallery counts
    every candidate. ``check`` is called between blocks of queries (a pending cancel)."""
    import numpy as np

    q = _unit(np.asarray(queries, dtype=np.float32))
    same = gallery is None
    g = q if same else _unit(np.asarray(gallery, dtype=np.float32))
    g_labels = query_labels if same else gallery_labels
    if g_labels is None or len(g_labels) != len(g) or len(query_labels) != len(q):
        raise ValueError("retrieval_precision: one label per embedding")
    candidates = len(g) - (1 if same else 0)
    if len(q) == 0 or candidates < 1:
        raise DataError("retrieval precision needs at least two labelled rows",
                        hint="Evaluate on more rows.")
    ids: dict[Hashable, int] = {}
    q_ids = np.array([ids.setdefault(label, len(ids)) for label in query_labels])
    g_ids = q_ids if same else np.array([ids.setdefault(label, len(ids)) for label in g_labels])
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError("retrieval_precision: k must be positive")
    depth = min(ks[-1], candidates)
    sums = dict.fromkeys(ks, 0.0)
    same_bins = np.zeros(_SIMILARITY_BINS, dtype=np.int64)
    other_bins = np.zeros(_SIMILARITY_BINS, dtype=np.int64)
    step = max(1, _BLOCK_CELLS // len(g))
    for start in range(0, len(q), step):
        if check is not None:
            check()
        sim = q[start:start + step] @ g.T
        rows = np.arange(sim.shape[0])
        if same:
            sim[rows, rows + start] = -np.inf  # a query is not its own result
        top = np.argpartition(-sim, depth - 1, axis=1)[:, :depth] if depth < sim.shape[1] else \
            np.broadcast_to(np.arange(sim.shape[1]), sim.shape).copy()
        best_first = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, best_first, axis=1)[:, :depth]
        hits = g_ids[top] == q_ids[start:start + step, None]
        for k in ks:
            kk = min(k, candidates)
            sums[k] += float(hits[:, :kk].sum(axis=1).sum()) / kk
        scores = np.clip(np.take_along_axis(sim, top, axis=1), -1.0, 1.0)
        for bins, chosen in ((same_bins, hits), (other_bins, ~hits)):
            bins += np.histogram(scores[chosen], bins=_SIMILARITY_BINS, range=(-1.0, 1.0))[0]
    return Retrieval({k: sums[k] / len(q) for k in ks}, _median_of_bins(same_bins),
                     _median_of_bins(other_bins))


def _unit(x: Any) -> Any:
    import numpy as np

    if x.ndim != 2:
        raise ValueError("retrieval_precision: embeddings are an (n, d) array")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def retrieval_result(queries: Any, labels: Sequence[Hashable], report: str, top_k: int, *,
                     check: Callable[[], None] | None = None,
                     extra: Mapping[str, float] | None = None) -> dict[str, float]:
    """What an embedding model's ``evaluate`` returns on labelled rows: Precision@1 and
    Precision@top_k (leave-one-out retrieval among the rows), and the spread of the scores:
    the median similarity of the top_k neighbours of the same label and of another label
    (each left out when no neighbour is of that kind), as summary metrics."""
    if report != "summary":
        raise _no_report(report, "embedding")
    scores = retrieval_scores(queries, labels, (1, top_k), check=check)
    out = {f"Precision@{k}": v for k, v in scores.precision.items()}
    for name, value in ((f"Median similarity@{top_k}, same label", scores.same_label_similarity),
                        (f"Median similarity@{top_k}, other label", scores.other_label_similarity)):
        if value is not None:
            out[name] = value
    return {**out, **(extra or {})}
