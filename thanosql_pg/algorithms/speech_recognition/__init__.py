"""Speech recognition with Wav2Vec2 (CTC): the family's spec (pure; the model is in ``model``)."""

from __future__ import annotations

from dataclasses import dataclass

from thanosql_pg.algorithms import registry as r


@dataclass(frozen=True, kw_only=True)
class SpeechOptions(r.Options):
    """The family's own options, typed (registry.Options has the conventions)."""

    audio_col: str
    text_col: str


# Wav2Vec2 runs a whole batch at once (training: padded to its longest clip, up
# to 60 s; inference: 20 s windows): the first convolution of wav2vec2-base
# alone outputs 130 MB per 20 s window, so far fewer clips than images fit in a
# batch. Fine-tuning recipes use 8-32 per device.
MAX_SPEECH_BATCH = 64

FAMILY = r.register(r.Family(
    name="speech_recognition",
    model="thanosql_pg.algorithms.speech_recognition.model",
    algorithms={
        "Wav2Vec2En": {"hub_id": "facebook/wav2vec2-base-960h", "language": "en"},
        "Wav2Vec2Ko": {"hub_id": "kresnik/wav2vec2-large-xlsr-korean", "language": "ko"},
    },
    **r.supervised(
        r.option("audio_col", str, "audio_path"), r.option("text_col", str, "text"),
        r.batch_size(16, MAX_SPEECH_BATCH),
        training=(r.epochs(5), r.learning_rate(1e-4), r.OVERWRITE, r.PRETRAINED, r.BASE_MODEL, r.DEVICE,
                  r.ON_ERROR),
        reports=("per_row",),
    ),
    typed=SpeechOptions,
))
