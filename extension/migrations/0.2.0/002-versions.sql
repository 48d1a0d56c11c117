-- Release 0.2.0: model versions and per-epoch training history.
--
-- Every BUILD (overwrite=True) and FIT into an existing model keeps the
-- previous versions (thanosql.keep_versions of them): their metadata in
-- model_versions, their weights in model_chunks under their version number.
-- thanosql.models.version names the current one, which PREDICT uses;
-- thanosql.rollback_model() points it back at a kept version.

CREATE TABLE thanosql.model_versions (
    model_id    bigint NOT NULL REFERENCES thanosql.models(id) ON DELETE CASCADE,
    version     integer NOT NULL,
    algorithm   text NOT NULL,
    family      text NOT NULL,
    options     jsonb NOT NULL,
    labels      jsonb,
    label_type  text,
    format      text NOT NULL,
    size_bytes  bigint NOT NULL,
    -- SHA-256 of the weights (hex): names and checks the server's memory-mapped cache
    -- file that sessions share (NULL for models from before 0.2.0: hashed on first load)
    payload_sha256 text,
    statement   text NOT NULL,               -- BUILD or FIT
    rows        bigint,
    metrics     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by  name NOT NULL,
    PRIMARY KEY (model_id, version)
);
COMMENT ON TABLE thanosql.model_versions IS
    'Every kept version of a model; thanosql.models.version is the current one';

-- One row per epoch of the BUILD or FIT that made a version.
CREATE TABLE thanosql.model_epochs (
    model_id            bigint NOT NULL,
    version             integer NOT NULL,
    epoch               integer NOT NULL,    -- 1-based
    metric              text,                -- what train_metric/validation_metric measure: accuracy, cer, ...
    train_loss          double precision,
    train_metric        double precision,
    validation_loss     double precision,
    validation_metric   double precision,
    learning_rate       double precision,
    seconds             double precision,
    samples_per_second  double precision,
    PRIMARY KEY (model_id, version, epoch),
    FOREIGN KEY (model_id, version) REFERENCES thanosql.model_versions (model_id, version) ON DELETE CASCADE
);

-- The models that exist become their own version 1 (or whatever version they are at).
INSERT INTO thanosql.model_versions (model_id, version, algorithm, family, options, labels, label_type, format,
                                     size_bytes, statement, rows, metrics, created_at, created_by)
SELECT m.id, m.version, m.algorithm, m.family, m.options, m.labels, m.label_type, m.format, m.size_bytes,
       COALESCE(h.statement, 'BUILD'), h.rows, COALESCE(h.metrics, '{}'::pg_catalog.jsonb), m.updated_at,
       pg_catalog.pg_get_userbyid(m.owner)
FROM thanosql.models m
LEFT JOIN LATERAL (SELECT mm.statement, mm.rows, mm.metrics FROM thanosql.model_metrics mm
                   WHERE mm.model_id OPERATOR(pg_catalog.=) m.id
                     AND mm.statement OPERATOR(pg_catalog.=) ANY (ARRAY['BUILD', 'FIT'])
                   ORDER BY mm.at DESC LIMIT 1) h ON true;

-- Weights are per version.
ALTER TABLE thanosql.model_chunks ADD COLUMN version integer;
UPDATE thanosql.model_chunks c SET version = m.version
FROM thanosql.models m WHERE m.id OPERATOR(pg_catalog.=) c.model_id;
ALTER TABLE thanosql.model_chunks ALTER COLUMN version SET NOT NULL;
ALTER TABLE thanosql.model_chunks DROP CONSTRAINT model_chunks_pkey;
ALTER TABLE thanosql.model_chunks ADD PRIMARY KEY (model_id, version, seq);
ALTER TABLE thanosql.model_chunks ADD FOREIGN KEY (model_id, version)
    REFERENCES thanosql.model_versions (model_id, version) ON DELETE CASCADE;

-- Metrics history rows say which version they measured.
ALTER TABLE thanosql.model_metrics ADD COLUMN version integer;
UPDATE thanosql.model_metrics h SET version = m.version
FROM thanosql.models m WHERE m.id OPERATOR(pg_catalog.=) h.model_id;

SELECT pg_catalog.pg_extension_config_dump('thanosql.model_versions', '');
SELECT pg_catalog.pg_extension_config_dump('thanosql.model_epochs', '');

-- describe_model gains versions and the training history.
DROP FUNCTION IF EXISTS thanosql.describe_model(text);
