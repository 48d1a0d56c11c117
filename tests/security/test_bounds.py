"""Sizes an ordinary role controls that reached the work of a backend unchecked.

- A stored architecture is untrusted input: a speech model re-saved with its
  feature encoder's strides all 1 (``conv_stride=[1]*7``) keeps every weight's shape and
  loaded, and then made a frame of every sample: a 0.4 s clip took 3.3 s instead of
  0.03 s, quadratic in its length. Every family now checks the architecture it reads
  back (strides, kernels, layers, heads, widths, vocabulary, positions, the feature
  encoder's total downsampling, input_size ...) against its own bounds before anything
  is built for it: XX001 naming the value out of bounds.
- CLIP's texts were unbounded: 50 MB of search text peaked at 2.5 GB while it
  was tokenized. A text over the superuser setting thanosql.max_text_bytes is refused
  before it is tokenized (54000, naming the setting), wherever CLIP tokenizes user text.
- EVALUATE on a hot standby counted only its inputs' bytes toward its 1 GB
  bound: 1,400 rows of empty images with 1 MB labels peaked at 2.5 GB. Every byte and
  every row counts now, measured by the server before any row reaches Python (54000).

Safe on a 2-core CI machine even where a check regressed: the rewritten models are tiny,
the attack inputs short, and the standby's bounds lowered for the session that tests them.
The stored bytes are rewritten as superuser (the point is that they are untrusted, however
they were written); everything else runs as ``mallory`` (LOGIN + CREATE on the database).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import psycopg
import pytest
import soundfile as sf
from expect import fails
from PIL import Image
from replicas import caught_up
from statements import build, media_table, predict

from thanosql_pg import datasets
from thanosql_pg.errors import DataCorrupted

from .conftest import dsn_as

Conn = psycopg.Connection
PREFIX = "bnd_" + uuid.uuid4().hex[:6]  # this module's models, deleted at its end
ROOT = Path(__file__).resolve().parents[2]
THANOSQL = [sys.executable, "-m", "thanosql_pg.cli"]
CHUNK = 1 << 20  # the catalog's chunk size (server.catalog.CHUNK_BYTES)
CAPTIONS = ["a picture of zero", "a picture of one", "the digit two", "the digit three"]
CLIP_OPTS = {"image_col": "x", "text_col": "y", "epochs": 1, "batch_size": 4, "input_size": 16,
             "embedding_dim": 8, "pretrained": False}
SEARCH_TEXT = json.dumps({"search_by": "text", "emb_col": "e"})


# --- inputs and statements ----------------------------------------------------------------------
def png(seed: int = 0, size: int = 8) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def wav(frames: int, seed: int = 0) -> bytes:
    x = (np.random.default_rng(seed).standard_normal(frames) * 0.1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def search_text(conn: Conn, model: str, text: str) -> str:
    """SEARCH IMAGE's query embedding of a text, as the rewrite computes it ($n: the client's text)."""
    return conn.execute("SELECT thanosql.embed_query(%s, %s::jsonb, %s::text)::text",
                        [model, SEARCH_TEXT, text]).fetchone()[0]


def timed(fn: Callable[[], Any]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def peak_rss_mb(conn: Conn) -> int | None:
    """The peak resident memory of ``conn``'s backend (VmHWM), when this process may read it."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) >> 10 for line in status.splitlines() if line.startswith("VmHWM:")),
                None)


# --- the stored bytes, rewritten (as superuser: they are untrusted however they were written) ----
def current_version(direct: Conn, model: str) -> tuple[int, int]:
    return direct.execute("SELECT id, version FROM thanosql.models WHERE name = %s", [model]).fetchone()


