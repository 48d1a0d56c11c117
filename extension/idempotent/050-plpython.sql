-- PL/Python entry points. Each body loads thanosql_pg once per backend (from
-- the virtualenv named by thanosql.python_lib_dir) and calls into
-- thanosql_pg.server.entry, which owns all the logic.
--
-- Every function pins search_path, so nothing thanosql_pg runs internally
-- resolves a name through the caller's path. Functions that run the caller's
-- own SQL (the query after AS, a table name, thanosql.execute's text) take the
-- caller's search_path as a last argument: its default is evaluated before
-- the function's SET applies, i.e. with the caller's path, and thanosql_pg
-- switches to it only around the caller's SQL.
--
-- @VERSION@ is this script's release: the Python package must be the same one
-- (thanosql._load checks), so that files upgraded on disk never run against
-- SQL of another release.

CREATE OR REPLACE FUNCTION thanosql._load() RETURNS void LANGUAGE plpython3u
SET search_path = pg_catalog, pg_temp AS $$
import glob, os, site, sys
SQL_VERSION = "@VERSION@"
def fail(message, hint, sqlstate):
    plpy.execute("SELECT thanosql._clean_next_error()")  # reads like a native error: no Python prefixes
    plpy.error(message, hint=hint, sqlstate=sqlstate)
native = plpy.execute("SELECT thanosql._native_version() AS v")[0]["v"]  # also defines the settings
if native != SQL_VERSION:
    fail("this session runs the thanosql C module %s, but the extension's SQL is %s" % (native, SQL_VERSION),
         hint="Reconnect: a session keeps the module it loaded first. If this persists, install "
              "thanosql %s's files (make install)." % SQL_VERSION, sqlstate="55000")
plpy.execute("SELECT thanosql._session_init()")  # before torch can start a thread
loaded = sys.modules.get("thanosql_pg")
if loaded is None:
    lib = plpy.execute("SELECT pg_catalog.current_setting('thanosql.python_lib_dir') AS d")[0]["d"]
    if lib:
        # Accept a virtualenv root or a site-packages directory.
        found = sorted(glob.glob(os.path.join(lib, "lib", "python3*", "site-packages")))
        sp = found[-1] if found else lib
        if not os.path.isdir(sp):
            fail("thanosql.python_lib_dir points to %r, which is not a directory" % lib,
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
    import thanosql_pg
    from thanosql_pg.server import entry
except ImportError as e:
    fail("cannot import thanosql_pg: %s" % e,
         hint="Set thanosql.python_lib_dir to the virtualenv that has thanosql_pg installed.",
         sqlstate="F0000")
package = getattr(thanosql_pg, "__version__", "unknown")
if package != SQL_VERSION:
    if loaded is not None:
        fail("this session loaded thanosql_pg %s, but the extension's SQL is now %s" % (package, SQL_VERSION),
             hint="Reconnect: a session keeps the Python package it loaded first.", sqlstate="55000")
    fail("thanosql_pg %s is installed, but this database's extension thanosql is %s" % (package, SQL_VERSION),
         hint="Run ALTER EXTENSION thanosql UPDATE to bring the database to the installed release, or "
              "install thanosql_pg %s into thanosql.python_lib_dir." % SQL_VERSION, sqlstate="55000")
entry.on_load(SQL_VERSION)
GD["thanosql"] = entry
GD["thanosql.version"] = SQL_VERSION
$$;

CREATE OR REPLACE FUNCTION thanosql.rewrite(sql text) RETURNS text LANGUAGE plpython3u STABLE
SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].rewrite(sql)
$$;

-- Runs any ThanoSQL (or plain SQL) text for clients that cannot use the proxy.
-- Returns the rows of the last statement, each as a jsonb object.
CREATE OR REPLACE FUNCTION thanosql.execute(sql text,
                                            caller_search_path text DEFAULT pg_catalog.current_setting('search_path'))
RETURNS SETOF jsonb LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].execute(sql, caller_search_path)
$$;

