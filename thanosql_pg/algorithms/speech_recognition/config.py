"""Wav2Vec2 configurations: the whitelist that every configuration passes through (a
stored model's, a checkpoint's config.json) before a network is built for it.

A stored model keeps the transformers config in its payload's metadata, which its
owner can rewrite, and most of what makes a Wav2Vec2 expensive is not in the weights'
shapes: with the feature encoder's strides all 1 instead of (5, 2, 2, 2, 2, 2, 2) the
same weights make one frame per sample instead of one per 20 ms, 320 times the frames
and 100,000 times the attention (a 0.4 s clip took 3.3 s instead of 0.03 s, quadratic
in its length). So ``checked`` keeps only the keys that decide the network and its
forward pass, each bounded by what this family supports, and ``build`` makes the
config from them alone: every other key takes transformers' default.

The bounds admit every wav2vec2 checkpoint (base, large, XLS-R up to 2B: width 1920,
48 layers, 7 convolutions of 512 channels, 320 samples per frame), the family's
from-scratch model (model.SCRATCH_CONFIG) and the test-suite's toys (width 4, no
transformer layer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from thanosql_pg.algorithms.shared.architecture import (
    check_bool,
    check_choice,
    check_heads,
    check_int,
    check_ints,
    check_number,
)
from thanosql_pg.errors import DataCorrupted

SAMPLE_RATE = 16_000  # shared.audio decodes to it

# The feature encoder's total stride, in samples per frame: every wav2vec2 model makes a
# frame per 20 ms (320 samples), which sizes the attention over a 20 s window
# (model.CHUNK_SECONDS) at 1,000 frames. Fewer samples per frame multiply its cost by
# their square; more only coarsen the frames (a CTC model needs one per character).
MIN_FRAME_SAMPLES = 320
MAX_FRAME_SAMPLES = 3_200
# The receptive field of one frame: every clip is padded to at least that (model.inputs).
# wav2vec2's is 400 samples (25 ms).
MAX_RECEPTIVE_FIELD = SAMPLE_RATE
MAX_CONV_LAYERS = 16  # wav2vec2 has 7
MAX_VOCAB = 1 << 17  # CTC symbols: characters (more than every CJK ideograph in use)

_INTS: dict[str, tuple[int, int]] = {
    "hidden_size": (1, 4096),  # XLS-R 2B: 1920
    "num_hidden_layers": (0, 64),  # XLS-R 2B: 48
    "num_attention_heads": (1, 64),  # large: 16
    "intermediate_size": (1, 16384),  # XLS-R 2B: 7680
    "num_conv_pos_embeddings": (1, 512),  # the positional convolution's kernel: 128
    "num_conv_pos_embedding_groups": (1, 64),  # 16
    "mask_time_length": (1, 200),  # SpecAugment (FIT): 10
    "mask_time_min_masks": (0, 100),
    "mask_feature_length": (1, 4096),
    "mask_feature_min_masks": (0, 100),
}
_FRACTIONS = ("hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_dropout",
              "final_dropout", "layerdrop", "mask_time_prob", "mask_feature_prob")
_BOOLS = ("conv_bias", "do_stable_layer_norm", "apply_spec_augment", "ctc_zero_infinity")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu", "relu", "silu", "swish")
_CHOICES: dict[str, tuple[Any, ...]] = {
    "hidden_act": ACTIVATIONS,
    "feat_extract_activation": ACTIVATIONS,
    "feat_extract_norm": ("group", "layer"),
    "ctc_loss_reduction": ("sum", "mean"),
}
# Keys a stored config may hold only at these values: the modules they add are not this
# family's (an adapter after the encoder, a weighted sum of layers for classification).
_FIXED = {"add_adapter": (False, None), "use_weighted_layer_sum": (False, None)}


def frame_samples(strides: list[int]) -> int:
    return math.prod(strides)


def receptive_field(kernels: list[int], strides: list[int]) -> int:
    """Samples one output frame sees: shorter input makes no frame."""
    return 1 + sum((k - 1) * math.prod(strides[:i]) for i, k in enumerate(kernels))


def checked(d: Any) -> dict[str, Any]:
    """The whitelisted keys of a Wav2Vec2 config (``to_dict()``/JSON form), each checked:
    keyword arguments for ``Wav2Vec2Config``. DataCorrupted names the first value out of bounds."""
    if not isinstance(d, Mapping):
        raise DataCorrupted("the Wav2Vec2 config is not an object")
    if d.get("model_type", "wav2vec2") != "wav2vec2":
        raise DataCorrupted(f"the config is of a {d.get('model_type')!r} model, not wav2vec2")
    defaults = _defaults()
    out: dict[str, Any] = {}

    def get(key: str) -> Any:
        return d.get(key, defaults[key])

    for key, (lo, hi) in _INTS.items():
        out[key] = check_int(key, get(key), lo, hi)
    for key in _FRACTIONS:
        out[key] = check_number(key, get(key), 0.0, 1.0)
    for key in _BOOLS:
        out[key] = check_bool(key, get(key))
    for key, choices in _CHOICES.items():
        out[key] = check_choice(key, get(key), choices)
    for key, allowed in _FIXED.items():
        if d.get(key) not in allowed:
            raise DataCorrupted(f"{key} is {d.get(key)!r}; this family's Wav2Vec2 models have none")
    out["layer_norm_eps"] = check_number("layer_norm_eps", get("layer_norm_eps"), 0.0, 0.1, above=True)
    out["initializer_range"] = check_number("initializer_range", get("initializer_range"), 0.0, 1.0)
    check_heads("the transformer", out["hidden_size"], out["num_attention_heads"])
    if out["hidden_size"] % out["num_conv_pos_embedding_groups"]:
        raise DataCorrupted(f"hidden_size {out['hidden_size']} is not a multiple of"
                            f" num_conv_pos_embedding_groups {out['num_conv_pos_embedding_groups']}")

    # the feature encoder: as many channels, kernels and strides as layers
    conv_dim = check_ints("conv_dim", get("conv_dim"), 1, 4096, length=(1, MAX_CONV_LAYERS))
    n = (len(conv_dim), len(conv_dim))
    kernels = check_ints("conv_kernel", get("conv_kernel"), 1, 64, length=n)
    strides = check_ints("conv_stride", get("conv_stride"), 1, 16, length=n)
    frame = frame_samples(strides)
    if not MIN_FRAME_SAMPLES <= frame <= MAX_FRAME_SAMPLES:
        raise DataCorrupted(
            f"conv_stride {strides} makes a frame of every {frame} samples; the feature encoder must"
            f" downsample by {MIN_FRAME_SAMPLES} to {MAX_FRAME_SAMPLES} (wav2vec2: 320, 20 ms at 16 kHz)")
    field = receptive_field(kernels, strides)
    if field > MAX_RECEPTIVE_FIELD:
        raise DataCorrupted(f"conv_kernel {kernels} with conv_stride {strides} makes a frame see {field}"
                            f" samples; at most {MAX_RECEPTIVE_FIELD} (wav2vec2: 400)")
    out.update(conv_dim=conv_dim, conv_kernel=kernels, conv_stride=strides)

    vocab = out["vocab_size"] = check_int("vocab_size", d.get("vocab_size"), 2, MAX_VOCAB)
    pad = d.get("pad_token_id")
    out["pad_token_id"] = None if pad is None else check_int("pad_token_id", pad, 0, vocab - 1)
    # MMS's per-language attention adapters (weights of their own, checked by shape)
    adapter = d.get("adapter_attn_dim")
    out["adapter_attn_dim"] = None if adapter is None else check_int("adapter_attn_dim", adapter, 1, 4096)
    return out


def build(d: Any) -> Any:
    """A Wav2Vec2Config made from the checked keys of ``d`` alone."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(**checked(d))


_DEFAULTS: dict[str, Any] = {}


def _defaults() -> dict[str, Any]:
    """transformers' defaults for the keys a config leaves out (an old one, a sparse one)."""
    if not _DEFAULTS:
        from transformers import Wav2Vec2Config

        _DEFAULTS.update(Wav2Vec2Config().to_dict())
    return _DEFAULTS
