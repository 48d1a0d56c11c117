"""CLIP's model (contract.FamilyModule): a transformers ``CLIPModel`` with its tokenizer
and image preprocessing, trained with CLIP's symmetric InfoNCE loss; loaded, an
``Embedder`` of images and texts into one space (CONVERT, SEARCH IMAGE).

Starting points (``train``):

- from scratch (``pretrained=False``): a small CLIPModel (config.SCRATCH_*) over UTF-8
  bytes (text.ByteTokenizer), which trains in about a minute on the digits on two CPU
  cores;
- a published checkpoint (the algorithm's ``hub_id``, or ``base_model`` naming a hub
  repo), looked up in the weights directories and the Hugging Face cache first, the hub
  only when it answers (shared.weights, as every family);
- a folder on the server written with ``CLIPModel.save_pretrained`` and its tokenizer's.

Storage: the state dict as safetensors (a checkpoint tokenizer's JSON in its metadata),
and options with the compact config (config.py) plus preprocessing. ``load`` checks both
as untrusted input: bounded sizes, exact tensor shapes, and nothing is unpickled.

Pooling is computed here rather than by transformers. Images: at the class token as
CLIP does (checkpoints), or the mean of the patch tokens (from-scratch models: the
config's vision ``pooling``). Texts: at the last token, CLIP's EOS (the tokenizers put
EOS last, also when they cut a text); the text transformer is causal, so the last
token has seen the whole text whatever tokenizer a checkpoint brings.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from thanosql_pg.algorithms import clip as spec
from thanosql_pg.algorithms import registry
from thanosql_pg.algorithms.clip import ClipOptions, config, text
from thanosql_pg.algorithms.contract import (
    Base,
    Reader,
    Row,
    RowSource,
    StoredModel,
    Trained,
    check_format,
    stored_fields,
)
from thanosql_pg.algorithms.shared import devices, images, training, validation, weights
from thanosql_pg.algorithms.shared.architecture import invalid_model, shape_mismatch
from thanosql_pg.algorithms.shared.images import FLIP_MIN_SIZE, Decoded, ImageInput, decode_rows
from thanosql_pg.algorithms.shared.limits import MAX_EMBEDDING_DIM, check_batch_pixels
from thanosql_pg.errors import (
    DataCorrupted,
    DataError,
    FeatureNotAvailable,
    FileError,
    InvalidOption,
    ThanoSQLError,
    ValueTypeMismatch,
    WeightsUnavailable,
)

FORMAT = "clip-safetensors-v1"
# OpenAI CLIP's normalization: what published checkpoints expect when their folder has
# no preprocessor_config.json, and as good as any for a model trained from scratch
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_LOGIT_SCALE = float(np.log(100.0))  # CLIP clamps the learned temperature at 1/100
# The first steps from scratch, before the towers agree on anything, have the largest
# gradients: clipped, as open_clip does
MAX_GRAD_NORM = 1.0
WEIGHT_DECAY = 0.1  # CLIP's; none on gains, biases and the logit scale (training.param_groups)
WARMUP_FRACTION = 0.1
EMBED_CHUNK = 256  # images or texts per forward pass when embedding: bounds activation memory
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on its JSON header
# Crops keep at least 60 % of a small image: a 30 % crop of a digit can cut a 7 into a 1
CROP_SCALE_SMALL, CROP_SCALE = (0.6, 1.0), (0.35, 1.0)
_TEXT_TYPES = ("text", "name", "citext", "character", "character varying", '"char"')


# --- the embedder ---------------------------------------------------------------------------
class ClipEmbedder:
    """A CLIP dual encoder with its tokenizer and image preprocessing (contract.Embedder).

    Images are decoded at ``inputs.size`` (shared.images.eval_view). When that is not
    the size the vision tower was built for (a published checkpoint used at another
    input_size), its position embeddings are interpolated (bicubic), as ViTs do at
    other resolutions.
    """

    def __init__(self, net: Any, tokenizer: text.Tokenizer, inputs: ImageInput, *, origin: str,
                 from_scratch: bool) -> None:
        self.net = net.to(inputs.device)
        self.tokenizer = tokenizer
        self.inputs = inputs
        self.input_size = inputs.size
        self.device = inputs.device
        self.origin = origin
        self.from_scratch = from_scratch
        vision = net.config.vision_config
        self.pooling = getattr(vision, "pooling", "cls")
        self.interpolate = self.input_size != vision.image_size
        if self.input_size < vision.patch_size or \
                (self.input_size // vision.patch_size) ** 2 > config.MAX_IMAGE_TOKENS:
            raise InvalidOption(f"input_size {self.input_size} does not suit this model's"
                                f" {vision.patch_size}-pixel patches",
                                hint=f"Use input_size={vision.image_size}, the size it was trained at.")

    @property
    def dim(self) -> int:
        return int(self.net.config.projection_dim)

    @property
    def context_length(self) -> int:
        return int(self.net.config.text_config.max_position_embeddings)

    # -- towers (unnormalized projections; training uses them with gradients) --
    def pixels(self, batch: np.ndarray) -> torch.Tensor:
        """NHWC uint8 → NCHW floats in [0, 1] on the device, after checking the layout."""
        side = self.input_size
        if not isinstance(batch, np.ndarray) or batch.dtype != np.uint8 or batch.shape[1:] != (side, side, 3):
            got = f"{batch.dtype} {batch.shape}" if isinstance(batch, np.ndarray) else type(batch).__name__
            raise DataError(f"images must be uint8 arrays of shape (n, {side}, {side}, 3); got {got}")
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return x.permute(0, 3, 1, 2).float().div_(255.0)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Projections of NCHW images in [0, 1]: pooled at the class token as CLIP does, or
        (from-scratch models, config.SCRATCH_POOLING) the mean of the patch tokens."""
        vision = self.net.vision_model
        x = (x - self.inputs.mean) / self.inputs.std
        out = vision(pixel_values=x, interpolate_pos_encoding=self.interpolate)
        if self.pooling == "mean":
            pooled = vision.post_layernorm(out.last_hidden_state[:, 1:].mean(dim=1))
        else:
            pooled = out.pooler_output
        return self.net.visual_projection(pooled)

    def pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token id sequences → (ids, attention mask) on the device, right-padded to the longest."""
        n, width = len(seqs), max((len(s) for s in seqs), default=1)
        ids = torch.full((n, width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, :len(seq)] = 1
        if n and int(ids.max()) >= self.net.config.text_config.vocab_size:
            # a tokenizer that does not belong to this text tower (load checks the stored pair)
            raise DataCorrupted("the tokenizer produced an id outside the text model's vocabulary")
        return ids.to(self.device), mask.to(self.device)

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Projections of token ids, pooled at each text's last token (EOS)."""
        out = self.net.text_model(input_ids=ids, attention_mask=mask)
        last = mask.sum(dim=1) - 1
        pooled = out.last_hidden_state[torch.arange(ids.shape[0], device=ids.device), last]
        return self.net.text_projection(pooled)

    # -- embedding --
    @torch.inference_mode()
    def embed_images(self, batch: np.ndarray) -> np.ndarray:
        """L2-normalized float32 embeddings [n, dim] of NHWC uint8 RGB images."""
        self.net.eval()
        self.pixels(batch[:0])  # the layout check, also for an empty batch
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        for i in range(0, len(batch), EMBED_CHUNK):  # floats for one chunk at a time, not the batch
            with devices.autocast(self.device):
                z = self.image_features(self.pixels(batch[i:i + EMBED_CHUNK]))
            out.append(F.normalize(z.float(), dim=1).cpu().numpy())
        return np.concatenate(out)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """L2-normalized float32 embeddings [n, dim] of texts, in the images' space, and the
        indices of the texts cut to the context length. A blank text raises DataError."""
        self.net.eval()
        text.check_texts(texts)  # all of them before any work
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        cut: list[int] = []
        for i in range(0, len(texts), EMBED_CHUNK):
            enc = self.tokenizer.encode(texts[i:i + EMBED_CHUNK], self.context_length)
            cut += [i + j for j in enc.truncated]
            with devices.autocast(self.device):
                z = self.text_features(*self.pad(enc.ids))
            out.append(F.normalize(z.float(), dim=1).cpu().numpy())
        return np.concatenate(out), cut

    def embed(self, rows: Sequence[Row], reader: Reader, modality: str = "image") -> list[np.ndarray | None]:
        """One unit vector per row (float32, ``dim``); None where the row's value is None."""
        return images.first(self.embed_batches([rows], reader, modality))

    def embed_batches(self, batches: Iterable[Sequence[Row]], reader: Reader,
                      modality: str = "image") -> Generator[list[np.ndarray | None], None, None]:
        """``embed`` for each batch (images: the next batch decoded in the pool meanwhile);
        ``batches`` is pulled on the calling thread."""
        if modality == "image":
            return images.embed_batches(batches, reader, self.input_size, self.embed_images)
        if modality == "text":
            return self._text_batches(batches, reader)
        raise FeatureNotAvailable(f"CLIP models embed images and texts, not {modality}")

    def evaluate(self, source: RowSource, opts: registry.Options) -> dict[str, float]:
        """EVALUATE on labelled images: how often an image's nearest images (by the image
        tower, as SEARCH IMAGE by image ranks them) share its label, Precision@1 and
        Precision@top_k, as for SimCLR (shared.images)."""
        return images.evaluate_retrieval(source, opts, self.input_size, self.embed_images)

    def _text_batches(self, batches: Iterable[Sequence[Row]],
                      reader: Reader) -> Generator[list[np.ndarray | None], None, None]:
        cut: list[int] = []  # rows whose text was cut to the context, told once at the end
        try:
            for batch in batches:
                out: list[np.ndarray | None] = [None] * len(batch)
                positions = [i for i, r in enumerate(batch) if r.value is not None]
                if positions:
                    vectors, truncated = self.embed_texts([_text_of(batch[i], reader) for i in positions])
                    for i, vec in zip(positions, vectors, strict=True):
                        out[i] = vec
                    cut += [batch[positions[j]].rn for j in truncated]
                yield out
        finally:
            if cut:
                rows = ", ".join(str(rn) for rn in cut[:5] if rn > 0) + (" ..." if len(cut) > 5 else "")
                reader.notice(f'{len(cut)} text(s) of "{reader.column}" are longer than the model\'s context'
                              f" of {self.context_length} tokens and were cut to it"
                              + (f" (rows {rows})" if rows else "") + ": they embed as their beginning")

    # -- training --
    def contrastive(self, batch: np.ndarray, captions: Sequence[str], gen: torch.Generator | None,
                    embedded: list[Any] | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The loss of a batch of images and their captions (``contrastive_loss``), the
        image → caption accuracy, and how many captions were cut to the context. ``gen``:
        augment the images (training) with these random numbers. ``embedded``: appended to,
        what shared.validation.text_precision scores (the unit image embeddings, each
        one's caption, the distinct captions' unit embeddings and the captions)."""
        x = self.pixels(batch)
        if gen is not None:
            small = self.input_size < FLIP_MIN_SIZE
            # not shared.views' GrayView, which SimCLR's grayscale views use: from scratch on
            # the digits it kept CLIP on its plateau (text search precision@10 0.89 -> 0.34; 0.45
            # with a milder affine and warp, 0.55 with the intensity jitter alone;
            # bench/simclr_recipe.py's history)
            x = images.random_resized_crop(x, gen, self.input_size, CROP_SCALE_SMALL if small else CROP_SCALE,
                                           flip=not small)
        enc = self.tokenizer.encode(captions, self.context_length)
        # one text-tower pass per distinct caption, by token ids ("A seven" and "a seven" are one)
        distinct: dict[tuple[int, ...], int] = {}
        caption = [distinct.setdefault(tuple(seq), len(distinct)) for seq in enc.ids]
        with devices.autocast(self.device):
            img = self.image_features(x)
            txt = self.text_features(*self.pad(list(distinct)))
        target = torch.tensor(caption, device=self.device)
        loss, acc = contrastive_loss(img, txt, target, self.net.logit_scale)
        if embedded is not None:
            keys = list(distinct)  # token ids: captions that tokenize alike are one
            embedded.append((F.normalize(img.detach().float(), dim=1).cpu().numpy(),
                             [keys[c] for c in caption],
                             F.normalize(txt.detach().float(), dim=1).cpu().numpy(), keys))
        return loss, acc, len(enc.truncated)

    def clamp_temperature(self) -> None:
        with torch.no_grad():
            self.net.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    # -- storage --
    def payload(self) -> bytes:
        """The state dict as safetensors; a checkpoint tokenizer's JSON in its metadata."""
        meta = {"format": FORMAT}
        data = self.tokenizer.data()
        if data is not None:
            meta["tokenizer"] = data
        return weights.state_payload(self.net, meta)

    def options(self) -> dict[str, Any]:
        """What ``load`` needs besides the payload; ``logit_scale`` and ``weights`` inform only."""
        return {
            "config": config.compact_config(self.net.config),
            "tokenizer": self.tokenizer.spec(),
            **self.inputs.options(),
            "embedding_dim": self.dim,
            "context_length": self.context_length,
            "from_scratch": self.from_scratch,
            "logit_scale": round(float(self.net.logit_scale.detach().exp()), 4),
            "weights": self.origin,
        }


def _text_of(row: Row, reader: Reader) -> str:
    """A row's text, checked: text (not bytea, numbers ...), within thanosql.max_text_bytes
    (before anything else looks at it), and not blank."""
    v, where = row.value, f" in row {row.rn}" if row.rn > 0 else ""
    if not isinstance(v, str):
        kind = "bytea" if isinstance(v, (bytes, bytearray, memoryview)) else type(v).__name__
        raise ValueTypeMismatch(f'"{reader.column}" must hold text to embed as text; got {kind}{where}',
                                hint="Name a text column (text_col), or cast it: SELECT col::text AS col ...")
    reader.limits.check_text(v, f'the text of "{reader.column}"{where}')
    if not v.strip():
        raise DataError(f'"{reader.column}" holds an empty text{where}',
                        hint="An empty text means nothing to search by: filter such rows out"
                        f" (WHERE btrim({reader.column}) <> '').")
    return v


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, caption: torch.Tensor,
                     logit_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's symmetric InfoNCE over a batch whose captions may repeat.

    ``txt`` holds one row per *distinct* caption, ``caption[i]`` the row of image i's.
    Image → text is plain cross-entropy over the distinct captions (a repeated caption
    is one candidate, not several "negatives" identical to the positive); text → image
    has several positives, the images sharing the caption, with equal target weight, so
    that a caption is pulled towards all of its images rather than any one. Returns
    (loss, image → text top-1 accuracy).
    """
    img, txt = F.normalize(img.float(), dim=1), F.normalize(txt.float(), dim=1)
    logits = logit_scale.exp() * img @ txt.T  # [images, captions]
    loss_i = F.cross_entropy(logits, caption)
    pos = (caption.view(1, -1) == torch.arange(txt.shape[0], device=txt.device).view(-1, 1)).float()
    target = pos / pos.sum(dim=1, keepdim=True)
    loss_t = -(target * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    accuracy = (logits.detach().argmax(dim=1) == caption).float().mean()
    return (loss_i + loss_t) / 2, accuracy


# --- loading a stored model ---------------------------------------------------------------------
def _metadata(payload: bytes | memoryview) -> dict[str, str]:
    """The __metadata__ of the stored safetensors, its header checked first."""
    if len(payload) < 8:
        raise DataCorrupted("the CLIP model's weights are not safetensors data")
    n = int.from_bytes(bytes(payload[:8]), "little")
    if not 2 <= n <= min(MAX_HEADER, len(payload) - 8):
        raise DataCorrupted("the CLIP model's weights are not safetensors data (bad header length)")
    try:
        meta = weights.safetensors_metadata(payload)
    except (ValueError, AttributeError) as e:  # not JSON, or JSON but not an object
        raise DataCorrupted(f"the CLIP model's weights are not safetensors data: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataCorrupted(f"the CLIP model's weights are not in format {FORMAT}")
    return meta


def _state(payload: bytes | memoryview) -> dict[str, torch.Tensor]:
    try:
        state = weights.state_dict(payload)
    except DataCorrupted:
        raise
    except Exception as e:  # safetensors' errors, a malformed header's KeyError/TypeError
        raise DataCorrupted(f"the CLIP model's weights cannot be read: {e}") from None
    if any(not v.is_floating_point() for v in state.values()):
        raise DataCorrupted("the CLIP model's weights hold non-float tensors")
    return state


@dataclass(frozen=True)
class Stored:
    """What a stored model keeps in its options beyond the declared ones
    (``ClipEmbedder.options``), typed by contract.stored_fields (another type is XX001);
    ``_rebuild`` checks what config, tokenizer, mean and std hold. ``weights`` informs
    only (the loaded model's origin), as ``logit_scale`` does (not read)."""

    config: dict[str, Any] | None = None
    tokenizer: dict[str, Any] | None = None
    mean: list[Any] | None = None
    std: list[Any] | None = None
    context_length: int | None = None
    from_scratch: bool = False
    weights: str = ""


def load(record: StoredModel, payload: bytes | memoryview, device: str) -> ClipEmbedder:
    """A stored model. Its options and payload are checked as untrusted input (the owner
    can edit the catalog row): DataCorrupted (XX001) for anything BUILD does not write,
    naming the model and the value out of bounds."""
    check_format(record, FORMAT)
    if not isinstance(record.options, dict):
        raise DataCorrupted(f'model "{record.name}" has no options object')
    kept = stored_fields(Stored, record)
    # the declared options (input_size and embedding_dim size the model) within BUILD's bounds
    opts = registry.stored(ClipOptions, spec.FAMILY, record.options, model=record.name)
    _quiet_transformers()
    try:
        net, tok, inputs = _rebuild(opts, kept, payload, device)
    except DataCorrupted as e:
        raise invalid_model(record.name, e) from None
    return ClipEmbedder(net, tok, inputs, origin=kept.weights, from_scratch=kept.from_scratch)


def _rebuild(opts: ClipOptions, kept: Stored, payload: bytes | memoryview,
             device: str) -> tuple[Any, text.Tokenizer, ImageInput]:
    """(network, tokenizer, image input) of a stored model, every part checked before
    anything is allocated for it."""
    from transformers import CLIPModel

    meta = _metadata(payload)
    tok = text.restore(kept.tokenizer, meta.get("tokenizer"), config.text_vocab(kept.config))
    net_config = config.build_config(kept.config, tok)
    size = config.check_int("", "input_size", opts.input_size, (spec.MIN_INPUT_SIZE, config.MAX_INPUT_SIZE))
    vision = net_config.vision_config
    if size < vision.patch_size or (size // vision.patch_size) ** 2 > config.MAX_IMAGE_TOKENS:
        raise DataCorrupted(f"input_size {size} makes more than {config.MAX_IMAGE_TOKENS} patches of"
                            f" {vision.patch_size} pixels (or none)")
    mean = config.check_floats("mean", kept.mean, False)
    std = config.check_floats("std", kept.std, True)
    for key, value, want in (("embedding_dim", opts.embedding_dim, net_config.projection_dim),
                             ("context_length", kept.context_length,
                              net_config.text_config.max_position_embeddings)):
        if value is not None and value != want:
            raise DataCorrupted(f"option {key} is {value!r} but the model's config says {want}")
    state = _state(payload)
    # Shapes first, on the meta device: a config that claims a huge model allocates nothing.
    with torch.device("meta"):
        net = CLIPModel(net_config)
    differs = shape_mismatch({k: tuple(v.shape) for k, v in net.state_dict().items()},
                             {k: tuple(v.shape) for k, v in state.items()})
    if differs:
        raise DataCorrupted(f"the CLIP model's weights do not match its config ({differs})")
    # assign: the network takes the stored tensors as they are (views of the server's shared
    # weights cache when the payload is one: no copy per session)
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    for mod in net.modules():  # non-persistent buffers (position ids) are not in the state dict
        buf = getattr(mod, "position_ids", None)
        if isinstance(buf, torch.Tensor) and buf.is_meta:
            mod.position_ids = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
    if any(t.is_meta for t in list(net.parameters()) + list(net.buffers())):
        raise DataCorrupted("the CLIP model could not be rebuilt from its weights")
    net.eval()
    return net, tok, ImageInput(size, mean, std, devices.torch_device(device))


# --- new models ---------------------------------------------------------------------------------
def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # init warnings would go to the server log
    hf_logging.disable_progress_bar()  # and so would from_pretrained's "Loading weights" bars


def scratch(input_size: int, embedding_dim: int, device: Any) -> ClipEmbedder:
    """A new from-scratch model (config.scratch_config), randomly initialised."""
    from transformers import CLIPModel

    _quiet_transformers()
    tok = text.ByteTokenizer()
    net = CLIPModel(config.build_config(config.scratch_config(input_size, embedding_dim), tok))
    return ClipEmbedder(net, tok, ImageInput(input_size, CLIP_MEAN, CLIP_STD, device),
                        origin="random initialisation", from_scratch=True)


def _weights_hint(repo: str, dirs: Sequence[str]) -> str:
    return weights.folder_hint(
        repo, dirs, "config.json, model.safetensors, tokenizer.json or vocab.json + merges.txt,"
        " preprocessor_config.json",
        alternatives="pass base_model='/path/to/checkpoint_folder', or train from scratch"
        " with pretrained=False.")


def from_hub(name: str, dirs: Sequence[str], input_size: int | None, device: Any) -> ClipEmbedder:
    """A published CLIP by repo id (``org/name``): a weights directory or the Hugging Face
    cache first, else downloaded from the hub when it answers."""
    repo = weights.hub_repo(name)
    if repo is None:  # weights.locate() lets no other name through: a path is never looked up by name
        raise InvalidOption(f'"{name}" is not a Hugging Face repo id (org/name)',
                            hint=f"Name a CLIP checkpoint such as {spec.DEFAULT_REPO}, or a folder on the"
                            " server.")
    local = weights.local_hub_dir(repo, dirs)
    if local:
        return from_folder(local, f"pretrained {repo} ({local})", input_size, device)
    if not weights.hub_reachable(weights.hub_endpoint()):
        raise WeightsUnavailable(f"weights for {repo} are not on the server and the model hub is unreachable",
                                 hint=_weights_hint(repo, dirs))
    from huggingface_hub import snapshot_download

    try:
        # by repo id into the cache, then loaded from that folder: from_pretrained(repo) would
        # first read a folder of that name relative to the backend's working directory
        folder = snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.txt"])
        return from_folder(folder, f"pretrained {repo} (hub)", input_size, device)
    except ThanoSQLError as e:
        raise WeightsUnavailable(f"could not load pretrained weights {repo}: {e.message}",
                                 hint=_weights_hint(repo, dirs)) from None
    except Exception as e:  # network, authentication and missing-repo errors of huggingface_hub
        raise WeightsUnavailable(f"could not download {repo}: {e}", hint=_weights_hint(repo, dirs)) from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file() or path.stat().st_size > 1024 * 1024:
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _preprocessing(folder: Path) -> tuple[list[float], list[float], int | None]:
    """(mean, std, crop size) from preprocessor_config.json, CLIP's when absent."""
    pre = _read_json(folder / "preprocessor_config.json")
    try:
        mean = config.check_floats("image_mean", pre.get("image_mean", list(CLIP_MEAN)), False)
        std = config.check_floats("image_std", pre.get("image_std", list(CLIP_STD)), True)
    except DataCorrupted as e:
        raise DataError(f"{folder}/preprocessor_config.json: {e.message}") from None
    crop = pre.get("crop_size")
    if isinstance(crop, dict):
        crop = crop.get("height")
    return mean, std, crop if isinstance(crop, int) and not isinstance(crop, bool) else None


def from_folder(path: str, origin: str, input_size: int | None, device: Any) -> ClipEmbedder:
    """A CLIPModel folder (save_pretrained) with its tokenizer: safetensors weights only."""
    from transformers import AutoConfig, AutoTokenizer, CLIPModel

    _quiet_transformers()
    folder = Path(path)
    if not folder.exists():
        raise FileError(f'checkpoint "{path}" does not exist',
                        hint="base_model names a folder holding a transformers CLIPModel checkpoint.")
    if not (folder / "config.json").is_file():
        raise DataError(f'"{path}" is not a transformers checkpoint folder (no config.json)',
                        hint="Save one with CLIPModel.save_pretrained(folder) and the tokenizer's"
                        " (or the CLIPProcessor's) save_pretrained(folder).")
    try:
        net_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError ...
        raise DataError(f'cannot read the model configuration of "{path}": {e}') from None
    if net_config.model_type != "clip":
        raise DataError(f'"{path}" is a {net_config.model_type} checkpoint; the CLIP family needs a clip one',
                        hint=f"Pass a CLIPModel checkpoint (e.g. {spec.DEFAULT_REPO}) as base_model.")
    try:
        # the config through the whitelist first: its sizes are checked like stored options
        config.build_config(config.compact_config(net_config))
        # safetensors only: a pickled pytorch_model.bin is never opened
        net = CLIPModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                        dtype=torch.float32)
    except DataCorrupted as e:
        raise DataError(f'the configuration of "{path}" is out of bounds: {e.message}') from None
    except Exception as e:  # missing or corrupt weights files
        raise DataError(f'cannot load the CLIP weights of "{path}": {e}',
                        hint="The folder needs model.safetensors; pickled .bin files are not read.") from None
    try:
        hf_tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # no tokenizer files, or ones transformers cannot read
        raise DataError(f'cannot load the tokenizer of "{path}": {e}',
                        hint="Save the tokenizer (or the CLIPProcessor) into the folder too.") from None
    tok = text.from_transformers(hf_tok)
    if tok.vocab_size > net_config.text_config.vocab_size:
        raise DataError(f'the tokenizer of "{path}" has {tok.vocab_size} tokens; the text model embeds'
                        f" {net_config.text_config.vocab_size}")
    mean, std, crop = _preprocessing(folder)
    size = input_size or crop or net_config.vision_config.image_size
    net.eval()
    return ClipEmbedder(net, tok, ImageInput(size, mean, std, device), origin=origin, from_scratch=False)


def start(algo: registry.Algorithm, opts: ClipOptions, reader: Reader, dirs: Sequence[str],
          device: Any) -> ClipEmbedder:
    """BUILD's model: ``base_model`` (a checkpoint folder on the server, or a hub repo),
    else the algorithm's published checkpoint (pretrained) or a from-scratch model."""
    base_model = opts.base_model
    if base_model:
        kind, where = weights.locate(base_model, reader.resolve_path)
        if kind == "path":
            emb = from_folder(where, f"checkpoint {where}", opts.input_size, device)
        else:
            emb = from_hub(base_model, dirs, opts.input_size, device)
    elif opts.pretrained:
        emb = from_hub(algo.params["hub_id"], dirs, opts.input_size, device)
    else:
        # clip.settle fills both in for a model from scratch
        return scratch(_settled("input_size", opts.input_size), _settled("embedding_dim", opts.embedding_dim),
                       device)
    if opts.embedding_dim is not None and opts.embedding_dim != emb.dim:
        raise InvalidOption(f"embedding_dim {opts.embedding_dim} differs from the {emb.dim} dimensions of"
                            f" {emb.origin}", hint="Leave embedding_dim out to use the checkpoint's, or train"
                            " from scratch with pretrained=False.")
    if emb.dim > MAX_EMBEDDING_DIM:
        raise DataError(f"{emb.origin} embeds in {emb.dim} dimensions, more than the {MAX_EMBEDDING_DIM} of"
                        " a pgvector HNSW index (CONVERT builds one)")
    return emb


def _settled(name: str, value: int | None) -> int:
    if value is None:
        raise InvalidOption(f'option "{name}" has no value', hint=f"Add {name}=... to OPTIONS.")
    return value


# --- training ---------------------------------------------------------------------------------
def train(algo: registry.Algorithm, opts: registry.Options, source: RowSource,
          base: Base | None = None) -> Trained:
    """BUILD (base None) or FIT (base: a loaded model whose .model is a ClipEmbedder), on
    images and their captions, with the options the spec settled (clip.settle)."""
    assert isinstance(opts, ClipOptions)  # the family's Family.typed
    _check_caption_type(source, opts.text_col)
    device = devices.torch_device(opts.device)
    with training.seeded(device):
        if base is not None:
            training.refuse_base_model(opts)
            prev: ClipEmbedder = base.model
            # FIT keeps the embedding space: another dimension is another model
            if opts.embedding_dim is not None and opts.embedding_dim != prev.dim:
                raise InvalidOption(f"FIT MODEL keeps the base model's embedding_dim ({prev.dim})",
                                    hint="Leave embedding_dim out of FIT MODEL, or BUILD a new model.")
            inputs = ImageInput(opts.input_size or prev.input_size, prev.inputs.mean_list,
                                prev.inputs.std_list, device)
            model = ClipEmbedder(prev.net, prev.tokenizer, inputs, origin=f'model "{base.record.name}"',
                                 from_scratch=prev.from_scratch)
        else:
            model = start(algo, opts, source.reader, source.weights_dirs, device)
        check_batch_pixels(opts.batch_size, model.input_size)
        # FIT without a learning rate: the base model's kind's (BUILD's defaults are settled)
        kind = spec.SCRATCH if model.from_scratch else spec.FINETUNE
        rate = opts.learning_rate or kind.learning_rate
        done = _fit(model, algo, replace(opts, learning_rate=rate), source)
    return Trained(
        payload=model.payload(), format=FORMAT, labels=None, label_type=None,
        options={**model.options(), "learning_rate": rate},
        metrics={**done.metrics(), "images_per_second": round(done.rate, 2)}, epochs=done.rows(),
    )


def _check_caption_type(source: RowSource, column: str) -> None:
    kind = (source.label_type or "").split("(")[0].strip()
    if kind not in _TEXT_TYPES:
        raise ValueTypeMismatch(f'text_col "{column}" is of type {source.label_type}; CLIP learns from text',
                                hint=f"Name the captions' column with text_col, or cast it: {column}::text.")


def _fit(model: ClipEmbedder, algo: registry.Algorithm, opts: ClipOptions,
         source: RowSource) -> training.Outcome:
    """The symmetric contrastive loss on (augmented image, caption) batches; validation
    scores the same loss on the held-out pairs, without augmentation."""
    device, column = model.device, opts.text_col
    work = partial(decode_rows, reader=source.reader, size=model.input_size, index=None, skip=False)
    gen = torch.Generator(device=device)
    # with validation_split, each epoch's metric is how often a held-out image's nearest
    # caption is its own (shared.validation), which early stopping keeps the best epoch of
    retrieval = bool(opts.validation_split)
    trainer = training.Trainer(model.net, opts, source, device=device, label=f"{algo.name} training",
                               metric=validation.TEXT_PRECISION if retrieval else training.CONTRASTIVE_LOSS,
                               weight_decay=WEIGHT_DECAY, warmup_fraction=WARMUP_FRACTION,
                               max_grad_norm=MAX_GRAD_NORM)
    cut = 0  # captions cut to the context length (counted in the first epoch)

    def captioned(rows: list[Row]) -> list[tuple[int, Row]]:
        for r in rows:  # on the calling thread: the error names the row before anything is decoded
            if r.target is not None:  # bounded before it is looked at, let alone tokenized
                source.reader.limits.check_text(r.target, f'the caption in "{column}" in row {r.rn}')
            if not (r.target or "").strip():
                raise DataError(f'"{column}" holds an empty caption in row {r.rn}',
                                hint=f"Every image needs a caption: add WHERE btrim({column}) <> ''"
                                " to the query.")
        return devices.numbered(rows)

    def batches(part: RowSource, epoch: int, train: bool) -> Iterator[Decoded]:
        gen.manual_seed(epoch + 1)
        rows = (captioned(b) for b in part.batches(opts.batch_size, shuffle=train, seed=epoch))
        return devices.prefetch(rows, work, Decoded.combine, depth=2 if device.type == "cuda" else 1)

    def forward(epoch: int, dec: Decoded, train: bool) -> training.Step | None:
        nonlocal cut
        arr = dec.array()
        if arr is None:
            return None
        model.clamp_temperature()  # after the previous step: CLIP's bound on the logit scale
        embedded: list[Any] | None = [] if retrieval and not train else None
        loss, acc, truncated = model.contrastive(arr, [str(t) for t in dec.texts], gen if train else None,
                                                 embedded)
        cut += truncated if epoch == 0 else 0
        n = len(arr)
        extra = {"contrastive_accuracy": acc * n}
        if retrieval:
            return training.Step(loss, n, 0.0, 0.0, extra=extra, keep=embedded[0] if embedded else None)
        return training.Step(loss, n, loss.detach() * n, n, extra=extra)

    done = trainer.run(batches, forward, validation.text_precision if retrieval else None)
    model.clamp_temperature()
    if cut:
        source.notice(f'{cut} caption(s) of "{column}" are longer than the model\'s context of'
                      f" {model.context_length} tokens and were cut to it for training")
    return done
