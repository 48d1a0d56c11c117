-- What thanosql statements are doing right now, server-wide (src/progress.c):
-- shared memory, not tables, so a cancelled BUILD leaves no trace. Needs
-- shared_preload_libraries = 'thanosql'; without it nothing is recorded and
-- the view says what to configure.

-- The statements write their slots in-process (thanosql_pg calls the C module's
-- functions directly, src/progress.c): no SQL function writes them, so no
-- session can mark itself busy or fake another's row.

CREATE OR REPLACE FUNCTION thanosql._progress_available() RETURNS boolean
    AS 'MODULE_PATHNAME', 'thanosql_progress_available' LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

-- The rows the current role may see: its own, or all for superusers and
-- members of pg_read_all_stats (as for pg_stat_activity).
CREATE OR REPLACE FUNCTION thanosql._progress_slots()
RETURNS TABLE (pid integer, role oid, database oid, statement text, model text, phase text, epoch integer,
               epochs integer, step bigint, steps bigint, loss double precision,
               samples_per_second double precision, eta_seconds double precision, started timestamptz,
               updated timestamptz)
    AS 'MODULE_PATHNAME', 'thanosql_progress_slots' LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

-- Whether the current role may see a job: its owner's members, superusers, members of pg_read_all_stats.
CREATE OR REPLACE FUNCTION thanosql._job_visible(p_owner pg_catalog.regrole) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_has_role(CURRENT_USER, p_owner, 'MEMBER')
        OR pg_catalog.pg_has_role(CURRENT_USER, 'pg_read_all_stats', 'MEMBER');
$$;

-- Queued background jobs have a row too (phase 'queued', no pid), for the roles that
-- may see them (thanosql.jobs's rule); security_barrier keeps that rule ahead of
-- any function in the reader's WHERE.
CREATE OR REPLACE VIEW thanosql.progress WITH (security_barrier) AS
    SELECT s.pid, pg_catalog.pg_get_userbyid(s.role) AS role, d.datname AS database, s.statement, s.model,
           s.phase, s.epoch, s.epochs, s.step, s.steps, s.loss, s.samples_per_second,
           pg_catalog.make_interval(secs => s.eta_seconds) AS eta, s.started, s.updated
    FROM thanosql._progress_slots() s
    LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) s.database
    UNION ALL
    SELECT NULL::pg_catalog.int4, pg_catalog.pg_get_userbyid(j.owner), pg_catalog.current_database()::pg_catalog.name,
           pg_catalog.upper(j.kind), j.model, 'queued'::pg_catalog.text, 0, j.epochs, NULL::bigint, NULL::bigint,
           NULL::double precision, NULL::double precision, NULL::interval, j.submitted_at, j.submitted_at
    FROM thanosql.job_records j
    WHERE j.status OPERATOR(pg_catalog.=) 'queued' AND thanosql._job_visible(j.owner);
COMMENT ON VIEW thanosql.progress IS
    'Running BUILD, FIT, EVALUATE and CONVERT statements of the server (like pg_stat_progress_create_index)';
