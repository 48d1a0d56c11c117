"""Speech recognition with Wav2Vec2 (transformers ``Wav2Vec2ForCTC``): Wav2Vec2En, Wav2Vec2Ko.

The family sees rows through ``RowSource``/``Reader`` (contract.py) and knows
nothing about SQL. Audio is decoded by shared.audio in the decode pool (16 kHz
mono). Long recordings are transcribed in overlapping windows whose frame-level
predictions are stitched before CTC decoding, so nothing is truncated and
memory stays bounded by the window length. Transcripts and the vocabulary are
``text``'s.

Weights are stored as safetensors (no pickle on load), with the transformers
config in the safetensors metadata and the vocabulary in the catalog's labels.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from thanosql_pg.algorithms import contract, registry
from thanosql_pg.algorithms.contract import Base, Evaluation, Reader, Row, RowSource, StoredModel, Trained
from thanosql_pg.algorithms.shared import devices, training, weights
from thanosql_pg.algorithms.shared.architecture import check_bool, check_choice, check_int, invalid_model
from thanosql_pg.algorithms.shared.audio import SAMPLE_RATE, decode_audio
from thanosql_pg.algorithms.shared.metrics import ErrorRates, UtteranceScores
from thanosql_pg.algorithms.speech_recognition import config as wav2vec2_config
from thanosql_pg.algorithms.speech_recognition.text import TextNorm, Vocab, norm_for_vocab
from thanosql_pg.errors import (
    DataCorrupted,
    DataError,
    FileError,
    InvalidOption,
    InvalidParameterValue,
    ThanoSQLError,
    WeightsUnavailable,
)

FORMAT = "wav2vec2-ctc-safetensors-v1"
# Long audio: 20 s windows that overlap by 2 s of context on each side. Both
# are multiples of the 320-sample (20 ms) frame of the standard feature
# encoder, so the kept frames of neighbouring windows line up exactly.
CHUNK_SECONDS = 20.0
CONTEXT_SECONDS = 2.0
LENGTH_WINDOW = 8  # training: rows are grouped by length within windows of this many batches
WARMUP_FRACTION = 0.1
WEIGHT_DECAY = 0.005
MAX_GRAD_NORM = 1.0


# pretrained=False with no base_model: a 4 M parameter Wav2Vec2 (wav2vec2-base
# has 95 M) that trains from scratch on a CPU. The convolutions widen as the
# frame rate falls (32 channels at 3,200 frames/s up to 256 at 50): the early,
# high-rate layers cost ~10x less than wav2vec2's uniform 512 channels, for the
# same 20 ms frames and 25 ms receptive field. Pre-layer-norm ("stable")
# transformer and layer-normed convolutions: they train without the
# large-scale pre-training the group-norm variant relies on.
SCRATCH_CONFIG: dict[str, Any] = {
    "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024,
    "conv_dim": (32, 64, 64, 128, 128, 256, 256), "conv_stride": (5, 2, 2, 2, 2, 2, 2),
    "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
    "conv_bias": True, "feat_extract_norm": "layer", "do_stable_layer_norm": True,
    "num_conv_pos_embeddings": 64, "num_conv_pos_embedding_groups": 8,
    "hidden_dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0, "feat_proj_dropout": 0.0,
    "final_dropout": 0.0, "layerdrop": 0.0, "mask_time_prob": 0.05, "mask_time_length": 5,
    "ctc_loss_reduction": "mean", "ctc_zero_infinity": True,
}


# Training runs a Wav2Vec2 over each whole clip (inference cuts long ones into
# windows): its attention grows with the square of the length, so training clips
# are bounded below thanosql.max_audio_seconds. ASR corpora cut speech into
# utterances of a few seconds (LibriSpeech's longest is 35 s).
MAX_TRAIN_SECONDS = 60


# --- decoding (runs in pool threads: no plpy) -----------------------------------------------------
@dataclass
class Clip:
    pos: int  # index of the row in its batch
    audio: np.ndarray
    text: str | None  # normalized transcript (training/evaluation)
    row: Row | None = None  # the row it came from (EVALUATE's per-row report names it)


@dataclass
class Decoded:
    """A decoded (part of a) batch: the clips, and the rows that could not be read."""

    clips: list[Clip]
    errors: list[tuple[int, ThanoSQLError]]

    @staticmethod
    def combine(parts: list[Decoded]) -> Decoded:
        return Decoded([c for p in parts for c in p.clips], [e for p in parts for e in p.errors])


def decode_rows(rows: Sequence[tuple[int, Row]], *, reader: Reader, norm: TextNorm | None,
                skip: bool, for_training: bool = False) -> Decoded:
    """Decode (position, row) pairs. With ``skip`` unreadable rows are reported
    in ``errors`` instead of failing the batch. ``for_training``: clips are bounded
    by MAX_TRAIN_SECONDS too."""
    limits = reader.limits
    if for_training:
        limits = limits.capped_audio(MAX_TRAIN_SECONDS, "the longest clip speech recognition trains on")
    out = Decoded([], [])
    for pos, row in rows:
        try:
            audio = decode_audio(reader.read(row), reader.describe(row), limits)
        except DataError as e:
            if not skip:
                raise
            out.errors.append((pos, e))
            continue
        text = norm(row.target) if norm is not None and row.target is not None else row.target
        out.clips.append(Clip(pos, audio, text, row))
    return out



# --- the model --------------------------------------------------------------------------------
@dataclass
class _Piece:
    wave: int  # index of the recording
    samples: np.ndarray
    drop_left: int  # frames of context to drop
    drop_right: int


class SpeechRecognizer:
    """A Wav2Vec2ForCTC network plus its vocabulary, text normalization and
    input conventions (per-utterance normalization, attention mask)."""

    def __init__(self, net: Any, *, vocab: Vocab, norm: TextNorm, do_normalize: bool, use_mask: bool,
                 device: torch.device) -> None:
        self.net = net.to(device)
        self.vocab = vocab
        self.norm = norm
        self.do_normalize = do_normalize
        self.use_mask = use_mask
        self.device = device
        cfg = net.config
        self.ratio = math.prod(cfg.conv_stride)  # samples per output frame
        # the receptive field of one output frame: shorter input yields no frame
        self.min_samples = 1 + sum((k - 1) * math.prod(cfg.conv_stride[:i])
                                   for i, k in enumerate(cfg.conv_kernel))

    # -- tensors --------------------------------------------------------------------------------
    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.net._get_feat_extract_output_lengths(lengths).long()

    def inputs(self, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Zero-padded batch, attention mask and lengths. Per-utterance
        normalization is computed over the real samples only, as transformers'
        Wav2Vec2FeatureExtractor does; padding stays 0."""
        lengths = [max(len(w), self.min_samples) for w in waves]
        x = np.zeros((len(waves), max(lengths)), dtype=np.float32)
        mask = np.zeros(x.shape, dtype=np.int64)
        for i, w in enumerate(waves):
            if self.do_normalize:
                w = (w - w.mean()) / np.sqrt(w.var() + 1e-7)
            x[i, :len(w)] = w
            mask[i, :lengths[i]] = 1
        xt = torch.from_numpy(x)
        if self.device.type == "cuda":
            xt = xt.pin_memory()
        return (xt.to(self.device, non_blocking=True), torch.from_numpy(mask).to(self.device),
                torch.tensor(lengths, device=self.device))

    def logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with devices.autocast(self.device):
            return self.net(x, attention_mask=mask if self.use_mask else None).logits

    # -- inference ----------------------------------------------------------------------------
    def _pieces(self, waves: Sequence[np.ndarray]) -> list[_Piece]:
        chunk = int(CHUNK_SECONDS * SAMPLE_RATE)
        ctx = int(CONTEXT_SECONDS * SAMPLE_RATE)
        ctx_frames = round(ctx / self.ratio)
        step = chunk - 2 * ctx
        out = []
        for i, w in enumerate(waves):
            if len(w) <= chunk:
                out.append(_Piece(i, w, 0, 0))
                continue
            start = 0
            while True:
                last = start + chunk >= len(w)
                out.append(_Piece(i, w[start:start + chunk], drop_left=ctx_frames if start else 0,
                                  drop_right=0 if last else ctx_frames))
                if last:
                    break
                start += step
        return out

    @torch.inference_mode()
    def transcribe(self, waves: Sequence[np.ndarray], batch_size: int) -> list[str]:
        """Greedy CTC transcripts. Recordings longer than CHUNK_SECONDS are cut
        into overlapping windows; each window's frame predictions lose their
        context margins and are concatenated before decoding. Windows are
        batched shortest first to keep padding small."""
        self.net.eval()
        pieces = self._pieces(waves)
        ids: list[np.ndarray | None] = [None] * len(pieces)
        order = sorted(range(len(pieces)), key=lambda k: len(pieces[k].samples))
        for s in range(0, len(order), max(1, batch_size)):
            batch = order[s:s + batch_size]
            x, mask, lengths = self.inputs([pieces[k].samples for k in batch])
            pred = self.logits(x, mask).argmax(-1).cpu().numpy()
            for k, row, n in zip(batch, pred, self.frames(lengths).tolist(), strict=True):
                p = pieces[k]
                ids[k] = row[p.drop_left:max(p.drop_left, n - p.drop_right)]
        per_wave: list[list[np.ndarray]] = [[] for _ in waves]
        for p, frames in zip(pieces, ids, strict=True):
            per_wave[p.wave].append(frames)  # type: ignore[arg-type]  # every piece was filled above
        return [self.norm.finish(self.vocab.decode(np.concatenate(f).tolist())) for f in per_wave]

    def predict(self, rows: Sequence[Row], reader: Reader,
                opts: registry.Options) -> tuple[list[str | None], list[str]]:
        """Transcripts for ``rows`` (None for rows skipped as unreadable with
        on_error='skip') and a message per skipped row."""
        skip = opts.on_error == "skip"
        work = partial(decode_rows, reader=reader, norm=None, skip=skip)
        dec = devices.decode_now(rows, work, Decoded.combine)
        out: list[str | None] = [None] * len(rows)
        texts = self.transcribe([c.audio for c in dec.clips], opts.batch_size)
        for clip, text in zip(dec.clips, texts, strict=True):
            out[clip.pos] = text
        return out, [e.message for _, e in dec.errors]

    def evaluate(self, source: RowSource, opts: registry.Options) -> dict[str, float] | Evaluation:
        """Corpus WER and CER of greedy transcripts against the normalized texts; with
        report='per_row' each row's too, the worst first (shared.metrics)."""
        skip = opts.on_error == "skip"
        scores = UtteranceScores(opts.report)
        skipped = devices.Skipped(source.skipped)
        work = partial(decode_rows, reader=source.reader, norm=self.norm, skip=skip)
        batches = devices.evaluation_batches(source, opts.batch_size, work, Decoded.combine, skipped)
        # a generator (it has close()), though shared.devices annotates it as an Iterator
        with closing(batches) as decoded:
            for dec in decoded:
                hyps = self.transcribe([c.audio for c in dec.clips], opts.batch_size)
                for clip, hyp in zip(dec.clips, hyps, strict=True):
                    row = clip.row or Row(0, None)
                    scores.add(row.rn, row.value, self.norm.finish(clip.text or ""), hyp)
        skipped.notice(source.notice, "EVALUATE")
        if not scores.rates.chars and not scores.rates.words and skipped.count:
            raise DataError("no readable audio to evaluate", hint="Every row was skipped as unreadable.")
        return scores.result(extra={"Skipped": float(skipped.count)} if skip else None)

    # -- storage -------------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        return {"blank": self.vocab.blank, "delimiter": self.vocab.delimiter, "text_case": self.norm.case,
                "jamo": self.norm.jamo, "do_normalize": self.do_normalize, "attention_mask": self.use_mask,
                "sample_rate": SAMPLE_RATE}

    def payload(self) -> bytes:
        meta = {"format": FORMAT, "config": self.net.config.to_json_string(use_diff=False),
                "tokens": json.dumps(self.vocab.tokens, ensure_ascii=False),
                "options": json.dumps(self.options())}
        return weights.state_payload(self.net, meta)


