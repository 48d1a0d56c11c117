"""WER and CER on long transcripts: shared.metrics.edit_distance (rapidfuzz's Levenshtein, in C)
against the pure-Python dynamic programme it replaced, side by side in one run, on the same
texts; the two must agree on every distance.

The transcripts are random words from a fixed vocabulary (seeded), the hypothesis a noisy copy
of the reference (words dropped, inserted and substituted), as a long EVALUATE utterance looks.
Time: seconds per (reference, hypothesis) pair for WER (words) plus CER (characters).

    .venv/bin/python bench/wer_speed.py [--words 400] [--pairs 3] [--repeats 5]
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

import common

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from thanosql_pg.algorithms.shared import metrics


def python_distance(a: list[str] | str, b: list[str] | str) -> int:
    """The loop shared.metrics used before: one row of the DP table at a time."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def transcripts(words: int, pairs: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    vocab = ["the", "digit", "seven", "handwritten", "speech", "model", "database", "query", "table",
             "image", "search", "vector", "index", "training", "epoch", "a", "of", "in", "and", "to"]
    out = []
    for _ in range(pairs):
        ref = [rng.choice(vocab) for _ in range(words)]
        hyp = []
        for w in ref:
            r = rng.random()
            if r < 0.05:
                continue  # dropped
            hyp.append(rng.choice(vocab) if r < 0.15 else w)  # substituted
            if r > 0.97:
                hyp.append(rng.choice(vocab))  # inserted
        out.append((" ".join(ref), " ".join(hyp)))
    return out


def rates(distance: object, pairs: list[tuple[str, str]]) -> tuple[float, list[tuple[int, int]]]:
    """Seconds per pair, and the (word, char) distances."""
    assert callable(distance)
    start = time.perf_counter()
    found = [(distance(r.split(), h.split()), distance(r, h)) for r, h in pairs]
    return (time.perf_counter() - start) / len(pairs), found


def main() -> int:
    p = common.parser(__doc__, "wer_speed")
    p.add_argument("--words", type=int, default=400, help="words per reference transcript")
    p.add_argument("--pairs", type=int, default=3, help="transcript pairs per run")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    pairs = transcripts(args.words, args.pairs)
    runs: dict[str, list[float]] = {"project": [], "baseline": []}
    for r in range(args.repeats):
        fast, fast_d = rates(metrics.edit_distance, pairs)
        slow, slow_d = rates(python_distance, pairs)
        assert fast_d == slow_d, "rapidfuzz and the Python loop disagree"
        runs["project"].append(fast)
        runs["baseline"].append(slow)
        print(f"run {r + 1}: rapidfuzz {fast * 1000:.2f} ms/pair, Python loop {slow * 1000:.1f} ms/pair",
              flush=True)
    chars = statistics.median(len(r) for r, _ in pairs)
    summary = {"rapidfuzz_seconds_per_pair": statistics.median(runs["project"]),
               "python_seconds_per_pair": statistics.median(runs["baseline"]),
               "speedup": statistics.median(runs["baseline"]) / statistics.median(runs["project"]),
               "words_per_reference": args.words, "chars_per_reference": chars,
               "distances_identical": True}
    common.save(args, "wer_speed", runs, summary, machine_info=common.machine(**common.run_context()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