def rewrite_metadata(direct: Conn, model: str, edit: Callable[[dict[str, str]], None]) -> None:
    """Rewrite the safetensors metadata of ``model``'s stored weights with ``edit``, and
    record the new bytes' size and hash, as a seal of them would: the server loads them."""
    model_id, version = current_version(direct, model)
    payload = b"".join(r[0] for r in direct.execute(
        "SELECT data FROM thanosql.model_chunks WHERE model_id = %s AND version = %s ORDER BY seq",
        [model_id, version]))
    (n,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8:8 + n])
    edit(header["__metadata__"])
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    new = struct.pack("<Q", len(text)) + text + payload[8 + n:]
    digest = hashlib.sha256(b"".join(hashlib.sha256(new[i:i + CHUNK]).digest()
                                     for i in range(0, len(new), CHUNK))).hexdigest()
    with direct.transaction():
        direct.execute("DELETE FROM thanosql.model_chunks WHERE model_id = %s AND version = %s",
                       [model_id, version])
        with direct.cursor() as cur:
            cur.executemany("INSERT INTO thanosql.model_chunks (model_id, version, seq, data)"
                            " VALUES (%s, %s, %s, %s)",
                            [(model_id, version, k, new[i:i + CHUNK])
                             for k, i in enumerate(range(0, len(new), CHUNK))])
        direct.execute("UPDATE thanosql.model_versions SET payload_sha256 = %s, size_bytes = %s"
                       " WHERE model_id = %s AND version = %s", [digest, len(new), model_id, version])
        direct.execute("UPDATE thanosql.models SET size_bytes = %s WHERE id = %s", [len(new), model_id])


def rewrite_options(direct: Conn, model: str, path: list[str], value: Any) -> None:
    direct.execute("UPDATE thanosql.models SET options = jsonb_set(options, %s, %s::jsonb) WHERE name = %s",
                   [path, json.dumps(value), model])


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _drop_models(server_dsn: str) -> Iterator[None]:
    """Models stay in the catalog when the roles that built them are dropped: delete this module's."""
    yield
    with psycopg.connect(server_dsn, autocommit=True) as c:
        c.execute("DELETE FROM thanosql.models WHERE name LIKE %s", [PREFIX + "%"])


@pytest.fixture(scope="module")
def clip_model(server_dsn: str) -> Iterator[tuple[str, str]]:
    """(owner, model): a tiny CLIP built from scratch by an ordinary role of this module."""
    role, model = f"bounds_{uuid.uuid4().hex[:8]}", PREFIX + "_clip"
    with psycopg.connect(server_dsn, autocommit=True) as su:
        dbname = su.info.dbname
        su.execute(f'CREATE ROLE "{role}" LOGIN')
        su.execute(f'GRANT CREATE ON DATABASE "{dbname}" TO "{role}"')
        try:
            with psycopg.connect(dsn_as(server_dsn, role), autocommit=True) as conn:
                table = media_table(conn, [(png(k), c) for k, c in enumerate(CAPTIONS)])
                build(conn, model, "CLIP", CLIP_OPTS, f"SELECT x, y FROM {table}")
            yield role, model
        finally:
            su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role])
            su.execute("DELETE FROM thanosql.models WHERE owner = %s::regrole", [f'"{role}"'])
            su.execute(f'DROP OWNED BY "{role}" CASCADE')
            su.execute(f'REVOKE ALL ON DATABASE "{dbname}" FROM "{role}"')
            su.execute(f'DROP ROLE "{role}"')


# --- stored architectures are untrusted input ----------------------------------------------------
def _wav2vec2(**changes: Any) -> dict[str, Any]:
    from transformers import Wav2Vec2Config

    return json.loads(Wav2Vec2Config(**changes).to_json_string(use_diff=False))


