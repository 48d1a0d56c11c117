"""Audio: any soundfile format (WAV, FLAC, OGG, MP3; any rate, any channel count)
decoded into float32 mono at 16 kHz, in blocks, the header checked against the
limits first. Runs in pool threads: no plpy.
"""

from __future__ import annotations

import io
import math

import numpy as np

from thanosql_pg.algorithms.shared.limits import DEFAULT_LIMITS, MediaLimits
from thanosql_pg.errors import DataError

SAMPLE_RATE = 16_000
AUDIO_BLOCK = 1 << 20  # samples (frames x channels) decoded, and resampled, at a time
# torchaudio's sinc resampler holds a kernel of new/g x (orig/g + 2 width) floats, g
# their gcd: for 44100 Hz 160 x 475, but for an odd rate such as 44101 Hz 16000 x
# 44115 (2.8 GB); 383999 Hz would take 25 GB.
MAX_RESAMPLE_KERNEL = 1 << 22
_LOWPASS_WIDTH, _ROLLOFF = 6, 0.99  # torchaudio.functional.resample's defaults, which it is called with


def kernel_shape(rate: int, new: int) -> tuple[int, int, int]:
    """(orig/g, new/g, width) of torchaudio's resampling kernel from ``rate`` to ``new``."""
    g = math.gcd(rate, new)
    o, n = rate // g, new // g
    return o, n, math.ceil(_LOWPASS_WIDTH * o / (min(o, n) * _ROLLOFF))


def resample_rate(rate: int) -> int:
    """The rate to resample from: ``rate`` itself, unless its ratio to 16 kHz reduces
    so little that the kernel would be over MAX_RESAMPLE_KERNEL; then the nearest
    multiple of 100 Hz (at most 1.25 % off at 4 kHz: a change of speed that speech
    recognition does not notice; speed perturbation trains with 10 %)."""
    o, n, width = kernel_shape(rate, SAMPLE_RATE)
    return rate if n * (o + 2 * width) <= MAX_RESAMPLE_KERNEL else round(rate / 100) * 100


class Resampler:
    """torchaudio's sinc resampling of a stream, block by block. Each block is
    resampled with enough input on both sides that its output is exactly that of
    resampling the whole signal at once: memory stays at a block plus the output."""

    def __init__(self, rate: int, new: int = SAMPLE_RATE, block: int = AUDIO_BLOCK) -> None:
        self.rate, self.new = rate, new
        self.o, self.n, width = kernel_shape(rate, new)
        # output step j (n samples) reads input [j*o - width, j*o + o + width): whole steps of context
        self.ctx = math.ceil((width + self.o) / self.o) * self.o
        self.step = max(1, block // self.o) * self.o
        self.buf = np.zeros(0, np.float32)
        self.start = 0  # input index of buf[0]: a multiple of o
        self.done = 0  # input resampled so far: a multiple of o
        self.out: list[np.ndarray] = []

    def push(self, x: np.ndarray) -> None:
        if self.rate == self.new:
            self.out.append(x)
            return
        self.buf = np.concatenate((self.buf, x))
        while self.start + len(self.buf) >= self.done + self.step + self.ctx:
            self._emit(self.done + self.step)

    def _emit(self, end: int | None) -> None:
        """The output for input [done, end); ``end`` None: up to the end of the signal."""
        import torch
        import torchaudio.functional as AF

        stop = len(self.buf) if end is None else end + self.ctx - self.start
        y = AF.resample(torch.from_numpy(self.buf[:stop]), self.rate, self.new).numpy()
        lo = (self.done - self.start) // self.o * self.n
        hi = None if end is None else (end - self.start) // self.o * self.n
        self.out.append(y[lo:hi])
        if end is not None:
            self.done = end
            cut = max(0, self.done - self.ctx - self.start)
            self.buf, self.start = self.buf[cut:], self.start + cut

    def finish(self) -> np.ndarray:
        if self.rate != self.new and self.start + len(self.buf) > self.done:
            self._emit(None)
        return np.concatenate(self.out) if self.out else np.zeros(0, np.float32)


def decode_audio(data: bytes, where: str, limits: MediaLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Any soundfile format → float32 mono at 16 kHz, channels averaged.

    The header (sample rate, length) is checked against ``limits`` before anything
    is decoded; then the audio is decoded, mixed down and resampled in blocks, and
    decoding stops once past the limit, for headers that hold no length (or a wrong one).
    """
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels = f.samplerate, f.channels
            limit = limits.max_audio_frames(rate, f.frames, where)
            resampler = Resampler(resample_rate(rate))
            decoded = 0
            for block in f.blocks(blocksize=max(1, AUDIO_BLOCK // channels), dtype="float32", always_2d=True):
                decoded += len(block)
                if decoded > limit:
                    raise limits.audio_too_long(where)
                mono = block.mean(axis=1) if channels > 1 else block[:, 0]
                if not np.isfinite(mono).all():
                    raise DataError(f"{where} holds NaN or infinite audio samples")
                resampler.push(np.ascontiguousarray(mono, dtype=np.float32))
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError, EOFError) as e:
        reason = str(e).split(": ", 1)[-1] if "Error opening" in str(e) else str(e)
        raise DataError(f"cannot decode {where}: {reason}",
                        hint="Audio must be WAV, FLAC, OGG (Vorbis/Opus) or MP3.") from None
    if decoded == 0:
        raise DataError(f"{where} holds no audio samples",
                        hint="Leave out rows whose recording is empty.")
    return resampler.finish()
