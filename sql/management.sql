-- LIST MODEL, DESCRIBE MODEL, DELETE MODEL / DROP MODEL [IF EXISTS]
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS thanosql CASCADE;
RESET client_min_messages;
\set SHOW_CONTEXT never
LIST MODEL;
list models;
-- A catalog row written as BUILD MODEL writes it (claim the name, write a version),
-- then given fixed times.
SELECT model_id AS mid FROM thanosql._claim_model('regress_m', false, false) \gset
SELECT thanosql._write_model(:mid, 'ConvNeXt_Tiny', 'image_classification', '{"epochs": 1}', '[0, 1, 2]',
                             'integer', 'test', 'BUILD', 3) AS version;
UPDATE thanosql.models SET created_at = '2024-01-01 00:00:00+00', updated_at = '2024-01-02 03:04:05+00'
WHERE id = :mid;
LIST MODEL;
SELECT name, class_name FROM (LIST MODEL) AS l WHERE class_name LIKE 'ConvNeXt%';
-- (owner and times left out: they depend on who runs the tests)
SELECT name, algorithm, family, options, labels, label_type, metrics_history, size_bytes, version
FROM (DESCRIBE MODEL regress_m) AS d;
SELECT version, current, statement, algorithm, rows FROM thanosql.model_versions('regress_m');
SELECT name, algorithm FROM (describe model "regress_m") AS d;
DESCRIBE MODEL nope;
\echo :LAST_ERROR_SQLSTATE
DELETE MODEL nope;
\echo :LAST_ERROR_SQLSTATE
DROP MODEL IF EXISTS nope;
DELETE MODEL regress_m;
DROP MODEL IF EXISTS regress_m;
LIST MODEL;