WAV2VEC2_CHECKPOINTS = {
    "wav2vec2-base-960h": {"vocab_size": 32},
    "wav2vec2-large-xlsr": {"vocab_size": 1205, "hidden_size": 1024, "num_hidden_layers": 24,
                            "num_attention_heads": 16, "intermediate_size": 4096, "conv_bias": True,
                            "feat_extract_norm": "layer", "do_stable_layer_norm": True},
    "wav2vec2-xls-r-2b": {"vocab_size": 100, "hidden_size": 1920, "num_hidden_layers": 48,
                          "num_attention_heads": 16, "intermediate_size": 7680, "conv_bias": True,
                          "feat_extract_norm": "layer", "do_stable_layer_norm": True},
    "tests/datasets tiny": {"vocab_size": 30, "pad_token_id": 0, **datasets.TINY_WAV2VEC2},
    "tests/speech.py tone detector": {
        "vocab_size": 30, "pad_token_id": 0, "hidden_size": 4, "num_hidden_layers": 0,
        "num_attention_heads": 1, "intermediate_size": 8, "conv_dim": (2,) * 7, "conv_bias": True,
        "feat_extract_norm": "layer", "do_stable_layer_norm": True, "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 1},
}


def test_real_architectures_are_within_the_bounds() -> None:
    """The bounds admit every checkpoint the families support and the test-suite's toys."""
    import timm
    import torch
    from transformers import CLIPConfig

    from thanosql_pg.algorithms import registry
    from thanosql_pg.algorithms.clip import config as clip_config
    from thanosql_pg.algorithms.shared import weights
    from thanosql_pg.algorithms.speech_recognition import config as speech_config
    from thanosql_pg.algorithms.speech_recognition import model as speech

    for name, changes in [*WAV2VEC2_CHECKPOINTS.items(),
                          ("from scratch", {"vocab_size": 40, "pad_token_id": 0, **speech.SCRATCH_CONFIG})]:
        stored = _wav2vec2(**changes)
        rebuilt = speech_config.build(stored)
        assert {k: v for k, v in rebuilt.to_dict().items() if k in speech_config.checked(stored)} == \
            {k: stored[k] for k in speech_config.checked(stored) if k in stored}, name

    def tower(width: int, heads: int, layers: int, **more: int) -> dict[str, int]:
        return {"hidden_size": width, "intermediate_size": 4 * width, "num_attention_heads": heads,
                "num_hidden_layers": layers, **more}

    vit_b32 = CLIPConfig(text_config=tower(512, 8, 12, vocab_size=49408),
                         vision_config=tower(768, 12, 12, image_size=224, patch_size=32), projection_dim=512)
    vit_l14_336 = CLIPConfig(text_config=tower(768, 12, 12, vocab_size=49408),
                             vision_config=tower(1024, 16, 24, image_size=336, patch_size=14),
                             projection_dim=768)
    for cfg in (vit_b32, vit_l14_336):
        clip_config.build_config(clip_config.compact_config(cfg))
    tiny = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "vocab_size": 80, "max_position_embeddings": 32,
                                   "bos_token_id": 78, "eos_token_id": 79, "pad_token_id": 79},
                      vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "image_size": 16, "patch_size": 4},
                      projection_dim=16)  # datasets.write_tiny_clip's
    clip_config.build_config(clip_config.compact_config(tiny))

    # timm: the registry's architectures build on the meta device and adopt weights of their shapes
    names = [p["timm_name"] for p in registry.family("image_classification").algorithms.values()]
    for arch in [*names, "resnet18", "test_convnext"]:
        with torch.device("meta"):
            net = timm.create_model(arch, pretrained=False, num_classes=3)
        state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in net.state_dict().items()}
        assert weights.check_arch(arch)
        weights.adopt_state(lambda a=arch: timm.create_model(a, pretrained=False, num_classes=3), state)
        stored = SimpleNamespace(name=arch,
                                 options=dict(zip(("mean", "std"), _normalization(net), strict=True)))
        mean, std = weights.stored_normalization(stored)
        assert len(mean) == len(std) == 3


def _normalization(net: Any) -> tuple[list[float], list[float]]:
    cfg = net.pretrained_cfg or {}
    return list(cfg.get("mean", (0.485, 0.456, 0.406))), list(cfg.get("std", (0.229, 0.224, 0.225)))


