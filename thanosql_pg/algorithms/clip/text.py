"""Tokenizers for the CLIP family: text → token ids of at most the model's context length.

Two kinds, both rebuilt from stored data alone (no download, no pickle):

- ``bytes``: the from-scratch models' tokenizer. UTF-8 bytes of the lower-cased,
  whitespace-collapsed text, between BOS and EOS. It needs no vocabulary, so it
  can be built before any text is seen, and a word never seen in training (a
  typo, a new label) still embeds as the bytes it shares with known words,
  instead of collapsing into one unknown-word token.
- ``tokenizers``: a published checkpoint's own tokenizer (CLIP's BPE, or any
  tokenizer.json), kept as the Hugging Face ``tokenizers`` JSON and run by that
  Rust library: parsing it executes nothing.

Both report which texts were cut to the context length, so that the caller can say
so (a cut query silently matches on its beginning only).
"""

from __future__ import annotations

import json
import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thanosql_pg.errors import DataCorrupted, DataError

MAX_VOCAB = 1_000_000  # larger than any published text vocabulary: a bigger claim is corrupt
MAX_TOKENIZER_JSON = 64 * 1024 * 1024  # CLIP's tokenizer.json is 2 MB; multilingual ones 20 MB

_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Encoded:
    """A batch of token id sequences (unpadded) and the positions of the texts that were cut."""

    ids: list[list[int]]
    truncated: list[int]


def check_texts(texts: Sequence[Any]) -> None:
    """Every text must be a non-blank string: an empty query has no meaning to embed
    (it would embed as BOS/EOS alone, close to nothing in particular)."""
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"text {i + 1} is {type(t).__name__}, not a string",
                            hint="Pass text values (NULL rows must be filtered out before embedding).")
        if not t.strip():
            raise DataError(f"text {i + 1} is empty",
                            hint="Search with a non-empty text, and give every image a non-empty caption.")


class ByteTokenizer:
    """UTF-8 bytes 0-255 are ids 0-255; BOS, EOS and PAD follow.

    EOS is deliberately not 2: transformers' CLIPTextModel treats eos_token_id == 2
    as a legacy config and pools at the highest id instead (harmless here, since
    this family pools itself, but the stored config then reads right too).
    """

    kind = "bytes"
    bos_id = 256
    eos_id = 257
    pad_id = 258
    vocab_size = 259

    @staticmethod
    def normalize(text: str) -> str:
        # NFC: "é" typed as one code point or as e + accent gives the same bytes;
        # lower-case and collapsed spaces: "A  Seven" and "a seven" are one caption
        return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip().lower()

    def encode(self, texts: Sequence[str], context: int) -> Encoded:
        check_texts(texts)
        room = context - 2  # BOS and EOS always stay: the model pools at the last token
        ids, cut = [], []
        for i, t in enumerate(texts):
            b = self.normalize(t).encode("utf-8")
            if len(b) > room:
                cut.append(i)
                b = b[:room]
            ids.append([self.bos_id, *b, self.eos_id])
        return Encoded(ids, cut)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def data(self) -> str | None:
        return None


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (the Rust core of a transformers fast tokenizer),
    with its own normalizer and post-processor: for CLIP's BPE that adds
    <|startoftext|> ... <|endoftext|> and lower-cases, as the published model expects."""

    kind = "tokenizers"

    def __init__(self, tokenizer_json: str, pad_id: int, bos_id: int | None = None,
                 eos_id: int | None = None) -> None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(tokenizer_json)
        tok.no_padding()  # padding is done here, per batch, to the longest text
        tok.no_truncation()
        self._json = tokenizer_json
        self._tok = tok
        self._lock = threading.Lock()  # truncation is the tokenizer's state, set per call
        self.pad_id = pad_id
        self.bos_id = bos_id  # the tokenizer's own ids, for the text config; its post-processor adds them
        self.eos_id = eos_id
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: Sequence[str], context: int) -> Encoded:
        check_texts(texts)
        # Truncation inside the tokenizer cuts content and keeps the special tokens its
        # post-processor adds (CLIP's EOS, where the text model pools); "overflowing"
        # tells whether anything was cut.
        with self._lock:
            self._tok.enable_truncation(max_length=context)
            try:
                encs = self._tok.encode_batch(list(texts))
            finally:
                self._tok.no_truncation()
        ids = [list(e.ids) for e in encs]
        cut = [i for i, e in enumerate(encs) if e.overflowing]
        for i, seq in enumerate(ids):
            if not seq:  # a normalizer that removes everything: nothing left to embed
                raise DataError(f"text {i + 1} has no tokens the model knows",
                                hint="Search with words, not only symbols or control characters.")
        return Encoded(ids, cut)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}

    def data(self) -> str | None:
        return self._json


Tokenizer = ByteTokenizer | HFTokenizer


def from_transformers(tok: Any) -> HFTokenizer:
    """The Rust tokenizer of a loaded transformers tokenizer (a fast one: every
    CLIP checkpoint since transformers 4.x has tokenizer.json, and transformers 5
    converts the others when loading)."""
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None:
        raise DataError(f"the checkpoint's tokenizer ({type(tok).__name__}) has no tokenizers backend",
                        hint="Save the checkpoint with a fast tokenizer (tokenizer.json).")
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    if pad is None:  # any id will do: padded positions are masked out and never pooled
        pad = eos if eos is not None else 0
    return HFTokenizer(backend.to_str(), int(pad), None if bos is None else int(bos),
                       None if eos is None else int(eos))


def restore(spec: Any, data: str | None, vocab_size: int) -> Tokenizer:
    """A stored tokenizer, its spec (options) and data (payload metadata) checked as
    untrusted input: every id it can produce must be a row of the token embedding."""
    if not isinstance(spec, dict) or spec.get("kind") not in (ByteTokenizer.kind, HFTokenizer.kind):
        raise DataCorrupted(f"unknown tokenizer {spec!r}")
    if spec["kind"] == ByteTokenizer.kind:
        tok: Tokenizer = ByteTokenizer()
    else:
        pad = _token_id(spec, "pad_id", vocab_size)
        bos = _optional_id(spec, "bos_id", vocab_size)
        eos = _optional_id(spec, "eos_id", vocab_size)
        if not isinstance(data, str) or not data or len(data) > MAX_TOKENIZER_JSON:
            raise DataCorrupted("the model's tokenizer data is missing or too large")
        try:
            json.loads(data)  # a clear error for a damaged document before the Rust parser's
            tok = HFTokenizer(data, pad, bos, eos)
        except Exception as e:  # json.JSONDecodeError, tokenizers' Exception
            raise DataCorrupted(f"the model's tokenizer cannot be read: {e}") from None
    if not 0 < tok.vocab_size <= min(vocab_size, MAX_VOCAB):
        raise DataCorrupted(f"the tokenizer has {tok.vocab_size} tokens but the text model embeds"
                            f" {vocab_size}")
    return tok


def _token_id(spec: dict[str, Any], key: str, vocab_size: int) -> int:
    """A stored tokenizer's special token id, checked: a row of the token embedding."""
    v = spec.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < vocab_size:
        raise DataCorrupted(f"tokenizer {key} {v!r} is outside the vocabulary (0..{vocab_size - 1})")
    return v


def _optional_id(spec: dict[str, Any], key: str, vocab_size: int) -> int | None:
    return None if spec.get(key) is None else _token_id(spec, key, vocab_size)
