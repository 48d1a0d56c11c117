-- Privileges, stated in full on every install and update. PUBLIC reads the
-- catalog (row-level security filters it) and writes it only through the
-- SECURITY DEFINER functions of 030-writers.sql.
GRANT USAGE ON SCHEMA thanosql TO PUBLIC;
REVOKE ALL ON thanosql.models, thanosql.model_chunks, thanosql.model_grants, thanosql.model_metrics,
              thanosql.model_versions, thanosql.model_epochs FROM PUBLIC;
GRANT SELECT ON thanosql.models, thanosql.model_chunks, thanosql.model_grants, thanosql.model_metrics,
                thanosql.model_versions, thanosql.model_epochs, thanosql.progress TO PUBLIC;
REVOKE ALL ON SEQUENCE thanosql.models_id_seq FROM PUBLIC;

-- The implementations behind the C gates (src/act.c), and their helpers: they
-- take the acting role as an argument, so only the gates (which derive it) and
-- the extension's owner call them. New functions get EXECUTE for PUBLIC by
-- default: tests/security/test_inventory.py lists every one PUBLIC keeps.
REVOKE ALL ON FUNCTION thanosql._model_for(text, pg_catalog.regrole, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._owned_model(text, pg_catalog.regrole, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._model_by_id(bigint, pg_catalog.regrole, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._lock_model(bigint, text, boolean, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._holder(text, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._model_claim(text, boolean, boolean, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._model_write(bigint, text, text, jsonb, jsonb, text, text, text, bigint,
                                             pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._model_put_chunk(bigint, integer, bytea, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._model_seal(bigint, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._record_epochs(bigint, jsonb, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._record_metrics(bigint, text, bigint, jsonb, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._rollback_model(text, integer, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._delete_model(text, boolean, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._grant_model(text, name, text, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._revoke_model(text, name, text, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._alter_model_owner(text, name, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._grant_visible_to(bigint, pg_catalog.regrole, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._weights_digest(bigint, integer) FROM PUBLIC;

-- Background jobs: their tables are read through thanosql.jobs and written by the
-- functions of 070-jobs.sql only; the launcher's and the worker's bookkeeping runs as
-- the bootstrap superuser (src/jobs.c).
REVOKE ALL ON thanosql.job_records, thanosql.job_checkpoints FROM PUBLIC;
REVOKE ALL ON SEQUENCE thanosql.job_records_job_id_seq FROM PUBLIC;
GRANT SELECT ON thanosql.jobs TO PUBLIC;
GRANT USAGE ON SCHEMA thanosql_jobs TO PUBLIC;
REVOKE CREATE ON SCHEMA thanosql_jobs FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._job_cleanup(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._remove_job_files(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._jobs_tick(integer, integer, bigint[], boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._job_started(bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._job_unstart(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._job_end(bigint, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._worker_job_row(bigint, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._job_create(text, text, jsonb, text, integer, pg_catalog.regclass,
                                            pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._job_begin_for(bigint, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._job_checkpoint_put(bigint, integer, integer, bytea, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._job_checkpoint_keep(bigint, integer, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._job_checkpoint_read(bigint, integer, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._job_done(bigint, jsonb, pg_catalog.regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION thanosql._job_cancel(bigint, pg_catalog.regrole) FROM PUBLIC;
