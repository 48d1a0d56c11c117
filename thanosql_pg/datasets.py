"""Real data without downloads, for the demo, tutorials and tests.

scikit-learn ships 1,797 real 8x8 handwritten digits (UCI); they are written
out as PNG files and loaded into tables of (path, label) or (image bytea, label).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DIGITS_COLUMNS = "id integer, path text, image bytea, label integer"


def write_digits(directory: str | Path, *, scale: int = 4) -> list[dict[str, Any]]:
    """Write every digit as a grayscale PNG (upscaled ``scale`` times) under
    ``directory``; return rows with id, path, PNG bytes and label. Files that
    already exist are kept, so a second call is fast."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)  # the server runs as another OS user
    digits = load_digits()
    rows = []
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        path = directory / f"{i:04d}_{label}.png"
        if not path.exists():
            pixels = (img * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").resize((8 * scale, 8 * scale), Image.NEAREST).save(path)
        rows.append({"id": i, "path": str(path), "image": path.read_bytes(), "label": int(label)})
    return rows


Rows = list[dict[str, Any]]


def raw_pixel_precision(rows: Rows, k: int = 10) -> float:
    """precision@k of ``rows``' images compared by their raw pixels (cosine, leave-one-out,
    as EVALUATE scores an embedding model): the baseline a learnt embedding has to beat."""
    import io

    import numpy as np
    from PIL import Image

    from thanosql_pg.algorithms.shared.metrics import retrieval_precision

    pixels = np.stack([np.asarray(Image.open(io.BytesIO(r["image"])).convert("L"), dtype=np.float32).ravel()
                       for r in rows])
    return retrieval_precision(pixels, [r["label"] for r in rows], (k,))[k]


def split(rows: Rows, test_every: int = 5) -> tuple[Rows, Rows]:
    """A deterministic train/test split: every ``test_every``-th row is held out."""
    train = [r for r in rows if r["id"] % test_every]
    test = [r for r in rows if not r["id"] % test_every]
    return train, test


def load_table(conn: Any, table: str, rows: list[dict[str, Any]]) -> None:
    """(Re)create ``table`` with DIGITS_COLUMNS and COPY ``rows`` into it (psycopg 3)."""
    from psycopg import sql

    ident = sql.Identifier(table)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
    conn.execute(sql.SQL("CREATE TABLE {} (" + DIGITS_COLUMNS + ")").format(ident))
    with conn.cursor().copy(sql.SQL("COPY {} (id, path, image, label) FROM STDIN").format(ident)) as copy:
        for r in rows:
            copy.write_row((r["id"], r["path"], r["image"], r["label"]))


# --- speech: espeak-ng ---------------------------------------------------------------------------
# Synthetic speech for the speech-recognition demo, tutorials, tests and benchmarks: espeak-ng
# (a Debian package) speaks each text with several voices and speeds. Formant synthesis is far
# cleaner than real recordings, but every clip is genuinely audio to be transcribed.
SPEECH_COLUMNS = "id integer, audio_path text, audio bytea, text text, voice text, speed integer"

ENGLISH_WORDS = (
    "apple", "river", "seven", "house", "green", "music", "table", "window", "water", "yellow",
    "garden", "monkey", "pencil", "silver", "ticket", "winter", "butter", "doctor", "orange", "rabbit",
)
ENGLISH_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ENGLISH_SENTENCES = (
    "the cat sat on the mat", "open the door please", "the sun is very bright today", "i like green tea",
    "we walked to the park", "the train leaves at nine", "she reads a book every night",
    "turn left at the next street", "my brother plays the guitar", "it is cold and windy outside",
    "please call me after lunch", "the bird sings in the morning",
)
KOREAN_WORDS = (
    "사과", "바다", "하늘", "학교", "친구", "음악", "나무", "기차", "우유", "시장",
    "가방", "도서관", "병원", "바람", "연필", "의자", "고양이", "강아지", "거울", "노래",
)
KOREAN_DIGITS = ("영", "일", "이", "삼", "사", "오", "육", "칠", "팔", "구")
KOREAN_SENTENCES = (
    "오늘 날씨가 좋아요", "문을 열어 주세요", "저는 녹차를 좋아해요", "우리는 공원에 갔어요",
    "기차가 아홉 시에 떠나요", "내일 다시 만나요", "책을 매일 읽어요", "다음 길에서 왼쪽으로 가세요",
    "동생이 기타를 쳐요", "밖은 춥고 바람이 불어요", "점심 먹고 전화해 주세요", "아침에 새가 노래해요",
)


def speak(text: str, path: str | Path, *, voice: str = "en", speed: int = 150) -> None:
    """Speak ``text`` into a WAV file (espeak-ng: 22,050 Hz mono 16-bit)."""
    import subprocess

    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.chmod(path, 0o644)  # the server runs as another OS user


def write_speech(directory: str | Path, texts: Any, *, voices: Any = ("en",), speeds: Any = (150,),
                 start_id: int = 0) -> list[dict[str, Any]]:
    """Speak every text with every voice and speed into WAV files under
    ``directory``; return rows {id, audio_path, audio (WAV bytes), text, voice,
    speed}, ids from ``start_id``. Existing files are kept (a second call is fast)."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    jobs = []
    for t, text in enumerate(texts):
        for voice in voices:
            for speed in speeds:
                # the text's hash in the name: another text list in the same folder never reuses a file
                digest = hashlib.sha1(text.encode()).hexdigest()[:8]
                name = f"{t:04d}_{digest}_{voice.replace('+', '_')}_{speed}"
                jobs.append((start_id + len(jobs), directory / f"{name}.wav", text, voice, speed))
    todo = [j for j in jobs if not j[1].exists()]
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        list(pool.map(lambda j: speak(j[2], j[1], voice=j[3], speed=j[4]), todo))
    return [{"id": i, "audio_path": str(p), "audio": p.read_bytes(), "text": text, "voice": voice,
             "speed": speed} for i, p, text, voice, speed in jobs]


def load_speech_table(conn: Any, table: str, rows: list[dict[str, Any]]) -> None:
    """(Re)create ``table`` with SPEECH_COLUMNS and COPY ``rows`` into it (psycopg 3)."""
    from psycopg import sql

    ident = sql.Identifier(table)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
    conn.execute(sql.SQL("CREATE TABLE {} (" + SPEECH_COLUMNS + ")").format(ident))
    with conn.cursor().copy(sql.SQL("COPY {} (id, audio_path, audio, text, voice, speed) FROM STDIN")
                            .format(ident)) as copy:
        for r in rows:
            copy.write_row((r["id"], r["audio_path"], r["audio"], r["text"], r["voice"], r["speed"]))


# A character vocabulary in the layout of facebook/wav2vec2-base-960h's tokenizer: <pad> (the
# CTC blank) first, "|" between words, upper-case letters.
WAV2VEC2_EN_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "|", "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
# Small enough to overfit 8 single words in ~300 steps on two CPU cores (about 30 s), big
# enough to do it reliably: 7 convolutions of 32 channels with the standard strides (one frame
# per 20 ms), 2 pre-layer-norm transformer layers of width 64; no dropout or masking.
TINY_WAV2VEC2: dict[str, Any] = {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
    "conv_dim": (32,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
    "feat_extract_norm": "layer", "do_stable_layer_norm": True, "mask_time_prob": 0.0, "layerdrop": 0.0,
    "hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "final_dropout": 0.0,
}


def write_tiny_wav2vec2(folder: str | Path, *, tokens: list[str] | None = WAV2VEC2_EN_TOKENS,
                        seed: int = 0) -> str:
    """A tiny random Wav2Vec2ForCTC checkpoint (~100 k parameters, TINY_WAV2VEC2) in ``folder``,
    usable as ``base_model`` where no pretrained weights can be had: with a CTC tokenizer over
    ``tokens`` and a feature extractor, or with no tokenizer at all (``tokens=None``: a model
    built on it takes its vocabulary from the training texts). Readable by the server."""
    import json
    import shutil

    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    config = Wav2Vec2Config(vocab_size=len(tokens) if tokens else 32, pad_token_id=0, **TINY_WAV2VEC2)
    Wav2Vec2ForCTC(config).save_pretrained(folder)
    if tokens is not None:
        (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
        tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                         word_delimiter_token="|")
        extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                             do_normalize=True, return_attention_mask=True)
        Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    for p in [folder, *folder.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)  # the server runs as another OS user
    return str(folder)


# --- captions: the digits described in words, for CLIP (search images by text) -------------------
DIGIT_CAPTIONS = ("a handwritten {word}", "the digit {digit}", "a picture of the number {word}")


def digit_caption(label: int, template: int = 0) -> str:
    """``label`` described by caption template ``template`` (DIGIT_CAPTIONS): "a handwritten seven"."""
    return DIGIT_CAPTIONS[template].format(word=ENGLISH_DIGITS[label], digit=label)


def caption_digits(rows: Rows, *, seed: int = 0) -> list[str]:
    """One caption per digit row, its template drawn at random (seeded): what a table of
    images and their descriptions holds, worded in a few ways."""
    import random

    rng = random.Random(seed)
    return [digit_caption(r["label"], rng.randrange(len(DIGIT_CAPTIONS))) for r in rows]


def write_tiny_clip(folder: str | Path, *, image_size: int = 16, projection_dim: int = 16,
                    seed: int = 0) -> str:
    """A tiny random CLIPModel checkpoint (one layer of width 32 per tower) in ``folder``,
    usable as ``base_model`` where no published weights can be had: with CLIP's own
    tokenizer class (byte-level BPE, <|startoftext|> ... <|endoftext|>) over a character
    vocabulary with a few merges, and a preprocessor_config.json. Readable by the server."""
    import json
    import shutil
    import string

    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    chars = string.ascii_lowercase + string.digits
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = [("s", "e"), ("se", "v"), ("sev", "e"), ("seve", "n</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={**small, "vocab_size": len(tokenizer), "max_position_embeddings": 32,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={**small, "image_size": image_size, "patch_size": 4},
        projection_dim=projection_dim)
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" for a file of 300 kB
    try:
        CLIPModel(config).save_pretrained(folder)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "crop_size": {"height": image_size, "width": image_size}}))
    for p in [folder, *folder.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)  # the server runs as another OS user
    return str(folder)
