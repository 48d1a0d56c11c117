-- Native helpers (src/thanosql.c). Every function of the extension pins its
-- search_path: nothing it does may resolve a name through the caller's.

-- The C module's version; calling it also loads the module, which defines the
-- thanosql.* settings.
CREATE OR REPLACE FUNCTION thanosql._native_version() RETURNS text
    AS 'MODULE_PATHNAME', 'thanosql_native_version' LANGUAGE C STRICT IMMUTABLE
    SET search_path = pg_catalog, pg_temp;

-- Once per session, before thanosql_pg loads (thanosql._load calls it): PostgreSQL's
-- signal handlers run on the backend's main thread only, whatever threads torch starts.
CREATE OR REPLACE FUNCTION thanosql._session_init() RETURNS void
    AS 'MODULE_PATHNAME', 'thanosql_session_init' LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql._clean_next_error() RETURNS void
    AS 'MODULE_PATHNAME', 'thanosql_clean_next_error' LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

-- Raises an error with a SQLSTATE and a cursor position (1-based characters
-- into the statement the client sent). The proxy and thanosql.execute() turn
-- ThanoSQL syntax errors into a call of this function.
CREATE OR REPLACE FUNCTION thanosql.raise_error(sqlstate text, message text, detail text DEFAULT NULL,
                                                hint text DEFAULT NULL, "position" integer DEFAULT NULL)
    RETURNS void AS 'MODULE_PATHNAME', 'thanosql_raise_error' LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

-- Background jobs (src/jobs.c): the job this backend is the worker of (0 in any
-- other session; only the worker's own C code sets it), and whether this server
-- runs jobs at all (the library is in shared_preload_libraries).
CREATE OR REPLACE FUNCTION thanosql._worker_job() RETURNS bigint
    AS 'MODULE_PATHNAME', 'thanosql_worker_job' LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION thanosql._jobs_available() RETURNS boolean
    AS 'MODULE_PATHNAME', 'thanosql_jobs_available' LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

-- A submission wakes the job launcher when its transaction commits (instead of its next look).
CREATE OR REPLACE FUNCTION thanosql._jobs_wake() RETURNS void
    AS 'MODULE_PATHNAME', 'thanosql_jobs_wake' LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

-- Settings' values as the server holds them (integers in their base unit), without
-- building pg_settings' every row: read on every media read and every SEARCH.
CREATE OR REPLACE FUNCTION thanosql._settings(names text[]) RETURNS text[]
    AS 'MODULE_PATHNAME', 'thanosql_settings' LANGUAGE C STRICT STABLE
    SET search_path = pg_catalog, pg_temp;
