"""Inputs and options that would exhaust the server's memory.

A backend that runs out of memory is killed, and PostgreSQL restarts every
session with it. So every size an ordinary role controls is bounded, and
checked before anything is allocated: image pixels and audio length from the
file's header (superuser settings thanosql.max_image_pixels and
thanosql.max_audio_seconds, SQLSTATE 54000), the sample rate, the length of a
training clip, and the options that size a statement (22023).

Safe on a 2-core CI machine even if a limit regressed: the inputs are small
files over a small limit configured for the attacking role (ALTER ROLE ... SET,
as superuser), so a missing check fails the test, never the machine. Every
attack runs as ``mallory`` (LOGIN + CREATE on the database) and ends with the
``sentinel`` check that no backend crashed.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import soundfile as sf
from PIL import Image
from statements import build, media_table, predict

Conn = psycopg.Connection
PREFIX = "lim_" + uuid.uuid4().hex[:6]  # this module's models, deleted at its end
PIXELS, SECONDS = 10_000, 2  # the limits configured for mallory


# --- inputs -----------------------------------------------------------------------------------
def png(width: int, height: int, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but holds almost no pixel data: decoding it
    fails (22000), so only a check of the header before decoding answers 54000."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def wav(rate: int, frames: int, seed: int = 0) -> bytes:
    x = (np.random.default_rng(seed).standard_normal(frames) * 0.1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# --- statements -------------------------------------------------------------------------------
def fails(sqlstate: str, fn: Callable[[], Any], *contains: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as ei:
        fn()
    err = ei.value
    assert err.sqlstate == sqlstate, (err.sqlstate, str(err))
    for text in contains:
        assert text in str(err), (text, str(err))
    return err


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _drop_models(server_dsn: str) -> Iterator[None]:
    """Models stay in the catalog when the roles that built them are dropped: delete this module's."""
    yield
    with psycopg.connect(server_dsn, autocommit=True) as c:
        c.execute("SELECT thanosql.delete_model(name) FROM thanosql.models WHERE name LIKE %s",
                  [PREFIX + "%"])


@pytest.fixture
def limited(direct: Conn, mallory: str, connect_as: Callable[..., Conn]) -> Conn:
    """mallory, with small limits set by a superuser for her role (she cannot change them)."""
    direct.execute(f'ALTER ROLE "{mallory}" SET thanosql.max_image_pixels = {PIXELS}')
    direct.execute(f'ALTER ROLE "{mallory}" SET thanosql.max_audio_seconds = {SECONDS}')
    return connect_as(mallory)


@pytest.fixture(scope="module")
def tiny_checkpoint(cluster: dict) -> Iterator[str]:
    """A timm model folder (config.json + weights) of ``test_convnext`` (~0.1 M parameters)
    below thanosql.data_dir: base_model for ConvNeXt_Tiny models that build in seconds."""
    from timm import create_model
    from timm.models import _hub

    folder = Path(cluster["files_dir"]) / f"security_{uuid.uuid4().hex[:8]}" / "test_convnext"
    _hub.save_for_hf(create_model("test_convnext", pretrained=False, num_classes=2), folder)
    for p in (folder.parent, folder, *folder.iterdir()):  # the server runs as another OS user
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    yield str(folder)
    shutil.rmtree(folder.parent, ignore_errors=True)


TINY_IMAGE = {"image_col": "x", "label_col": "y", "epochs": 1, "input_size": 32, "batch_size": 8}
SCRATCH_SPEECH = {"audio_col": "x", "text_col": "y", "epochs": 1, "batch_size": 4, "pretrained": False}


# --- images ------------------------------------------------------------------------------------
def test_image_pixels_are_checked_from_the_header(limited: Conn, tiny_checkpoint: str, direct: Conn,
                                                  sentinel: Any) -> None:
    """An image over thanosql.max_image_pixels is refused before it is decoded, in BUILD and
    PREDICT; on_error='skip' skips it like an unreadable row; a stored input_size is checked too."""
    small = [(png(8, 8, k), str(k % 2)) for k in range(4)]
    big = png_header(200, 100)  # 20,000 pixels, over mallory's 10,000 (the attack's PNG: 12000x12000)
    table = media_table(limited, [*small, (big, "1")])
    model = PREFIX + uuid.uuid4().hex[:6]
    opts = {**TINY_IMAGE, "base_model": tiny_checkpoint}
    err = fails("54000", lambda: build(limited, model, "ConvNeXt_Tiny", opts, f"SELECT * FROM {table}"),
                f"thanosql.max_image_pixels ({PIXELS})", "20000 pixels", "row 5")
    assert "thanosql.max_image_pixels" in (err.diag.message_hint or "")

    build(limited, model, "ConvNeXt_Tiny", {**opts, "on_error": "skip"}, f"SELECT * FROM {table}")
    fails("54000", lambda: predict(limited, model, {"image_col": "x"}, [small[0][0], big]),
          f"thanosql.max_image_pixels ({PIXELS})")
    got = predict(limited, model, {"image_col": "x", "on_error": "skip"}, [small[0][0], big])
    assert got[0] is not None and got[1] is None

    # The stored options are the owner's to edit: a stored size is checked like an option
    # (1025, just over the bound, keeps this harmless if the check were missing).
    direct.execute("UPDATE thanosql.models SET options = options || '{\"input_size\": 1025}' WHERE name = %s",
                   [model])
    fails("XX001", lambda: predict(limited, model, {"image_col": "x"}, [small[0][0]]), "input_size", "1024")
    assert sentinel.alive()


