-- Privileges, stated in full on every install and update. PUBLIC reads the
-- catalog (row-level security filters it) and writes it only through the
-- SECURITY DEFINER functions of 030-writers.sql.
GRANT USAGE ON SCHEMA thanosql TO PUBLIC;
REVOKE ALL ON thanosql.models, thanosql.model_chunks, thanosql.model_grants, thanosql.model_metrics,
              thanosql.model_versions, thanosql.model_epochs FROM PUBLIC;
GRANT SELECT ON thanosql.models, thanosql.model_chunks, thanosql.model_grants, thanosql.model_metrics,
                thanosql.model_versions, thanosql.model_epochs, thanosql.progress TO PUBLIC;
REVOKE ALL ON SEQUENCE thanosql.models_id_seq FROM PUBLIC;

-- These take a role without checking that the caller may act as it: only the
-- other SECURITY DEFINER functions call them.
REVOKE ALL ON FUNCTION thanosql._model_for(text, pg_catalog.regrole, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._owned_model(text, pg_catalog.regrole, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._model_by_id(bigint, pg_catalog.regrole, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._lock_model(bigint, text, boolean) FROM PUBLIC;
