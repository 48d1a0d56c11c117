-- Speech recognition: bad input comes back as a clear error with a SQLSTATE.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS thanosql CASCADE;
RESET client_min_messages;
\set SHOW_CONTEXT never
-- Audio made in SQL, no files needed: 0.5 s of a 440 Hz tone as an 8 kHz 8-bit mono WAV
-- (44-byte header, then one unsigned byte per sample), and a WAV header with no samples.
CREATE TEMP TABLE clips AS
SELECT decode('52494646c40f000057415645666d74201000000001000100401f0000401f000001000800'
              || '64617461a00f0000'
              || (SELECT string_agg(lpad(to_hex((128 + 90 * sin(2 * pi() * 440 * i / 8000))::int), 2, '0'),
                                    '' ORDER BY i)
                  FROM generate_series(0, 3999) AS i), 'hex') AS audio,
       'la la' AS text;
CREATE TEMP TABLE empty_clip AS
SELECT decode('524946462400000057415645666d74201000000001000100803e0000007d0000020010006461746100000000',
              'hex') AS audio, 'silence' AS text;
-- A small model from scratch (pretrained=False: no weights to download); its output is not shown.
SET client_min_messages = warning;
\o /dev/null
BUILD MODEL speech_regress USING Wav2Vec2En
OPTIONS (audio_col='audio', text_col='text', pretrained=False, epochs=1, batch_size=1)
AS SELECT audio, text FROM clips;
\o
RESET client_min_messages;
SELECT name, algorithm, family, labels, options->>'weights' AS weights FROM (DESCRIBE MODEL speech_regress) AS d;
-- an option value of the wrong type (max_epochs is epochs)
BUILD MODEL m USING Wav2Vec2Ko OPTIONS (audio_col='audio', max_epochs='five') AS SELECT audio, text FROM clips;
\echo :LAST_ERROR_SQLSTATE
-- a column that does not exist
BUILD MODEL m USING Wav2Vec2En OPTIONS (audio_col='sound', pretrained=False) AS SELECT audio, text FROM clips;
\echo :LAST_ERROR_SQLSTATE
PREDICT USING speech_regress OPTIONS (audio_col='sound') AS SELECT audio FROM clips;
\echo :LAST_ERROR_SQLSTATE
EVALUATE USING speech_regress OPTIONS (audio_col='audio', text_col='transcript') AS SELECT audio, text FROM clips;
\echo :LAST_ERROR_SQLSTATE
-- NULL text
BUILD MODEL m USING Wav2Vec2En OPTIONS (audio_col='audio', pretrained=False)
AS SELECT audio, NULL::text AS text FROM clips;
\echo :LAST_ERROR_SQLSTATE
EVALUATE USING speech_regress OPTIONS (audio_col='audio') AS SELECT audio, NULL::text AS text FROM clips;
\echo :LAST_ERROR_SQLSTATE
-- NULL audio
PREDICT USING speech_regress OPTIONS (audio_col='audio') AS SELECT NULL::bytea AS audio;
\echo :LAST_ERROR_SQLSTATE
-- bytes that are not audio
BUILD MODEL m USING Wav2Vec2En OPTIONS (audio_col='audio', pretrained=False)
AS SELECT 'RIFF, but not a WAV file'::bytea AS audio, 'x' AS text;
\echo :LAST_ERROR_SQLSTATE
PREDICT USING speech_regress OPTIONS (audio_col='audio') AS SELECT '\x00ff00ff'::bytea AS audio;
\echo :LAST_ERROR_SQLSTATE
-- audio with no samples
PREDICT USING speech_regress OPTIONS (audio_col='audio') AS SELECT audio FROM empty_clip;
\echo :LAST_ERROR_SQLSTATE
EVALUATE USING speech_regress OPTIONS (audio_col='audio') AS SELECT audio, text FROM empty_clip;
\echo :LAST_ERROR_SQLSTATE
-- a file that does not exist (terse: the hint names this server's data directory)
\set VERBOSITY terse
PREDICT USING speech_regress OPTIONS (audio_col='path') AS SELECT '/nonexistent/speech.wav' AS path;
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
-- a base model folder that does not exist
BUILD MODEL m USING Wav2Vec2En OPTIONS (audio_col='audio', base_model='/nonexistent/wav2vec2')
AS SELECT audio, text FROM clips;
\echo :LAST_ERROR_SQLSTATE
-- FIT keeps the vocabulary: characters the model cannot write are listed
FIT MODEL m USING speech_regress OPTIONS (audio_col='audio') AS SELECT audio, 'la la 42!' AS text FROM clips;
\echo :LAST_ERROR_SQLSTATE
-- per-utterance rows (what a one-epoch model hears is not shown); a report speech models do not make
SELECT row_number, input, reference
FROM (EVALUATE USING speech_regress OPTIONS (audio_col='audio', report='per_row') AS SELECT audio, text FROM clips) AS e;
EVALUATE USING speech_regress OPTIONS (audio_col='audio', report='confusion_matrix') AS SELECT audio, text FROM clips;
\echo :LAST_ERROR_SQLSTATE
-- an unknown model
PREDICT USING no_such_speech_model OPTIONS (audio_col='audio') AS SELECT audio FROM clips;
\echo :LAST_ERROR_SQLSTATE
EVALUATE USING no_such_speech_model OPTIONS (audio_col='audio') AS SELECT audio, text FROM clips;
\echo :LAST_ERROR_SQLSTATE
FIT MODEL m USING no_such_speech_model OPTIONS (audio_col='audio') AS SELECT audio, text FROM clips;
\echo :LAST_ERROR_SQLSTATE
-- nothing was created by the failed statements
SELECT count(*) AS models_named_m FROM thanosql.models WHERE name = 'm';
-- a speech model does not CONVERT
CONVERT USING speech_regress OPTIONS (image_col='audio') AS SELECT audio FROM clips;
\echo :LAST_ERROR_SQLSTATE
DROP MODEL speech_regress;
