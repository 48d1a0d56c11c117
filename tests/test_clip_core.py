"""The CLIP family's model (thanosql_pg.algorithms.clip.model) without a database: tiny
models, storage round trips (bytes and the server's mapped cache, a memoryview),
checkpoint folders written here with save_pretrained (no download), the text rows'
checks and truncation notices, and stored models damaged in every way a catalog row's
owner could. Retrieval quality is tests/test_clip.py's (through the server).
"""

from __future__ import annotations

import json
import mmap
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from thanosql_pg import datasets
from thanosql_pg.algorithms.clip import config as clip_config
from thanosql_pg.algorithms.clip import model as clip
from thanosql_pg.algorithms.clip import text as clip_text
from thanosql_pg.algorithms.contract import Row
from thanosql_pg.algorithms.shared import training, weights
from thanosql_pg.algorithms.shared.limits import DEFAULT_LIMITS
from thanosql_pg.errors import DataCorrupted, DataError, InvalidOption, ValueTypeMismatch, WeightsUnavailable

CPU = torch.device("cpu")


def scratch(seed: int = 0) -> clip.ClipEmbedder:
    with training.seeded(CPU, seed):
        return clip.scratch(16, 32, CPU)


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def train_steps(emb: clip.ClipEmbedder, batches: list[tuple[np.ndarray, list[str]]], seed: int = 0) -> float:
    """Optimizer steps as BUILD takes them (shared Stepper, augmented images); the last loss."""
    stepper = training.Stepper(emb.net, learning_rate=1e-3, weight_decay=clip.WEIGHT_DECAY,
                               total_steps=len(batches), warmup_fraction=0.1, device=CPU,
                               max_grad_norm=clip.MAX_GRAD_NORM)
    gen = torch.Generator().manual_seed(seed)
    emb.net.train()
    loss = torch.tensor(float("nan"))
    for images, captions in batches:
        emb.clamp_temperature()
        loss, _, _ = emb.contrastive(images, captions, gen)
        stepper.step(loss)
    emb.net.eval()
    return float(loss.detach())


def record(emb: clip.ClipEmbedder, **changes: Any) -> SimpleNamespace:
    """The catalog row BUILD writes for ``emb``: its options are JSON."""
    options = json.loads(json.dumps({"input_size": emb.input_size, **emb.options()}))
    return SimpleNamespace(name="m", options={**options, **changes}, format=clip.FORMAT, labels=None,
                           label_type=None)


def round_trip(emb: clip.ClipEmbedder) -> clip.ClipEmbedder:
    return clip.load(record(emb), emb.payload(), "cpu")


class Reader:
    """contract.Reader for text rows: they are never read as files."""

    limits = DEFAULT_LIMITS
    column = "caption"

    def __init__(self) -> None:
        self.notices: list[str] = []

    def read(self, row: Row) -> bytes:
        raise AssertionError("texts are not read as files")

    def describe(self, row: Row) -> str:
        return f"row {row.rn}"

    def resolve_path(self, path: str, *, expand_user: bool = False) -> str:
        return path

    def notice(self, message: str, progress: Any = None) -> None:
        self.notices.append(message)


# --- storage ----------------------------------------------------------------------------------
def test_scratch_round_trip_gives_identical_embeddings(tmp_path: Path) -> None:
    emb = scratch()
    images = random_images(6, 16)
    texts = ["a red square", "a red square", "the digit 7", "ünïcödé text", "x", "a red square"]
    assert np.isfinite(train_steps(emb, [(images, texts)]))  # trained weights, logit scale included
    back = round_trip(emb)
    assert back.dim == emb.dim == 32 and back.input_size == 16 and back.from_scratch
    assert back.options() == emb.options()
    np.testing.assert_array_equal(back.embed_images(images), emb.embed_images(images))
    np.testing.assert_array_equal(back.embed_texts(texts)[0], emb.embed_texts(texts)[0])
    # from the server's weights cache: a memoryview of a mapped file, the tensors its pages
    path = tmp_path / "weights"
    path.write_bytes(emb.payload())
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    mapped_back = clip.load(record(emb), memoryview(mapped), "cpu")
    np.testing.assert_array_equal(mapped_back.embed_texts(texts)[0], emb.embed_texts(texts)[0])
    z = emb.embed_images(images)
    assert z.dtype == np.float32 and z.shape == (6, 32)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    t, cut = emb.embed_texts(texts)
    assert t.dtype == np.float32 and t.shape == (6, 32) and cut == []
    np.testing.assert_allclose(t[0], t[1])  # identical captions, identical embeddings
    assert emb.embed_images(random_images(0, 16)).shape == (0, 32)
    # the byte tokenizer's normalization: case and spacing do not change a caption
    np.testing.assert_allclose(emb.embed_texts(["A  Red square "])[0][0], t[0], atol=1e-6)