def test_a_role_cannot_lift_its_limits(limited: Conn, mallory: str, connect_as: Callable[..., Conn],
                                       tiny_checkpoint: str) -> None:
    """The limits are superuser settings: SET is refused once thanosql.so is loaded, and a SET
    made before that (a placeholder, when the library is not preloaded) is dropped when it loads."""
    limited.execute("SELECT thanosql.rewrite('LIST MODEL')")  # loads thanosql.so: the settings exist
    fails("42501", lambda: limited.execute("SET thanosql.max_image_pixels = 2000000000"),
          "thanosql.max_image_pixels")
    fails("42501", lambda: limited.execute("SET thanosql.max_audio_seconds = 86400"),
          "thanosql.max_audio_seconds")
    fresh = connect_as(mallory)
    try:
        fresh.execute("SET thanosql.max_image_pixels = 2000000000")  # before thanosql is used in the session
    except psycopg.errors.InsufficientPrivilege:
        pass  # thanosql.so is in shared_preload_libraries: refused at once
    table = media_table(fresh, [(png(8, 8), "0"), (png(120, 120), "1")])  # 14,400 pixels
    fails("54000", lambda: build(fresh, PREFIX + uuid.uuid4().hex[:6], "ConvNeXt_Tiny",
                                 {**TINY_IMAGE, "base_model": tiny_checkpoint}, f"SELECT * FROM {table}"),
          f"thanosql.max_image_pixels ({PIXELS})")


def test_pil_checks_embedded_images_against_the_setting() -> None:
    """Formats that decode parts while opening (an ICO's embedded PNG) meet the same limit:
    PIL's own bomb check is set to the setting, and its error is ours."""
    from thanosql_pg.algorithms.shared.images import open_image
    from thanosql_pg.algorithms.shared.limits import MediaLimits
    from thanosql_pg.errors import LimitExceeded

    buf = io.BytesIO()
    Image.new("RGB", (200, 200)).save(buf, "ICO", sizes=[(200, 200)])
    with pytest.raises(LimitExceeded) as ei:
        open_image(buf.getvalue(), limits=MediaLimits(max_image_pixels=PIXELS), what="image x.ico")
    assert ei.value.sqlstate == "54000" and f"thanosql.max_image_pixels ({PIXELS})" in ei.value.message
    assert open_image(buf.getvalue()).size == (200, 200)  # under the default limit


# --- audio -------------------------------------------------------------------------------------
def test_audio_is_checked_from_the_header(limited: Conn, sentinel: Any) -> None:
    """The 1 KB WAV that declared 1 Hz grew a backend to 23 GB (resampled to 16 kHz, then trained
    on): the sample rate is checked from the header, in BUILD and PREDICT. So is the length,
    against thanosql.max_audio_seconds. Two samples at 1 Hz are 2 s, within mallory's limit:
    only the sample rate refuses them, and they would be harmless if it did not."""
    one_hz = wav(1, SECONDS)
    clips = [(wav(16000, 8000, k), "ab"[k]) for k in range(2)]  # 0.5 s each
    model = PREFIX + uuid.uuid4().hex[:6]
    table = media_table(limited, [*clips, (one_hz, "c")])
    fails("54000", lambda: build(limited, model, "Wav2Vec2En", SCRATCH_SPEECH, f"SELECT * FROM {table}"),
          "sample rate of 1 Hz", "row 3")
    too_long = media_table(limited, [*clips, (wav(16000, 3 * 16000), "c")])  # 3 s
    err = fails("54000",
                lambda: build(limited, model, "Wav2Vec2En", SCRATCH_SPEECH, f"SELECT * FROM {too_long}"),
                f"3.0 s long, over thanosql.max_audio_seconds ({SECONDS} s)")
    assert "thanosql.max_audio_seconds" in (err.diag.message_hint or "")

    build(limited, model, "Wav2Vec2En", SCRATCH_SPEECH, f"SELECT * FROM {table} WHERE y <> 'c'")
    fails("54000", lambda: predict(limited, model, {"audio_col": "x"}, [one_hz]), "sample rate of 1 Hz")
    fails("54000", lambda: predict(limited, model, {"audio_col": "x"}, [wav(16000, 3 * 16000)]),
          "thanosql.max_audio_seconds")
    assert sentinel.alive()


