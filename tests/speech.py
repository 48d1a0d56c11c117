"""Speech test data for tests/test_speech.py.

Clips are spoken by espeak-ng (thanosql_pg.datasets.write_speech) into files
the server's OS user can read. The base models are checkpoints the tests write
themselves with save_pretrained, so no model hub is needed: a tiny random
Wav2Vec2ForCTC (~100 k parameters; overfitting 8 words takes ~30 s), and a
hand-built tone detector whose transcript of any recording is known exactly.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from thanosql_pg import datasets

Rows = list[dict[str, Any]]

EN_TOKENS = datasets.WAV2VEC2_EN_TOKENS
TINY = datasets.TINY_WAV2VEC2


def readable(path: Path) -> None:
    """Let the server's OS user read ``path`` (a file, or a folder and everything in it)."""
    os.chmod(path, os.stat(path).st_mode | 0o755 if path.is_dir() else 0o644)
    if path.is_dir():
        for p in path.rglob("*"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)


@contextmanager
def scratch_dir(files: Path, prefix: str) -> Iterator[Path]:
    """A test module's scratch folder (checkpoints, converted audio) under the server's
    data directory, readable by the server, removed afterwards."""
    d = files / "speech" / prefix
    d.mkdir(parents=True)
    readable(d.parent)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def write_checkpoint(folder: Path, *, tokens: list[str] | None = EN_TOKENS, seed: int = 0) -> str:
    """A tiny random Wav2Vec2ForCTC checkpoint (datasets.write_tiny_wav2vec2)."""
    return datasets.write_tiny_wav2vec2(folder, tokens=tokens, seed=seed)


def english_words(files_dir: str | Path, n: int = 8, *, voices: tuple[str, ...] = ("en",),
                  speeds: tuple[int, ...] = (150,)) -> Rows:
    return datasets.write_speech(Path(files_dir) / "speech" / "en_words", datasets.ENGLISH_WORDS[:n],
                                 voices=voices, speeds=speeds)


def korean_words(files_dir: str | Path, n: int = 8, *, voices: tuple[str, ...] = ("ko",),
                 speeds: tuple[int, ...] = (150,)) -> Rows:
    return datasets.write_speech(Path(files_dir) / "speech" / "ko_words", datasets.KOREAN_WORDS[:n],
                                 voices=voices, speeds=speeds)


def load_table(conn: Any, table: str, rows: Rows) -> str:
    datasets.load_speech_table(conn, table, rows)
    return table


# --- a hand-built "tone detector": exact behaviour, no training --------------------------------
TONE_HZ = 400.0


def write_tone_detector(folder: Path) -> str:
    """A Wav2Vec2ForCTC checkpoint whose weights are set by hand so that it
    writes "A" for every tone burst and nothing for silence.

    Two channels per convolution and LayerNorm over two channels turn each
    layer into a sign detector: layer 0 flags samples below -0.5 (after the
    per-utterance normalization a tone is far louder), layers 1-6 OR the flags
    over their kernels, the projection and the CTC head map "flagged" to "A"
    and "quiet" to the blank. No transformer layers and a zero positional
    convolution make it strictly local (25 ms receptive field): its transcript
    of any recording is known exactly, which is what the chunking, resampling
    and format tests need.
    """
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    if folder.exists():
        shutil.rmtree(folder)
    config = Wav2Vec2Config(
        vocab_size=len(EN_TOKENS), pad_token_id=0, hidden_size=4, num_hidden_layers=0, num_attention_heads=1,
        intermediate_size=8, conv_dim=(2,) * 7, conv_bias=True, feat_extract_norm="layer",
        do_stable_layer_norm=True, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=1,
        mask_time_prob=0.0, layerdrop=0.0, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        feat_proj_dropout=0.0, final_dropout=0.0,
    )
    net = Wav2Vec2ForCTC(config)
    state = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    for k in state:
        if k.endswith("layer_norm.weight"):
            state[k].fill_(1.0)
    conv = "wav2vec2.feature_extractor.conv_layers"
    # layer 0: channel 0 - channel 1 = 2x + 1, negative ("flagged") when a sample is below -0.5
    state[f"{conv}.0.conv.weight"][0, 0, 0] = 1.0
    state[f"{conv}.0.conv.weight"][1, 0, 0] = -1.0
    state[f"{conv}.0.conv.bias"][0] = 1.0
    # layers 1-6: after LayerNorm + GELU channel 1 is 0.84 when flagged, -0.16 when not; a sum
    # over the kernel above 0 means at least one flagged input frame
    for i in range(1, 7):
        state[f"{conv}.{i}.conv.weight"][0, 1, :] = -1.0
        state[f"{conv}.{i}.conv.weight"][1, 1, :] = 1.0
    state["wav2vec2.feature_projection.projection.weight"][:] = torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    # the positional convolution stays zero (weight = g * v / |v| with g = 0)
    state["wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1"].fill_(1.0)
    state["lm_head.bias"].fill_(-10.0)
    state["lm_head.weight"][0, 0] = 5.0  # quiet (h0 = +1) → blank
    state["lm_head.weight"][EN_TOKENS.index("A"), 0] = -5.0  # flagged (h0 = -1) → "A"
    net.load_state_dict(state)
    write_checkpoint(folder, tokens=EN_TOKENS)  # the tokenizer and feature extractor files
    net.save_pretrained(folder)
    readable(folder)
    return str(folder)


def tone_bursts(n: int, *, rate: int = 16000, burst: float = 0.3, gap: float = 0.5) -> Any:
    """``n`` tone bursts separated by silence, starting and ending with ``gap``
    seconds of silence: the tone detector's transcript of it is "A" * n."""
    import numpy as np

    t = np.arange(int(burst * rate)) / rate
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    tone = (0.5 * fade * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
    silence = np.zeros(int(gap * rate), dtype=np.float32)
    return np.concatenate([silence] + [np.concatenate([tone, silence]) for _ in range(n)])
