"""Speech recognition (Wav2Vec2En / Wav2Vec2Ko) end to end: real PostgreSQL, the
real extension, native ThanoSQL through the proxy, transformers on the CPU.

Data: English and Korean words spoken by espeak-ng into files the server reads
(tests/speech.py). No hub weights: the base models are checkpoints the tests
write themselves with save_pretrained:

- a tiny random Wav2Vec2ForCTC (~100 k parameters) that BUILD overfits on 8
  words in ~30 s: the English one has a CTC tokenizer (upper-case letters, as
  facebook/wav2vec2-base-960h), the Korean one has none, so its vocabulary is
  built from the texts as jamo;
- a hand-built "tone detector" whose transcript of any recording is exactly
  "A" per tone burst: it checks chunked long audio, resampling, channels and
  every container format without depending on what a tiny model learned.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import time
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import soundfile as sf
import speech  # tests/speech.py
from catalog_rows import drop_prefixed

PREFIX = "sr_" + uuid.uuid4().hex[:6]
# The cheapest reliable overfit found (2 busy CPU cores): 8 words, one batch of 8, lr 3e-3 with
# warm-up + cosine decay, 300 epochs: CER 0 on seeds 0-1, 0.02 on seed 2 (~25 s when the machine is idle).
OVERFIT = "batch_size=8, learning_rate=0.003"
EPOCHS = 300
NOTICES: list[str] = []  # the module connection's NOTICEs


# --- fixtures and helpers ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def conn(proxy_dsn: str) -> Iterator[psycopg.Connection]:
    """One backend through the proxy for the module: torch and transformers are imported once."""
    with psycopg.connect(proxy_dsn, autocommit=True) as c:
        c.add_notice_handler(lambda d: NOTICES.append(d.message_primary or ""))
        yield c
        drop_prefixed(c, PREFIX)


@pytest.fixture(scope="module")
def sdir(files: Path) -> Iterator[Path]:
    with speech.scratch_dir(files, PREFIX) as d:
        yield d


def name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


def metrics(conn: psycopg.Connection, sql: str) -> dict[str, float]:
    return dict(conn.execute(sql).fetchall())


def temp_tables(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE '\\_\\_thanosql\\_rows%%'"
                        " AND relpersistence = 't' AND pg_table_is_visible(oid)").fetchone()[0]


def model_exists(conn: psycopg.Connection, model: str) -> bool:
    return bool(conn.execute("SELECT count(*) FROM thanosql.models WHERE name = %s", [model]).fetchone()[0])


def fails(conn: psycopg.Connection, sqlstate: str, sql: str, *contains: str) -> psycopg.Error:
    """``sql`` must fail with ``sqlstate``, mention ``contains`` and leave no temporary table behind."""
    with pytest.raises(psycopg.Error) as ei:
        conn.execute(sql)
    err = ei.value
    assert err.sqlstate == sqlstate, (err.sqlstate, str(err))
    for text in contains:
        assert text in str(err), (text, str(err))
    assert temp_tables(conn) == 0
    return err


def write_audio(path: Path, samples: np.ndarray, rate: int, fmt: str = "WAV",
                subtype: str | None = None) -> str:
    sf.write(path, samples, rate, format=fmt, subtype=subtype)
    os.chmod(path, 0o644)  # the server runs as another OS user
    return str(path)


def resample(x: np.ndarray, rate: int, new: int) -> np.ndarray:
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(np.ascontiguousarray(x)), rate, new).numpy()


# --- an independent WER/CER, to check EVALUATE against ---------------------------------------------
def _norm_en(text: str) -> str:
    """Upper case, punctuation removed, single spaces (what an English model with an upper-case
    vocabulary compares)."""
    return " ".join(re.sub(r"[^\w\s']", "", text.upper()).split())


def _levenshtein(a: tuple[Any, ...], b: tuple[Any, ...]) -> int:
    @functools.cache
    def d(i: int, j: int) -> int:  # distance between a[:i] and b[:j]
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


def wer_cer(pairs: list[tuple[str, str]]) -> tuple[float, float]:
    """Corpus WER and CER (jiwer's definition: total edits / total reference length)."""
    we = sum(_levenshtein(tuple(r.split()), tuple(h.split())) for r, h in pairs)
    ce = sum(_levenshtein(tuple(r), tuple(h)) for r, h in pairs)
    return we / sum(len(r.split()) for r, _ in pairs), ce / sum(len(r) for r, _ in pairs)


# --- the trained models ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def en(conn: psycopg.Connection, files: Path, sdir: Path) -> dict[str, Any]:
    """Wav2Vec2En fine-tuned (BUILD, max_epochs) from a tiny checkpoint with a tokenizer, on 8 words."""
    rows = speech.english_words(files, 8)
    table = speech.load_table(conn, name("en"), rows)
    ckpt = speech.write_checkpoint(sdir / "tiny_en")
    model = name("en")
    conn.execute("SET thanosql.progress_interval = 1")
    NOTICES.clear()
    start = time.monotonic()
    built = conn.execute(f"""
        BUILD MODEL {model} USING Wav2Vec2En
        OPTIONS (audio_col='audio_path', text_col='text', base_model='{ckpt}', max_epochs={EPOCHS}, {OVERFIT})
        AS SELECT audio_path, text FROM {table}""").fetchone()
    seconds = time.monotonic() - start
    print(f"\nWav2Vec2En BUILD on 8 words: {seconds:.1f} s")
    return {"model": model, "table": table, "rows": rows, "ckpt": ckpt, "built": built, "seconds": seconds,
            "notices": list(NOTICES)}


@pytest.fixture(scope="module")
def ko(conn: psycopg.Connection, files: Path, sdir: Path) -> dict[str, Any]:
    """Wav2Vec2Ko (epochs, the Korean page's spelling) from a tiny checkpoint without a tokenizer."""
    rows = speech.korean_words(files, 8)
    table = speech.load_table(conn, name("ko"), rows)
    ckpt = speech.write_checkpoint(sdir / "tiny_ko", tokens=None)
    model = name("ko")
    start = time.monotonic()
    conn.execute(f"""
        BUILD MODEL {model} USING Wav2Vec2Ko
        OPTIONS (audio_col='audio_path', text_col='text', base_model='{ckpt}', epochs={EPOCHS}, {OVERFIT})
        AS SELECT audio_path, text FROM {table}""")
    print(f"\nWav2Vec2Ko BUILD on 8 words: {time.monotonic() - start:.1f} s")
    return {"model": model, "table": table, "rows": rows}


@pytest.fixture(scope="module")
def tones(conn: psycopg.Connection, sdir: Path) -> str:
    """The tone detector, stored as a model (one step at a negligible learning rate leaves it as built)."""
    ckpt = speech.write_tone_detector(sdir / "tones")
    clip = write_audio(sdir / "three.wav", speech.tone_bursts(3), 16000)
    model = name("tones")
    conn.execute(f"""
        BUILD MODEL {model} USING Wav2Vec2En
        OPTIONS (audio_col='p', text_col='t', base_model='{ckpt}', epochs=1, batch_size=1,
                 learning_rate=1e-12)
        AS SELECT '{clip}' AS p, 'AAA' AS t""")
    return model


# --- training and evaluation -------------------------------------------------------------------------
def test_english_overfits_to_low_cer(conn: psycopg.Connection, en: dict[str, Any]) -> None:
    m = metrics(conn, f"""EVALUATE USING {en['model']} OPTIONS (audio_col='audio_path', text_col='text')
                          AS SELECT audio_path, text FROM {en['table']}""")
    print(f"\nWav2Vec2En on its 8 training words: {m}")
    assert set(m) == {"WER", "CER", "Rows"} and m["Rows"] == 8
    assert m["CER"] <= 0.1
    name_, algo, rows, epochs, _seconds, train_metrics = en["built"]
    assert (name_, algo, rows, epochs) == (en["model"], "Wav2Vec2En", 8, EPOCHS)
    assert train_metrics["train_cer"] <= 0.1 and "audio_seconds_per_second" in train_metrics
    labels, label_type, options = conn.execute(
        "SELECT labels, label_type, options FROM thanosql.models WHERE name = %s", [en["model"]]).fetchone()
    assert labels == speech.EN_TOKENS and label_type == "text"  # the checkpoint's own tokenizer
    assert options["text_case"] == "upper" and options["jamo"] is False
    assert options["freeze_feature_encoder"] is True and en["ckpt"] in options["weights"]
    history = conn.execute("SELECT h.statement, h.rows, h.metrics FROM thanosql.model_metrics h"
                           " JOIN thanosql.models m ON m.id = h.model_id WHERE m.name = %s ORDER BY h.at",
                           [en["model"]]).fetchall()
    assert [h[0] for h in history][:2] == ["BUILD", "EVALUATE"]
    assert history[1][2]["CER"] == pytest.approx(m["CER"]) and history[1][2]["WER"] == pytest.approx(m["WER"])


def test_progress_notices(en: dict[str, Any]) -> None:
    progress = [n for n in en["notices"] if "epoch" in n and "ETA" in n]
    assert progress, en["notices"]
    for word in ("Wav2Vec2En training", "epoch", "step", "loss", "CER", "s of audio/s", "ETA"):
        assert word in progress[0]
    assert any(n.startswith("Wav2Vec2En training done") for n in en["notices"])


def test_korean_jamo_vocabulary_and_syllable_output(conn: psycopg.Connection, ko: dict[str, Any]) -> None:
    m = metrics(conn, f"""EVALUATE USING {ko['model']} OPTIONS (audio_col='audio_path', text_col='text')
                          AS SELECT audio_path, text FROM {ko['table']}""")
    print(f"\nWav2Vec2Ko on its 8 training words: {m}")
    assert m["CER"] <= 0.1
    labels, options = conn.execute("SELECT labels, options FROM thanosql.models WHERE name = %s",
                                   [ko["model"]]).fetchone()
    assert labels[:2] == ["<pad>", "|"] and options["jamo"] is True
    assert all(0x1100 <= ord(t) <= 0x11FF for t in labels[2:])  # jamo, not syllables
    assert len(labels) < 40  # 8 words' jamo; their syllables would be as many as the words have
    rows = conn.execute(f"""PREDICT USING {ko['model']} OPTIONS (audio_col='audio_path')
                            AS SELECT text, audio_path FROM {ko['table']} ORDER BY id""").fetchall()
    assert all(unicodedata.is_normalized("NFC", r[2]) for r in rows)  # recomposed into syllables
    assert sum(r[2] == r[0] for r in rows) >= 6, rows


def test_evaluate_matches_an_independent_wer_and_cer(conn: psycopg.Connection, en: dict[str, Any]) -> None:
    """References that differ from what was said (extra words, case, punctuation): EVALUATE's WER and
    CER equal a computation of our own on PREDICT's transcripts."""
    query = (f"SELECT id, audio_path, CASE id % 3 WHEN 0 THEN initcap(text) || '!' WHEN 1 THEN text || ' pie'"
             f" ELSE 'the ' || text || ', please' END AS text FROM {en['table']}")
    m = metrics(conn, f"EVALUATE USING {en['model']} OPTIONS (audio_col='audio_path', text_col='text',"
                      f" batch_size=3) AS {query}")
    rows = conn.execute(f"PREDICT USING {en['model']} OPTIONS (audio_col='audio_path') AS {query}").fetchall()
    wer, cer = wer_cer([(_norm_en(r[2]), r[3]) for r in rows])
    print(f"\nEVALUATE {m}, independent WER {wer:.4f} CER {cer:.4f}")
    assert 0.3 < wer < 1.0
    assert m["WER"] == pytest.approx(wer, abs=1e-12) and m["CER"] == pytest.approx(cer, abs=1e-12)


def test_fit_keeps_the_vocabulary(conn: psycopg.Connection, en: dict[str, Any]) -> None:
    fitted = name("en_fit")
    conn.execute(f"""FIT MODEL {fitted} USING {en['model']}
                     OPTIONS (audio_col='audio_path', text_col='text', epochs=2, batch_size=8,
                              learning_rate=1e-5)
                     AS SELECT audio_path, text FROM {en['table']}""")
    m = metrics(conn, f"EVALUATE USING {fitted} OPTIONS (audio_col='audio_path')"
                      f" AS SELECT * FROM {en['table']}")
    assert m["CER"] <= 0.1
    labels, options = conn.execute("SELECT labels, options FROM thanosql.models WHERE name = %s",
                                   [fitted]).fetchone()
    assert labels == speech.EN_TOKENS and en["model"] in options["weights"]
    err = fails(conn, "22023", f"""FIT MODEL {name('en_fit2')} USING {en['model']}
                                   OPTIONS (audio_col='audio_path', text_col='text', epochs=1)
                                   AS SELECT audio_path, text || ' 7 café' AS text FROM {en['table']}""",
                "7", "É")
    assert "vocabulary" in (err.diag.message_hint or "")
    assert not model_exists(conn, name("en_fit2"))


def test_from_scratch_builds_a_character_vocabulary(conn: psycopg.Connection, ko: dict[str, Any]) -> None:
    """pretrained=False: a small random Wav2Vec2 (SCRATCH_CONFIG) and a vocabulary from the texts."""
    model = name("scratch")
    conn.execute(f"""BUILD MODEL {model} USING Wav2Vec2Ko
                     OPTIONS (audio_col='audio_path', text_col='text', pretrained=False, epochs=1,
                              batch_size=4)
                     AS SELECT audio_path, text FROM {ko['table']} WHERE id < 4""")
    labels, options = conn.execute("SELECT labels, options FROM thanosql.models WHERE name = %s",
                                   [model]).fetchone()
    assert options["weights"] == "random initialisation" and options["freeze_feature_encoder"] is False
    expected = {unicodedata.normalize("NFD", c) for r in ko["rows"][:4] for c in r["text"]}
    assert set(labels[2:]) == {j for c in expected for j in c}
    rows = conn.execute(f"PREDICT USING {model} OPTIONS (audio_col='audio_path') AS SELECT audio_path"
                        f" FROM {ko['table']} WHERE id < 2").fetchall()
    assert all(isinstance(r[1], str) for r in rows)


# --- PREDICT ---------------------------------------------------------------------------------------
def test_predict_keeps_columns_order_and_saves_a_table(conn: psycopg.Connection, en: dict[str, Any]) -> None:
    cur = conn.execute(f"""PREDICT USING {en['model']} OPTIONS (audio_col='audio_path', result_col='heard',
                                                              batch_size=3)
                           AS SELECT id, text, audio_path FROM {en['table']} ORDER BY id DESC""")
    assert [c.name for c in cur.description] == ["id", "text", "audio_path", "heard"]
    rows = cur.fetchall()
    assert [r[0] for r in rows] == list(range(7, -1, -1))
    assert all(isinstance(r[3], str) for r in rows)
    assert sum(r[3] == r[1].upper() for r in rows) >= 7
    saved = name("saved")
    out = conn.execute(f"""PREDICT USING {en['model']} OPTIONS (audio_col='audio_path', table_name='{saved}')
                           AS SELECT id, text, audio_path FROM {en['table']}""").fetchall()
    assert out == [(saved, 8)]
    got = conn.execute(f"SELECT id, predict_result FROM {saved} ORDER BY id").fetchall()
    assert [g[1] for g in got] == [r[3] for r in sorted(rows)]


def test_bytea_input_gives_the_same_results(conn: psycopg.Connection, en: dict[str, Any]) -> None:
    by_path = conn.execute(f"PREDICT USING {en['model']} OPTIONS (audio_col='audio_path')"
                           f" AS SELECT id, audio_path FROM {en['table']} ORDER BY id").fetchall()
    by_bytes = conn.execute(f"PREDICT USING {en['model']} OPTIONS (audio_col='audio')"
                            f" AS SELECT id, audio FROM {en['table']} ORDER BY id").fetchall()
    assert [r[2] for r in by_path] == [r[2] for r in by_bytes]
    m_path = metrics(conn, f"EVALUATE USING {en['model']} OPTIONS (audio_col='audio_path')"
                           f" AS SELECT * FROM {en['table']}")
    m_bytes = metrics(conn, f"EVALUATE USING {en['model']} OPTIONS (audio_col='audio')"
                            f" AS SELECT * FROM {en['table']}")
    assert m_path == m_bytes


def test_speech_survives_lossless_conversions(conn: psycopg.Connection, en: dict[str, Any],
                                              sdir: Path) -> None:
    """The training words again, upsampled to 44.1 kHz, as stereo and as FLAC: the 16 kHz mono the
    model sees is (nearly) what it was trained on, so the transcripts stay right."""
    values = []
    for r in en["rows"]:
        x, rate = sf.read(r["audio_path"], dtype="float32")
        stem = f"{r['id']}"
        up = resample(x, rate, 44100)
        values.append((write_audio(sdir / f"{stem}_44k.wav", up, 44100, subtype="FLOAT"), r["text"]))
        values.append((write_audio(sdir / f"{stem}_st.wav", np.stack([x, 0.5 * x], 1), rate), r["text"]))
        values.append((write_audio(sdir / f"{stem}.flac", x, rate, "FLAC", "PCM_16"), r["text"]))
    rows = conn.execute(f"PREDICT USING {en['model']} OPTIONS (audio_col='p') AS SELECT * FROM (VALUES "
                        + ", ".join(f"('{p}', '{t}')" for p, t in values) + ") AS v(p, t)").fetchall()
    _, cer = wer_cer([(t.upper(), h) for _, t, h in rows])
    print(f"\n44.1 kHz / stereo / FLAC: CER {cer:.4f}")
    assert cer <= 0.1


def test_rates_channels_and_formats(conn: psycopg.Connection, tones: str, sdir: Path) -> None:
    """Every sample rate, channel count and container comes out as the same 16 kHz mono signal:
    the tone detector hears exactly the bursts that were written."""
    cases = []
    for k, (rate, fmt, subtype, channels) in enumerate([
        (8000, "WAV", "PCM_16", 1), (16000, "WAV", "PCM_16", 1), (22050, "WAV", "PCM_U8", 1),
        (44100, "WAV", "FLOAT", 1), (48000, "WAV", "PCM_24", 2), (44100, "FLAC", "PCM_16", 2),
        (16000, "OGG", "VORBIS", 1), (48000, "OGG", "OPUS", 1), (22050, "MP3", "MPEG_LAYER_III", 1),
        (44100, "MP3", "MPEG_LAYER_III", 2),
    ]):
        n = 2 + k % 5
        x = speech.tone_bursts(n, rate=rate)
        if channels == 2:
            x = np.stack([x, -0.3 * x], 1)  # opposite phase: the mix is quieter, still a tone
        ext = {"WAV": "wav", "FLAC": "flac", "OGG": "ogg", "MP3": "mp3"}[fmt]
        cases.append((write_audio(sdir / f"tone_{k}.{ext}", x, rate, fmt, subtype), n, f"{fmt}/{subtype}"))
    values = ", ".join(f"('{p}', {n}, '{d}')" for p, n, d in cases)
    rows = conn.execute(f"PREDICT USING {tones} OPTIONS (audio_col='p', batch_size=4)"
                        f" AS SELECT * FROM (VALUES {values}) AS v(p, n, d)").fetchall()
    for _, n, what, heard in rows:
        assert heard == "A" * n, (what, n, heard)


def test_long_audio_is_chunked_not_truncated(conn: psycopg.Connection, tones: str, sdir: Path) -> None:
    """64 s (80 bursts) is transcribed in overlapping 20 s windows: every burst is heard once, the
    last ones included, none twice at the window seams; also from bytea."""
    x = speech.tone_bursts(80, rate=22050)
    assert len(x) / 22050 > 60
    path = write_audio(sdir / "long.wav", x, 22050)
    (heard,) = conn.execute(f"PREDICT USING {tones} OPTIONS (audio_col='p') AS SELECT '{path}' AS p"
                            ).fetchone()[1:]
    assert heard == "A" * 80
    buf = io.BytesIO()
    sf.write(buf, x, 22050, format="FLAC")
    (heard,) = conn.execute(f"PREDICT USING {tones} OPTIONS (audio_col='a') AS SELECT %s::bytea AS a",
                            [buf.getvalue()]).fetchone()[1:]
    assert heard == "A" * 80


# --- weights ---------------------------------------------------------------------------------------
def test_pretrained_weights_from_the_weights_directory(conn: psycopg.Connection, en: dict[str, Any],
                                                       files: Path) -> None:
    """pretrained=True (the default) finds facebook/wav2vec2-base-960h in <thanosql.data_dir>/weights
    (as org--name) before trying the hub."""
    target = files / "weights" / "facebook--wav2vec2-base-960h"
    shutil.rmtree(target, ignore_errors=True)  # left over by an interrupted run
    target.parent.mkdir(exist_ok=True)
    speech.readable(target.parent)
    shutil.copytree(en["ckpt"], target)
    speech.readable(target)
    try:
        model = name("pretrained")
        conn.execute(f"""BUILD MODEL {model} USING Wav2Vec2En OPTIONS (epochs=1, batch_size=4)
                         AS SELECT audio_path, text FROM {en['table']} WHERE id < 4""")
        options = conn.execute("SELECT options FROM thanosql.models WHERE name = %s", [model]).fetchone()[0]
        assert options["pretrained"] is True
        assert options["weights"] == f"pretrained facebook/wav2vec2-base-960h ({target})"
    finally:
        shutil.rmtree(target)


def test_weights_that_cannot_be_had(conn: psycopg.Connection, en: dict[str, Any], sdir: Path) -> None:
    q = f"AS SELECT audio_path, text FROM {en['table']} WHERE id < 2"
    start = time.monotonic()
    err = fails(conn, "58000", f"BUILD MODEL {name('w1')} USING Wav2Vec2En OPTIONS (epochs=1,"
                               f" base_model='thanosql-tests/no-such-model') {q}",
                "thanosql-tests/no-such-model")
    assert "pretrained=False" in (err.diag.message_hint or "")
    assert time.monotonic() - start < 30
    fails(conn, "58P01", f"BUILD MODEL {name('w2')} USING Wav2Vec2En"
                         f" OPTIONS (base_model='/no/such/ckpt') {q}", "/no/such/ckpt")
    empty = sdir / "not_a_checkpoint"
    empty.mkdir()
    speech.readable(empty)
    fails(conn, "22000", f"BUILD MODEL {name('w3')} USING Wav2Vec2En OPTIONS (base_model='{empty}') {q}",
          "config.json")
    assert not any(model_exists(conn, name(s)) for s in ("w1", "w2", "w3"))


# --- bad input: clear errors, nothing half-written -----------------------------------------------------
@pytest.fixture(scope="module")
def bad(sdir: Path) -> dict[str, str]:
    corrupt = sdir / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio at all")
    os.chmod(corrupt, 0o644)
    return {"corrupt": str(corrupt), "empty": write_audio(sdir / "empty.wav", np.zeros(0, np.float32), 16000),
            "missing": str(sdir / "no_such_file.wav")}


def test_bad_input_in_build(conn: psycopg.Connection, en: dict[str, Any], bad: dict[str, str]) -> None:
    model = name("bad")
    build = (f"BUILD MODEL {model} USING Wav2Vec2En OPTIONS (audio_col='audio_path', text_col='text',"
             f" base_model='{en['ckpt']}', epochs=1)"
             f" AS SELECT audio_path, text FROM {en['table']} UNION ALL ")
    fails(conn, "58P01", build + f"SELECT '{bad['missing']}', 'x'", bad["missing"], "row 9")
    fails(conn, "22000", build + f"SELECT '{bad['corrupt']}', 'x'", "cannot decode", bad["corrupt"])
    fails(conn, "22000", build + f"SELECT '{bad['empty']}', 'x'", "no audio samples", bad["empty"])
    fails(conn, "22004", build + "SELECT 'x.wav', NULL", 'column "text"')
    fails(conn, "22000", f"BUILD MODEL {model} USING Wav2Vec2En OPTIONS (base_model='{en['ckpt']}')"
                         " AS SELECT 'RIFF junk'::bytea AS audio_path, 'x' AS text", "cannot decode")
    fails(conn, "42703", f"BUILD MODEL {model} USING Wav2Vec2En OPTIONS (audio_col='sound')"
                         f" AS SELECT audio_path, text FROM {en['table']}", "sound", "audio_col")
    fails(conn, "42703", f"BUILD MODEL {model} USING Wav2Vec2En OPTIONS (audio_col='audio_path')"
                         f" AS SELECT audio_path FROM {en['table']}", '"text"', "text_col")
    assert not model_exists(conn, model)


def test_bad_input_in_predict_and_evaluate(conn: psycopg.Connection, en: dict[str, Any],
                                           bad: dict[str, str]) -> None:
    m = en["model"]
    fails(conn, "58P01", f"PREDICT USING {m} OPTIONS (audio_col='p') AS SELECT '{bad['missing']}' AS p",
          bad["missing"])
    fails(conn, "22000", f"PREDICT USING {m} OPTIONS (audio_col='p') AS SELECT '{bad['corrupt']}' AS p",
          "cannot decode")
    fails(conn, "22000", f"PREDICT USING {m} OPTIONS (audio_col='p') AS SELECT '{bad['empty']}' AS p",
          "no audio samples")
    fails(conn, "22000", f"PREDICT USING {m} OPTIONS (audio_col='a') AS SELECT '\\x00ff'::bytea AS a",
          "cannot decode")
    fails(conn, "22004", f"PREDICT USING {m} OPTIONS (audio_col='p') AS SELECT NULL::text AS p")
    fails(conn, "42703", f"PREDICT USING {m} OPTIONS (audio_col='sound') AS SELECT * FROM {en['table']}",
          "sound")
    fails(conn, "42704", "PREDICT USING no_such_speech_model OPTIONS (audio_col='p') AS SELECT 'x.wav' AS p",
          "no_such_speech_model")
    fails(conn, "22004", f"EVALUATE USING {m} OPTIONS (audio_col='audio_path')"
                         f" AS SELECT audio_path, NULL::text AS text FROM {en['table']}")
    fails(conn, "42703", f"EVALUATE USING {m} OPTIONS (audio_col='audio_path', text_col='words')"
                         f" AS SELECT * FROM {en['table']}", "words", "text_col")
    fails(conn, "22000", f"EVALUATE USING {m} OPTIONS (audio_col='p') AS SELECT '{bad['corrupt']}' AS p,"
                         " 'x' AS text", "cannot decode")
    fails(conn, "42704", "EVALUATE USING no_such_speech_model AS SELECT 'x.wav' AS audio_path, 'x' AS text")
    fails(conn, "42704", f"FIT MODEL {name('nf')} USING no_such_speech_model AS SELECT * FROM {en['table']}")


def test_on_error_skip(conn: psycopg.Connection, en: dict[str, Any], bad: dict[str, str]) -> None:
    """on_error='skip': unreadable rows get a NULL transcript (PREDICT), are left out of the metrics
    (EVALUATE, with a Skipped count) and of training (BUILD), each with a NOTICE."""
    m = en["model"]
    unreadable = " UNION ALL ".join(f"SELECT {i}, '{bad[k]}', 'x'"
                                    for i, k in enumerate(("corrupt", "empty", "missing"), 1))
    rows = f"SELECT 0 AS id, audio_path, text FROM {en['table']} WHERE id = 0 UNION ALL {unreadable}"
    NOTICES.clear()
    got = conn.execute(f"PREDICT USING {m} OPTIONS (audio_col='audio_path', on_error='skip')"
                       f" AS {rows} UNION ALL SELECT 4, NULL, 'y'").fetchall()
    assert [r[3] for r in got] == ["APPLE", None, None, None, None]
    assert any("skipped" in n for n in NOTICES), NOTICES
    skip = "audio_col='audio_path', on_error='skip'"
    metrics_ = metrics(conn, f"EVALUATE USING {m} OPTIONS ({skip}) AS {rows}")
    assert metrics_ == {"WER": 0.0, "CER": 0.0, "Skipped": 3.0, "Rows": 4.0}
    model = name("skip")
    conn.execute(f"BUILD MODEL {model} USING Wav2Vec2En OPTIONS ({skip}, base_model='{en['ckpt']}', epochs=1)"
                 f" AS {rows}")
    history = conn.execute("SELECT h.metrics FROM thanosql.model_metrics h JOIN thanosql.models m"
                           " ON m.id = h.model_id WHERE m.name = %s", [model]).fetchone()[0]
    assert history["skipped_rows"] == 3


def test_cancel_leaves_nothing(conn: psycopg.Connection, en: dict[str, Any]) -> None:
    """statement_timeout stops training within a batch; the model is not created."""
    model = name("cancelled")
    conn.execute("SET statement_timeout = '3s'")
    try:
        start = time.monotonic()
        fails(conn, "57014", f"""BUILD MODEL {model} USING Wav2Vec2En
                                 OPTIONS (base_model='{en['ckpt']}', epochs=10000, batch_size=8)
                                 AS SELECT audio_path, text FROM {en['table']}""")
        assert time.monotonic() - start < 20
    finally:
        conn.execute("RESET statement_timeout")
    assert not model_exists(conn, model)


def test_helpers_agree_with_each_other() -> None:
    """The test's own WER/CER is what jiwer would say on a textbook case."""
    wer, cer = wer_cer([("THE CAT SAT", "THE CAT SAT DOWN"), ("HELLO", "HALO")])
    assert wer == pytest.approx((1 + 1) / (3 + 1)) and cer == pytest.approx((5 + 2) / (11 + 5))

