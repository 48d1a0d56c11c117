-- Release 0.1.0: the model catalog's tables, as 0.1.0 created them.
-- Run-once and frozen: a fresh install replays every release's migrations in
-- order, so that it ends up exactly where an updated database does. Never edit
-- a released migration; add a new one under the next release instead.
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
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CHECK (name OPERATOR(pg_catalog.<>) '')
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
    privilege text NOT NULL CHECK (privilege OPERATOR(pg_catalog.=) ANY (ARRAY['USE', 'MODIFY'])),
    PRIMARY KEY (model_id, grantee, privilege)
);

-- Metrics history: one row per BUILD/FIT/EVALUATE. A separate table so that a
-- role allowed only to USE a model can still record its EVALUATE results.
CREATE TABLE thanosql.model_metrics (
    model_id  bigint NOT NULL REFERENCES thanosql.models(id) ON DELETE CASCADE,
    at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
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

-- Rows of thanosql.scan_folder().
CREATE TYPE thanosql.folder_entry AS (
    path text, file_name text, size_bytes bigint, label text, split text, media_type text
);
