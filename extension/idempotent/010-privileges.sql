-- Who may do what with a model.
--
-- Reads go through row-level security: a role sees the models it owns (or is a
-- member of the owner of) and those granted to it. Writes go only through the
-- SECURITY DEFINER functions of 030-writers.sql: PUBLIC has no INSERT, UPDATE
-- or DELETE on the catalog tables (090-grants.sql).
--
-- A SECURITY DEFINER function runs as the extension's owner and cannot see
-- who called it, so the callers pass their role (thanosql._current_role(),
-- evaluated as the invoker) and the writers accept it only if the session's
-- login role could act as that role anyway (thanosql._acting_role).

-- The current role as an OID (CURRENT_USER is a name; a cast from text would
-- fold the case of "Bob").
CREATE OR REPLACE FUNCTION thanosql._current_role() RETURNS pg_catalog.regrole
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER))
$$;

-- The role a writer acts for: ``claimed`` when the session's login role is a
-- member of it (SET ROLE could make it the current role), else an error. So a
-- role can never act for one it could not become.
CREATE OR REPLACE FUNCTION thanosql._acting_role(claimed pg_catalog.regrole) RETURNS pg_catalog.regrole
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF claimed IS NULL OR claimed OPERATOR(pg_catalog.=) 0
       OR NOT pg_catalog.pg_has_role(SESSION_USER, claimed, 'MEMBER') THEN
        RAISE EXCEPTION 'role % cannot act as role %', SESSION_USER, claimed
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Call thanosql functions as yourself (not from another role''s SECURITY DEFINER function).';
    END IF;
    RETURN claimed;
END $$;

-- Whether role ``who`` holds ``privilege`` on a model: 'USE' (PREDICT,
-- EVALUATE, CONVERT, SEARCH, FIT from) or 'MODIFY' (overwrite, FIT into,
-- DELETE; implies USE). Owners (and members of the owning role) hold both.
-- Reads model_grants as the caller, so its policy applies there.
CREATE OR REPLACE FUNCTION thanosql._has_model_privilege(model_id bigint, owner pg_catalog.regrole,
                                                         privilege text, who pg_catalog.regrole)
RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_has_role(who, owner, 'MEMBER')
        OR EXISTS (SELECT 1 FROM thanosql.model_grants g
                   WHERE g.model_id OPERATOR(pg_catalog.=) $1
                     AND (g.privilege OPERATOR(pg_catalog.=) $3 OR g.privilege OPERATOR(pg_catalog.=) 'MODIFY')
                     AND (g.grantee OPERATOR(pg_catalog.=) 0 OR pg_catalog.pg_has_role(who, g.grantee, 'MEMBER')))
$$;

-- Whether the current role may see a grant: the model's owner sees all its
-- grants, a grantee its own, everybody the grants to PUBLIC. SECURITY DEFINER
-- to read the model's owner without going through models' own policy (which
-- reads model_grants: the two policies would recurse).
CREATE OR REPLACE FUNCTION thanosql._grant_visible(model_id bigint, grantee pg_catalog.regrole,
                                                   who pg_catalog.regrole)
RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_has_role(SESSION_USER, who, 'MEMBER')
       AND (grantee OPERATOR(pg_catalog.=) 0
            OR pg_catalog.pg_has_role(who, grantee, 'MEMBER')
            OR EXISTS (SELECT 1 FROM thanosql.models m
                       WHERE m.id OPERATOR(pg_catalog.=) $1 AND pg_catalog.pg_has_role(who, m.owner, 'MEMBER')))
$$;

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
    USING (thanosql._grant_visible(model_id, grantee, thanosql._current_role()));

DROP POLICY IF EXISTS metrics_select ON thanosql.model_metrics;
CREATE POLICY metrics_select ON thanosql.model_metrics FOR SELECT
    USING (EXISTS (SELECT 1 FROM thanosql.models m WHERE m.id OPERATOR(pg_catalog.=) model_id));

DROP POLICY IF EXISTS versions_select ON thanosql.model_versions;
CREATE POLICY versions_select ON thanosql.model_versions FOR SELECT
    USING (EXISTS (SELECT 1 FROM thanosql.models m WHERE m.id OPERATOR(pg_catalog.=) model_id));

DROP POLICY IF EXISTS epochs_select ON thanosql.model_epochs;
CREATE POLICY epochs_select ON thanosql.model_epochs FOR SELECT
    USING (EXISTS (SELECT 1 FROM thanosql.models m WHERE m.id OPERATOR(pg_catalog.=) model_id));
