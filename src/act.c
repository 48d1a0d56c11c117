/*
 * act.c: who is calling is derived, never told.
 *
 * The catalog tables are written only by SECURITY DEFINER functions, which run
 * as the extension's owner and so cannot see who called them. They used to
 * take the caller's role as an argument and check it against SESSION_USER,
 * which let code of one role (a SECURITY DEFINER function, an index
 * expression run by ANALYZE as a superuser) act as another.
 *
 * Now every writer has two halves:
 *
 * - the *gate*, which PUBLIC executes: a C function (SECURITY INVOKER) bound
 *   to thanosql_act. It reads the acting role from the server, GetUserId(),
 *   the role whose privileges the statement has at this point (inside another
 *   role's SECURITY DEFINER function that is that role, inside ANALYZE the
 *   table's owner), and calls
 * - the *implementation*, a SECURITY DEFINER function that PUBLIC cannot
 *   execute, with the same arguments plus that role last.
 *
 * Which implementation a gate calls is fixed here, by the gate's own name: no
 * argument chooses it. Writers refuse to run inside security-restricted
 * operations and triggers, where PostgreSQL runs code that another role wrote.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/pg_list.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "utils/fmgrprotos.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

typedef struct Act
{
	const char *gate;			/* the function PUBLIC calls */
	const char *impl;			/* the SECURITY DEFINER function it calls */
	bool		writes;			/* changes the catalog */
} Act;

static const Act acts[] = {
	/* model management, called by users */
	{"grant_model", "_grant_model", true},
	{"revoke_model", "_revoke_model", true},
	{"alter_model_owner", "_alter_model_owner", true},
	{"delete_model", "_delete_model", true},
	{"rollback_model", "_rollback_model", true},
	/* BUILD and FIT, called by thanosql_pg as the statement's role */
	{"_claim_model", "_model_claim", true},
	{"_write_model", "_model_write", true},
	{"_put_model_chunk", "_model_put_chunk", true},
	{"_seal_model", "_model_seal", true},
	{"_write_epochs", "_record_epochs", true},
	{"_write_metrics", "_record_metrics", true},
	/* background jobs: submitting and cancelling, by users */
	{"_create_job", "_job_create", true},
	{"cancel_job", "_job_cancel", true},
	/* ... and what only a job's own worker may do (src/jobs.c) */
	{"_job_begin", "_job_begin_for", true},
	{"_put_job_checkpoint", "_job_checkpoint_put", true},
	{"_keep_job_checkpoint", "_job_checkpoint_keep", true},
	{"_read_job_checkpoint", "_job_checkpoint_read", false},
	{"_finish_job", "_job_done", true},
	/* row-level security of model_grants: which grants the caller may see */
	{"_grant_visible", "_grant_visible_to", false},
};

typedef struct ActCall
{
	FmgrInfo	impl;
	bool		strict;
	bool		writes;
} ActCall;

static void
refuse_foreign_code(const char *gate)
{
	LOCAL_FCINFO(depth, 0);

	if (InSecurityRestrictedOperation())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot change models inside a security-restricted operation (%s)", gate),
				 errdetail("Index expressions, ANALYZE, VACUUM, REINDEX and REFRESH MATERIALIZED VIEW run "
						   "code that the table's owner wrote."),
				 errhint("Change models from your own statements.")));
	InitFunctionCallInfoData(*depth, NULL, 0, InvalidOid, NULL, NULL);
	if (DatumGetInt32(pg_trigger_depth(depth)) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot change models from a trigger (%s)", gate),
				 errdetail("A trigger runs code that the table's owner wrote, as whoever changes the table."),
				 errhint("Change models from your own statements.")));
}

/* The implementation bound to the gate being called, looked up once per call site. */
static ActCall *
act_lookup(FunctionCallInfo fcinfo)
{
	Oid			self = fcinfo->flinfo->fn_oid;
	HeapTuple	tp;
	Form_pg_proc proc;
	const Act  *act = NULL;
	Oid			argtypes[FUNC_MAX_ARGS];
	int			nargs;
	char	   *schema;
	Oid			impl;
	ActCall    *call;

	tp = SearchSysCache1(PROCOID, ObjectIdGetDatum(self));
	if (!HeapTupleIsValid(tp))
		elog(ERROR, "cache lookup failed for function %u", self);
	proc = (Form_pg_proc) GETSTRUCT(tp);
	for (int i = 0; i < lengthof(acts); i++)
	{
		if (strcmp(NameStr(proc->proname), acts[i].gate) == 0)
			act = &acts[i];
	}
	schema = get_namespace_name(proc->pronamespace);
	if (act == NULL || schema == NULL || strcmp(schema, "thanosql") != 0 ||
		proc->pronargs + 1 > FUNC_MAX_ARGS)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("function %s is not a thanosql writer", NameStr(proc->proname))));
	nargs = proc->pronargs;
	memcpy(argtypes, proc->proargtypes.values, nargs * sizeof(Oid));
	ReleaseSysCache(tp);
	argtypes[nargs] = REGROLEOID;
	impl = LookupFuncName(list_make2(makeString(schema), makeString(pstrdup(act->impl))),
						  nargs + 1, argtypes, false);

	call = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(ActCall));
	fmgr_info_cxt(impl, &call->impl, fcinfo->flinfo->fn_mcxt);
	call->strict = call->impl.fn_strict;
	call->writes = act->writes;
	return call;
}

PG_FUNCTION_INFO_V1(thanosql_act);

Datum
thanosql_act(PG_FUNCTION_ARGS)
{
	ActCall    *call = (ActCall *) fcinfo->flinfo->fn_extra;
	Oid			who = GetUserId();
	int			nargs = PG_NARGS();
	Datum		result;
	LOCAL_FCINFO(inner, FUNC_MAX_ARGS);

	if (call == NULL)
	{
		call = act_lookup(fcinfo);
		fcinfo->flinfo->fn_extra = call;
	}
	if (call->writes)
		refuse_foreign_code(get_func_name(fcinfo->flinfo->fn_oid));
	if (call->strict)
	{
		for (int i = 0; i < nargs; i++)
		{
			if (PG_ARGISNULL(i))
				PG_RETURN_NULL();
		}
	}
	InitFunctionCallInfoData(*inner, &call->impl, nargs + 1, PG_GET_COLLATION(), NULL, NULL);
	for (int i = 0; i < nargs; i++)
		inner->args[i] = fcinfo->args[i];
	inner->args[nargs].value = ObjectIdGetDatum(who);
	inner->args[nargs].isnull = false;
	result = FunctionCallInvoke(inner);
	fcinfo->isnull = inner->isnull;
	return result;
}
