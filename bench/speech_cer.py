"""Held-out error rates after a longer training run on espeak-ng speech, on the CPU.

No pretrained weights can be had offline, so ``--start`` picks a starting point:

- ``scratch`` (default): ``pretrained=False``, the small random Wav2Vec2 of
  speech_recognition.SCRATCH_CONFIG (4 M parameters, every layer trained) with
  a character vocabulary from the texts (letters for English, jamo for Korean);
- ``tiny``: ``base_model`` = a tiny random checkpoint
  (datasets.write_tiny_wav2vec2, ~100 k parameters) whose feature encoder stays
  frozen, as for any base model: fast, but its random convolutions limit it;
- ``pretrained``: the algorithm's hub weights (facebook/wav2vec2-base-960h,
  kresnik/wav2vec2-large-xlsr-korean), which must be on the server already.

- data: words, digits and short sentences (thanosql_pg.datasets, 42 texts per
  language) spoken by espeak-ng with several voices and speeds;
- training: every text with the ``--train-voices`` at the ``--train-speeds``;
- held out: every text spoken by a voice the model never heard
  (``--test-voice``), at a speed between the training ones.

BUILD MODEL runs through the preprocessor against the server, as the proxy
would; EVALUATE on the held-out recordings gives WER and CER (and on the
training recordings, for comparison). Results go to bench/results/speech_cer.json.

    .venv/bin/python bench/speech_cer.py [--language en ko] [--start scratch] [--epochs 10] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import common

LANGUAGES: dict[str, dict[str, Any]] = {
    "en": {"algorithm": "Wav2Vec2En", "voices": ["en", "en-us", "en+m3", "en+f3"], "test_voice": "en-us+f2",
           "texts": ("ENGLISH_WORDS", "ENGLISH_DIGITS", "ENGLISH_SENTENCES")},
    "ko": {"algorithm": "Wav2Vec2Ko", "voices": ["ko", "ko+m3", "ko+f3", "ko+m5"], "test_voice": "ko+f2",
           "texts": ("KOREAN_WORDS", "KOREAN_DIGITS", "KOREAN_SENTENCES")},
}


def parse_args() -> argparse.Namespace:
    p = common.parser(__doc__, "speech_cer")
    p.add_argument("--language", nargs="+", choices=sorted(LANGUAGES), default=["en", "ko"])
    p.add_argument("--start", choices=["scratch", "tiny", "pretrained"], default="scratch")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--train-speeds", type=int, nargs="+", default=[130, 170])
    p.add_argument("--test-speed", type=int, default=150)
    return p.parse_args()


def run(conn: Any, language: str, args: argparse.Namespace, files: Path) -> dict[str, Any]:
    from thanosql_pg import datasets
    from thanosql_pg.preprocessor import rewrite

    spec = LANGUAGES[language]
    texts = [t for name in spec["texts"] for t in getattr(datasets, name)]
    folder = files / "speech" / f"bench_cer_{language}"
    train = datasets.write_speech(folder, texts, voices=spec["voices"], speeds=args.train_speeds)
    test = datasets.write_speech(folder, texts, voices=[spec["test_voice"]], speeds=[args.test_speed],
                                 start_id=len(train))
    datasets.load_speech_table(conn, f"bench_cer_{language}_train", train)
    datasets.load_speech_table(conn, f"bench_cer_{language}_test", test)
    model = f"bench_cer_{language}"
    if args.start == "scratch":
        start_opts = "pretrained=False"
    elif args.start == "tiny":
        tokens = datasets.WAV2VEC2_EN_TOKENS if language == "en" else None  # Korean: jamo from the texts
        start_opts = f"base_model='{datasets.write_tiny_wav2vec2(folder / 'tiny_base', tokens=tokens)}'"
    else:
        start_opts = "pretrained=True"
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    conn.execute("SET thanosql.progress_interval = 30")
    build = rewrite(
        f"BUILD MODEL {model} USING {spec['algorithm']} OPTIONS (audio_col='audio_path', text_col='text',"
        f" {start_opts}, epochs={args.epochs}, batch_size={args.batch_size},"
        f" learning_rate={args.learning_rate}, overwrite=True)"
        f" AS SELECT audio_path, text FROM bench_cer_{language}_train")
    built, seconds = common.timed(lambda: conn.execute(build).fetchone())
    for n in notices:
        print(f"  {n}", flush=True)
    held_out = dict(conn.execute(rewrite(
        f"EVALUATE USING {model} OPTIONS (audio_col='audio_path', text_col='text')"
        f" AS SELECT audio_path, text FROM bench_cer_{language}_test")).fetchall())
    seen = dict(conn.execute(rewrite(
        f"EVALUATE USING {model} OPTIONS (audio_col='audio_path', text_col='text')"
        f" AS SELECT audio_path, text FROM bench_cer_{language}_train")).fetchall())
    examples = conn.execute(rewrite(
        f"PREDICT USING {model} OPTIONS (audio_col='audio_path')"
        f" AS SELECT text, audio_path FROM bench_cer_{language}_test ORDER BY id")).fetchall()
    common.clean_up(conn, model, f"bench_cer_{language}_train", f"bench_cer_{language}_test")
    audio = sum(len(r["audio"]) for r in train) / 2 / 22050  # 16-bit mono at 22,050 Hz
    result = {
        "algorithm": spec["algorithm"],
        "settings": {"epochs": args.epochs, "batch_size": args.batch_size,
                     "learning_rate": args.learning_rate, "train_speeds": args.train_speeds,
                     "test_speed": args.test_speed, "start": args.start},
        "train_clips": len(train), "train_audio_seconds": round(audio, 1),
        "test_clips": len(test), "train_voices": spec["voices"], "test_voice": spec["test_voice"],
        "build_seconds": round(seconds, 1), "build_metrics": built[5],
        "held_out": {k: round(v, 4) for k, v in held_out.items()},
        "training_clips": {k: round(v, 4) for k, v in seen.items()},
        "examples": [{"text": t, "heard": h} for t, _, h in examples[::7]],
    }
    print(json.dumps(result, ensure_ascii=False, indent=2), flush=True)
    return result


def main() -> int:
    args = parse_args()
    import psycopg

    info = common.cluster_status()
    results = {}
    with psycopg.connect(info["server"], autocommit=True) as conn:
        for language in args.language:
            results[f"{language}_{args.start}"] = run(conn, language, args, Path(info["files_dir"]))
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    # languages not run this time keep their earlier results
    report = common.report("speech_cer", common.machine(device="cpu"),
                           languages={**previous.get("languages", {}), **results})
    common.write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
