"""Transcripts: the normalization applied identically to training texts and to
EVALUATE's references (stored with the model), and the CTC vocabulary. Pure Python.

A base checkpoint with a CTC tokenizer keeps its vocabulary (extended by BUILD when
the training texts hold characters it lacks); otherwise the vocabulary is built
from the training texts, one token per character, with Hangul syllables decomposed
into conjoining jamo (67 symbols instead of 11,172 syllables) and recomposed on output.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_WORD_SEPARATORS = frozenset("-‐‑‒–—―/\\|_~")
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'", "ʼ": "'", "´": "'"})


def _is_syllable(ch: str) -> bool:
    return 0xAC00 <= ord(ch) <= 0xD7A3


def _is_jamo(ch: str) -> bool:
    return 0x1100 <= ord(ch) <= 0x11FF


def _compatibility_jamo() -> dict[int, str]:
    """Conjoining jamo → the compatibility jamo of the same letter (U+1100 ᄀ and U+11A8 ᆨ → ㄱ).
    A jamo that does not compose into a syllable displays as a letter of its own this way."""
    table = {}
    for code in range(0x1100, 0x1200):
        try:
            letter = unicodedata.name(chr(code)).split(" ", 2)[2]  # "HANGUL CHOSEONG KIYEOK" → "KIYEOK"
            table[code] = unicodedata.lookup(f"HANGUL LETTER {letter}")
        except (KeyError, ValueError, IndexError):
            continue  # archaic jamo without a compatibility form
    return table


_COMPATIBILITY_JAMO = _compatibility_jamo()


@dataclass(frozen=True)
class TextNorm:
    """How transcripts are normalized, identically for training and evaluation.

    NFKC (full-width forms, compatibility characters); typographic apostrophes
    to ``'``; dashes, slashes and underscores to spaces; other punctuation
    dropped (an apostrophe only survives inside a word: "don't"); case mapped
    (``upper``/``lower``/``keep``); runs of white space to one space. With
    ``jamo`` Hangul syllables are decomposed into conjoining jamo.
    """

    case: str = "lower"
    jamo: bool = False

    def __call__(self, text: str) -> str:
        t = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
        out = []
        for ch in t:
            cat = unicodedata.category(ch)
            if ch in _WORD_SEPARATORS or cat[0] == "Z" or ch.isspace():
                out.append(" ")
            elif ch == "'" or cat[0] not in "PC":
                out.append(ch)
        t = "".join(out)
        if self.case == "upper":
            t = t.upper()
        elif self.case == "lower":
            t = t.lower()
        words = [w.strip("'") for w in t.split()]
        t = " ".join(w for w in words if w)
        if self.jamo:
            t = "".join(unicodedata.normalize("NFD", c) if _is_syllable(c) else c for c in t)
        return t

    def finish(self, text: str) -> str:
        """Model output (normalized form) → display text: jamo recomposed into
        syllables; a jamo left over (a vowel with no consonant before it, say)
        becomes its compatibility form, which displays on its own."""
        if not self.jamo:
            return text
        return unicodedata.normalize("NFC", text).translate(_COMPATIBILITY_JAMO)

    def display(self, text: str) -> str:
        """A reference transcript as EVALUATE compares it."""
        return self.finish(self(text))


def norm_for_vocab(tokens: Iterable[str]) -> TextNorm:
    """The normalization that fits a tokenizer's vocabulary: its letter case,
    and jamo when it spells Korean with jamo rather than syllables."""
    chars = [t for t in tokens if len(t) == 1]
    cased = [c for c in chars if c.lower() != c.upper()]
    upper = sum(c.isupper() for c in cased)
    lower = sum(c.islower() for c in cased)
    case = "keep" if upper and lower else "upper" if upper else "lower" if lower else "keep"
    jamo = any(_is_jamo(c) for c in chars) and not any(_is_syllable(c) for c in chars)
    return TextNorm(case=case, jamo=jamo)


class Vocab:
    """CTC output symbols: one character per token, ``blank`` the CTC blank
    (the tokenizer's pad token), ``delimiter`` the token for a space. Tokens
    longer than one character (<s>, </s>, <unk>, <pad>) never appear in text."""

    def __init__(self, tokens: Sequence[str], blank: int, delimiter: str = "|") -> None:
        self.tokens = list(tokens)
        self.blank = blank
        self.delimiter = delimiter
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self._space = self.index.get(delimiter)
        self._silent = {i for i, t in enumerate(self.tokens) if len(t) != 1 or i == blank}

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> Vocab:
        chars = sorted({c for t in texts for c in t if c != " "})
        return cls(["<pad>", "|", *chars], blank=0)

    def unknown(self, texts: Iterable[str]) -> list[str]:
        """Characters of (normalized) texts that have no token, in order of first use."""
        texts = list(texts)
        seen: dict[str, None] = {}
        for t in texts:
            for c in t:
                if c != " " and c not in self.index:
                    seen.setdefault(c, None)
        if self._space is None and any(" " in t for t in texts):
            seen.setdefault(" ", None)
        return list(seen)

    def extend(self, chars: Iterable[str]) -> Vocab:
        """This vocabulary plus ``chars`` (a space adds the word delimiter)."""
        new = dict.fromkeys(self.delimiter if c == " " else c for c in chars)
        return Vocab(self.tokens + [c for c in new if c not in self.index], self.blank, self.delimiter)

    def encode(self, text: str) -> list[int]:
        return [self._space if c == " " else self.index[c] for c in text]  # type: ignore[misc]  # _space: set in __post_init__

    def collapse(self, ids: Iterable[int]) -> list[int]:
        """Greedy CTC: merge repeats, drop blanks and special tokens."""
        out: list[int] = []
        prev = -1
        for k in ids:
            if k != prev and k not in self._silent:
                out.append(k)
            prev = k
        return out

    def decode(self, ids: Iterable[int]) -> str:
        text = "".join(" " if k == self._space else self.tokens[k] for k in self.collapse(ids))
        return " ".join(text.split())
