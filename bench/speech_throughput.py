"""Transcription throughput: PREDICT vs a plain transformers script.

Both transcribe the same WAV files (English sentences spoken by espeak-ng at
22,050 Hz, under thanosql.data_dir) with the same weights and batch size:

- project: ``PREDICT USING m OPTIONS (audio_col='audio_path', batch_size=B)``,
  rewritten by the preprocessor as the proxy would and sent straight to the
  server (the session has the model cached: one PREDICT first), all rows
  fetched by the client;
- baseline: a script that reads each file with soundfile, resamples it with
  torchaudio, runs ``Wav2Vec2Processor`` + ``Wav2Vec2ForCTC`` on batches of B
  files in input order, and ``processor.batch_decode``s the argmax. It asks
  the processor for the attention mask so that each recording is normalized
  over its own samples (without it, transformers normalizes a padded batch
  over the padding too, and a transcript depends on its batch), passes it to
  the model only when the feature extractor says the model takes one, and
  decodes each recording's own frames (not those of the padding).

The model is the facebook/wav2vec2-base-960h architecture (95 M parameters,
group-norm feature encoder, no attention mask) with random weights, written
as a transformers checkpoint and stored with BUILD MODEL (one step at a
negligible learning rate); the baseline loads the stored weights from the
catalog. Speed does not depend on the weights' values; ``agreement`` (equal
transcripts, once the special tokens <s>, </s>, <unk> that batch_decode
writes out and PREDICT drops are removed) checks that both compute the same
thing.

Runs alternate ``--repeats`` times; medians of seconds of audio per second of
wall time and their ratio (project / baseline; target >= 1.0) go to
bench/results/speech_throughput.json.

    .venv/bin/python bench/speech_throughput.py [--files 24] [--batch-size 8] [--repeats 3] [--arch base]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import common

MODEL = "bench_speech_throughput"
TABLE = "bench_speech_files"
TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "|", "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
ARCHS: dict[str, dict[str, Any]] = {
    "base": {},  # transformers' Wav2Vec2Config defaults are wav2vec2-base
    "small": {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 4, "intermediate_size": 1024,
              "conv_dim": (256,) * 7},
}


def parse_args() -> argparse.Namespace:
    p = common.parser(__doc__, "speech_throughput")
    p.add_argument("--files", type=int, default=24, help="recordings to transcribe (sentences x voices)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--arch", choices=sorted(ARCHS), default="base")
    return p.parse_args()


def write_checkpoint(folder: Path, arch: str) -> str:
    """A random-weight Wav2Vec2ForCTC with a CTC tokenizer and feature extractor, as
    facebook/wav2vec2-base-960h has them (do_normalize, no attention mask)."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(TOKENS)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    torch.manual_seed(0)
    config = Wav2Vec2Config(vocab_size=len(TOKENS), pad_token_id=0, **ARCHS[arch])
    Wav2Vec2ForCTC(config).save_pretrained(folder)
    for p in [folder, *folder.iterdir()]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)  # the server runs as another OS user
    return str(folder)


