-- Runs first in every script (install and update). The control file names the
-- schema, so PostgreSQL creates it for CREATE EXTENSION, but it reuses one that
-- already exists: a role with CREATE on the database could have made schema
-- thanosql first, and would then own (and could replace) every function the
-- extension puts in it. Refuse to build on a schema that a superuser does not own.
DO $prelude$
DECLARE
    owner_name text;
    owner_is_super boolean;
BEGIN
    SELECT r.rolname, r.rolsuper INTO owner_name, owner_is_super
    FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) n.nspowner
    WHERE n.nspname OPERATOR(pg_catalog.=) 'thanosql';
    IF NOT owner_is_super THEN
        RAISE EXCEPTION 'schema "thanosql" belongs to role "%", which is not a superuser', owner_name
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Another role created the schema before the extension: check what it holds, '
                         'then drop it (or ALTER SCHEMA thanosql OWNER TO a superuser) and try again.';
    END IF;
END
$prelude$;
