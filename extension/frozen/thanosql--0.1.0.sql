-- thanosql 0.1.0: the ThanoSQL machine-learning dialect of SQL.
-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION thanosql CASCADE" to load this file. \quit

------------------------------------------------------------------------------
-- Native helpers (src/thanosql.c)
------------------------------------------------------------------------------
CREATE FUNCTION thanosql._native_version() RETURNS text
    AS 'MODULE_PATHNAME', 'thanosql_native_version' LANGUAGE C STRICT IMMUTABLE;

CREATE FUNCTION thanosql._clean_next_error() RETURNS void
    AS 'MODULE_PATHNAME', 'thanosql_clean_next_error' LANGUAGE C VOLATILE;

-- Raises an error with a SQLSTATE and a cursor position (1-based characters
-- into the statement the client sent). The proxy and thanosql.execute() turn
-- ThanoSQL syntax errors into a call of this function.
CREATE FUNCTION thanosql.raise_error(sqlstate text, message text, detail text DEFAULT NULL,
                                     hint text DEFAULT NULL, "position" integer DEFAULT NULL)
    RETURNS void AS 'MODULE_PATHNAME', 'thanosql_raise_error' LANGUAGE C VOLATILE;

------------------------------------------------------------------------------
-- Model catalog
------------------------------------------------------------------------------
CREATE TABLE thanosql.models (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    algorithm   text NOT NULL,
    family      text NOT NULL,
    owner       name NOT NULL DEFAULT current_user,
    options     jsonb NOT NULL DEFAULT '{}',
    labels      jsonb,                       -- ordered label set, when the model has one
    label_type  text,                        -- SQL type of the label column it was trained on
    format      text NOT NULL,               -- how model_chunks is serialized
    size_bytes  bigint NOT NULL DEFAULT 0,
    version     integer NOT NULL DEFAULT 1,  -- bumped on overwrite and FIT: the session cache key
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (name <> '')
);
COMMENT ON TABLE thanosql.models IS 'ThanoSQL models: one row per model; weights in thanosql.model_chunks';

-- Weights live in the database so that pg_dump/restore and replicas carry them.
CREATE TABLE thanosql.model_chunks (
    model_id bigint NOT NULL REFERENCES thanosql.models(id) ON DELETE CASCADE,
    seq      integer NOT NULL,
    data     bytea NOT NULL,
    PRIMARY KEY (model_id, seq)
);
-- Serialized float weights do not compress: skip TOAST compression.
ALTER TABLE thanosql.model_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE thanosql.model_grants (
    model_id  bigint NOT NULL REFERENCES thanosql.models(id) ON DELETE CASCADE,
    grantee   name NOT NULL,                 -- a role name, or 'public'
    privilege text NOT NULL CHECK (privilege IN ('USE', 'MODIFY')),
    PRIMARY KEY (model_id, grantee, privilege)
);

-- Metrics history: one row per BUILD/FIT/EVALUATE. A separate table so that a
-- role allowed only to USE a model can still record its EVALUATE results.
CREATE TABLE thanosql.model_metrics (
    model_id  bigint NOT NULL REFERENCES thanosql.models(id) ON DELETE CASCADE,
    at        timestamptz NOT NULL DEFAULT now(),
    statement text NOT NULL,
    rows      bigint,
    metrics   jsonb NOT NULL,
    by_role   name NOT NULL DEFAULT current_user
);
CREATE INDEX ON thanosql.model_metrics (model_id, at);

