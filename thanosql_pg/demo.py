"""`make demo`: a short tour of every ThanoSQL statement, through the proxy.

Run twice, the second run reuses the tables and models of the first and
finishes in seconds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from thanosql_pg import datasets
from thanosql_pg.cluster import Cluster

# Small images and a from-scratch ConvNeXt_Tiny: minutes on two CPU cores.
BUILD_DIGITS = """
BUILD MODEL demo_digits USING ConvNeXt_Tiny
OPTIONS (image_col='path', label_col='label', epochs=4, batch_size=32,
         learning_rate=0.002, input_size=32, pretrained=False)
AS SELECT path, label FROM demo_digits_train
"""


def show(conn: psycopg.Connection, title: str, sql: str, limit: int = 8) -> list[tuple[Any, ...]]:
    print(f"\n-- {title}\n{sql.strip()}")
    start = time.monotonic()
    try:
        cur = conn.execute(sql)
    except psycopg.Error as e:
        diag = e.diag
        print(f"ERROR {diag.sqlstate}: {diag.message_primary}")
        if diag.statement_position:
            pos = int(diag.statement_position)
            line_start = sql.rfind("\n", 0, pos - 1) + 1
            line_end = sql.find("\n", pos - 1)
            line = sql[line_start:line_end if line_end >= 0 else None]
            print(f"  {line}\n  {' ' * (pos - 1 - line_start)}^")
        if diag.message_hint:
            print(f"HINT: {diag.message_hint}")
        return []
    rows = cur.fetchall() if cur.description else []
    if cur.description:
        names = [c.name for c in cur.description]
        shown = [[_fmt(v) for v in r] for r in rows[:limit]]
        widths = [max([len(n)] + [len(r[i]) for r in shown]) for i, n in enumerate(names)]
        print(" | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)))
        print("-+-".join("-" * w for w in widths))
        for r in shown:
            print(" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
        more = f", {len(rows) - limit} more not shown" if len(rows) > limit else ""
        print(f"({len(rows)} rows{more}; {time.monotonic() - start:.2f} s)")
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (bytes, memoryview)):
        return f"<{len(value)} bytes>"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def ensure_digits(conn: psycopg.Connection, files_dir: Path) -> None:
    have = conn.execute("SELECT to_regclass('demo_digits_test') IS NOT NULL").fetchone()[0]
    if have:
        return
    rows = datasets.write_digits(files_dir / "digits")
    train, test = datasets.split(rows)
    datasets.load_table(conn, "demo_digits_train", train)
    datasets.load_table(conn, "demo_digits_test", test)
    print(f"loaded {len(train)} training and {len(test)} test digits (PNGs in {files_dir / 'digits'})")


# (language, algorithm, words, voice, tokens): English starts from a checkpoint
# with its own tokenizer, Korean from one without (a jamo vocabulary is built).
SPEECH_DEMOS = (
    ("en", "Wav2Vec2En", datasets.ENGLISH_WORDS[:8], "en", datasets.WAV2VEC2_EN_TOKENS),
    ("ko", "Wav2Vec2Ko", datasets.KOREAN_WORDS[:8], "ko", None),
)


def ensure_speech(conn: psycopg.Connection, files_dir: Path, lang: str, words: Any, voice: str,
                  tokens: list[str] | None) -> None:
    """Words spoken by espeak-ng, plus a small local Wav2Vec2 checkpoint standing
    in for the hub's pretrained one (no model hub is reachable here)."""
    table = f"demo_speech_{lang}"
    if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]:
        return
    rows = datasets.write_speech(files_dir / table, words, voices=[voice])
    datasets.load_speech_table(conn, table, rows)
    datasets.write_tiny_wav2vec2(files_dir / table / "tiny_wav2vec2", tokens=tokens)


