-- Release 0.2.0: model owners and grantees become role OIDs (regrole), so that a
-- renamed role keeps its models and a grant names exactly one existing role;
-- the 0.1.0 policies and helpers, which resolved operators through the
-- caller's search_path, go (the idempotent part creates their replacements).

DROP POLICY IF EXISTS models_select ON thanosql.models;
DROP POLICY IF EXISTS models_insert ON thanosql.models;
DROP POLICY IF EXISTS models_update ON thanosql.models;
DROP POLICY IF EXISTS models_delete ON thanosql.models;
DROP POLICY IF EXISTS chunks_select ON thanosql.model_chunks;
DROP POLICY IF EXISTS chunks_write ON thanosql.model_chunks;
DROP POLICY IF EXISTS grants_select ON thanosql.model_grants;
DROP POLICY IF EXISTS grants_write ON thanosql.model_grants;
DROP POLICY IF EXISTS metrics_select ON thanosql.model_metrics;
DROP POLICY IF EXISTS metrics_insert ON thanosql.model_metrics;
DROP POLICY IF EXISTS metrics_delete ON thanosql.model_metrics;
DROP FUNCTION IF EXISTS thanosql._has_model_privilege(bigint, name, text);
DROP FUNCTION IF EXISTS thanosql._is_owner(name);
-- Signatures that change in 0.2.0 (a trailing caller_search_path argument).
DROP FUNCTION IF EXISTS thanosql.execute(text);
DROP FUNCTION IF EXISTS thanosql.build_model(text, text, jsonb, text);
DROP FUNCTION IF EXISTS thanosql.fit_model(text, text, jsonb, text);
DROP FUNCTION IF EXISTS thanosql.evaluate(text, jsonb, text);
DROP FUNCTION IF EXISTS thanosql.convert(text, jsonb, text, text);
DROP FUNCTION IF EXISTS thanosql.save_table(text, text);

-- Owners whose role no longer exists (0.1.0 stored names, and nothing stopped
-- DROP ROLE) go to the role running the update, a superuser; say which.
DO $migrate$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT m.name, m.owner FROM thanosql.models m
             WHERE pg_catalog.to_regrole(pg_catalog.quote_ident(m.owner)) IS NULL LOOP
        RAISE NOTICE 'thanosql: model "%" belonged to role "%", which no longer exists; it now belongs to %',
            r.name, r.owner, CURRENT_USER;
    END LOOP;
    FOR r IN SELECT m.name, g.grantee, g.privilege FROM thanosql.model_grants g
             JOIN thanosql.models m ON m.id OPERATOR(pg_catalog.=) g.model_id
             WHERE g.grantee OPERATOR(pg_catalog.<>) 'public'
               AND pg_catalog.to_regrole(pg_catalog.quote_ident(g.grantee)) IS NULL LOOP
        RAISE NOTICE 'thanosql: dropping the % grant on model "%" to role "%", which does not exist',
            r.privilege, r.name, r.grantee;
    END LOOP;
END
$migrate$;

DELETE FROM thanosql.model_grants g
WHERE g.grantee OPERATOR(pg_catalog.<>) 'public'
  AND pg_catalog.to_regrole(pg_catalog.quote_ident(g.grantee)) IS NULL;

ALTER TABLE thanosql.models ALTER COLUMN owner DROP DEFAULT;
ALTER TABLE thanosql.models ALTER COLUMN owner TYPE pg_catalog.regrole
    USING COALESCE(pg_catalog.to_regrole(pg_catalog.quote_ident(owner)),
                              pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER)));

-- 'public' (PUBLIC) becomes the OID 0, which regrole shows as '-'.
ALTER TABLE thanosql.model_grants ALTER COLUMN grantee TYPE pg_catalog.regrole
    USING CASE WHEN grantee OPERATOR(pg_catalog.=) 'public' THEN 0::pg_catalog.oid::pg_catalog.regrole
               ELSE pg_catalog.to_regrole(pg_catalog.quote_ident(grantee)) END;

COMMENT ON COLUMN thanosql.models.owner IS
    'The owning role. Changed only by thanosql.alter_model_owner(), by the owner.';
COMMENT ON COLUMN thanosql.model_grants.grantee IS 'The role granted to; 0 (shown as -) is PUBLIC.';