def test_training_is_deterministic() -> None:
    def run() -> np.ndarray:
        emb = scratch(seed=3)
        train_steps(emb, [(random_images(8, 16, seed=i), [f"caption {j % 3}" for j in range(8)])
                          for i in range(2)], seed=3)
        return emb.embed_images(random_images(4, 16, seed=9))

    np.testing.assert_array_equal(run(), run())


def test_contrastive_loss_with_repeated_captions() -> None:
    txt = torch.eye(3, 8)
    caption = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    scale = torch.tensor(clip.MAX_LOGIT_SCALE)
    aligned, acc = clip.contrastive_loss(txt[caption], txt, caption, scale)
    shuffled, acc_bad = clip.contrastive_loss(txt[caption.roll(1)], txt, caption, scale)
    assert float(acc) == 1.0 and float(acc_bad) < 0.5
    assert float(aligned) < 0.5 < float(shuffled)
    # one caption for the whole batch: image → text has one candidate, and nothing is NaN
    same = torch.zeros(5, dtype=torch.long)
    one, acc_one = clip.contrastive_loss(torch.randn(5, 8), torch.randn(1, 8), same, scale)
    assert torch.isfinite(one) and float(acc_one) == 1.0


# --- text rows ----------------------------------------------------------------------------------
def test_text_rows_embed_with_checks_and_truncation_notices() -> None:
    emb = scratch()
    reader = Reader()
    long = "a handwritten seven " * 40  # 800 bytes, over the 256-byte context
    rows = [Row(1, "short"), Row(2, long), Row(3, None), Row(4, long + "more")]
    out = emb.embed(rows, reader, "text")
    assert out[2] is None and all(v is not None and v.shape == (32,) for i, v in enumerate(out) if i != 2)
    np.testing.assert_allclose(out[1], out[3], atol=1e-6)  # cut to the same first 254 bytes
    assert reader.notices == ['2 text(s) of "caption" are longer than the model\'s context of 256 tokens and'
                              " were cut to it (rows 2, 4): they embed as their beginning"]
    # several batches: one notice at the end, the vectors per batch
    reader = Reader()
    got = list(emb.embed_batches([[Row(1, long)], [Row(2, "x"), Row(3, long)]], reader, "text"))
    assert [len(b) for b in got] == [1, 2] and len(reader.notices) == 1 and "(rows 1, 3)" in reader.notices[0]
    np.testing.assert_allclose(got[1][0], emb.embed_texts(["x"])[0][0], atol=1e-6)  # padding changes nothing