SELECT pg_catalog.pg_extension_config_dump('thanosql.models', '');
SELECT pg_catalog.pg_extension_config_dump('thanosql.model_metrics', '');
SELECT pg_catalog.pg_extension_config_dump('thanosql.models_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('thanosql.model_chunks', '');
SELECT pg_catalog.pg_extension_config_dump('thanosql.model_grants', '');

-- True when the current role is the owner role or a member of it.
CREATE FUNCTION thanosql._is_owner(owner name) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT owner = current_user
        OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                   WHERE r.rolname = owner AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER'))
$$;

-- privilege is 'USE' (PREDICT, EVALUATE, CONVERT, SEARCH, FIT from) or
-- 'MODIFY' (overwrite, FIT into, DELETE); MODIFY implies USE.
CREATE FUNCTION thanosql._has_model_privilege(model_id bigint, owner name, privilege text)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT thanosql._is_owner(owner)
        OR EXISTS (SELECT 1 FROM thanosql.model_grants g
                   WHERE g.model_id = $1
                     AND (g.privilege = $3 OR g.privilege = 'MODIFY')
                     AND (g.grantee = 'public'
                          OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                                     WHERE r.rolname = g.grantee
                                       AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER'))))
$$;

ALTER TABLE thanosql.models ENABLE ROW LEVEL SECURITY;
CREATE POLICY models_select ON thanosql.models FOR SELECT
    USING (thanosql._has_model_privilege(id, owner, 'USE'));
CREATE POLICY models_insert ON thanosql.models FOR INSERT
    WITH CHECK (owner = current_user);
CREATE POLICY models_update ON thanosql.models FOR UPDATE
    USING (thanosql._has_model_privilege(id, owner, 'MODIFY'));
CREATE POLICY models_delete ON thanosql.models FOR DELETE
    USING (thanosql._has_model_privilege(id, owner, 'MODIFY'));

ALTER TABLE thanosql.model_chunks ENABLE ROW LEVEL SECURITY;
CREATE POLICY chunks_select ON thanosql.model_chunks FOR SELECT
    USING (EXISTS (SELECT 1 FROM thanosql.models m WHERE m.id = model_id));
CREATE POLICY chunks_write ON thanosql.model_chunks FOR ALL
    USING (EXISTS (SELECT 1 FROM thanosql.models m WHERE m.id = model_id
                   AND thanosql._has_model_privilege(m.id, m.owner, 'MODIFY')))
    WITH CHECK (EXISTS (SELECT 1 FROM thanosql.models m WHERE m.id = model_id
                        AND thanosql._has_model_privilege(m.id, m.owner, 'MODIFY')));

ALTER TABLE thanosql.model_grants ENABLE ROW LEVEL SECURITY;
CREATE POLICY grants_select ON thanosql.model_grants FOR SELECT USING (true);
CREATE POLICY grants_write ON thanosql.model_grants FOR ALL
    USING (EXISTS (SELECT 1 FROM thanosql.models m WHERE m.id = model_id AND thanosql._is_owner(m.owner)))
    WITH CHECK (EXISTS (SELECT 1 FROM thanosql.models m WHERE m.id = model_id AND thanosql._is_owner(m.owner)));

ALTER TABLE thanosql.model_metrics ENABLE ROW LEVEL SECURITY;
CREATE POLICY metrics_select ON thanosql.model_metrics FOR SELECT
    USING (EXISTS (SELECT 1 FROM thanosql.models m WHERE m.id = model_id));
CREATE POLICY metrics_insert ON thanosql.model_metrics FOR INSERT
    WITH CHECK (by_role = current_user AND EXISTS (SELECT 1 FROM thanosql.models m WHERE m.id = model_id));
CREATE POLICY metrics_delete ON thanosql.model_metrics FOR DELETE
    USING (EXISTS (SELECT 1 FROM thanosql.models m WHERE m.id = model_id
                   AND thanosql._has_model_privilege(m.id, m.owner, 'MODIFY')));

-- Whether a model name is taken, including by models RLS hides from the
-- caller: lets BUILD fail fast with a clear message instead of a unique
-- violation after training. Reveals only that the name is taken.
CREATE FUNCTION thanosql._model_name_taken(model text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM thanosql.models WHERE name = model)
$$;

GRANT USAGE ON SCHEMA thanosql TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON thanosql.models, thanosql.model_chunks, thanosql.model_grants TO PUBLIC;
GRANT SELECT, INSERT, DELETE ON thanosql.model_metrics TO PUBLIC;
GRANT USAGE, SELECT ON SEQUENCE thanosql.models_id_seq TO PUBLIC;

------------------------------------------------------------------------------
-- Model management (LIST MODEL, DELETE/DROP MODEL, DESCRIBE MODEL, grants)
------------------------------------------------------------------------------
CREATE FUNCTION thanosql.list_models()
RETURNS TABLE (name text, class_name text, last_updated_utc timestamp)
LANGUAGE sql STABLE AS $$
    SELECT m.name, m.algorithm, (m.updated_at AT TIME ZONE 'UTC')::timestamp
    FROM thanosql.models m ORDER BY m.name
$$;

CREATE FUNCTION thanosql.describe_model(model text)
RETURNS TABLE (name text, algorithm text, family text, owner name, options jsonb, labels jsonb,
               label_type text, metrics jsonb, size_bytes bigint, version integer,
               created_at timestamptz, updated_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY SELECT m.name, m.algorithm, m.family, m.owner, m.options, m.labels, m.label_type,
                        COALESCE((SELECT jsonb_agg(jsonb_build_object('at', h.at, 'statement', h.statement,
                                                                      'rows', h.rows, 'metrics', h.metrics)
                                                   ORDER BY h.at)
                                  FROM thanosql.model_metrics h WHERE h.model_id = m.id), '[]'::jsonb),
                        m.size_bytes, m.version, m.created_at, m.updated_at
                 FROM thanosql.models m WHERE m.name = model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object',
            HINT = 'LIST MODEL shows the models you can use.';
    END IF;
END $$;

CREATE FUNCTION thanosql.delete_model(model text, if_exists boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    mid bigint;
    mowner name;
BEGIN
    SELECT m.id, m.owner INTO mid, mowner FROM thanosql.models m WHERE m.name = model;
    IF NOT FOUND THEN
        IF if_exists THEN
            RAISE NOTICE 'model "%" does not exist, skipping', model;
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object',
            HINT = 'LIST MODEL shows the models you can use; DROP MODEL IF EXISTS skips missing ones.';
    END IF;
    IF NOT thanosql._has_model_privilege(mid, mowner, 'MODIFY') THEN
        RAISE EXCEPTION 'permission denied to delete model "%"', model
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('Model "%s" belongs to role %s; ask its owner to run SELECT thanosql.grant_model(%L, %L, ''MODIFY'').',
                                model, mowner, model, current_user);
    END IF;
    DELETE FROM thanosql.models WHERE id = mid;
    RETURN model;
END $$;

CREATE FUNCTION thanosql.grant_model(model text, grantee name, privilege text DEFAULT 'USE')
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    mid bigint;
    mowner name;
BEGIN
    IF upper(privilege) NOT IN ('USE', 'MODIFY') THEN
        RAISE EXCEPTION 'unknown model privilege "%"', privilege USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Use ''USE'' (predict, evaluate, fit from) or ''MODIFY'' (overwrite, fit into, delete).';
    END IF;
    SELECT m.id, m.owner INTO mid, mowner FROM thanosql.models m WHERE m.name = model;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model "%" does not exist', model USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT thanosql._is_owner(mowner) AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'only the owner of model "%" (%) can grant privileges on it', model, mowner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO thanosql.model_grants VALUES (mid, lower(grantee), upper(privilege)) ON CONFLICT DO NOTHING;
END $$;

CREATE FUNCTION thanosql.revoke_model(model text, grantee name, privilege text DEFAULT 'USE')
RETURNS void LANGUAGE sql AS $$
    DELETE FROM thanosql.model_grants g USING thanosql.models m
    WHERE m.name = model AND g.model_id = m.id AND g.grantee = lower(grantee)
      AND g.privilege = upper(privilege)
$$;

------------------------------------------------------------------------------
-- PL/Python entry points. Each body loads thanosql_pg once per backend (from
-- the virtualenv named by thanosql.python_lib_dir) and calls into
-- thanosql_pg.server.entry, which owns all the logic.
------------------------------------------------------------------------------
CREATE FUNCTION thanosql._load() RETURNS void LANGUAGE plpython3u AS $$
import glob, os, site, sys
plpy.execute("SELECT thanosql._native_version()")  # loads thanosql.so: defines the settings
lib = plpy.execute("SELECT current_setting('thanosql.python_lib_dir') AS d")[0]["d"]
if lib:
    # Accept a virtualenv root or a site-packages directory.
    found = sorted(glob.glob(os.path.join(lib, "lib", "python3*", "site-packages")))
    sp = found[-1] if found else lib
    if not os.path.isdir(sp):
        plpy.error("thanosql.python_lib_dir points to %r, which is not a directory" % lib,
                   hint="Run make setup, or ALTER SYSTEM SET thanosql.python_lib_dir = '/path/to/venv'.",
                   sqlstate="F0000")
    before = list(sys.path)
    site.addsitedir(sp)  # also runs .pth files (the editable install of thanosql_pg)
    added = [p for p in sys.path if p not in before]
    # The virtualenv wins over Debian's dist-packages.
    sys.path[:] = added + before
# pglast bundles libpg_query, a copy of PostgreSQL's parser whose symbols
# (palloc, raw_parser, ...) clash with this backend's own: bound to the
# backend's, it crashes. DEEPBIND makes it prefer its own copies.
flags = sys.getdlopenflags()
sys.setdlopenflags(os.RTLD_NOW | os.RTLD_DEEPBIND)
try:
    import pglast.parser  # noqa: F401
except ImportError:
    pass  # reported below, with a hint
finally:
    sys.setdlopenflags(flags)
try:
    from thanosql_pg.server import entry
except ImportError as e:
    plpy.error("cannot import thanosql_pg: %s" % e,
               hint="Set thanosql.python_lib_dir to the virtualenv that has thanosql_pg installed.",
               sqlstate="F0000")
entry.on_load()
GD["thanosql"] = entry
$$;

CREATE FUNCTION thanosql.rewrite(sql text) RETURNS text LANGUAGE plpython3u STABLE AS $$
if "thanosql" not in GD: plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].rewrite(sql)
$$;

-- Runs any ThanoSQL (or plain SQL) text for clients that cannot use the proxy.
-- Returns the rows of the last statement, each as a jsonb object.
CREATE FUNCTION thanosql.execute(sql text) RETURNS SETOF jsonb LANGUAGE plpython3u AS $$
if "thanosql" not in GD: plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].execute(sql)
$$;

CREATE FUNCTION thanosql.build_model(name text, algorithm text, options jsonb, query text)
RETURNS TABLE (model text, algorithm text, rows bigint, epochs integer, seconds double precision, metrics jsonb)
LANGUAGE plpython3u AS $$
if "thanosql" not in GD: plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].build_model(name, algorithm, options, query)
$$;

CREATE FUNCTION thanosql.fit_model(name text, base_model text, options jsonb, query text)
RETURNS TABLE (model text, algorithm text, rows bigint, epochs integer, seconds double precision, metrics jsonb)
LANGUAGE plpython3u AS $$
if "thanosql" not in GD: plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].fit_model(name, base_model, options, query)
$$;

CREATE FUNCTION thanosql.prepare(statement text, model text, options jsonb) RETURNS jsonb
LANGUAGE plpython3u AS $$
if "thanosql" not in GD: plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].prepare(statement, model, options)
$$;

