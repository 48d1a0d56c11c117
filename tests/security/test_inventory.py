"""Every function of schema thanosql that PUBLIC can execute is an entry point whose
arguments an attacker chooses. This is their list, each with what it trusts; a function
added without a line here fails the test, so that someone decides what it may believe.

The rules behind the reasons (README, "Security model"):
- No PUBLIC function takes the role it acts as: the writers are C gates (src/act.c)
  that pass the role the server sees calling to SECURITY DEFINER implementations PUBLIC
  cannot execute.
- No PUBLIC function is SECURITY DEFINER.
- Hashes, sizes and configurations are the server's own, never an argument's.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

PUBLIC_FUNCTIONS = {
    # --- statements: run as the caller, read through row-level security -------------------------
    "thanosql.build_model(text,text,jsonb,text,text)":
        "runs the caller's query as the caller; writes only through the gates",
    "thanosql.fit_model(text,text,jsonb,text,text)":
        "as build_model; the base model is read through RLS (USE)",
    "thanosql.evaluate(text,jsonb,text,text)":
        "runs the caller's query as the caller; records metrics only with MODIFY",
    "thanosql.evaluate_per_class(text,jsonb,text,text)": "as evaluate",
    "thanosql.evaluate_confusion_matrix(text,jsonb,text,text)": "as evaluate",
    "thanosql.evaluate_per_row(text,jsonb,text,text)": "as evaluate",
    "thanosql.convert(text,jsonb,text,text,text)": "runs the caller's query and DDL as the caller",
    "thanosql.prepare(text,text,jsonb)":
        "validates options, keeps the result in the backend, returns an opaque handle",
    "thanosql.predict_batch(jsonb,jsonb[])":
        "trusts only a handle prepare issued in this backend to this role; the model is re-read via RLS",
    "thanosql.convert_batch(jsonb,jsonb[])": "as predict_batch",
    "thanosql.embed_query(text,jsonb)": "options validated like prepare's; model read through RLS",
    "thanosql.embed_query(text,jsonb,text)": "as embed_query; the text is bounded (thanosql.max_text_bytes)",
    "thanosql.embed_query(text,jsonb,bytea)": "as embed_query; the image is bounded (max_image_pixels)",
    "thanosql.execute(text,text)": "rewrites, then runs the caller's SQL as the caller",
    "thanosql.save_table(text,text,text)": "runs the caller's CREATE TABLE AS as the caller",
    "thanosql.rewrite(text)": "pure text transformation, depth- and size-bounded",
    "thanosql.algorithms()": "describes the registry; takes nothing",
    "thanosql.scan_folder(text,boolean,text,boolean)":
        "reads server folders only below thanosql.data_dir unless the caller may read server files",
    "thanosql.raise_error(text,text,text,text,integer)": "raises an error in the caller's own session",
    # --- model management -------------------------------------------------------------------------
    "thanosql.list_models()": "reads thanosql.models through RLS",
    "thanosql.describe_model(text)": "reads the catalog through RLS",
    "thanosql.model_versions(text)": "reads the catalog through RLS",
    "thanosql.training_info(text,integer)": "reads the catalog through RLS",
    "thanosql.grant_model(text,name,text)": "C gate: acts as GetUserId(); only the owner grants",
    "thanosql.revoke_model(text,name,text)": "C gate: acts as GetUserId(); only the owner revokes",
    "thanosql.alter_model_owner(text,name)":
        "C gate: acts as GetUserId(); the owner gives to a role it can SET ROLE to",
    "thanosql.delete_model(text,boolean)": "C gate: acts as GetUserId(); needs MODIFY",
    "thanosql.rollback_model(text,integer)": "C gate: acts as GetUserId(); needs MODIFY",
    # --- the writers of BUILD/FIT, called by thanosql_pg as the statement's role -------------------
    "thanosql._claim_model(text,boolean,boolean)":
        "C gate: acts as GetUserId(); a new name, or MODIFY on an existing model",
    "thanosql._write_model(bigint,text,text,jsonb,jsonb,text,text,text,bigint)":
        "C gate: needs MODIFY; takes no hash or size; options and labels size-bounded",
    "thanosql._put_model_chunk(bigint,integer,bytea)":
        "C gate: needs MODIFY; 1 MiB chunks, never into a sealed version",
    "thanosql._seal_model(bigint)":
        "C gate: needs MODIFY; computes the hash and size from the stored chunks",
    "thanosql._write_epochs(bigint,jsonb)": "C gate: needs MODIFY; once per version; size-bounded",
    "thanosql._write_metrics(bigint,text,bigint,jsonb)": "C gate: needs MODIFY; size-bounded",
    "thanosql._grant_visible(bigint,regrole)":
        "C gate behind model_grants' policy: answers for GetUserId() only",
    # --- background jobs ------------------------------------------------------------------------
    "thanosql.submit_job(text,text,text,jsonb,text,text,text)":
        "checks as the statement would, runs the query as the caller, then _create_job",
    "thanosql._create_job(text,text,jsonb,text,integer,regclass)":
        "C gate: the job's owner is GetUserId(); reads only a temporary table of this session that"
        " GetUserId() owns; the rows table it makes is readable by that role only",
    "thanosql.cancel_job(bigint)": "C gate: the owner's members only; to others the job does not exist",
    "thanosql.wait_job(bigint,interval)": "reads thanosql.jobs, which shows the caller's own jobs only",
    "thanosql._job_begin(bigint)": "C gate: only in the job's own worker (_worker_job()), as its owner",
    "thanosql._put_job_checkpoint(bigint,integer,integer,bytea)": "C gate: the job's own worker only",
    "thanosql._keep_job_checkpoint(bigint,integer)": "C gate: the job's own worker only",
    "thanosql._read_job_checkpoint(bigint,integer)": "C gate: the job's own worker only",
    "thanosql._finish_job(bigint,jsonb)": "C gate: the job's own worker only; size-bounded",
    "thanosql._run_job(bigint)": "gets nowhere outside the job's own worker (_job_begin refuses)",
    "thanosql._store_job_checkpoint(bigint,integer)":
        "gets nowhere outside the job's own worker or its helper (the checkpoint gates refuse)",
    "thanosql._store_job_checkpoint_async(integer)":
        "C: refuses outside a job's worker; stores its own job's",
    "thanosql._wait_job_checkpoint()": "C: refuses outside a job's worker",
    "thanosql._worker_job()": "C: the job this backend works for, set only by the worker's C code",
    "thanosql._jobs_available()": "tells whether the library is preloaded",
    "thanosql._settings(text[])": "C: settings' values as SHOW gives them (superuser-only ones refused)",
    "thanosql._jobs_wake()": "C: the launcher looks at the queue when the caller's transaction commits",
    "thanosql._job_visible(regrole)": "a predicate: is CURRENT_USER a member of that role",
    # --- helpers that decide nothing on the caller's word ---------------------------------------
    "thanosql._load()": "imports thanosql_pg from thanosql.python_lib_dir, a superuser-only setting",
    "thanosql._session_init()": "idempotent per-backend set-up (signal routing, progress clean-up)",
    "thanosql._native_version()": "returns a constant",
    "thanosql._clean_next_error()": "changes how the caller's own next error reads",
    "thanosql._current_role()": "returns CURRENT_USER as an OID",
    "thanosql._has_model_privilege(bigint,regrole,text,regrole)":
        "a predicate about its role argument, run with the caller's rights: model_grants is read"
        " through its policy, so it answers nothing the caller could not SELECT",
    "thanosql._grantee(text)": "resolves a role name like GRANT; reads only public catalogs",
    "thanosql._model_privilege_name(text)": "validates a word",
    "thanosql._writable()": "tells whether the server is a standby",
    "thanosql._bounded_json(jsonb,text,integer)": "raises when a value is too big",
    "thanosql._progress_available()": "tells whether shared memory is there",
    "thanosql._progress_slots()":
        "C: returns only the caller's own roles' rows (all for pg_read_all_stats), like pg_stat_activity",
}

EXECUTABLE_BY_PUBLIC = """
    SELECT p.oid::regprocedure::text, p.prosecdef
    FROM pg_proc p
    WHERE p.pronamespace = 'thanosql'::regnamespace
      AND (p.proacl IS NULL
           OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a
                      WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))
    ORDER BY 1"""


def test_every_public_function_is_listed_with_a_reason(direct: psycopg.Connection) -> None:
    found = dict(direct.execute(EXECUTABLE_BY_PUBLIC).fetchall())
    unlisted = sorted(set(found) - set(PUBLIC_FUNCTIONS))
    assert not unlisted, f"PUBLIC can execute these, and nobody said why it is safe: {unlisted}"
    gone = sorted(set(PUBLIC_FUNCTIONS) - set(found))
    assert not gone, f"listed but not executable by PUBLIC (or gone): remove them from the list: {gone}"


def test_no_public_function_runs_as_the_extensions_owner(direct: psycopg.Connection) -> None:
    definers = [f for f, secdef in direct.execute(EXECUTABLE_BY_PUBLIC).fetchall() if secdef]
    assert definers == []


def test_no_public_function_takes_a_caller_role(direct: psycopg.Connection) -> None:
    """The one regrole argument PUBLIC may pass is a subject (whose grant, whose privilege),
    never the role that acts."""
    rows = direct.execute("""
        SELECT p.oid::regprocedure::text, p.proargnames
        FROM pg_proc p
        WHERE p.pronamespace = 'thanosql'::regnamespace AND 'regrole'::regtype = ANY (p.proargtypes)
          AND (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a
                                           WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))
        """).fetchall()
    for fn, names in rows:
        assert not {"caller", "acting", "acting_role"} & set(names or []), fn
    assert sorted(fn for fn, _ in rows) == ["thanosql._grant_visible(bigint,regrole)",
                                            "thanosql._has_model_privilege(bigint,regrole,text,regrole)",
                                            "thanosql._job_visible(regrole)"]


def test_settings_are_read_as_show_reads_them(make_role: Callable[[str], str],
                                             connect_as: Callable[..., psycopg.Connection]) -> None:
    """thanosql._settings, which media reads and SEARCH use instead of pg_settings, refuses
    the settings an ordinary role may not SHOW."""
    with connect_as(make_role("eve")) as eve:
        assert eve.execute("SELECT thanosql._settings(ARRAY['thanosql.max_audio_seconds', 'no.such'])"
                           ).fetchone() == (["1800", None],)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            eve.execute("SELECT thanosql._settings(ARRAY['data_directory'])")