@pytest.mark.parametrize(("value", "error", "message"), [
    ("", DataError, r'"caption" holds an empty text in row 2'),
    (" \n\t", DataError, "empty text"),
    (b"bytes", ValueTypeMismatch, "got bytea in row 2"),
    (7, ValueTypeMismatch, "got int in row 2"),
])
def test_bad_text_rows(value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        scratch().embed([Row(1, "fine"), Row(2, value)], Reader(), "text")


def test_modalities() -> None:
    with pytest.raises(Exception, match="not audio") as e:
        scratch().embed([Row(1, "x")], Reader(), "audio")
    assert getattr(e.value, "sqlstate", None) == "0A000"


def test_images_must_have_the_input_size() -> None:
    emb = scratch()
    with pytest.raises(DataError, match=r"\(n, 16, 16, 3\)"):
        emb.embed_images(random_images(2, 32))
    with pytest.raises(DataError, match="uint8"):
        emb.embed_images(random_images(2, 16).astype(np.float32))


# --- checkpoints: a folder written with save_pretrained ----------------------------------------
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
SENTENCES = ["a photo of a cat", "a photo of a dog", "the digit seven", "a handwritten seven", "a red car"]


def word_tokenizer() -> Any:
    """A tokenizers WordLevel with BOS/EOS added by its post-processor, as a fast tokenizer."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[BOS]", "[EOS]"]))
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                       special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]",
                                   pad_token="[PAD]", unk_token="[UNK]")


def save_checkpoint(folder: Path) -> tuple[Any, Any]:
    """datasets.write_tiny_clip's checkpoint (CLIP's own tokenizer) with other preprocessing;
    (its network, its tokenizer) as transformers loads them."""
    from transformers import AutoTokenizer, CLIPModel

    datasets.write_tiny_clip(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": MEAN, "image_std": STD, "crop_size": {"height": 16, "width": 16}}))
    return CLIPModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def from_folder(folder: Path, input_size: int | None = None) -> clip.ClipEmbedder:
    return clip.from_folder(str(folder), f"checkpoint {folder}", input_size, CPU)


def test_checkpoint_folder_matches_transformers(tmp_path: Path) -> None:
    net, tokenizer = save_checkpoint(tmp_path)
    emb = from_folder(tmp_path)
    assert emb.origin == f"checkpoint {tmp_path}" and not emb.from_scratch
    assert emb.dim == 16 and emb.input_size == 16 and emb.context_length == 32
    assert emb.inputs.mean_list == MEAN and emb.inputs.std_list == STD
    texts = ["A photo of a cat", "the digit seven", "a never seen word"]
    z, cut = emb.embed_texts(texts)
    assert cut == []
    # the same as transformers' own CLIP on the checkpoint tokenizer's output: pooling and
    # special tokens agree
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = net.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    ref = getattr(ref, "pooler_output", ref)
    np.testing.assert_allclose(z, torch.nn.functional.normalize(ref, dim=1).numpy(), atol=1e-5)
    images = random_images(3, 16)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    pixels = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ref_img = net.get_image_features(pixel_values=pixels)
    ref_img = torch.nn.functional.normalize(getattr(ref_img, "pooler_output", ref_img), dim=1)
    np.testing.assert_allclose(emb.embed_images(images), ref_img.numpy(), atol=1e-5)
    # over the context: cut, reported, and still ending with the checkpoint's EOS where it pools
    z_long, cut = emb.embed_texts(["a photo of a cat " * 10])
    assert cut == [0] and np.isfinite(z_long).all()
    # stored and loaded: the tokenizer travels in the payload
    back = round_trip(emb)
    assert back.options()["tokenizer"]["kind"] == "tokenizers"
    np.testing.assert_array_equal(back.embed_texts(texts)[0], z)
    np.testing.assert_array_equal(back.embed_images(images), emb.embed_images(images))
    # another input size: position embeddings interpolated
    assert from_folder(tmp_path, 32).embed_images(random_images(2, 32)).shape == (2, 16)


def test_checkpoint_with_another_tokenizer(tmp_path: Path) -> None:
    """A word-level fast tokenizer whose post-processor adds BOS/EOS: pooled at its EOS."""
    tokenizer = word_tokenizer()
    datasets.write_tiny_clip(tmp_path)
    for f in tmp_path.glob("*token*"):
        f.unlink()
    tokenizer.save_pretrained(tmp_path)
    emb = from_folder(tmp_path)
    assert isinstance(emb.tokenizer, clip_text.HFTokenizer) and emb.tokenizer.vocab_size == len(tokenizer)
    z, cut = emb.embed_texts(["a photo of a cat", "A PHOTO OF A CAT"])
    assert cut == [] and np.allclose(z[0], z[1], atol=1e-6)  # its normalizer lower-cases
    car = ["a red car"]
    np.testing.assert_allclose(round_trip(emb).embed_texts(car)[0], emb.embed_texts(car)[0], atol=1e-6)


def algo() -> Any:
    from thanosql_pg.algorithms import registry

    return registry.lookup("CLIP")


def start(base_model: str | None, dirs: list[str], **opts: Any) -> clip.ClipEmbedder:
    from thanosql_pg.algorithms import registry

    given = {"base_model": base_model, "pretrained": True, **opts}
    typed = registry.normalize_options("build", given, algo().family)  # settled, as BUILD's
    assert isinstance(typed, clip.ClipOptions)
    return clip.start(algo(), typed, Reader(), dirs, CPU)


def test_weights_directory_is_looked_up_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub is never asked
    repo = algo().params["hub_id"]
    folder = tmp_path / repo.replace("/", "--")
    datasets.write_tiny_clip(folder)
    emb = start(None, [str(tmp_path)])
    assert emb.origin == f"pretrained {repo} ({folder})"
    assert emb.embed_texts(["a red car"])[0].shape == (1, 16)
    with pytest.raises(InvalidOption, match="embedding_dim"):
        start(None, [str(tmp_path)], embedding_dim=64)
    assert start(str(folder), []).origin == f"checkpoint {folder}"  # a path: never looked up by name


def test_missing_weights_say_where_to_put_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights, "hf_cached", lambda repo, filenames: None)  # whatever this machine caches
    with pytest.raises(WeightsUnavailable) as e:
        start(None, [str(tmp_path)])
    assert f"{tmp_path}/openai--clip-vit-base-patch32" in (e.value.hint or "")
    assert "pretrained=False" in (e.value.hint or "")
    with pytest.raises(InvalidOption, match="repo id"):
        start("not_a_repo", [])


def test_folder_that_is_not_clip(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no config\.json"):
        from_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(DataError, match="bert checkpoint"):
        from_folder(tmp_path)


# --- damaged stored models ----------------------------------------------------------------------
def _with(options: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(options))
    *parents, last = path.split(".")
    d = out
    for p in parents:
        d = d[p]
    if value is _DELETE:
        del d[last]
    else:
        d[last] = value
    return out


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "message"), [
    ("config.vision.hidden_size", 1 << 20, "hidden_size"),  # refused before anything is allocated
    ("config.text.num_hidden_layers", 10_000, "num_hidden_layers"),
    ("config.text.hidden_size", "32", "hidden_size"),
    ("config.text.num_attention_heads", 5, "multiple"),
    ("config.vision.patch_size", 8, "do not match"),  # a valid config, other shapes than the payload's
    ("config.text.max_position_embeddings", 64, "do not match|context_length"),
    ("config.projection_dim", 16, "do not match|embedding_dim"),
    ("config.text.hidden_act", "__import__('os')", "hidden_act"),
    ("config.text.layer_norm_eps", float("nan"), "layer_norm_eps"),
    ("config.vision.pooling", "max", "pooling"),
    ("config.vision", _DELETE, "vision"),
    ("config", [], "config"),
    ("tokenizer.kind", "pickle", "tokenizer"),
    ("input_size", 1 << 20, "input_size"),
    ("input_size", True, "input_size"),
    ("mean", [0.5, 0.5], "mean"),
    ("std", [0.5, 0.0, 0.5], "std"),
    ("std", [0.5, float("inf"), 0.5], "std"),
    ("embedding_dim", 999, "embedding_dim"),
    ("from_scratch", "yes", "from_scratch"),
])
def test_load_rejects_bogus_options(path: str, value: Any, message: str) -> None:
    emb = scratch()
    rec = record(emb)
    rec.options = _with(rec.options, path, value)
    with pytest.raises(DataCorrupted, match=message):
        clip.load(rec, emb.payload(), "cpu")


def test_load_checks_the_format() -> None:
    emb = scratch()
    rec = record(emb)
    rec.format = "something-else"
    with pytest.raises(DataCorrupted, match="cannot read"):
        clip.load(rec, emb.payload(), "cpu")


def test_load_rejects_bogus_payloads() -> None:
    from safetensors.torch import save

    emb = scratch()
    rec, payload = record(emb), emb.payload()
    state = {k: v.clone() for k, v in emb.net.state_dict().items()}
    meta = {"format": clip.FORMAT}
    bogus = [
        b"",
        b"\x00" * 7,
        payload[:100],  # cut inside the header
        payload[: len(payload) // 2],  # cut inside the tensors
        (2**62).to_bytes(8, "little") + payload[8:],
        save(state),  # safetensors, but not written by this family
        save({**state, "extra": torch.zeros(2)}, metadata=meta),
        save({k: v for k, v in state.items() if k != "logit_scale"}, metadata=meta),
        save({**state, "visual_projection.weight": torch.zeros(3, 3)}, metadata=meta),
        save({**state, "logit_scale": torch.tensor(1)}, metadata=meta),  # an integer tensor
    ]
    for i, p in enumerate(bogus):
        for form in (p, memoryview(bytearray(p))):  # the catalog's bytes, the cache's mapping
            with pytest.raises(DataCorrupted):
                clip.load(rec, form, "cpu")
                pytest.fail(f"bogus payload {i} loaded")


def test_load_rejects_a_bogus_tokenizer(tmp_path: Path) -> None:
    from safetensors.torch import save

    datasets.write_tiny_clip(tmp_path)
    emb = from_folder(tmp_path)
    rec = record(emb)
    state = {k: v.clone() for k, v in emb.net.state_dict().items()}
    for data in ["{not json", json.dumps({"model": {"type": "Pickle"}}), "x" * 10]:
        with pytest.raises(DataCorrupted, match="tokenizer"):
            clip.load(rec, save(state, metadata={"format": clip.FORMAT, "tokenizer": data}), "cpu")
    with pytest.raises(DataCorrupted, match="tokenizer"):  # no tokenizer data at all
        clip.load(rec, save(state, metadata={"format": clip.FORMAT}), "cpu")
    rec.options = _with(record(emb).options, "tokenizer.pad_id", 10_000)
    with pytest.raises(DataCorrupted, match="pad_id"):
        clip.load(rec, emb.payload(), "cpu")
    # a vocabulary larger than the text model's embedding table: ids would index out of it
    rec.options = _with(record(emb).options, "config.text.vocab_size", 8)
    with pytest.raises(DataCorrupted):
        clip.load(rec, emb.payload(), "cpu")


def test_scratch_config_is_within_the_whitelist() -> None:
    for size in (8, 32, 64, 1024):
        cfg = clip_config.build_config(clip_config.scratch_config(size, 2000))
        assert cfg.vision_config.image_size == size and cfg.projection_dim == 2000


def test_package_import_does_not_load_torch() -> None:
    code = ("import sys, thanosql_pg.algorithms.clip; assert not {'torch', 'transformers', 'tokenizers'}"
            " & set(sys.modules), 'heavy module imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