# --- loading stored models ----------------------------------------------------------------------
_TEXT_CASES = ("upper", "lower", "keep")


@dataclass(frozen=True)
class StoredConventions:
    """What ``SpeechRecognizer.options`` stores beside the declared options (Trained.options)
    and ``load`` reads back through ``contract.stored_fields``: the vocabulary's CTC blank and
    word delimiter, the text normalization, the input conventions. None: absent, which
    ``_conventions`` refuses (BUILD stores them all). Stored as well, never read back:
    ``sample_rate`` (shared.audio's), ``weights`` (where the weights came from, for people)
    and ``freeze_feature_encoder`` (FIT's: ``StoredTraining``)."""

    blank: int | None = None
    delimiter: str | None = None
    text_case: str | None = None
    jamo: bool | None = None
    do_normalize: bool | None = None
    attention_mask: bool | None = None


@dataclass(frozen=True)
class StoredTraining:
    """What FIT reads of its base model's stored options (``train`` stores it)."""

    freeze_feature_encoder: bool = True  # the base was pre-trained: its feature encoder stays frozen


@dataclass
class _Merged:
    """A stored model (contract.StoredModel) whose options are its catalog row's over those its
    payload's metadata keeps: a key the row lacks is the payload's."""

    name: str
    options: dict[str, Any]
    labels: list[Any] | None
    label_type: str | None
    format: str