CREATE FUNCTION thanosql.predict_batch(cfg jsonb, vals jsonb[]) RETURNS text[]
LANGUAGE plpython3u AS $$
if "thanosql" not in GD: plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].predict_batch(cfg, vals)
$$;

CREATE FUNCTION thanosql.save_table(table_name text, query text)
RETURNS TABLE (table_name text, rows bigint) LANGUAGE plpython3u AS $$
if "thanosql" not in GD: plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].save_table(table_name, query)
$$;

CREATE FUNCTION thanosql.evaluate(model text, options jsonb, query text)
RETURNS TABLE (metric text, score double precision) LANGUAGE plpython3u AS $$
if "thanosql" not in GD: plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].evaluate(model, options, query)
$$;

CREATE FUNCTION thanosql.convert(model text, options jsonb, query text, source_table text)
RETURNS TABLE (table_name text, rows bigint) LANGUAGE plpython3u AS $$
if "thanosql" not in GD: plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].convert(model, options, query, source_table)
$$;

-- CONVERT that returns its rows (the PREDICT shape): one embedding per value.
CREATE FUNCTION thanosql.convert_batch(cfg jsonb, vals jsonb[]) RETURNS vector[]
LANGUAGE plpython3u AS $$
if "thanosql" not in GD: plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].convert_batch(cfg, vals)
$$;