def test_training_clips_are_bounded(mallory: str, connect_as: Callable[..., Conn], sentinel: Any) -> None:
    """Training runs a Wav2Vec2 over each whole clip (attention: memory grows with the square of
    its length), so training clips are bounded well below the default thanosql.max_audio_seconds."""
    conn = connect_as(mallory)
    table = media_table(conn, [(wav(16000, 8000), "a"), (wav(4000, 61 * 4000), "b")])  # 0.5 s, 61 s
    fails("54000", lambda: build(conn, PREFIX + uuid.uuid4().hex[:6], "Wav2Vec2En", SCRATCH_SPEECH,
                                 f"SELECT * FROM {table}"),
          "61.0 s long", "speech recognition trains on (60 s)")
    assert sentinel.alive()


def test_odd_sample_rates_resample_with_a_small_kernel() -> None:
    """torchaudio's kernel for 44101 Hz -> 16 kHz would be 16000 x 44115 floats (2.8 GB):
    such rates are resampled from the nearest multiple of 100 Hz instead."""
    from thanosql_pg.algorithms.shared import audio as sr

    assert sr.resample_rate(44100) == 44100 and sr.resample_rate(8000) == 8000
    assert sr.resample_rate(44101) == 44100 and sr.resample_rate(383999) == 384000
    for rate in (44101, 383999, 4001, 12345):
        o, n, width = sr.kernel_shape(sr.resample_rate(rate), sr.SAMPLE_RATE)
        assert n * (o + 2 * width) <= sr.MAX_RESAMPLE_KERNEL, rate


def test_block_resampling_equals_resampling_at_once() -> None:
    """Audio is resampled block by block as it is decoded (memory: a block plus the output);
    the result is that of resampling the whole signal."""
    import torch
    import torchaudio.functional as AF

    from thanosql_pg.algorithms.shared.audio import Resampler

    x = np.random.default_rng(0).standard_normal(44100 * 3 + 77).astype(np.float32)
    for rate in (8000, 22050, 44100, 48000):
        whole = AF.resample(torch.from_numpy(x), rate, 16000).numpy()
        r = Resampler(rate, block=20_000)
        for i in range(0, len(x), 7_001):
            r.push(x[i:i + 7_001])
        got = r.finish()
        assert got.shape == whole.shape and np.abs(got - whole).max() < 1e-5, rate


# --- options -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("algo", "opts", "option"), [
    ("ConvNeXt_Tiny", {"epochs": 10_001}, "epochs"),
    ("ConvNeXt_Tiny", {"max_epochs": 10**9}, "epochs"),
    ("ConvNeXt_Tiny", {"batch_size": 4097}, "batch_size"),
    ("ConvNeXt_Tiny", {"input_size": 1025}, "input_size"),
    ("ConvNeXt_Tiny", {"batch_size": 4096, "input_size": 1024}, "batch_size 4096 at input_size 1024"),
    ("SimCLR", {"embedding_dim": 2001}, "embedding_dim"),
    ("SimCLR", {"input_size": 100_000}, "input_size"),
    ("Wav2Vec2En", {"batch_size": 65}, "batch_size"),
])
def test_options_that_size_a_statement_are_bounded(mallory: str, connect_as: Callable[..., Conn], algo: str,
                                                   opts: dict[str, Any], option: str) -> None:
    """Out-of-range values are refused (22023, naming the option) before any row is read."""
    conn = connect_as(mallory)
    fails("22023", lambda: build(conn, PREFIX + uuid.uuid4().hex[:6], algo, opts, "SELECT 1 AS x"), option)


@pytest.mark.parametrize(("statement", "option"), [
    ("BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (epochs=100000) AS SELECT * FROM t", "epochs"),
    ("BUILD MODEL m USING SimCLR OPTIONS (input_size=4096) AS SELECT * FROM t", "input_size"),
    ("PREDICT USING m OPTIONS (batch_size=1000000) AS SELECT * FROM t", "batch_size"),
    ("SEARCH IMAGE USING m OPTIONS (search_by='image', search_input='q.png', emb_col='e', top_k=1000001)"
     " AS SELECT * FROM t", "top_k"),
])
def test_the_preprocessor_refuses_them_too(mallory: str, connect_as: Callable[..., Conn], statement: str,
                                           option: str) -> None:
    conn = connect_as(mallory)
    fails("22023", lambda: conn.execute("SELECT thanosql.rewrite(%s)", [statement]),
          f'option "{option}" must be at most')
