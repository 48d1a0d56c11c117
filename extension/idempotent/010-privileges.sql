-- Who may do what with a model.
--
-- Reads go through row-level security: a role sees the models it owns (or is a
-- member of the owner of) and those granted to it. Writes go only through the
-- SECURITY DEFINER functions of 030-writers.sql: PUBLIC has no INSERT, UPDATE
-- or DELETE on the catalog tables (090-grants.sql).
--
-- A SECURITY DEFINER function runs as the extension's owner and cannot see
-- who called it: the writers are reached through C gates (src/act.c) that
-- read the acting role from the server and pass it on. Nothing takes the
-- acting role from an argument or from SESSION_USER.

-- The current role as an OID (CURRENT_USER is a name; a cast from text would
-- fold the case of "Bob").
CREATE OR REPLACE FUNCTION thanosql._current_role() RETURNS pg_catalog.regrole
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER))
$$;

-- Whether role ``who`` holds ``privilege`` on a model: 'USE' (PREDICT,
-- EVALUATE, CONVERT, SEARCH, FIT from) or 'MODIFY' (overwrite, FIT into,
-- DELETE; implies USE). Owners (and members of the owning role) hold both.
-- A predicate, not an action: ``who`` is the role asked about. Called by the
-- writers (as the extension's owner) and by the models policy (as the caller,
-- with the caller's role): run as the caller it reads model_grants through
-- their policy, so it tells nothing that the caller could not SELECT.
CREATE OR REPLACE FUNCTION thanosql._has_model_privilege(model_id bigint, owner pg_catalog.regrole,
                                                         privilege text, who pg_catalog.regrole)
RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_has_role(who, owner, 'MEMBER')
        OR EXISTS (SELECT 1 FROM thanosql.model_grants g
                   WHERE g.model_id OPERATOR(pg_catalog.=) $1
                     AND (g.privilege OPERATOR(pg_catalog.=) $3 OR g.privilege OPERATOR(pg_catalog.=) 'MODIFY')
                     AND (g.grantee OPERATOR(pg_catalog.=) 0 OR pg_catalog.pg_has_role(who, g.grantee, 'MEMBER')))
$$;

-- Whether role ``who`` may see a grant: the model's owner sees all its
-- grants, a grantee its own, everybody the grants to PUBLIC. SECURITY DEFINER
-- to read the model's owner without going through models' own policy (which
-- reads model_grants: the two policies would recurse). PUBLIC calls it through
-- the gate thanosql._grant_visible(model_id, grantee), which passes the caller.
CREATE OR REPLACE FUNCTION thanosql._grant_visible_to(model_id bigint, grantee pg_catalog.regrole,
                                                      who pg_catalog.regrole)
RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT grantee OPERATOR(pg_catalog.=) 0
        OR pg_catalog.pg_has_role(who, grantee, 'MEMBER')
        OR EXISTS (SELECT 1 FROM thanosql.models m
                   WHERE m.id OPERATOR(pg_catalog.=) $1 AND pg_catalog.pg_has_role(who, m.owner, 'MEMBER'))
$$;

CREATE OR REPLACE FUNCTION thanosql._grant_visible(model_id bigint, grantee pg_catalog.regrole)
RETURNS boolean AS 'MODULE_PATHNAME', 'thanosql_act' LANGUAGE C STABLE
SET search_path = pg_catalog, pg_temp;

ALTER TABLE thanosql.models ENABLE ROW LEVEL SECURITY;
ALTER TABLE thanosql.model_chunks ENABLE ROW LEVEL SECURITY;
ALTER TABLE thanosql.model_grants ENABLE ROW LEVEL SECURITY;
ALTER TABLE thanosql.model_metrics ENABLE ROW LEVEL SECURITY;
ALTER TABLE thanosql.model_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE thanosql.model_epochs ENABLE ROW LEVEL SECURITY;

-- Policies for SELECT only: nobody but the writers writes, and they run as the
-- owner, to whom RLS does not apply.
DROP POLICY IF EXISTS models_select ON thanosql.models;
CREATE POLICY models_select ON thanosql.models FOR SELECT
    USING (thanosql._has_model_privilege(id, owner, 'USE', thanosql._current_role()));

DROP POLICY IF EXISTS chunks_select ON thanosql.model_chunks;
CREATE POLICY chunks_select ON thanosql.model_chunks FOR SELECT
    USING (EXISTS (SELECT 1 FROM thanosql.models m WHERE m.id OPERATOR(pg_catalog.=) model_id));

DROP POLICY IF EXISTS grants_select ON thanosql.model_grants;
CREATE POLICY grants_select ON thanosql.model_grants FOR SELECT
    USING (thanosql._grant_visible(model_id, grantee));

DROP POLICY IF EXISTS metrics_select ON thanosql.model_metrics;
CREATE POLICY metrics_select ON thanosql.model_metrics FOR SELECT
    USING (EXISTS (SELECT 1 FROM thanosql.models m WHERE m.id OPERATOR(pg_catalog.=) model_id));

DROP POLICY IF EXISTS versions_select ON thanosql.model_versions;
CREATE POLICY versions_select ON thanosql.model_versions FOR SELECT
    USING (EXISTS (SELECT 1 FROM thanosql.models m WHERE m.id OPERATOR(pg_catalog.=) model_id));

DROP POLICY IF EXISTS epochs_select ON thanosql.model_epochs;
CREATE POLICY epochs_select ON thanosql.model_epochs FOR SELECT
    USING (EXISTS (SELECT 1 FROM thanosql.models m WHERE m.id OPERATOR(pg_catalog.=) model_id));