@pytest.mark.parametrize(("change", "named"), [
    ({"conv_stride": [1] * 7}, "conv_stride"),  # the attack: weights unchanged, 320x the frames
    ({"conv_stride": [5, 2, 2, 2, 2, 2, 1]}, "conv_stride"),
    ({"conv_stride": [5, 2, 2, 2, 2, 2]}, "conv_stride"),  # not one per layer
    ({"conv_kernel": [64] * 7}, "conv_kernel"),
    ({"conv_dim": [512] * 40, "conv_stride": [1] * 40, "conv_kernel": [1] * 40}, "conv_dim"),
    ({"num_attention_heads": 768}, "num_attention_heads"),  # heads of one channel: same weights
    ({"num_attention_heads": 48}, "num_attention_heads"),  # 16 channels wide: allowed ...
    ({"num_hidden_layers": 10_000}, "num_hidden_layers"),
    ({"hidden_size": 1 << 20}, "hidden_size"),
    ({"num_conv_pos_embeddings": 100_000}, "num_conv_pos_embeddings"),
    ({"vocab_size": 10**9}, "vocab_size"),
    ({"hidden_act": "__import__('os')"}, "hidden_act"),
    ({"layerdrop": float("nan")}, "layerdrop"),
    ({"add_adapter": True}, "add_adapter"),
    ({"model_type": "hubert"}, "hubert"),
])
def test_out_of_bounds_speech_architectures_are_refused(change: dict[str, Any], named: str) -> None:
    from thanosql_pg.algorithms.speech_recognition import config as speech_config

    stored = {**_wav2vec2(vocab_size=32), **change}
    if change == {"num_attention_heads": 48}:  # 768 / 48 = 16 channels a head: within the bounds
        assert speech_config.checked(stored)["num_attention_heads"] == 48
        return
    with pytest.raises(DataCorrupted, match=named):
        speech_config.checked(stored)


@pytest.mark.parametrize(("path", "value", "named"), [
    ("text.num_attention_heads", 64, "num_attention_heads"),  # 64 heads of one channel: same weights
    ("vision.num_attention_heads", 16, "num_attention_heads"),
    ("text.max_position_embeddings", 4096, "max_position_embeddings"),
    ("vision.patch_size", 1, "patches"),  # 1,024 tokens an image at 32 pixels ... 16 is fine
])
def test_out_of_bounds_clip_architectures_are_refused(path: str, value: Any, named: str) -> None:
    from thanosql_pg.algorithms.clip import config as clip_config

    d = clip_config.scratch_config(64, 128)
    tower, key = path.split(".")
    d[tower][key] = value
    with pytest.raises(DataCorrupted, match=named):
        clip_config.build_config(d)


def _timm_record(family: str) -> tuple[Any, Any, bytes]:
    """(model module, a stored model's record, its payload): a tiny timm network as BUILD stores it."""
    from types import SimpleNamespace

    import timm

    from thanosql_pg.algorithms.image_classification import model as classifier
    from thanosql_pg.algorithms.shared import weights
    from thanosql_pg.algorithms.simclr import model as simclr

    options = {"arch": "test_convnext", "input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    if family == "simclr":
        net = simclr.SimCLRNet(timm.create_model("test_convnext", pretrained=False, num_classes=0), 8)
        record = SimpleNamespace(name="m", format=simclr.FORMAT, labels=None, label_type=None,
                                 options={**options, "embedding_dim": 8})
        return simclr, record, weights.state_payload(net)
    net = timm.create_model("test_convnext", pretrained=False, num_classes=2)
    record = SimpleNamespace(name="m", format=classifier.FORMAT, labels=["a", "b"], label_type="text",
                             options=options)
    return classifier, record, weights.state_payload(net)


@pytest.mark.parametrize("family", ["image_classification", "simclr"])
@pytest.mark.parametrize(("change", "named"), [
    ({"mean": [0.5, 0.5]}, "mean"),
    ({"std": [0.5, 0.0, 0.5]}, "std"),
    ({"std": [0.5, float("nan"), 0.5]}, "std"),
    ({"arch": "test_vit"}, "do not match"),  # another architecture than the weights'
    ({"embedding_dim": 16}, "do not match"),  # SimCLR's head (a classifier ignores it)
    ({"labels": ["a", "b", "c"]}, "do not match"),  # a classifier's head (SimCLR has no labels)
])
def test_stored_timm_models_are_checked(family: str, change: dict[str, Any], named: str) -> None:
    """What the image families read back (architecture, sizes, normalization, the head's
    rows) is checked before a network is built for it: XX001 naming the model."""
    module, record, payload = _timm_record(family)
    simclr = family == "simclr"
    irrelevant = ("embedding_dim" in change and not simclr) or ("labels" in change and simclr)
    for key, value in change.items():
        if key == "labels":
            record.labels = value
        else:
            record.options[key] = value
    if irrelevant:
        module.load(record, payload, "cpu")
        return
    for form in (payload, memoryview(bytearray(payload))):  # the catalog's bytes, the cache's mapping
        with pytest.raises(DataCorrupted, match=named) as ei:
            module.load(record, form, "cpu")
        assert 'model "m"' in ei.value.message


def test_a_tensor_of_no_bytes_cannot_claim_a_shape() -> None:
    """A mapped payload's tensor must hold exactly its shape's bytes: one of zero bytes that
    claimed 10^12 elements would have been allocated."""
    import torch
    from safetensors.torch import save

    from thanosql_pg.algorithms.shared import weights

    payload = save({"w": torch.zeros(0)})
    (n,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8:8 + n])
    header["w"]["shape"] = [10**6, 10**6]
    text = json.dumps(header).encode()
    forged = struct.pack("<Q", len(text)) + text
    with pytest.raises(DataCorrupted):
        weights.state_dict(memoryview(bytearray(forged)))
    with pytest.raises(DataCorrupted):
        weights.state_dict(forged)