-- SEARCH IMAGE's query embedding: search_input in options, or bound by the
-- client as $n (a server path as text, or the image itself as bytea).
CREATE FUNCTION thanosql.embed_query(model text, options jsonb) RETURNS vector
LANGUAGE plpython3u AS $$
if "thanosql" not in GD: plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].embed_query(model, options)
$$;

CREATE FUNCTION thanosql.embed_query(model text, options jsonb, search_input text) RETURNS vector
LANGUAGE plpython3u AS $$
if "thanosql" not in GD: plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].embed_query(model, options, search_input)
$$;

CREATE FUNCTION thanosql.embed_query(model text, options jsonb, search_input bytea) RETURNS vector
LANGUAGE plpython3u AS $$
if "thanosql" not in GD: plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].embed_query(model, options, search_input)
$$;

------------------------------------------------------------------------------
-- Folder datasets: the files of a server folder as rows (ImageFolder layout:
-- root/[train|val|test/]<label>/<file>). Logic in thanosql_pg/scanner.py.
-- Reading a folder follows the rule for files: superusers and members of
-- pg_read_server_files anywhere, other roles below thanosql.data_dir.
------------------------------------------------------------------------------
CREATE TYPE thanosql.folder_entry AS (
    path text, file_name text, size_bytes bigint, label text, split text, media_type text
);

CREATE FUNCTION thanosql.scan_folder(path text, recursive boolean DEFAULT true,
                                     media_type text DEFAULT NULL, include_hidden boolean DEFAULT false)
RETURNS SETOF thanosql.folder_entry LANGUAGE plpython3u AS $$
if "thanosql" not in GD: plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].scan_folder(path, recursive, media_type, include_hidden)
$$;
