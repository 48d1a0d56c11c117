-- ThanoSQL errors come back with a SQLSTATE and a position in the user's text.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS thanosql CASCADE;
RESET client_min_messages;
\set SHOW_CONTEXT never
-- unknown option: lists the valid ones
BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (image_col='path', epochz=3) AS SELECT 1;
\echo :LAST_ERROR_SQLSTATE
-- wrong type
BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (epochs='three') AS SELECT 1;
\echo :LAST_ERROR_SQLSTATE
-- unknown algorithm
BUILD MODEL m USING NoSuchNet OPTIONS (epochs=1) AS SELECT 1;
\echo :LAST_ERROR_SQLSTATE
-- syntax error inside the query after AS, marked where it is
PREDICT USING m OPTIONS (image_col='path') AS SELEC path FROM t;
\echo :LAST_ERROR_SQLSTATE
-- ... and after multi-byte characters on the same line
SELECT '한국어' AS k; EVALUATE USING m AS SELECT FROM WHERE;
\echo :LAST_ERROR_SQLSTATE
-- grammar of the ML statement itself
BUILD MODEL USING ConvNeXt_Tiny AS SELECT 1;
\echo :LAST_ERROR_SQLSTATE
PREDICT USING m OPTIONS (image_col='path') SELECT 1;
\echo :LAST_ERROR_SQLSTATE
-- an unknown model
PREDICT USING no_such_model OPTIONS (image_col='path') AS SELECT 'x.png' AS path;
\echo :LAST_ERROR_SQLSTATE
-- the error aborts the transaction like any other
BEGIN;
SELECT 1 AS before;
BUILD MODEL m USING ConvNeXt_Tiny OPTIONS (epochs=-1) AS SELECT 1;
SELECT 1 AS after;
ROLLBACK;
