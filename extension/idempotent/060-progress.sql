-- What thanosql statements are doing right now, server-wide (src/progress.c):
-- shared memory, not tables, so a cancelled BUILD leaves no trace. Needs
-- shared_preload_libraries = 'thanosql'; without it the writers do nothing and
-- the view says what to configure.

CREATE OR REPLACE FUNCTION thanosql._progress_start(statement text, model text) RETURNS void
    AS 'MODULE_PATHNAME', 'thanosql_progress_start' LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql._progress_update(phase text, epoch integer, epochs integer, step bigint,
                                                     steps bigint, loss double precision,
                                                     samples_per_second double precision,
                                                     eta_seconds double precision) RETURNS void
    AS 'MODULE_PATHNAME', 'thanosql_progress_update' LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql._progress_end() RETURNS void
    AS 'MODULE_PATHNAME', 'thanosql_progress_end' LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

-- Marks this session as running a model (or not); returns how many sessions
-- of the server are (0 without shared memory). thanosql_pg sizes its thread
-- pool from it.
CREATE OR REPLACE FUNCTION thanosql._work(busy boolean) RETURNS integer
    AS 'MODULE_PATHNAME', 'thanosql_work' LANGUAGE C VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp;

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

CREATE OR REPLACE VIEW thanosql.progress AS
    SELECT s.pid, pg_catalog.pg_get_userbyid(s.role) AS role, d.datname AS database, s.statement, s.model,
           s.phase, s.epoch, s.epochs, s.step, s.steps, s.loss, s.samples_per_second,
           pg_catalog.make_interval(secs => s.eta_seconds) AS eta, s.started, s.updated
    FROM thanosql._progress_slots() s
    LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) s.database;
COMMENT ON VIEW thanosql.progress IS
    'Running BUILD, FIT, EVALUATE and CONVERT statements of the server (like pg_stat_progress_create_index)';