def test_a_rewritten_speech_architecture_fails_fast(mallory: str, connect_as: Callable[..., Conn],
                                                    direct: Conn, files: Path, sentinel: Any) -> None:
    """The attack: mallory builds a tiny speech model, its stored config gets conv_stride=[1]*7
    (every weight keeps its shape), and PREDICT must refuse it at once instead of running."""
    conn = connect_as(mallory)
    where = files / f"bounds_{uuid.uuid4().hex[:8]}"
    try:
        folder = datasets.write_tiny_wav2vec2(where / "tiny_en")
        os.chmod(where, 0o755)  # the server runs as another OS user
        table = media_table(conn, [(wav(8000, 0), "a b"), (wav(8000, 1), "b a")])
        model = PREFIX + uuid.uuid4().hex[:6]
        build(conn, model, "Wav2Vec2En", {"audio_col": "x", "text_col": "y", "epochs": 1, "batch_size": 2,
                                          "base_model": folder}, f"SELECT x, y FROM {table}")
    finally:
        shutil.rmtree(where, ignore_errors=True)
    clip = wav(6400, 2)  # 0.4 s
    assert len(predict(conn, model, {"audio_col": "x"}, [clip])) == 1  # the model works as built

    def strides_of_one(meta: dict[str, str]) -> None:
        config = json.loads(meta["config"])
        config["conv_stride"] = [1] * len(config["conv_stride"])
        meta["config"] = json.dumps(config)

    rewrite_metadata(direct, model, strides_of_one)
    attacker = connect_as(mallory)  # a new backend: nothing of the model cached
    fails(lambda: predict(attacker, model, {"audio_col": "x"}, [clip]), "XX001", "conv_stride", model)
    # the second time (torch imported): refused at once, as a stored model with
    # valid strides runs (it took 3.3 s for this clip, quadratic in its length)
    took = timed(lambda: fails(lambda: predict(attacker, model, {"audio_col": "x"}, [clip]), "XX001",
                               "conv_stride [1, 1, 1, 1, 1, 1, 1] makes a frame of every 1 samples"))
    print(f"\nspeech model with conv_stride=[1]*7: refused in {took:.3f} s")
    assert took < 1.0, took
    assert sentinel.alive()


def test_a_rewritten_clip_architecture_fails_fast(clip_model: tuple[str, str],
                                                  connect_as: Callable[..., Conn], direct: Conn,
                                                  sentinel: Any) -> None:
    """CLIP's counterpart: the number of attention heads shapes no weight, so a stored config
    with heads of one channel (64 instead of 4 on the from-scratch model's width of 64) loaded
    and multiplied the attention's cost. Refused now; so are more positions than a text needs."""
    role, model = clip_model
    conn = connect_as(role)
    original = direct.execute("SELECT options FROM thanosql.models WHERE name = %s", [model]).fetchone()[0]
    assert search_text(conn, model, "a picture of one").startswith("[")
    try:
        for path, value, named in ((["config", "vision", "num_attention_heads"], 64, "num_attention_heads"),
                                   (["config", "text", "num_attention_heads"], 32, "num_attention_heads"),
                                   (["input_size"], 512, "input_size 512")):
            rewrite_options(direct, model, path, value)
            attacker = connect_as(role)
            fails(lambda c=attacker: search_text(c, model, "a picture of one"), "XX001", named, model)
            direct.execute("UPDATE thanosql.models SET options = %s WHERE name = %s",
                           [psycopg.types.json.Jsonb(original), model])
    finally:
        direct.execute("UPDATE thanosql.models SET options = %s WHERE name = %s",
                       [psycopg.types.json.Jsonb(original), model])
    assert sentinel.alive()


