"""CLIP network configurations: the from-scratch architecture, and the whitelist that
every configuration passes through (a checkpoint's config.json, a stored model's
options) before anything is allocated for it.

A stored model keeps a compact config (``compact_config``): only what decides the
network's shapes and forward pass, each value bounded far above any published CLIP
(ViT-bigG: width 1664, 48 layers, 257 positions; ViT-L/14 at 336 pixels: 577), so that
a damaged or hostile catalog row fails here with XX001 instead of exhausting the
server. What sizes the work without showing in the weights' shapes is bounded too: the
number of attention heads (heads of at least shared.architecture.MIN_HEAD_DIM
channels), and the tokens a forward pass attends over, quadratically (image patches
and the text context: at most 1,024, where every published CLIP has 577 or fewer).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, TypeVar

from thanosql_pg.algorithms.clip import MIN_INPUT_SIZE, text
from thanosql_pg.algorithms.shared.architecture import check_heads
from thanosql_pg.algorithms.shared.images import FLIP_MIN_SIZE
from thanosql_pg.algorithms.shared.limits import MAX_INPUT_SIZE
from thanosql_pg.errors import DataCorrupted

MAX_IMAGE_TOKENS = 1024  # patches per image at input_size: attention is quadratic in it (ViT-B/32: 49)
MAX_PARAMETERS = 4_000_000_000
MAX_PROJECTION = 16384

_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "hidden_size": (8, 8192),
    "intermediate_size": (8, 65536),
    "num_hidden_layers": (1, 128),
    "num_attention_heads": (1, 256),
}
# the text context (attention is quadratic in it): CLIP's is 77, the from-scratch model's SCRATCH_CONTEXT
MAX_CONTEXT = 1024
_TEXT_BOUNDS = {**_INT_BOUNDS, "vocab_size": (2, text.MAX_VOCAB), "max_position_embeddings": (4, MAX_CONTEXT)}
_VISION_BOUNDS = {**_INT_BOUNDS, "image_size": (MIN_INPUT_SIZE, MAX_INPUT_SIZE), "patch_size": (1, 512),
                  "num_channels": (3, 3)}
POOLINGS = ("cls", "mean")
_ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu")

# The from-scratch architecture (about 0.4 M parameters, a minute of training on the
# digits on 2 CPU cores): ViT and text transformer of width 64, 4 heads; 4 vision and
# 3 text layers. Patches of input_size/grid pixels make a fixed grid at any size, so
# the cost does not grow with input_size: 4 x 4 below 64 pixels (at 32, one patch is
# 2 x 2 pixels of an 8 x 8 digit; an 8 x 8 grid costs ~3x per step), 8 x 8 from 64
# (ViT-B/32 sees 7 x 7 at 224). Width 128 costs ~3x per step and learned slower per
# epoch too (precision@10 0.52 against 0.79 after 15 epochs at 1e-3).
SCRATCH_WIDTH = 64
SCRATCH_HEADS = 4
SCRATCH_VISION_LAYERS = 4
SCRATCH_TEXT_LAYERS = 3
# The image embedding is the mean of the patch tokens, not the class token: at
# initialisation the class token attends uniformly and barely differs between images
# (cosine similarities between digits spread by ~0.003, against ~0.04 for the mean),
# which lengthens the plateau; the patch tokens carry the image from the first step.
SCRATCH_POOLING = "mean"
# Bytes (text.ByteTokenizer): about 45 English words. Only the position table grows with
# it; attention costs what the longest text of a batch needs.
SCRATCH_CONTEXT = 256


def scratch_grid(input_size: int) -> int:
    return 4 if input_size < FLIP_MIN_SIZE else 8


def check_int(where: str, key: str, value: Any, bounds: tuple[int, int]) -> int:
    lo, hi = bounds
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        name = f"config {where}.{key}" if where else key
        raise DataCorrupted(f"CLIP {name} is {value!r}; expected an integer in {lo}..{hi}")
    return value


def check_floats(name: str, value: Any, positive: bool) -> list[float]:
    """Three finite numbers (a per-channel mean or std)."""
    ok = isinstance(value, list) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= 1e3
        and (v > 0 if positive else True) for v in value)
    if not ok:
        raise DataCorrupted(f"option {name} must be three finite numbers{' above 0' if positive else ''};"
                            f" got {value!r}")
    return [float(v) for v in value]


@dataclass(frozen=True, kw_only=True)
class Tower:
    """One tower of a compact config, checked (``_check_tower``): what CLIPConfig's
    text_config or vision_config is built from."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    hidden_act: str
    layer_norm_eps: float

    def blocks(self) -> int:
        """About how many parameters its transformer blocks have."""
        h = self.hidden_size
        return self.num_hidden_layers * (4 * h * h + 2 * h * self.intermediate_size)


@dataclass(frozen=True, kw_only=True)
class TextTower(Tower):
    vocab_size: int
    max_position_embeddings: int


