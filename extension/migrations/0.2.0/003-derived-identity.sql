-- Release 0.2.0: the role a writer acts for is derived by the server (the C
-- gates of src/act.c pass GetUserId()), never taken from an argument checked
-- against SESSION_USER; weights hashes are computed by the server from the
-- bytes it stores; the progress writers are no longer SQL functions (the
-- C module's, called in-process by thanosql_pg). The writers that took a
-- ``caller`` go (idempotent/030-writers.sql makes their replacements, which
-- PUBLIC cannot execute).

DROP POLICY IF EXISTS grants_select ON thanosql.model_grants;  -- the idempotent part recreates it
DROP FUNCTION IF EXISTS thanosql._grant_visible(bigint, pg_catalog.regrole, pg_catalog.regrole);
DROP FUNCTION IF EXISTS thanosql._acting_role(pg_catalog.regrole);
DROP FUNCTION IF EXISTS thanosql._model_name_taken(text);
DROP FUNCTION IF EXISTS thanosql._lock_model(bigint, text, boolean);
DROP FUNCTION IF EXISTS thanosql._holder(text);
DROP FUNCTION IF EXISTS thanosql._model_claim(text, boolean, boolean, pg_catalog.regrole);
DROP FUNCTION IF EXISTS thanosql._model_write(bigint, text, text, jsonb, jsonb, text, text, bigint, text, text,
                                              bigint, pg_catalog.regrole);
DROP FUNCTION IF EXISTS thanosql._model_put_chunk(bigint, integer, bytea, pg_catalog.regrole);
DROP FUNCTION IF EXISTS thanosql._record_epochs(bigint, jsonb, pg_catalog.regrole);
DROP FUNCTION IF EXISTS thanosql._rollback_model(text, integer, pg_catalog.regrole);
DROP FUNCTION IF EXISTS thanosql._record_metrics(bigint, text, bigint, jsonb, pg_catalog.regrole);
DROP FUNCTION IF EXISTS thanosql._delete_model(text, boolean, pg_catalog.regrole);
DROP FUNCTION IF EXISTS thanosql._grant_model(text, text, text, pg_catalog.regrole);
DROP FUNCTION IF EXISTS thanosql._revoke_model(text, text, text, pg_catalog.regrole);
DROP FUNCTION IF EXISTS thanosql._alter_model_owner(text, text, pg_catalog.regrole);
DROP FUNCTION IF EXISTS thanosql._progress_start(text, text);
DROP FUNCTION IF EXISTS thanosql._progress_update(text, integer, integer, bigint, bigint, double precision,
                                                  double precision, double precision);
DROP FUNCTION IF EXISTS thanosql._progress_end();
DROP FUNCTION IF EXISTS thanosql._work(boolean);

-- Every stored version's hash, made here from its chunks (SHA-256 over each
-- chunk's SHA-256, as thanosql._weights_digest computes it): a hash that a
-- caller wrote is never kept.
UPDATE thanosql.model_versions v
   SET payload_sha256 = d.digest, size_bytes = d.total
  FROM (SELECT c.model_id, c.version,
               pg_catalog.encode(pg_catalog.sha256(pg_catalog.string_agg(pg_catalog.sha256(c.data), ''::pg_catalog.bytea
                                                                         ORDER BY c.seq)), 'hex') AS digest,
               pg_catalog.sum(pg_catalog.length(c.data)) AS total
          FROM thanosql.model_chunks c GROUP BY c.model_id, c.version) d
 WHERE d.model_id OPERATOR(pg_catalog.=) v.model_id AND d.version OPERATOR(pg_catalog.=) v.version;

-- describe_model's columns say which history is which (metrics_history, epoch_history):
-- a function's result columns change only by dropping it.
DROP FUNCTION IF EXISTS thanosql.describe_model(text);
