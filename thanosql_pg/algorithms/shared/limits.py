"""Resource limits on one input and one batch: pure Python (spec packages and
decoding threads use it).

``MediaLimits`` holds the superuser settings that bound one input
(``thanosql.max_image_pixels``, ``thanosql.max_audio_seconds``, checked from its
header before it is decoded; ``thanosql.max_text_bytes``, checked before a text is
tokenized), 54000. The batch bounds stop option values that can
only exhaust the server: every model runs inside a database backend, where running
out of memory restarts every session of the cluster (22023 instead).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from thanosql_pg.errors import InvalidOption, LimitExceeded

# --- images ---------------------------------------------------------------------------------
MAX_IMAGE_BATCH = 4096  # SimCLR's own largest batch; one batch of decoded images is already gigabytes there
MAX_INPUT_SIZE = 1024  # pixels per side: 21x the work of 224 for every image, the largest timm models use 800
MAX_EMBEDDING_DIM = 2000  # pgvector's largest dimension for an HNSW index, which CONVERT builds
# batch_size x input_size^2 of one image batch: 2^28 pixels is a 3.2 GB float32
# input tensor (4096 images of 256 px, 256 of 1024 px), before any activation.
MAX_BATCH_PIXELS = 1 << 28


def check_batch_pixels(batch_size: int, input_size: int) -> None:
    """Refuse an image batch whose input tensor alone would be over MAX_BATCH_PIXELS
    pixels (22023): checked for BUILD/FIT options, and by the image families for
    PREDICT/EVALUATE/CONVERT, whose input_size is the model's."""
    pixels = batch_size * input_size * input_size
    if pixels > MAX_BATCH_PIXELS:
        raise InvalidOption(
            f"batch_size {batch_size} at input_size {input_size} is {pixels} pixels per batch,"
            f" over the limit of {MAX_BATCH_PIXELS}",
            hint=f"Lower batch_size (at most {max(1, MAX_BATCH_PIXELS // (input_size * input_size))}"
            f" at input_size {input_size}) or input_size.",
        )


@runtime_checkable
class SizedImages(Protocol):
    """The options of an image family: batches of images of input_size pixels a side
    (None until a starting point decides it)."""

    batch_size: int
    input_size: int | None


def check_image_batch(opts: Any) -> None:
    """An image family's ``Family.check`` (registry.Options of a family whose options
    class has input_size): BUILD/FIT's batch_size x input_size bound."""
    if isinstance(opts, SizedImages) and opts.input_size is not None:
        check_batch_pixels(opts.batch_size, opts.input_size)


# --- audio ----------------------------------------------------------------------------------
# Sample rates thanosql decodes: below 4 kHz nothing intelligible is left (telephone
# audio is 8 kHz); 384 kHz is the highest rate audio interfaces record. A header
# outside says something absurd (a 1 Hz WAV of 500 samples is 500 s: 8 M samples at
# 16 kHz, and 23 GB once a Wav2Vec2 trained on it).
MIN_SAMPLE_RATE = 4_000
MAX_SAMPLE_RATE = 384_000
# libsndfile reports about this many frames (SF_COUNT_MAX) when a header holds no length
UNKNOWN_FRAMES = 1 << 62

_AUDIO_SETTING = "thanosql.max_audio_seconds"
_TEXT_SETTING = "thanosql.max_text_bytes"


@dataclass(frozen=True)
class MediaLimits:
    """The superuser settings that bound one input, checked from its header before
    it is decoded (54000): ``thanosql.max_image_pixels`` and ``thanosql.max_audio_seconds``;
    and ``thanosql.max_text_bytes``, checked before a text is tokenized (a tokenizer holds
    many times a text's size while it works: 50 MB of search text took 2.5 GB).
    Read once per statement on the main thread (MediaReader.for_session); pure
    Python from then on, so decoding threads use it. The defaults are the settings'."""

    max_image_pixels: int = 40_000_000
    max_audio_seconds: int = 1800
    max_text_bytes: int = 65_536
    audio_limit: str = _AUDIO_SETTING  # what sets max_audio_seconds, for messages

    def check_text(self, text: str, what: str) -> None:
        """A text over thanosql.max_text_bytes (UTF-8) is refused (54000). Cheap for the
        usual text: its UTF-8 size is only computed when its length leaves it in doubt
        (1 to 4 bytes a character)."""
        limit = self.max_text_bytes
        if len(text) * 4 <= limit:
            return
        size = len(text) if len(text) > limit else len(text.encode("utf-8", "surrogatepass"))
        if size > limit:
            at_least = "at least " if len(text) > limit else ""
            raise LimitExceeded(
                f"{what} is {at_least}{size} bytes, over {_TEXT_SETTING} ({limit})",
                hint=f"Shorten the text, or ask a superuser to raise {_TEXT_SETTING}.",
            )

    def check_image(self, width: int, height: int, what: str) -> None:
        if width * height > self.max_image_pixels:
            raise self.image_too_large(what, width * height, f"{width}x{height} = ")

    def image_too_large(self, what: str, pixels: int | None = None, dims: str = "") -> LimitExceeded:
        """The error for an image over thanosql.max_image_pixels (``pixels``: its size when known)."""
        size = f"is {dims}{pixels} pixels, over" if pixels is not None else "is over"
        return LimitExceeded(
            f"{what} {size} thanosql.max_image_pixels ({self.max_image_pixels})",
            hint="Resize the image, or ask a superuser to raise thanosql.max_image_pixels.",
        )

    def capped_audio(self, seconds: int, why: str) -> MediaLimits:
        """These limits with audio capped at ``seconds`` by a bound of a family's own, named ``why``."""
        if seconds >= self.max_audio_seconds:
            return self
        return replace(self, max_audio_seconds=seconds, audio_limit=why)

    def max_audio_frames(self, rate: int, frames: int, what: str) -> int:
        """Check an audio header (sample rate; length, when it has one) and return
        how many frames may be decoded: formats whose header holds no length are
        decoded in blocks and stopped past it (``audio_too_long``)."""
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            # a resource bound like the others: what resampling costs grows with the rate
            raise LimitExceeded(
                f"{what} declares a sample rate of {rate} Hz; thanosql decodes"
                f" {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz",
                hint="Resample the recording to a usual rate (16 kHz for speech).",
            )
        limit = self.max_audio_seconds * rate
        if limit < frames < UNKNOWN_FRAMES:
            raise self.audio_too_long(what, frames / rate)
        return limit

    def audio_too_long(self, what: str, seconds: float | None = None) -> LimitExceeded:
        """The error for audio over the limit (``seconds``: its length when the header says)."""
        length = f"is {seconds:.1f} s long, over" if seconds is not None else "is longer than"
        raise_it = (", or ask a superuser to raise thanosql.max_audio_seconds"
                    if self.audio_limit == _AUDIO_SETTING else "")
        return LimitExceeded(
            f"{what} {length} {self.audio_limit} ({self.max_audio_seconds} s)",
            hint=f"Cut the recording into shorter clips{raise_it}.",
        )


DEFAULT_LIMITS = MediaLimits()