@dataclass(frozen=True, kw_only=True)
class VisionTower(Tower):
    image_size: int
    patch_size: int
    num_channels: int
    pooling: str = "cls"  # an extra attribute of CLIPVisionConfig: it travels with the config

    @property
    def grid(self) -> int:
        """Patches an image makes at image_size."""
        return (self.image_size // self.patch_size) ** 2


TowerT = TypeVar("TowerT", bound=Tower)


def _check_tower(cls: type[TowerT], where: str, d: Any, bounds: dict[str, tuple[int, int]]) -> TowerT:
    if not isinstance(d, dict):
        raise DataCorrupted(f"CLIP config {where} is not an object")
    ints: dict[str, int] = {k: check_int(where, k, d.get(k), b) for k, b in bounds.items()}
    # the heads' count shapes no weight: many narrow heads would multiply the attention's cost
    check_heads(f"CLIP config {where}", ints["hidden_size"], ints["num_attention_heads"])
    act = d.get("hidden_act")
    if act not in _ACTIVATIONS:
        raise DataCorrupted(f"CLIP config {where}.hidden_act is {act!r}; expected one of {_ACTIVATIONS}")
    eps = d.get("layer_norm_eps")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps <= 0.1:
        raise DataCorrupted(f"CLIP config {where}.layer_norm_eps is {eps!r}")
    return cls(**ints, hidden_act=str(act), layer_norm_eps=float(eps))


def compact_config(config: Any) -> dict[str, Any]:
    """The parts of a CLIPConfig that decide the network's shapes and its forward pass
    (dropout and initialisation do not matter once trained): what a stored model keeps."""
    keys_t = [*_TEXT_BOUNDS, "hidden_act", "layer_norm_eps"]
    keys_v = [*_VISION_BOUNDS, "hidden_act", "layer_norm_eps"]
    return {
        "text": {k: getattr(config.text_config, k) for k in keys_t},
        "vision": {**{k: getattr(config.vision_config, k) for k in keys_v},
                   "pooling": getattr(config.vision_config, "pooling", "cls")},
        "projection_dim": config.projection_dim,
    }


def text_vocab(d: Any) -> int:
    """The text tower's vocabulary size a compact config claims, checked (the stored
    tokenizer is checked against it before the config is built)."""
    t = d.get("text") if isinstance(d, dict) else None
    return check_int("text", "vocab_size", t.get("vocab_size") if isinstance(t, dict) else None,
                     _TEXT_BOUNDS["vocab_size"])


def build_config(d: Any, tok: text.Tokenizer | None = None) -> Any:
    """A CLIPConfig from a compact one, checked: only whitelisted keys, each within bounds;
    with ``tok``, its special token ids (the text tower's pooling and warnings read them)."""
    from transformers import CLIPConfig

    if not isinstance(d, dict):
        raise DataCorrupted("CLIP config is not an object")
    text_tower = _check_tower(TextTower, "text", d.get("text"), _TEXT_BOUNDS)
    vision = _check_tower(VisionTower, "vision", d.get("vision"), _VISION_BOUNDS)
    pooling = d["vision"].get("pooling", "cls")  # absent: a CLIP checkpoint's own
    if pooling not in POOLINGS:
        raise DataCorrupted(f"CLIP config vision.pooling is {pooling!r}; expected one of {POOLINGS}")
    vision = dataclasses.replace(vision, pooling=pooling)
    proj = check_int("config", "projection_dim", d.get("projection_dim"), (2, MAX_PROJECTION))
    if vision.patch_size > vision.image_size:
        raise DataCorrupted("CLIP config: vision patch_size is larger than image_size")
    if vision.grid > MAX_IMAGE_TOKENS:
        raise DataCorrupted(f"CLIP config: more than {MAX_IMAGE_TOKENS} image patches")
    if _parameters(text_tower, vision, proj) > MAX_PARAMETERS:
        raise DataCorrupted(f"CLIP config describes a model over {MAX_PARAMETERS:,} parameters")
    text_config: dict[str, Any] = dataclasses.asdict(text_tower)
    if tok is not None:
        eos = tok.eos_id if tok.eos_id is not None else text_tower.vocab_size - 1
        text_config.update(pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, eos_token_id=eos)
    return CLIPConfig(text_config=text_config, vision_config=dataclasses.asdict(vision), projection_dim=proj)


def _parameters(t: TextTower, v: VisionTower, proj: int) -> int:
    """About how many parameters a config means (transformer blocks and embeddings)."""
    return (t.blocks() + v.blocks() + t.vocab_size * t.hidden_size + t.max_position_embeddings
            * t.hidden_size + 3 * v.patch_size ** 2 * v.hidden_size + v.grid * v.hidden_size
            + proj * (t.hidden_size + v.hidden_size))


def scratch_config(input_size: int, embedding_dim: int) -> dict[str, Any]:
    """The compact config of the from-scratch model (see SCRATCH_*)."""
    patch = max(1, input_size // scratch_grid(input_size))
    common = {"hidden_size": SCRATCH_WIDTH, "intermediate_size": 4 * SCRATCH_WIDTH,
              "num_attention_heads": SCRATCH_HEADS, "hidden_act": "gelu", "layer_norm_eps": 1e-5}
    return {
        "text": {**common, "vocab_size": text.ByteTokenizer.vocab_size,
                 "num_hidden_layers": SCRATCH_TEXT_LAYERS, "max_position_embeddings": SCRATCH_CONTEXT},
        "vision": {**common, "num_hidden_layers": SCRATCH_VISION_LAYERS, "image_size": input_size,
                   "patch_size": patch, "num_channels": 3, "pooling": SCRATCH_POOLING},
        "projection_dim": embedding_dim,
    }