CREATE OR REPLACE FUNCTION thanosql.build_model(name text, algorithm text, options jsonb, query text,
                                                caller_search_path text DEFAULT pg_catalog.current_setting('search_path'))
RETURNS TABLE (@COLUMNS:trained@)
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].build_model(name, algorithm, options, query, caller_search_path)
$$;

CREATE OR REPLACE FUNCTION thanosql.fit_model(name text, base_model text, options jsonb, query text,
                                              caller_search_path text DEFAULT pg_catalog.current_setting('search_path'))
RETURNS TABLE (@COLUMNS:trained@)
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].fit_model(name, base_model, options, query, caller_search_path)
$$;

CREATE OR REPLACE FUNCTION thanosql.prepare(statement text, model text, options jsonb) RETURNS jsonb
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].prepare(statement, model, options)
$$;

CREATE OR REPLACE FUNCTION thanosql.predict_batch(cfg jsonb, vals jsonb[]) RETURNS text[]
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].predict_batch(cfg, vals)
$$;

CREATE OR REPLACE FUNCTION thanosql.save_table(table_name text, query text,
                                               caller_search_path text DEFAULT pg_catalog.current_setting('search_path'))
RETURNS TABLE (table_name text, rows bigint) LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].save_table(table_name, query, caller_search_path)
$$;

CREATE OR REPLACE FUNCTION thanosql.evaluate(model text, options jsonb, query text,
                                             caller_search_path text DEFAULT pg_catalog.current_setting('search_path'))
RETURNS TABLE (@COLUMNS:report:summary@) LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].evaluate(model, options, query, caller_search_path)
$$;

CREATE OR REPLACE FUNCTION thanosql.convert(model text, options jsonb, query text, source_table text,
                                            caller_search_path text DEFAULT pg_catalog.current_setting('search_path'))
RETURNS TABLE (table_name text, rows bigint) LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].convert(model, options, query, source_table, caller_search_path)
$$;

-- CONVERT that returns its rows (the PREDICT shape): one embedding per value.
CREATE OR REPLACE FUNCTION thanosql.convert_batch(cfg jsonb, vals jsonb[]) RETURNS vector[]
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].convert_batch(cfg, vals)
$$;

-- SEARCH IMAGE's query embedding: search_input in options, or bound by the
-- client as $n (a server path as text, or the image itself as bytea).
CREATE OR REPLACE FUNCTION thanosql.embed_query(model text, options jsonb) RETURNS vector
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].embed_query(model, options)
$$;

CREATE OR REPLACE FUNCTION thanosql.embed_query(model text, options jsonb, search_input text) RETURNS vector
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].embed_query(model, options, search_input)
$$;

CREATE OR REPLACE FUNCTION thanosql.embed_query(model text, options jsonb, search_input bytea) RETURNS vector
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].embed_query(model, options, search_input)
$$;

-- Every algorithm, its task (the family) and, for each statement it supports, its options:
-- name, type, default, required, bounds, choices, a one-line description.
CREATE OR REPLACE FUNCTION thanosql.algorithms()
RETURNS TABLE (algorithm text, task text, options jsonb) LANGUAGE plpython3u STABLE
SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].algorithms()
$$;

-- Folder datasets: the files of a server folder as rows (ImageFolder layout:
-- root/[train|val|test/]<label>/<file>). Logic in thanosql_pg/scanner.py.
-- Reading a folder follows the rule for files: superusers and members of
-- pg_read_server_files anywhere, other roles below thanosql.data_dir.
CREATE OR REPLACE FUNCTION thanosql.scan_folder(path text, recursive boolean DEFAULT true,
                                                media_type text DEFAULT NULL, include_hidden boolean DEFAULT false)
RETURNS SETOF thanosql.folder_entry LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
if GD.get("thanosql.version") != "@VERSION@": plpy.execute("SELECT thanosql._load()")
return GD["thanosql"].scan_folder(path, recursive, media_type, include_hidden)
$$;
