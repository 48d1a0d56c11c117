-- Model management: LIST MODEL, DESCRIBE MODEL, DELETE/DROP MODEL, grants and
-- owners. These run as the caller (RLS decides what LIST and DESCRIBE show);
-- the writes go through the SECURITY DEFINER functions of 030-writers.sql.

CREATE OR REPLACE FUNCTION thanosql.list_models()
RETURNS TABLE (name text, class_name text, last_updated_utc timestamp)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.name, m.algorithm, (m.updated_at AT TIME ZONE 'UTC')::timestamp
    FROM thanosql.models m ORDER BY m.name
$$;

-- One model: ``metrics_history`` is what BUILD, FIT and EVALUATE measured over time
-- (thanosql.model_metrics), ``versions`` the kept versions, ``epoch_history`` the
-- per-epoch training history of the current version (thanosql.training_info).
CREATE OR REPLACE FUNCTION thanosql.describe_model(model text)
RETURNS TABLE (name text, algorithm text, family text, owner name, options jsonb, labels jsonb,
               label_type text, metrics_history jsonb, size_bytes bigint, version integer,
               created_at timestamptz, updated_at timestamptz, versions jsonb, epoch_history jsonb)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT m.name, m.algorithm, m.family, pg_catalog.pg_get_userbyid(m.owner), m.options, m.labels,
                        m.label_type,
                        COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                                             'at', h.at, 'statement', h.statement, 'version', h.version,
                                             'rows', h.rows, 'metrics', h.metrics) ORDER BY h.at)
                                  FROM thanosql.model_metrics h WHERE h.model_id OPERATOR(pg_catalog.=) m.id),
                                 '[]'::jsonb),
                        m.size_bytes, m.version, m.created_at, m.updated_at,
                        COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(v) ORDER BY v.version)
                                  FROM thanosql.model_versions(m.name) v), '[]'::jsonb),
                        COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(t) ORDER BY t.epoch)
                                  FROM thanosql.training_info(m.name) t), '[]'::jsonb)
                 FROM thanosql.models m WHERE m.name OPERATOR(pg_catalog.=) model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object',
            HINT = 'LIST MODEL shows the models you can use.';
    END IF;
END $$;

-- The kept versions of a model, newest first; ``current`` marks the one PREDICT uses.
CREATE OR REPLACE FUNCTION thanosql.model_versions(model text)
RETURNS TABLE (version integer, current boolean, statement text, algorithm text, rows bigint, metrics jsonb,
               size_bytes bigint, created_at timestamptz, created_by name)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT v.version, v.version OPERATOR(pg_catalog.=) m.version, v.statement, v.algorithm, v.rows, v.metrics,
           v.size_bytes, v.created_at, v.created_by
    FROM thanosql.models m JOIN thanosql.model_versions v ON v.model_id OPERATOR(pg_catalog.=) m.id
    WHERE m.name OPERATOR(pg_catalog.=) model
    ORDER BY v.version DESC
$$;

-- Per-epoch history of the BUILD/FIT that made a version (default: the current
-- one), like BigQuery ML's ML.TRAINING_INFO. ``metric`` names what
-- train_metric and validation_metric measure (accuracy, cer, contrastive_loss, ...).
CREATE OR REPLACE FUNCTION thanosql.training_info(model text, version integer DEFAULT NULL)
RETURNS TABLE (@COLUMNS:training_info@)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT e.version, e.epoch, e.metric, e.train_loss, e.train_metric, e.validation_loss, e.validation_metric,
           e.learning_rate, e.seconds, e.samples_per_second
    FROM thanosql.models m JOIN thanosql.model_epochs e ON e.model_id OPERATOR(pg_catalog.=) m.id
    WHERE m.name OPERATOR(pg_catalog.=) model
      AND e.version OPERATOR(pg_catalog.=) COALESCE($2, m.version)
    ORDER BY e.epoch
$$;

-- The writers of model management. Each is a C gate (src/act.c): it calls the
-- SECURITY DEFINER function of the same name with a leading underscore
-- (030-writers.sql), passing the role the server sees calling, never one the
-- caller names.

-- Makes a kept version current again, atomically; needs MODIFY on the model.
CREATE OR REPLACE FUNCTION thanosql.rollback_model(model text, version integer)
RETURNS integer AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C
SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql.delete_model(model text, if_exists boolean DEFAULT false)
RETURNS text AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C
SET search_path = pg_catalog, pg_temp;

-- grantee: a role as GRANT names it ('bob', '"Bob"', 'public'); privilege:
-- 'USE' (PREDICT, EVALUATE, CONVERT, SEARCH, FIT from) or 'MODIFY' (also
-- overwrite, FIT into, DELETE).
CREATE OR REPLACE FUNCTION thanosql.grant_model(model text, grantee name, privilege text DEFAULT 'USE')
RETURNS void AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C
SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql.revoke_model(model text, grantee name, privilege text DEFAULT 'USE')
RETURNS void AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C
SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql.alter_model_owner(model text, new_owner name)
RETURNS void AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C
SET search_path = pg_catalog, pg_temp;

-- The writers of BUILD and FIT, which thanosql_pg calls as the statement's role
-- (thanosql_pg/server/catalog.py); C gates like the above.
CREATE OR REPLACE FUNCTION thanosql._claim_model(p_name text, overwrite boolean, wait boolean,
                                                 OUT model_id bigint, OUT existed boolean)
AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql._write_model(
    p_model_id bigint, p_algorithm text, p_family text, p_options jsonb, p_labels jsonb, p_label_type text,
    p_format text, p_statement text, p_rows bigint)
RETURNS integer AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql._put_model_chunk(p_model_id bigint, p_seq integer, p_data bytea)
RETURNS void AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql._seal_model(p_model_id bigint)
RETURNS text AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql._write_epochs(p_model_id bigint, p_epochs jsonb)
RETURNS void AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql._write_metrics(p_model_id bigint, p_statement text, p_rows bigint,
                                                   p_metrics jsonb)
RETURNS void AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C SET search_path = pg_catalog, pg_temp;
