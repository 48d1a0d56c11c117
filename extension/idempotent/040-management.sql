-- Model management: LIST MODEL, DESCRIBE MODEL, DELETE/DROP MODEL, grants and
-- owners. These run as the caller (RLS decides what LIST and DESCRIBE show);
-- the writes go through the SECURITY DEFINER functions of 030-writers.sql.

CREATE OR REPLACE FUNCTION thanosql.list_models()
RETURNS TABLE (name text, class_name text, last_updated_utc timestamp)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.name, m.algorithm, (m.updated_at AT TIME ZONE 'UTC')::timestamp
    FROM thanosql.models m ORDER BY m.name
$$;

CREATE OR REPLACE FUNCTION thanosql.describe_model(model text)
RETURNS TABLE (name text, algorithm text, family text, owner name, options jsonb, labels jsonb,
               label_type text, metrics jsonb, size_bytes bigint, version integer,
               created_at timestamptz, updated_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT m.name, m.algorithm, m.family, pg_catalog.pg_get_userbyid(m.owner), m.options, m.labels,
                        m.label_type,
                        COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                                             'at', h.at, 'statement', h.statement, 'rows', h.rows,
                                             'metrics', h.metrics) ORDER BY h.at)
                                  FROM thanosql.model_metrics h WHERE h.model_id OPERATOR(pg_catalog.=) m.id),
                                 '[]'::jsonb),
                        m.size_bytes, m.version, m.created_at, m.updated_at
                 FROM thanosql.models m WHERE m.name OPERATOR(pg_catalog.=) model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object',
            HINT = 'LIST MODEL shows the models you can use.';
    END IF;
END $$;

CREATE OR REPLACE FUNCTION thanosql.delete_model(model text, if_exists boolean DEFAULT false)
RETURNS text LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT thanosql._delete_model(model, if_exists, thanosql._current_role())
$$;

-- grantee: a role as GRANT names it ('bob', '"Bob"', 'public'); privilege:
-- 'USE' (PREDICT, EVALUATE, CONVERT, SEARCH, FIT from) or 'MODIFY' (also
-- overwrite, FIT into, DELETE).
CREATE OR REPLACE FUNCTION thanosql.grant_model(model text, grantee name, privilege text DEFAULT 'USE')
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT thanosql._grant_model(model, grantee::text, privilege, thanosql._current_role())
$$;

CREATE OR REPLACE FUNCTION thanosql.revoke_model(model text, grantee name, privilege text DEFAULT 'USE')
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT thanosql._revoke_model(model, grantee::text, privilege, thanosql._current_role())
$$;

CREATE OR REPLACE FUNCTION thanosql.alter_model_owner(model text, new_owner name)
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT thanosql._alter_model_owner(model, new_owner::text, thanosql._current_role())
$$;