class Script:
    """The baseline: the usual transformers inference loop around the same weights."""

    def __init__(self, conn: Any, checkpoint: str, batch_size: int) -> None:
        import torch
        from safetensors.torch import load
        from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Processor

        _, payload = common.fetch_model(conn, MODEL)
        header = json.loads(payload[8:8 + int.from_bytes(payload[:8], "little")])
        torch.set_num_threads(os.cpu_count() or 1)
        config = Wav2Vec2Config.from_dict(json.loads(header["__metadata__"]["config"]))
        self.model = Wav2Vec2ForCTC(config)
        self.model.load_state_dict(load(payload))
        self.model.eval()
        self.processor = Wav2Vec2Processor.from_pretrained(checkpoint)
        self.use_mask = self.processor.feature_extractor.return_attention_mask
        self.batch_size = batch_size

    def run(self, paths: list[str]) -> list[str]:
        import numpy as np
        import soundfile as sf
        import torch
        import torchaudio.functional as AF

        out: list[str] = []
        with torch.inference_mode():
            for i in range(0, len(paths), self.batch_size):
                waves = []
                for p in paths[i:i + self.batch_size]:
                    x, rate = sf.read(p, dtype="float32", always_2d=True)
                    x = torch.from_numpy(np.ascontiguousarray(x.mean(axis=1)))
                    waves.append(AF.resample(x, rate, 16000).numpy() if rate != 16000 else x.numpy())
                inputs = self.processor(waves, sampling_rate=16000, padding=True, return_attention_mask=True,
                                        return_tensors="pt")
                mask = inputs.attention_mask if self.use_mask else None
                ids = self.model(inputs.input_values, attention_mask=mask).logits.argmax(-1)
                frames = self.model._get_feat_extract_output_lengths(inputs.attention_mask.sum(-1))
                own = [row[:n] for row, n in zip(ids, frames.tolist(), strict=True)]
                out += self.processor.batch_decode(own)
        return out


def _plain(text: str) -> str:
    for special in ("<s>", "</s>", "<unk>"):
        text = text.replace(special, "")
    return " ".join(text.split())


def main() -> int:
    args = parse_args()
    import psycopg
    import soundfile as sf

    from thanosql_pg import datasets
    from thanosql_pg.preprocessor import rewrite

    info = common.cluster_status()
    speech_dir = Path(info["files_dir"]) / "speech"
    voices = ["en", "en-us", "en+f3", "en+m3"]
    texts = datasets.ENGLISH_SENTENCES
    rows = datasets.write_speech(speech_dir / "bench_sentences", texts,
                                 voices=voices[:max(1, -(-args.files // len(texts)))])[:args.files]
    paths = [r["audio_path"] for r in rows]
    audio_seconds = sum(sf.info(p).duration for p in paths)
    checkpoint = write_checkpoint(speech_dir / f"bench_wav2vec2_{args.arch}", args.arch)
    predict = rewrite(f"PREDICT USING {MODEL} OPTIONS (audio_col='audio_path', batch_size={args.batch_size})"
                      f" AS SELECT id, audio_path FROM {TABLE} ORDER BY id")
    with psycopg.connect(info["server"], autocommit=True) as conn:
        datasets.load_speech_table(conn, TABLE, rows)
        conn.execute(rewrite(
            f"BUILD MODEL {MODEL} USING Wav2Vec2En OPTIONS (audio_col='audio_path', text_col='text',"
            f" base_model='{checkpoint}', epochs=1, batch_size=2, learning_rate=1e-12, overwrite=True)"
            f" AS SELECT audio_path, text FROM {TABLE} ORDER BY id LIMIT 2")).fetchall()
        conn.execute(predict).fetchall()  # warm-up: the model is now cached in this session
        script = Script(conn, checkpoint, args.batch_size)
        script.run(paths[:args.batch_size])  # warm-up
        outputs: dict[str, list[str]] = {}

        def project() -> float:
            outputs["project"], seconds = common.timed(
                lambda: [row[2] for row in conn.execute(predict).fetchall()])
            return audio_seconds / seconds

        def baseline() -> float:
            outputs["baseline"], seconds = common.timed(lambda: script.run(paths))
            return audio_seconds / seconds

        results = common.alternate(args.repeats, project, baseline, "s of audio/s", precision=2)
        pairs = zip(outputs["project"], outputs["baseline"], strict=True)
        same = sum(_plain(a) == _plain(b) for a, b in pairs)
        common.clean_up(conn, MODEL, TABLE)
    summary = common.side_by_side(results, "audio_seconds_per_second", ">= 1.0", agreement=same / len(paths))
    common.save(args, "speech_throughput", results, summary, machine_info=common.machine(device="cpu"),
                run_settings={"files": len(paths), "audio_seconds": round(audio_seconds, 2),
                              "batch_size": args.batch_size, "repeats": args.repeats, "arch": args.arch})
    return 0


if __name__ == "__main__":
    sys.exit(main())
