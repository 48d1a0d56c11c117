"""WER and CER come from rapidfuzz's Levenshtein distance (shared.metrics.edit_distance): the
same distances as the textbook dynamic programme, on words, characters (Korean syllables and
jamo included) and token ids."""

from __future__ import annotations

import random

import pytest

from thanosql_pg.algorithms.shared import metrics


def reference_distance(a: list[object] | str, b: list[object] | str) -> int:
    rows = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            substitute = rows[i - 1][j - 1] + (a[i - 1] != b[j - 1])
            rows[i][j] = min(rows[i - 1][j] + 1, rows[i][j - 1] + 1, substitute)
    return rows[-1][-1]


@pytest.mark.parametrize("seed", range(20))
def test_edit_distance_matches_the_textbook(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = ["a", "b", "c", " ", "한", "국", "ㅎ", "ㅏ"]
    a = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
    b = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
    assert metrics.edit_distance(a, b) == reference_distance(a, b)
    assert metrics.edit_distance(a.split(), b.split()) == reference_distance(a.split(), b.split())
    ids_a = [rng.randint(0, 5) for _ in range(rng.randint(0, 40))]
    ids_b = [rng.randint(0, 5) for _ in range(rng.randint(0, 40))]
    assert metrics.edit_distance(ids_a, ids_b) == reference_distance(ids_a, ids_b)


def test_error_rates_are_totals_over_totals() -> None:
    rates = metrics.ErrorRates()
    rates.add("the cat sat", "the cat sat")
    rates.add("a b c d", "a x c")
    assert rates.word_edits == 2 and rates.words == 7
    assert rates.wer() == pytest.approx(2 / 7)
    assert rates.char_edits == reference_distance("a b c d", "a x c")
    assert metrics.ErrorRates.of("", "extra").wer() == 1.0  # no reference words, some hypothesis