@dataclass(frozen=True)
class _Conventions:
    """A stored model's vocabulary, text normalization and input conventions, checked."""

    vocab: Vocab
    norm: TextNorm
    do_normalize: bool
    use_mask: bool


def load(record: StoredModel, payload: bytes | memoryview, device: str) -> SpeechRecognizer:
    """A stored model. Its architecture (the config in the payload's metadata), vocabulary
    and options are checked as untrusted input before anything is built: the owner can
    rewrite them (config.py). XX001 naming what is out of bounds."""
    from transformers import Wav2Vec2ForCTC

    contract.check_format(record, FORMAT)
    try:
        meta = weights.safetensors_metadata(payload)
        try:
            hf_config = json.loads(meta["config"])
            in_payload = json.loads(meta.get("options", "{}"))
            tokens = list(record.labels) if record.labels else json.loads(meta["tokens"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataCorrupted(f"the payload's metadata cannot be read ({type(e).__name__}: {e})") from None
        if not isinstance(in_payload, dict):
            raise DataCorrupted("the payload's metadata cannot be read (its options are not an object)")
        config = wav2vec2_config.build(hf_config)
    except DataCorrupted as e:
        raise invalid_model(record.name, e) from None
    # a value of another type than StoredConventions' is XX001 naming the model and the option
    stored = contract.stored_fields(StoredConventions, _Merged(
        record.name, {**in_payload, **record.options}, record.labels, record.label_type, record.format))
    try:
        conv = _conventions(stored, tokens, config.vocab_size)
        net = weights.adopt_state(lambda: Wav2Vec2ForCTC(config), weights.state_dict(payload))
    except DataCorrupted as e:
        raise invalid_model(record.name, e) from None
    return SpeechRecognizer(net, vocab=conv.vocab, norm=conv.norm, do_normalize=conv.do_normalize,
                            use_mask=conv.use_mask, device=devices.torch_device(device))


def _conventions(stored: StoredConventions, tokens: list[Any], vocab_size: int) -> _Conventions:
    """The stored vocabulary and text options, checked against the network's output size."""
    if len(tokens) != vocab_size or not all(isinstance(t, str) for t in tokens):
        raise DataCorrupted(f"its vocabulary is {len(tokens)} token(s) but the network writes {vocab_size}")
    blank = check_int("blank", stored.blank, 0, vocab_size - 1)
    text_case = check_choice("text_case", stored.text_case, _TEXT_CASES)
    if not isinstance(stored.delimiter, str):
        raise DataCorrupted(f"delimiter is {stored.delimiter!r}; expected a string")
    jamo = check_bool("jamo", stored.jamo)
    do_normalize = check_bool("do_normalize", stored.do_normalize)
    use_mask = check_bool("attention_mask", stored.attention_mask)
    return _Conventions(Vocab(tokens, blank, stored.delimiter), TextNorm(text_case, jamo), do_normalize,
                        use_mask)


# --- starting points: a checkpoint, pretrained weights, or scratch --------------------------------
@dataclass
class Start:
    net: Any  # Wav2Vec2ForCTC
    vocab: Vocab | None  # the checkpoint's tokenizer vocabulary, if it has one
    do_normalize: bool
    use_mask: bool
    origin: str  # where the weights came from (stored as options.weights)
    fine_tune: bool  # weights were trained before: freeze the feature encoder


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized weights" warnings would go to the server log


def _load_checkpoint(src: str, origin: str, *, local: bool) -> Start:
    """A transformers Wav2Vec2 checkpoint (a folder, or a hub id when ``local``
    is False): the network, its CTC tokenizer's vocabulary if it has one, and
    its feature extractor's conventions."""
    from transformers import AutoConfig, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    _quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(src, local_files_only=local)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError ...
        raise DataError(f'cannot read the model configuration of "{src}": {e}',
                        hint="base_model must be a transformers Wav2Vec2 checkpoint folder"
                        " (config.json + model.safetensors) or a hub id.") from None
    if config.model_type != "wav2vec2":
        raise DataError(f'"{src}" is a {config.model_type} checkpoint; Wav2Vec2 algorithms need wav2vec2',
                        hint="Pass a Wav2Vec2 checkpoint as base_model.")
    try:
        # through the whitelist first: the model BUILD stores must load again (config.py)
        wav2vec2_config.checked(config.to_dict())
    except DataCorrupted as e:
        raise DataError(f'the configuration of "{src}" is out of bounds: {e.message}') from None
    try:
        net = Wav2Vec2ForCTC.from_pretrained(src, local_files_only=local)
    except Exception as e:  # missing or corrupt weights files
        raise DataError(f'cannot load the weights of "{src}": {e}') from None
    vocab = None
    try:
        tok = Wav2Vec2CTCTokenizer.from_pretrained(src, local_files_only=local)
        tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
        delimiter = tok.word_delimiter_token or "|"
        if delimiter not in tokens and " " in tokens:
            delimiter = " "
        vocab = Vocab(tokens, int(tok.pad_token_id if tok.pad_token_id is not None else config.pad_token_id),
                      delimiter)
    except Exception:  # no tokenizer files: the vocabulary comes from the texts
        vocab = None
    do_normalize, use_mask = True, config.feat_extract_norm == "layer"
    try:
        fe = Wav2Vec2FeatureExtractor.from_pretrained(src, local_files_only=local)
        do_normalize, use_mask = bool(fe.do_normalize), bool(fe.return_attention_mask)
    except Exception:  # no preprocessor_config.json: this architecture's defaults
        pass
    return Start(net, vocab, do_normalize, use_mask, origin, fine_tune=True)


def _weights_hint(repo: str, dirs: Sequence[str]) -> str:
    files = "config.json, model.safetensors, vocab.json, preprocessor_config.json"
    return weights.folder_hint(repo, dirs, files, alternatives="pass base_model='/path/to/checkpoint_folder',"
                               " or train from scratch with pretrained=False.")


def _from_hub(name: str, dirs: Sequence[str]) -> Start:
    """Pretrained weights by repo id (``org/name``, or a legacy id without org): a weights
    directory or the Hugging Face cache first, else downloaded from the hub."""
    repo = weights.hub_repo(name) or (name if weights.is_model_name(name) else None)
    if repo is None:  # weights.locate() lets no other name through: a path is never looked up by name
        raise InvalidOption(f'"{name}" is not a Hugging Face repo id (org/name)')
    local = weights.local_hub_dir(repo, dirs)
    if local:
        return _load_checkpoint(local, f"pretrained {repo} ({local})", local=True)
    if not weights.hub_reachable(weights.hub_endpoint()):
        raise WeightsUnavailable(f"weights for {repo} are not on the server and the model hub is unreachable",
                                 hint=_weights_hint(repo, dirs))
    try:
        folder = _download(repo)
        return _load_checkpoint(folder, f"pretrained {repo} (hub)", local=True)
    except DataError as e:
        raise WeightsUnavailable(f"could not load pretrained weights {repo}: {e.message}",
                                 hint=_weights_hint(repo, dirs)) from None


def _download(repo: str) -> str:
    """The files of hub repo ``repo`` that a checkpoint needs, in the server's Hugging Face
    cache: its folder there. Fetched by repo id only, and loaded from that folder, because
    transformers' from_pretrained(repo) first reads a folder of that name relative to the
    backend's working directory (the cluster's data directory), if there is one."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo, allow_patterns=["*.json", "*.safetensors"])
        if weights.weights_in_dir(Path(folder)) is None:  # an older repo: pickled weights only
            folder = snapshot_download(repo, allow_patterns=["*.json", "pytorch_model*.bin"])
    except Exception as e:  # network, authentication and missing-repo errors of huggingface_hub
        raise DataError(str(e)) from None
    return folder


def _from_path(path: str) -> Start:
    p = Path(path)
    if not p.exists():
        raise FileError(f'checkpoint "{path}" does not exist',
                        hint="base_model names a folder holding a transformers Wav2Vec2 checkpoint.")
    if not p.is_dir() or not (p / "config.json").is_file():
        raise DataError(f'"{path}" is not a transformers checkpoint folder (no config.json)',
                        hint="Save one with model.save_pretrained(folder) (and the processor's"
                        " save_pretrained for its vocabulary).")
    return _load_checkpoint(str(p), f"checkpoint {path}", local=True)


def scratch_network(vocab: Vocab) -> Any:
    from transformers import Wav2Vec2ForCTC

    config = wav2vec2_config.build({"vocab_size": len(vocab), "pad_token_id": vocab.blank, **SCRATCH_CONFIG})
    return Wav2Vec2ForCTC(config)


def start_network(algo: registry.Algorithm, opts: registry.Options, reader: Reader,
                  dirs: Sequence[str]) -> Start:
    base_model = opts.base_model
    if base_model:
        kind, where = weights.locate(base_model, reader.resolve_path)
        return _from_path(where) if kind == "path" else _from_hub(base_model, dirs)
    if opts.pretrained:
        return _from_hub(algo.params["hub_id"], dirs)
    return Start(None, None, True, True, "random initialisation", fine_tune=False)


def _resize_head(net: Any, vocab: Vocab) -> None:
    """Give the CTC head one output per token, keeping the rows it has."""
    head = net.lm_head
    if head.out_features == len(vocab):
        return
    new = torch.nn.Linear(head.in_features, len(vocab), device=head.weight.device, dtype=head.weight.dtype)
    torch.nn.init.normal_(new.weight, std=net.config.initializer_range)
    torch.nn.init.zeros_(new.bias)
    keep = min(head.out_features, len(vocab))
    with torch.no_grad():
        new.weight[:keep] = head.weight[:keep]
        new.bias[:keep] = head.bias[:keep]
    net.lm_head = new
    net.config.vocab_size = len(vocab)


# --- training ---------------------------------------------------------------------------------
class _Progress(training.Progress):
    """Progress in speech units: seconds of audio trained on per second."""

    what = "audio"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.audio_seconds = 0.0

    def heard(self, seconds: float) -> None:
        self.audio_seconds += seconds

    def speed(self, elapsed: float) -> str:
        return f"{self.audio_seconds / max(elapsed, 1e-9):.1f} s of audio/s"

    def audio_rate(self) -> float:
        """Seconds of audio trained on per second of wall time."""
        return self.audio_seconds / max(1e-9, self.elapsed())


def train(algo: registry.Algorithm, opts: registry.Options, source: RowSource,
          base: Base | None = None) -> Trained:
    """BUILD (base None) or FIT (base: a loaded model whose .model is a SpeechRecognizer)."""
    device = devices.torch_device(opts.device)
    texts = source.labels()  # distinct transcripts: the vocabulary is settled before any audio is read
    with training.seeded(device):
        if base is not None:
            training.refuse_base_model(opts)
            model: SpeechRecognizer = base.model
            model.net.to(device)
            model.device = device
            unknown = model.vocab.unknown(model.norm(t) for t in texts)
            if unknown:
                raise InvalidParameterValue(
                    f'the texts hold {len(unknown)} character(s) that model "{base.record.name}"'
                    " cannot write: "
                    + " ".join(_show(c) for c in unknown[:40]) + (" ..." if len(unknown) > 40 else ""),
                    hint="FIT MODEL keeps the base model's vocabulary; BUILD a new model to add characters,"
                    " or remove them from the texts.",
                )
            origin = f'model "{base.record.name}"'
            fine_tune = contract.stored_fields(StoredTraining, base.record).freeze_feature_encoder
        else:
            start = start_network(algo, opts, source.reader, source.weights_dirs)
            model = _model_for(start, texts, device, source.notice)
            origin, fine_tune = start.origin, start.fine_tune
        if fine_tune:
            model.net.freeze_feature_encoder()  # the convolutions keep their pre-trained features
        metrics, epochs = _fit(model, algo, opts, source)
    return Trained(
        payload=model.payload(), format=FORMAT, labels=model.vocab.tokens, label_type="text",
        options={**model.options(), "weights": origin, "freeze_feature_encoder": fine_tune}, metrics=metrics,
        epochs=epochs,
    )


def _show(c: str) -> str:
    return repr(c) if c.isspace() or not c.isprintable() else c


def _model_for(start: Start, texts: Sequence[str], device: torch.device, notice: Any) -> SpeechRecognizer:
    if start.vocab is not None:  # the checkpoint's tokenizer, extended when the texts need more
        norm = norm_for_vocab(start.vocab.tokens)
        vocab = start.vocab
        unknown = vocab.unknown(norm(t) for t in texts)
        if unknown:
            vocab = vocab.extend(unknown)
            notice(f"added {len(unknown)} character(s) to the vocabulary of the base model: "
                   + " ".join(_show(c) for c in unknown[:40]))
    else:  # one token per character of the (normalized) training texts
        norm = TextNorm(case="lower", jamo=True)
        vocab = Vocab.from_texts(norm(t) for t in texts)
    if len(vocab) > wav2vec2_config.MAX_VOCAB:
        raise InvalidParameterValue(f"the texts hold {len(vocab)} distinct characters; a speech recognition"
                                    f" model writes at most {wav2vec2_config.MAX_VOCAB}",
                                    hint="Train on texts of one language.")
    net = start.net if start.net is not None else scratch_network(vocab)
    _resize_head(net, vocab)
    net.config.pad_token_id = vocab.blank
    return SpeechRecognizer(net, vocab=vocab, norm=norm, do_normalize=start.do_normalize,
                            use_mask=start.use_mask, device=device)


def _length_batches(clips: list[Clip], bs: int, rng: random.Random) -> list[list[Clip]]:
    """Clips of similar length together (less padding), the batches in random order."""
    clips = sorted(clips, key=lambda c: len(c.audio))
    batches = [clips[i:i + bs] for i in range(0, len(clips), bs)]
    rng.shuffle(batches)
    return batches


def _fit(model: SpeechRecognizer, algo: registry.Algorithm, opts: registry.Options,
         source: RowSource) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    net, device, vocab = model.net, model.device, model.vocab
    bs = opts.batch_size
    trainer = training.Trainer(net, opts, source, device=device, label=f"{algo.name} training",
                               metric=training.CER, weight_decay=WEIGHT_DECAY,
                               warmup_fraction=WARMUP_FRACTION, max_grad_norm=MAX_GRAD_NORM,
                               progress=_Progress)
    progress: _Progress = trainer.progress  # type: ignore[assignment]  # the class passed as progress=
    skip = opts.on_error == "skip"
    work = partial(decode_rows, reader=source.reader, norm=model.norm, skip=skip, for_training=True)
    skipped = devices.Skipped(source.skipped)
    too_short = 0

    def batches(part: RowSource, epoch: int, train: bool) -> Iterator[list[Clip]]:
        """Batches of clips of similar length (less padding), in random order."""
        rng = random.Random(epoch)
        windows = (devices.numbered(w) for w in part.batches(bs * LENGTH_WINDOW, shuffle=train, seed=epoch))
        for window in _closing_iter(devices.prefetch(windows, work, Decoded.combine)):
            if epoch == 0:
                skipped.add(window.errors)
            yield from _length_batches(window.clips, bs, rng)

    def forward(epoch: int, batch: list[Clip], train: bool) -> training.Step:
        nonlocal too_short
        targets = [vocab.encode(c.text or "") for c in batch]
        x, mask, lengths = model.inputs([c.audio for c in batch])
        logits = model.logits(x, mask)
        frames = model.frames(lengths)
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)
        target_lengths = torch.tensor([len(t) for t in targets], device=device)
        flat = torch.tensor([k for t in targets for k in t], dtype=torch.long, device=device)
        # zero_infinity: a clip too short for its transcript adds no gradient instead of inf
        loss = F.ctc_loss(log_probs, flat, frames, target_lengths, blank=vocab.blank,
                          reduction="mean", zero_infinity=True)
        rates = ErrorRates()  # greedy CER on the batch's tokens
        pred = logits.detach().argmax(-1).cpu().numpy()
        for row, n, t in zip(pred, frames.tolist(), targets, strict=True):
            rates.add_chars(t, vocab.collapse(row[:n].tolist()))
            if train and epoch == 0:
                too_short += n < _min_frames(t)
        if train:
            progress.heard(sum(len(c.audio) for c in batch) / SAMPLE_RATE)
        return training.Step(loss, len(batch), rates.char_edits, rates.chars)

    done = trainer.run(batches, forward)
    skipped.notice(source.notice, f"{algo.name} training")
    if too_short:
        source.notice(f"{too_short} clip(s) are too short for their transcripts (a 20 ms frame per character"
                      " and between repeated characters is needed); they taught the model nothing")
    metrics = {**done.metrics(), "audio_seconds_per_second": round(progress.audio_rate(), 2)}
    if skip:
        metrics["skipped_rows"] = float(skipped.count)
    return metrics, done.rows()


def _closing_iter(it: Iterator[Any]) -> Iterator[Any]:
    """``it``'s items; ``it`` closed when done, and on an error or cancel (no decoding
    outlives the statement)."""
    with closing(it):
        yield from it


def _min_frames(target: Sequence[int]) -> int:
    """Frames CTC needs for a target: one per token plus a blank between repeats."""
    return len(target) + sum(a == b for a, b in itertools.pairwise(target))
