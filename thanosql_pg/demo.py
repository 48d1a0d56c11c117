"""`make demo`: a short tour of every ThanoSQL statement, through the proxy.

Run twice, the second run reuses the tables and models of the first and
finishes in seconds.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from thanosql_pg import datasets, fdw
from thanosql_pg.cluster import Cluster

# Small images and a from-scratch ConvNeXt_Tiny: about a minute on two CPU cores. A tenth of
# the rows is held out and scored every epoch; training stops when that stops improving.
BUILD_DIGITS = """
BUILD MODEL demo_digits USING ConvNeXt_Tiny
OPTIONS (image_col='path', label_col='label', epochs=4, batch_size=32,
         learning_rate=0.002, input_size=32, pretrained=False,
         validation_split=0.1, early_stopping=True, patience=2)
AS SELECT path, label FROM demo_digits_train
"""
# SimCLR learns image embeddings without labels; its defaults at the digits' small size (the
# small ResNet for 15 epochs, temperature 0.2, affine and elastic views of grayscale images):
# about a minute. The digits are 8x8 at heart: 16 pixels keep all there is.
BUILD_SEARCH = """
BUILD MODEL demo_search USING SimCLR
OPTIONS (image_col='path', input_size=16)
AS SELECT path FROM demo_digits_train
"""
# CLIP from scratch on captioned digits ("a handwritten seven", "the digit 7", ...), so that
# a text finds images: 20 epochs by default, about half a minute here.
BUILD_CLIP = """
BUILD MODEL demo_clip USING CLIP
OPTIONS (image_col='path', text_col='caption', pretrained=False)
AS SELECT path, caption FROM demo_digits_train
"""
ANALYST = "demo_analyst"  # the second role of the tour


def show(conn: psycopg.Connection, title: str, sql: str, limit: int = 8,
         role: str | None = None) -> list[tuple[Any, ...]]:
    """Print ``sql``, run it (as ``role`` if given, SET ROLE), print its rows or its error."""
    print(f"\n-- {title}\n" + (f"SET ROLE {role};\n" if role else "") + sql.strip())
    start = time.monotonic()
    try:
        if role:
            conn.execute(f"SET ROLE {role}")
        try:
            cur = conn.execute(sql)
        finally:
            if role:
                conn.execute("RESET ROLE")
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
    """The digits as PNG files, in two tables (with a caption per training image, for CLIP),
    and linked again into an ImageFolder tree (digits_folders/<split>/<label>/) for
    scan_folder and the FolderFDW."""
    have = conn.execute("SELECT to_regclass('demo_digits_test') IS NOT NULL").fetchone()[0]
    if have:
        return
    rows = datasets.write_digits(files_dir / "digits")
    train, test = datasets.split(rows)
    datasets.load_table(conn, "demo_digits_train", train)
    datasets.load_table(conn, "demo_digits_test", test)
    conn.execute("ALTER TABLE demo_digits_train ADD COLUMN caption text")
    conn.execute("UPDATE demo_digits_train t SET caption = v.c FROM unnest(%s::int[], %s::text[]) AS v(id, c)"
                 " WHERE t.id = v.id", ([r["id"] for r in train], datasets.caption_digits(train)))
    tree = files_dir / "digits_folders"
    for part, part_rows in (("train", train), ("test", test)):
        for r in part_rows:
            folder = tree / part / str(r["label"])
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / Path(r["path"]).name
            if not target.exists():
                os.link(r["path"], target)
    for d in [tree, *tree.rglob("*")]:  # the server runs as another OS user
        if d.is_dir():
            d.chmod(0o755)
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
    with contextlib.redirect_stderr(io.StringIO()):  # transformers' "Writing model shards" bar
        datasets.write_tiny_wav2vec2(files_dir / table / "tiny_wav2vec2", tokens=tokens)


def built(conn: psycopg.Connection, model: str) -> bool:
    if conn.execute("SELECT 1 FROM thanosql.models WHERE name = %s", (model,)).fetchone():
        print(f"\n-- {model} is already built (DROP MODEL {model} to train it again)")
        return True
    return False


def section(title: str) -> None:
    print(f"\n\n=== {title} " + "=" * max(3, 72 - len(title)))


def tour_images(conn: psycopg.Connection) -> None:
    section("Image classification: BUILD, training history, EVALUATE, PREDICT")
    show(conn, "What the preprocessor makes of a statement", "SELECT thanosql.rewrite('LIST MODEL')")
    show(conn, "Every algorithm, with its options (thanosql.algorithms())",
         "SELECT algorithm, task, (SELECT string_agg(o->>'name', ', ')\n"
         "                         FROM jsonb_array_elements(options->'build') AS o) AS build_options\n"
         "FROM thanosql.algorithms()", limit=10)
    if not built(conn, "demo_digits"):
        show(conn, "Train an image classifier on handwritten digits, holding out 10 % to score each epoch",
             BUILD_DIGITS)
    show(conn, "Its training, epoch by epoch (the notebook magic draws this as a curve)",
         "SELECT epoch, train_loss, train_metric AS train_accuracy,\n"
         "       validation_metric AS validation_accuracy, seconds\n"
         "FROM thanosql.training_info('demo_digits')")
    show(conn, "Evaluate it on held-out digits",
         "EVALUATE USING demo_digits OPTIONS (image_col='path', label_col='label')\n"
         "AS SELECT path, label FROM demo_digits_test")
    show(conn, "Which digits it confuses (report='confusion_matrix'; the magic draws a heatmap)",
         "SELECT actual, predicted, count FROM (\n"
         "  EVALUATE USING demo_digits\n"
         "  OPTIONS (image_col='path', label_col='label', report='confusion_matrix')\n"
         "  AS SELECT path, label FROM demo_digits_test\n"
         ") AS c WHERE actual <> predicted ORDER BY count DESC", limit=5)
    show(conn, "Predict", "PREDICT USING demo_digits OPTIONS (image_col='path')\n"
         "AS SELECT id, label, path FROM demo_digits_test ORDER BY id LIMIT 5")
    show(conn, "ML statements nest like subqueries: the mistakes",
         "SELECT id, label, predict_result FROM (\n"
         "  PREDICT USING demo_digits OPTIONS (image_col='path')\n"
         "  AS SELECT id, label, path FROM demo_digits_test\n"
         ") AS p WHERE predict_result <> label::text", limit=5)
    show(conn, "Describe the model", "DESCRIBE MODEL demo_digits")
    show(conn, "Errors carry a SQLSTATE, a hint and a position",
         "BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (image_col='path', epochz=3)\n"
         "AS SELECT * FROM demo_digits_train")
    show(conn, "... also inside the query after AS",
         "PREDICT USING demo_digits OPTIONS (image_col='path') AS SELEC path FROM demo_digits_test")


def tour_versions(conn: psycopg.Connection) -> None:
    section("Background jobs, thanosql.progress, versions and rollback")
    versions = conn.execute("SELECT count(*) FROM thanosql.model_versions('demo_digits')").fetchone()[0]
    if versions < 2:
        fit = ("FIT MODEL demo_digits USING demo_digits\n"
               "OPTIONS (image_col='path', label_col='label', epochs=1, batch_size=32,\n"
               "         learning_rate=0.0005{})\n"
               "AS SELECT path, label FROM demo_digits_train")
        rows = show(conn, "Train further as a background job, which outlives this connection"
                    " (FIT makes version 2)", fit.format(", background=True"))
        if rows and isinstance(rows[0][0], int):
            follow_job(conn, rows[0][0])
        else:  # a server without the preload runs no background jobs: train in the foreground
            show(conn, "... in the foreground then", fit.format(""))
    show(conn, "Every kept version of the model",
         "SELECT version, current, statement, rows,\n"
         "       round((metrics->>'train_loss')::numeric, 4) AS train_loss, size_bytes\n"
         "FROM thanosql.model_versions('demo_digits')")
    first = conn.execute("SELECT min(version) FROM thanosql.model_versions('demo_digits')").fetchone()[0]
    show(conn, "Roll back to the first version (the newer one stays: you can roll forward)",
         f"SELECT thanosql.rollback_model('demo_digits', {first})")
    show(conn, "Which version is current now",
         "SELECT version, current FROM thanosql.model_versions('demo_digits')")


def follow_job(conn: psycopg.Connection, job_id: int) -> None:
    """Poll thanosql.progress (any session sees its role's running statements) until the job ends."""
    sql = ("SELECT j.status, p.phase, p.epoch, p.epochs, p.step, p.steps, p.loss FROM thanosql.jobs j"
           " LEFT JOIN thanosql.progress p ON p.pid = j.pid WHERE j.job_id = %s")
    print("\n-- Meanwhile, from this session: thanosql.jobs and thanosql.progress\n"
          + sql.replace("%s", str(job_id)))
    tty = sys.stdout.isatty()
    shown = 0.0
    while True:
        status, phase, epoch, epochs, step, steps, loss = conn.execute(sql, (job_id,)).fetchone()
        line = f"   {status}" + (f": {phase} epoch {epoch}/{epochs}, step {step}/{steps}, loss {loss:.4f}"
                                 if phase and steps and loss is not None else "")
        final = status in ("succeeded", "failed", "cancelled")
        if tty:  # one line, redrawn
            print(f"\r{line:<72}", end="\n" if final else "", flush=True)
        elif final or time.monotonic() - shown >= 5:
            print(line, flush=True)
            shown = time.monotonic()
        if final:
            break
        time.sleep(0.5)


def tour_sharing(conn: psycopg.Connection) -> None:
    section("Models are private: GRANT one to a second role")
    conn.execute(f"DO $$BEGIN CREATE ROLE {ANALYST}; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    conn.execute(f"GRANT SELECT ON demo_digits_test TO {ANALYST}")
    conn.execute(f"SELECT thanosql.revoke_model('demo_digits', '{ANALYST}', 'USE')")
    show(conn, f"As {ANALYST}: no models to see", "LIST MODEL", role=ANALYST)
    show(conn, f"The owner grants USE on demo_digits to {ANALYST}",
         f"SELECT thanosql.grant_model('demo_digits', '{ANALYST}', 'USE')")
    show(conn, f"As {ANALYST}: the model is there, and PREDICT works",
         "PREDICT USING demo_digits OPTIONS (image_col='path')\n"
         "AS SELECT id, label, path FROM demo_digits_test ORDER BY id LIMIT 3", role=ANALYST)
    show(conn, f"... but {ANALYST} cannot delete it (USE is not MODIFY)", "DROP MODEL demo_digits",
         role=ANALYST)


def tour_folders(conn: psycopg.Connection, files_dir: Path) -> None:
    section("Folders of files as rows: scan_folder and the FolderFDW")
    show(conn, "A folder in the ImageFolder layout (<split>/<label>/<file>) as rows",
         "SELECT split, label, count(*) AS files FROM thanosql.scan_folder('digits_folders')\n"
         "GROUP BY split, label ORDER BY split, label", limit=4)
    if not fdw.available(conn):
        print("\n-- FolderFDW: multicorn2 is not installed here"
              " (bash scripts/install-multicorn.sh builds it)")
        return
    conn.execute("CREATE EXTENSION IF NOT EXISTS multicorn")
    conn.execute("DROP SERVER IF EXISTS demo_folders CASCADE")
    conn.execute("CREATE SERVER demo_folders FOREIGN DATA WRAPPER multicorn"
                 " OPTIONS (wrapper 'thanosql_pg.fdw.FolderFDW')")
    show(conn, "The same folder as a foreign table: new files show up in the next query",
         "CREATE FOREIGN TABLE demo_digit_files (path text, file_name text, label text, split text)\n"
         f"  SERVER demo_folders OPTIONS (root '{files_dir / 'digits_folders'}')")
    show(conn, "PREDICT straight from the foreign table",
         "PREDICT USING demo_digits OPTIONS (image_col='path')\n"
         "AS SELECT file_name, label, path FROM demo_digit_files\n"
         "   WHERE split = 'test' ORDER BY file_name LIMIT 5")


def tour_speech(conn: psycopg.Connection, files_dir: Path) -> None:
    for lang, algorithm, words, voice, tokens in SPEECH_DEMOS:
        section(f"Speech recognition ({lang})")
        ensure_speech(conn, files_dir, lang, words, voice, tokens)
        table, model = f"demo_speech_{lang}", f"demo_asr_{lang}"
        if not built(conn, model):
            show(conn, f"Fine-tune {algorithm} on spoken words",
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


def tour_search(conn: psycopg.Connection) -> None:
    section("Image search: SimCLR embeddings, by image")
    if not built(conn, "demo_search"):
        show(conn, "Train an image-embedding model (SimCLR: no labels needed)", BUILD_SEARCH)
    show(conn, "How well it ranks: precision@10 over the held-out digits, and how far apart the scores are",
         "EVALUATE USING demo_search OPTIONS (image_col='path', label_col='label', top_k=10)\n"
         "AS SELECT path, label FROM demo_digits_test")
    cur = conn.execute("SELECT path FROM demo_digits_test WHERE label = 3 ORDER BY id LIMIT 1")
    convert_and_search(conn, "demo_search", "embedding", "the test digits most like one '3' (itself first)",
                       f"search_by='image', search_input='{cur.fetchone()[0]}'")

    section("Image search by text: CLIP")
    if not built(conn, "demo_clip"):
        show(conn, "Train CLIP from scratch on captioned digits", BUILD_CLIP)
    convert_and_search(conn, "demo_clip", "clip_emb", "by a text",
                       "search_by='text', search_input='a handwritten seven'")


def convert_and_search(conn: psycopg.Connection, model: str, column: str, what: str, by: str) -> None:
    """CONVERT the test digits with ``model`` into ``column``, then SEARCH IMAGE them ``by``."""
    show(conn, f"CONVERT: each test digit's embedding into a vector column ({column}), plus an HNSW index",
         f"CONVERT USING {model} OPTIONS (image_col='path', result_col='{column}')\n"
         "AS SELECT * FROM demo_digits_test")
    show(conn, f"SEARCH IMAGE: {what}",
         "SELECT id, label, search_result FROM (\n"
         f"  SEARCH IMAGE USING {model} OPTIONS ({by},\n"
         f"    emb_col='{column}', top_k=8)\n"
         f"  AS SELECT id, label, {column} FROM demo_digits_test\n) AS s")


def main() -> int:
    started = time.monotonic()
    cluster = Cluster()
    state = cluster.start()
    print(f"proxy: {state.proxy_uri}  (try: .venv/bin/thanosql psql)")
    with psycopg.connect(state.proxy_uri, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: print(f"NOTICE: {d.message_primary}", flush=True))
        ensure_digits(conn, cluster.files)
        show(conn, "Models so far", "LIST MODEL")
        tour_images(conn)
        tour_versions(conn)
        tour_sharing(conn)
        tour_folders(conn, cluster.files)
        tour_search(conn)
        tour_speech(conn, cluster.files)
        section("The end")
        show(conn, "Models now", "LIST MODEL")
    print(f"\nthe tour took {time.monotonic() - started:.0f} s; the tutorials in docs/tutorials go further")
    return 0


if __name__ == "__main__":
    sys.exit(main())
