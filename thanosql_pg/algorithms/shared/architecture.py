"""Checks on a stored architecture: pure Python (the families' config modules use it).

A stored model's configuration is input like any other: its owner can rewrite the
catalog row and the payload, and the weights' shapes do not pin everything that sizes
the work. A Wav2Vec2's strides or a transformer's number of heads change the cost of
every forward pass (the quadratic attention over the frames a clip makes), not the
shape of one tensor. So each family checks every value that shapes or sizes its
network against bounds of its own, which admit every real checkpoint it supports,
before anything is built for it; a value outside is ``DataCorrupted`` (XX001) naming
it, without the model's name, which the family adds (``invalid_model``); for a
checkpoint folder that BUILD reads, the family makes it a 22000 instead.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

from thanosql_pg.errors import DataCorrupted

# A transformer splits its width into heads: the attention scores are heads x tokens^2
# per layer whatever the width, so many narrow heads cost memory and time that the
# weights do not show (their shapes do not depend on the count). Every published model
# has heads of 64 or more (CLIP, wav2vec2: 64; ViT-bigG: 104); a head narrower than
# this is refused, except in a network narrower than it (a test's 4-wide toy: one head).
MIN_HEAD_DIM = 16

# Per-channel normalization of images: a stored mean/std is three finite numbers of
# sensible size (a pixel is in [0, 1]), the std above 0.
MAX_NORMALIZATION = 1e3


def check_int(what: str, value: Any, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise DataCorrupted(f"{what} is {_show(value)}; expected an integer in {lo}..{hi}")
    return value


def check_ints(what: str, value: Any, lo: int, hi: int, *, length: tuple[int, int]) -> list[int]:
    """A list of ``length[0]``..``length[1]`` integers, each in ``lo``..``hi``."""
    if not isinstance(value, (list, tuple)) or not length[0] <= len(value) <= length[1]:
        raise DataCorrupted(f"{what} is {_show(value)}; expected a list of {length[0]} to {length[1]}"
                                " integers")
    return [check_int(f"{what}[{i}]", v, lo, hi) for i, v in enumerate(value)]


def check_number(what: str, value: Any, lo: float, hi: float, *, above: bool = False) -> float:
    """A finite number in ``lo``..``hi`` (above ``lo`` when ``above``)."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (lo < value if above else lo <= value) and value <= hi)
    if not ok:
        raise DataCorrupted(f"{what} is {_show(value)}; expected a number"
                                f" {'above' if above else 'from'} {lo} to {hi}")
    return float(value)


def check_bool(what: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise DataCorrupted(f"{what} is {_show(value)}; expected true or false")
    return value


def check_choice(what: str, value: Any, choices: Collection[Any]) -> Any:
    if not isinstance(value, (str, int, type(None))) or isinstance(value, bool) or value not in choices:
        raise DataCorrupted(f"{what} is {_show(value)}; expected one of {', '.join(map(repr, choices))}")
    return value


def check_heads(what: str, hidden: int, heads: int) -> int:
    """``heads`` attention heads over ``hidden`` channels: a divisor, and heads at least
    MIN_HEAD_DIM wide (or one head, in a network narrower than that)."""
    if hidden % heads:
        raise DataCorrupted(f"{what}: hidden_size {hidden} is not a multiple of num_attention_heads"
                                f" {heads}")
    if hidden // heads < min(MIN_HEAD_DIM, hidden):
        raise DataCorrupted(
            f"{what}: num_attention_heads {heads} makes heads of {hidden // heads} channels; at most"
            f" {max(1, hidden // MIN_HEAD_DIM)} heads (of {MIN_HEAD_DIM} or more) for hidden_size {hidden}")
    return heads


def check_normalization(what: str, value: Any, *, positive: bool) -> list[float]:
    """Three finite numbers (a per-channel mean, or a std when ``positive``)."""
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        and abs(v) <= MAX_NORMALIZATION and (v > 0 if positive else True) for v in value)
    if not ok:
        raise DataCorrupted(f"{what} must be three finite numbers{' above 0' if positive else ''};"
                                f" got {_show(value)}")
    return [float(v) for v in value]


def invalid_model(name: str, e: DataCorrupted) -> DataCorrupted:
    """``e`` about the stored model ``name``: XX001 with the model named and what to do."""
    return DataCorrupted(f'model "{name}" is invalid: {e.message}',
                         hint="The stored model was damaged or altered: BUILD it again.")


def shape_mismatch(expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]]) -> str | None:
    """What differs between the tensor shapes an architecture makes and the stored ones
    (None when they are the same): a few names of each kind."""
    if expected == got:
        return None
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    parts = [f"{label} {_names(keys)}" for label, keys in
             (("missing", missing), ("unexpected", extra), ("other shapes for", wrong)) if keys]
    return "; ".join(parts)


def _names(keys: Sequence[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