def main() -> int:
    cluster = Cluster()
    state = cluster.start()
    print(f"proxy: {state.proxy_uri}  (try: .venv/bin/thanosql psql)")
    with psycopg.connect(state.proxy_uri, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: print(f"NOTICE: {d.message_primary}", flush=True))
        ensure_digits(conn, cluster.files)
        show(conn, "What the preprocessor makes of a statement", "SELECT thanosql.rewrite('LIST MODEL')")
        show(conn, "Models so far", "LIST MODEL")
        exists = conn.execute("SELECT 1 FROM thanosql.models WHERE name = 'demo_digits'").fetchone()
        if exists:
            print("\n-- demo_digits is already built (DROP MODEL demo_digits to train it again)")
        else:
            show(conn, "Train an image classifier on handwritten digits", BUILD_DIGITS)
        show(conn, "Evaluate it on held-out digits",
             "EVALUATE USING demo_digits OPTIONS (image_col='path', label_col='label')\n"
             "AS SELECT path, label FROM demo_digits_test")
        show(conn, "Predict", "PREDICT USING demo_digits OPTIONS (image_col='path')\n"
             "AS SELECT id, label, path FROM demo_digits_test ORDER BY id LIMIT 5")
        show(conn, "ML statements nest like subqueries: the mistakes",
             "SELECT id, label, predict_result FROM (\n"
             "  PREDICT USING demo_digits OPTIONS (image_col='path')\n"
             "  AS SELECT id, label, path FROM demo_digits_test\n"
             ") AS p WHERE predict_result <> label::text")
        show(conn, "Describe the model", "DESCRIBE MODEL demo_digits")
        show(conn, "Errors carry a SQLSTATE, a hint and a position",
             "BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (image_col='path', epochz=3)\n"
             "AS SELECT * FROM demo_digits_train")
        show(conn, "... also inside the query after AS",
             "PREDICT USING demo_digits OPTIONS (image_col='path') AS SELEC path FROM demo_digits_test")
        for lang, algorithm, words, voice, tokens in SPEECH_DEMOS:
            ensure_speech(conn, cluster.files, lang, words, voice, tokens)
            table, model = f"demo_speech_{lang}", f"demo_asr_{lang}"
            if conn.execute("SELECT 1 FROM thanosql.models WHERE name = %s", (model,)).fetchone():
                print(f"\n-- {model} is already built (DROP MODEL {model} to train it again)")
            else:
                show(conn, f"Speech recognition ({lang}): fine-tune {algorithm} on spoken words",
                     f"BUILD MODEL {model} USING {algorithm}\n"
                     "OPTIONS (audio_col='audio_path', text_col='text',\n"
                     f"         base_model='{table}/tiny_wav2vec2',\n"
                     "         max_epochs=300, batch_size=8, learning_rate=0.003)\n"
                     f"AS SELECT audio_path, text FROM {table}")
            show(conn, f"Transcribe ({lang})", f"PREDICT USING {model} OPTIONS (audio_col='audio_path')\n"
                 f"AS SELECT text, audio_path FROM {table} LIMIT 4")
            show(conn, f"Word and character error rates ({lang}; bytea audio works too)",
                 f"EVALUATE USING {model} OPTIONS (audio_col='audio', text_col='text')\n"
                 f"AS SELECT audio, text FROM {table}")
        if conn.execute("SELECT 1 FROM thanosql.models WHERE name = 'demo_search'").fetchone():
            print("\n-- demo_search is already built (DROP MODEL demo_search to train it again)")
        else:
            show(conn, "Train an image-embedding model (SimCLR: no labels needed)",
                 "BUILD MODEL demo_search USING SimCLR\n"
                 "OPTIONS (image_col='path', max_epochs=2, batch_size=64, input_size=32,\n"
                 "         learning_rate=0.001)\n"
                 "AS SELECT path FROM demo_digits_train")
        show(conn, "CONVERT: each test digit's embedding into a vector(128) column, plus an HNSW index",
             "CONVERT USING demo_search OPTIONS (image_col='path', result_col='embedding')\n"
             "AS SELECT * FROM demo_digits_test")
        cur = conn.execute("SELECT path FROM demo_digits_test WHERE label = 3 ORDER BY id LIMIT 1")
        query = cur.fetchone()[0]
        show(conn, "SEARCH IMAGE: the test digits most like one '3' (itself first, similarity 1)",
             "SELECT id, label, search_result FROM (\n"
             f"  SEARCH IMAGE USING demo_search OPTIONS (search_by='image', search_input='{query}',\n"
             "    emb_col='embedding', top_k=5)\n"
             "  AS SELECT id, label, embedding FROM demo_digits_test\n) AS s")
        show(conn, "Models now", "LIST MODEL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
