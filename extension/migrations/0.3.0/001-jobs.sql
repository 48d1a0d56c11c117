-- Release 0.3.0: background jobs (OPTIONS (background=True)). A job is a row
-- here; the server's job launcher (src/jobs.c) runs it in a background worker
-- as the role that submitted it. Written only by the SECURITY DEFINER
-- functions of idempotent/070-jobs.sql; read through the view thanosql.jobs.
CREATE TABLE thanosql.job_records (
    job_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner pg_catalog.regrole NOT NULL,
    kind text NOT NULL CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['build', 'fit', 'predict', 'evaluate', 'convert'])),
    model text NOT NULL,
    status text NOT NULL DEFAULT 'queued'
        CHECK (status OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'running', 'succeeded', 'failed', 'cancelled'])),
    attempts integer NOT NULL DEFAULT 0,
    epochs integer,
    pid integer,
    submitted_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    started_at timestamptz,
    finished_at timestamptz,
    sqlstate text,
    message text,
    cancel_requested boolean NOT NULL DEFAULT false,
    search_path text NOT NULL,
    payload jsonb NOT NULL,
    result jsonb
);
-- the names that queued and running BUILD/FIT jobs will write (thanosql._model_claim)
CREATE INDEX job_records_active_model ON thanosql.job_records (model) WHERE status OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'running']);

-- A training job's newest checkpoint (weights, optimizer, schedule, random
-- states, epochs so far), in chunks as model weights are; removed when the job ends.
CREATE TABLE thanosql.job_checkpoints (
    job_id bigint NOT NULL REFERENCES thanosql.job_records (job_id) ON DELETE CASCADE,
    epoch integer NOT NULL,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (job_id, epoch, seq)
);
-- weights and optimizer state do not compress: store them as they are (as model_chunks)
ALTER TABLE thanosql.job_checkpoints ALTER COLUMN data SET STORAGE EXTERNAL;

-- The rows each job reads, fixed when it was submitted: thanosql_jobs.rows_<job_id>,
-- readable by the job's owner only, dropped when the job ends.
CREATE SCHEMA thanosql_jobs;