# --- CLIP's texts are bounded ---------------------------------------------------------------------
def test_clip_texts_are_bounded(clip_model: tuple[str, str], connect_as: Callable[..., Conn],
                                sentinel: Any) -> None:
    """Search text, CONVERT of a text column and BUILD's captions: a text over
    thanosql.max_text_bytes (default 64 KiB, UTF-8) is refused before it is tokenized."""
    role, model = clip_model
    conn = connect_as(role)
    limit = int(conn.execute("SELECT setting FROM pg_settings WHERE name = 'thanosql.max_text_bytes'")
                .fetchone()[0])
    assert limit == 65536
    search_text(conn, model, "a" * limit)  # at the limit: embedded (cut to the model's context)
    search_text(conn, model, "é" * (limit // 2))  # 2 bytes a character
    for text in ("a" * (limit + 1), "é" * (limit // 2) + "a"):
        err = fails(lambda t=text: search_text(conn, model, t), "54000", "thanosql.max_text_bytes",
                    f"{limit + 1} bytes")
        assert "thanosql.max_text_bytes" in (err.diag.message_hint or "")

    # CONVERT of a text column (the inline form's batches) and BUILD's captions
    texts = media_table(conn, [(b"", "a short text"), (b"", "b" * (limit + 1))])
    fails(lambda: conn.execute(
        "SELECT thanosql.convert_batch(thanosql.prepare('convert', %s, %s::jsonb),"
        f" ARRAY(SELECT pg_catalog.to_jsonb(y) FROM {texts}))",
        [model, json.dumps({"text_col": "y", "convert_type": "text"})]).fetchone(),
        "54000", "thanosql.max_text_bytes", f"{limit + 1} bytes")
    long_caption = (png(3), "c" * (limit + 1))
    images = media_table(conn, [*[(png(k), c) for k, c in enumerate(CAPTIONS[:3])], long_caption])
    fails(lambda: build(conn, PREFIX + uuid.uuid4().hex[:6], "CLIP", CLIP_OPTS, f"SELECT x, y FROM {images}"),
          "54000", "thanosql.max_text_bytes", "row 4")

    # The attack's 50 MB search text, in a backend of its own (its peak memory is this
    # statement's): refused within a second, the memory flat (it peaked at 2.5 GB being tokenized)
    fresh = connect_as(role)
    search_text(fresh, model, "a picture of two")  # torch and the model loaded
    before = peak_rss_mb(fresh)
    took = timed(lambda: fails(lambda: search_text(fresh, model, "Ab " * ((50 << 20) // 3)), "54000",
                               "thanosql.max_text_bytes"))
    after = peak_rss_mb(fresh)
    print(f"\n50 MB search text: refused in {took:.2f} s; backend peak RSS {before} -> {after} MB")
    assert took < 2.0, took
    if before is not None and after is not None:
        assert after - before < 600, (before, after)  # the text itself, as SQL and as Python hold it
    assert sentinel.alive()


# --- EVALUATE on a hot standby counts every byte and row ------------------------------------------
# Lowers the standby's bounds for the calling session only (a superuser's helper: it sets
# thanosql_pg.server.rows's module constants in this backend), so the test needs no
# gigabyte of rows; EXECUTE is the superuser's alone.
BOUNDS_HELPER = f"public.{PREFIX}_memory_rows"


@pytest.fixture(scope="module")
def lower_bounds(server_dsn: str) -> Iterator[str]:
    with psycopg.connect(server_dsn, autocommit=True) as su:
        su.execute(f"""CREATE FUNCTION {BOUNDS_HELPER}(max_bytes bigint, max_rows bigint) RETURNS void
            LANGUAGE plpython3u AS $$
import thanosql_pg.server.rows as d
d.MEMORY_ROWS_BYTES, d.MEMORY_ROWS_MAX = max_bytes, max_rows
$$""")
        su.execute(f"REVOKE ALL ON FUNCTION {BOUNDS_HELPER}(bigint, bigint) FROM PUBLIC")
        try:
            yield BOUNDS_HELPER
        finally:
            su.execute(f"DROP FUNCTION {BOUNDS_HELPER}(bigint, bigint)")


def evaluate(conn: Conn, model: str, query: str) -> dict[str, float]:
    return dict(conn.execute("SELECT * FROM thanosql.evaluate(%s, %s::jsonb, %s)",
                             [model, json.dumps({"image_col": "x", "label_col": "y", "on_error": "skip"}),
                              query]).fetchall())


def test_standby_evaluate_counts_every_byte_and_row(replica: dict, clip_model: tuple[str, str], cluster: dict,
                                                    lower_bounds: str, server_dsn: str) -> None:
    """On a standby EVALUATE holds its rows in memory: labels and the rows' own objects count
    as much as inputs, and so does the number of rows. Over the bounds: 54000 with a hint,
    measured by the server before any row reaches the backend's Python."""
    role, model = clip_model
    with psycopg.connect(server_dsn, autocommit=True) as p, \
         psycopg.connect(replica["replica"], autocommit=True) as s:
        caught_up(p, s)
        assert s.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        s.execute("SELECT thanosql.rewrite('LIST MODEL')")  # thanosql_pg loaded in this backend
        s.execute(f"SELECT {lower_bounds}(%s, %s)", [1 << 20, 5000])  # 1 MB, 5,000 rows
        s.execute(f'SET ROLE "{role}"')  # from here on: the ordinary role
        # the attack's rows, scaled to the lowered bound: empty images, large labels
        labels = "SELECT ''::bytea AS x, repeat('y', 100000) AS y FROM generate_series(1, 20)"
        err = fails(lambda: evaluate(s, model, labels), "54000", "at most 1 MB", "standby")
        assert "primary" in (err.diag.message_hint or "")
        # empty inputs and labels count too: every row's objects
        fails(lambda: evaluate(s, model, "SELECT ''::bytea AS x, '' AS y FROM generate_series(1, 2100)"),
              "54000", "at most 1 MB")
        nulls = "SELECT NULL::bytea AS x, NULL::text AS y FROM generate_series(1, 5001)"
        fails(lambda: evaluate(s, model, nulls), "54000", "at most 5000 rows", "returns more")
        # within the bounds it evaluates as on the primary (a label of non-ASCII text counts
        # four bytes a character: 100 such rows hold 400 kB of it)
        values = ", ".join(f"('\\x{png(k).hex()}'::bytea, '{c}')" for k, c in enumerate(CAPTIONS))
        metrics = evaluate(s, model, f"SELECT * FROM (VALUES {values}) AS v(x, y)")
        assert metrics["Rows"] == 4
        assert evaluate(s, model, "SELECT ''::bytea AS x, repeat('é', 1000) AS y FROM generate_series(1, 100)"
                        f" UNION ALL SELECT * FROM (VALUES {values}) AS v(x, y)")["Rows"] == 104

    # With the real bounds (1 GB, 1,000,000 rows), as the ordinary role in a session of her
    # own: the attack's 3 M empty rows (they peaked at 1.4 GB) are refused before any is read
    with psycopg.connect(dsn_as(replica["replica"], role), autocommit=True) as s:
        assert evaluate(s, model, f"SELECT * FROM (VALUES {values}) AS v(x, y)")["Rows"] == 4  # torch loaded
        before = peak_rss_mb(s)
        took = timed(lambda: fails(lambda: evaluate(s, model, "SELECT ''::bytea AS x, '' AS y"
                                                              " FROM generate_series(1, 3000000)"),
                                   "54000", "at most 1000000 rows", "returns more"))
        after = peak_rss_mb(s)
        print(f"\n3 M empty rows on the standby: refused in {took:.2f} s; backend peak RSS"
              f" {before} -> {after} MB")
        if before is not None and after is not None:
            assert after - before < 300, (before, after)
