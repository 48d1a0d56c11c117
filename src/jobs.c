/*
 * jobs.c: statements that outlive their connection (OPTIONS (background=True)).
 *
 * A submitted job is a row of thanosql.job_records (status 'queued'). Two kinds
 * of background worker run them:
 *
 * - the *launcher*, one per server (registered here when the library is in
 *   shared_preload_libraries), connected to thanosql.jobs_database as the
 *   bootstrap superuser. Twice a second it calls thanosql._jobs_tick(): jobs
 *   whose process is gone (kill -9, a crash restart, a server stop) go back to
 *   'queued', or to 'failed' after thanosql.job_max_attempts attempts; then
 *   up to thanosql.max_jobs queued jobs, oldest first, are marked 'running'
 *   and each gets
 * - a *job worker*, connected as the job's owner (never as a superuser on
 *   another role's behalf: PostgreSQL checks that the role may still log in),
 *   which runs CALL thanosql._run_job(id) as a top-level statement, so that the
 *   procedure may COMMIT: a training commits its checkpoint after every epoch.
 *   An error ends the job as 'failed' (or 'cancelled', when cancel_job asked);
 *   a FATAL (SIGTERM at shutdown) or a crash leaves it 'running' with a dead
 *   pid, for the launcher to requeue.
 *
 * The job worker's bookkeeping after an error runs as the bootstrap superuser
 * for that one statement (SetUserIdAndSecContext), as PostgreSQL's own
 * maintenance code does: the owner cannot write thanosql.job_records.
 */
#include "postgres.h"

#include <sys/stat.h>

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/pquery.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/portal.h"
#include "utils/ps_status.h"
#include "utils/snapmgr.h"

#include "jobs.h"

PGDLLEXPORT void thanosql_jobs_launcher_main(Datum arg);
PGDLLEXPORT void thanosql_job_main(Datum arg);
PGDLLEXPORT void thanosql_checkpoint_helper_main(Datum arg);

static int	max_jobs = 1;
static int	job_max_attempts = 3;
static char *jobs_database = NULL;
static bool jobs_enabled = false;	/* the launcher is registered (preloaded) */
static int64 current_job = 0;	/* in a job worker: its job */

/* The launcher's latch, which a submission sets when it commits: the job starts at once. */
typedef struct JobsShared
{
	Latch	   *launcher;
} JobsShared;

static JobsShared *jobs_shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static bool wake_at_commit = false;
static bool wake_callback_registered = false;

static void
jobs_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(sizeof(JobsShared));
}

static void
jobs_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	jobs_shared = ShmemInitStruct("thanosql jobs", sizeof(JobsShared), &found);
	if (!found)
		jobs_shared->launcher = NULL;
	LWLockRelease(AddinShmemInitLock);
}

static void
wake_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && wake_at_commit && jobs_shared != NULL && jobs_shared->launcher != NULL)
		SetLatch(jobs_shared->launcher);
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
		wake_at_commit = false;
}

typedef struct JobExtra
{
	Oid			database;
	Oid			owner;
	int32		epoch;			/* a checkpoint helper's: the epoch it stores */
} JobExtra;

void
thanosql_jobs_init(void)
{
	DefineCustomIntVariable("thanosql.max_jobs",
							"Background jobs (background=True) that run at once; the others wait in order.",
							NULL, &max_jobs, 1, 0, 64,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("thanosql.job_max_attempts",
							"Attempts of a background job interrupted by a crash or a restart before it fails.",
							NULL, &job_max_attempts, 3, 1, 100,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("thanosql.jobs_database",
							   "The database whose background jobs the server runs.",
							   NULL, &jobs_database, "thanosql",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	if (process_shared_preload_libraries_in_progress)
	{
		BackgroundWorker worker;

		memset(&worker, 0, sizeof(worker));
		worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		/* never on a standby: jobs write */
		worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
		worker.bgw_restart_time = 5;
		snprintf(worker.bgw_library_name, BGW_MAXLEN, "thanosql");
		snprintf(worker.bgw_function_name, BGW_MAXLEN, "thanosql_jobs_launcher_main");
		snprintf(worker.bgw_name, BGW_MAXLEN, "thanosql job launcher");
		snprintf(worker.bgw_type, BGW_MAXLEN, "thanosql job launcher");
		RegisterBackgroundWorker(&worker);
		jobs_enabled = true;
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = jobs_shmem_request;
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = jobs_shmem_startup;
	}
}

/* -- the launcher ------------------------------------------------------------ */

/* Runs ``sql`` (returning rows of job_id bigint, owner oid) in a transaction of its own. */
/*
 * The workers this launcher started, while they run: their jobs are alive even
 * before they show in pg_stat_activity (which is how jobs started by an earlier
 * launcher, before a launcher restart, are known to be alive).
 */
#define MAX_LAUNCHED 64
static int64 launched_ids[MAX_LAUNCHED];
static BackgroundWorkerHandle *launched[MAX_LAUNCHED];
static int	nlaunched = 0;

static void
prune_launched(void)
{
	int			kept = 0;

	for (int i = 0; i < nlaunched; i++)
	{
		pid_t		pid;

		if (GetBackgroundWorkerPid(launched[i], &pid) == BGWH_STOPPED)
		{
			pfree(launched[i]);
			continue;
		}
		launched_ids[kept] = launched_ids[i];
		launched[kept++] = launched[i];
	}
	nlaunched = kept;
}

static int
tick(int64 *ids, Oid *owners, int max)
{
	int			n = 0;
	bool		installed;
	StringInfoData alive;

	prune_launched();
	initStringInfo(&alive);
	appendStringInfoChar(&alive, '{');
	for (int i = 0; i < nlaunched; i++)
		appendStringInfo(&alive, "%s" INT64_FORMAT, i ? "," : "", launched_ids[i]);
	appendStringInfoChar(&alive, '}');

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "thanosql._jobs_tick");
	installed = SPI_execute("SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n"
							" ON n.oid = p.pronamespace WHERE n.nspname = 'thanosql'"
							" AND p.proname = '_jobs_tick'", true, 1) == SPI_OK_SELECT && SPI_processed > 0;
	if (installed)
	{
		StringInfoData sql;
		const char *device = GetConfigOption("thanosql.device", true, false);
		bool		one_training = device == NULL || strcmp(device, "cpu") != 0;

		initStringInfo(&sql);
		appendStringInfo(&sql, "SELECT job_id, owner FROM thanosql._jobs_tick(%d, %d, '%s', %s)",
						 Min(max_jobs, max - nlaunched), job_max_attempts, alive.data,
						 one_training ? "true" : "false");
		if (SPI_execute(sql.data, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "thanosql._jobs_tick failed");
		for (uint64 i = 0; i < SPI_processed && n < max; i++)
		{
			bool		isnull;

			ids[n] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
			owners[n] = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
			n++;
		}
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	return n;
}

static void
run_admin(const char *sql)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_execute(sql, false, 0);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * A dynamic worker running ``function`` for job ``job_id`` (``type`` names it in
 * pg_stat_activity), started; NULL when no worker slot is free or it did not
 * start. The handle lives in TopMemoryContext: it outlives transactions.
 */
static BackgroundWorkerHandle *
start_worker(const char *function, const char *type, int64 job_id, JobExtra extra, pid_t *pid)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	MemoryContext old;
	bool		registered;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "thanosql");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker.bgw_name, BGW_MAXLEN, "%s " INT64_FORMAT, type, job_id);
	snprintf(worker.bgw_type, BGW_MAXLEN, "%s", type);
	worker.bgw_main_arg = Int64GetDatum(job_id);
	memcpy(worker.bgw_extra, &extra, sizeof(extra));
	worker.bgw_notify_pid = MyProcPid;
	old = MemoryContextSwitchTo(TopMemoryContext);
	registered = RegisterDynamicBackgroundWorker(&worker, &handle);
	MemoryContextSwitchTo(old);
	if (!registered)
		return NULL;
	if (WaitForBackgroundWorkerStartup(handle, pid) != BGWH_STARTED)
	{
		pfree(handle);
		return NULL;
	}
	return handle;
}

static void
launch(int64 job_id, Oid owner)
{
	JobExtra	extra = {MyDatabaseId, owner, 0};
	BackgroundWorkerHandle *handle;
	pid_t		pid = 0;
	char		sql[128];

	handle = start_worker("thanosql_job_main", "thanosql job", job_id, extra, &pid);
	if (handle == NULL)
	{
		/* no free worker slot (max_worker_processes): the job waits for the next tick */
		snprintf(sql, sizeof(sql), "SELECT thanosql._job_unstart(" INT64_FORMAT ")", job_id);
		run_admin(sql);
		return;
	}
	launched_ids[nlaunched] = job_id;
	launched[nlaunched++] = handle;
	snprintf(sql, sizeof(sql), "SELECT thanosql._job_started(" INT64_FORMAT ", %d)", job_id, (int) pid);
	run_admin(sql);
}

void
thanosql_jobs_launcher_main(Datum arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(jobs_database, NULL, 0);
	pgstat_report_appname("thanosql job launcher");
	if (jobs_shared != NULL)
		jobs_shared->launcher = &MyProc->procLatch;

	for (;;)
	{
		int64		ids[64];
		Oid			owners[64];
		int			n;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 500,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		n = tick(ids, owners, lengthof(ids));
		for (int i = 0; i < n; i++)
			launch(ids[i], owners[i]);
	}
}

/* -- a job worker ---------------------------------------------------------- */

/*
 * ``sql`` as a top-level statement, the way PostgreSQL runs a client's simple
 * query: a CALL in it is not atomic, so the procedure may COMMIT. Its parse
 * and plan trees live in a context of their own, which outlives those commits.
 */
static void
run_toplevel(const char *sql)
{
	MemoryContext ctx = AllocSetContextCreate(TopMemoryContext, "thanosql job statement",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old;
	List	   *parsed;
	RawStmt    *raw;
	List	   *queries;
	List	   *plans;
	Portal		portal;
	DestReceiver *receiver;
	QueryCompletion qc;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	old = MemoryContextSwitchTo(ctx);
	parsed = pg_parse_query(sql);
	raw = linitial_node(RawStmt, parsed);
	queries = pg_analyze_and_rewrite_fixedparams(raw, sql, NULL, 0, NULL);
	plans = pg_plan_queries(queries, sql, CURSOR_OPT_PARALLEL_OK, NULL);
	portal = CreatePortal("", true, true);
	portal->visible = false;
	PortalDefineQuery(portal, NULL, sql, CreateCommandTag(raw->stmt), plans, NULL);
	PortalStart(portal, NULL, 0, InvalidSnapshot);
	receiver = CreateDestReceiver(DestNone);
	MemoryContextSwitchTo(old);
	(void) PortalRun(portal, FETCH_ALL, true, true, receiver, receiver, &qc);
	receiver->rDestroy(receiver);
	PortalDrop(portal, false);
	CommitTransactionCommand();
	MemoryContextDelete(ctx);
}

/* The job's end after an error, written as the bootstrap superuser. */
static void
end_job(int64 job_id, const char *sqlstate, const char *message)
{
	Oid			save_user;
	int			save_sec;
	Datum		args[3];
	Oid			types[3] = {INT8OID, TEXTOID, TEXTOID};

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	args[0] = Int64GetDatum(job_id);
	args[1] = CStringGetTextDatum(sqlstate);
	args[2] = CStringGetTextDatum(message);
	SPI_execute_with_args("SELECT thanosql._job_end($1, $2, $3)", 3, types, args, NULL, false, 0);
	SPI_finish();
	PopActiveSnapshot();
	SetUserIdAndSecContext(save_user, save_sec);
	CommitTransactionCommand();
}

/*
 * In a job's worker or its checkpoint helper: this job's, connected as the job's
 * owner, named ``<type> <id>`` in pg_stat_activity. A query cancel (cancel_job)
 * ends the running statement, SIGTERM (a server stop) the process.
 */
static JobExtra
join_job(Datum arg, const char *type)
{
	JobExtra	extra;
	char		name[64];

	memcpy(&extra, MyBgworkerEntry->bgw_extra, sizeof(extra));
	current_job = DatumGetInt64(arg);
	pqsignal(SIGINT, StatementCancelHandler);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(extra.database, extra.owner, 0);
	snprintf(name, sizeof(name), "%s " INT64_FORMAT, type, current_job);
	pgstat_report_appname(name);
	return extra;
}

void
thanosql_job_main(Datum arg)
{
	char		sql[128];

	join_job(arg, "thanosql job");
	snprintf(sql, sizeof(sql), "CALL thanosql._run_job(" INT64_FORMAT ")", current_job);
	pgstat_report_activity(STATE_RUNNING, sql);
	PG_TRY();
	{
		run_toplevel(sql);
	}
	PG_CATCH();
	{
		MemoryContext ctx;
		ErrorData  *edata;

		/* first logged: the log hook cleans thanosql_pg's own messages in place */
		EmitErrorReport();
		ctx = MemoryContextSwitchTo(TopMemoryContext);
		edata = CopyErrorData();
		MemoryContextSwitchTo(ctx);
		FlushErrorState();
		AbortCurrentTransaction();
		/* the cancel that ended the statement must not also end the bookkeeping */
		QueryCancelPending = false;
		HOLD_INTERRUPTS();
		end_job(current_job, unpack_sql_state(edata->sqlerrcode), edata->message ? edata->message : "");
		RESUME_INTERRUPTS();
	}
	PG_END_TRY();
	/* after a success too: a no-op when the job recorded its end itself */
	end_job(current_job, "00000", "");
	pgstat_report_activity(STATE_IDLE, NULL);
	proc_exit(0);
}

/* -- a checkpoint helper ------------------------------------------------------ */

/*
 * Storing a training checkpoint (weights and optimizer state: hundreds of MB)
 * takes seconds. The job worker writes it to a file (thanosql_jobs/<id>/ in
 * the data directory) and starts a helper, connected as the same role, that
 * copies it into thanosql.job_checkpoints through the job's writers and
 * commits, while the worker trains on. One helper at a time: the next
 * checkpoint, and the job's end, wait for it.
 */
static BackgroundWorkerHandle *helper = NULL;

static void
wait_helper(void)
{
	if (helper != NULL)
	{
		BackgroundWorkerHandle *h = helper;

		helper = NULL;
		(void) WaitForBackgroundWorkerShutdown(h);
		pfree(h);
	}
}

static void
require_job_worker(void)
{
	if (current_job == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only a background job's own worker stores its checkpoints")));
}

void
thanosql_checkpoint_helper_main(Datum arg)
{
	JobExtra	extra = join_job(arg, "thanosql checkpoint");
	char		sql[128];

	snprintf(sql, sizeof(sql), "CALL thanosql._store_job_checkpoint(" INT64_FORMAT ", %d)", current_job,
			 (int) extra.epoch);
	pgstat_report_activity(STATE_RUNNING, sql);
	PG_TRY();
	{
		run_toplevel(sql);
	}
	PG_CATCH();
	{
		/* logged; the job keeps its previous checkpoint */
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
	proc_exit(0);
}

PG_FUNCTION_INFO_V1(thanosql_job_checkpoint_async);

/*
 * _store_job_checkpoint_async(epoch): a helper stores the checkpoint file of
 * ``epoch`` (after the previous helper ended). False when no worker slot is
 * free: the caller then stores it itself.
 */
Datum
thanosql_job_checkpoint_async(PG_FUNCTION_ARGS)
{
	JobExtra	extra = {MyDatabaseId, GetAuthenticatedUserId(), PG_GETARG_INT32(0)};
	pid_t		pid;

	require_job_worker();
	wait_helper();
	helper = start_worker("thanosql_checkpoint_helper_main", "thanosql checkpoint", current_job, extra, &pid);
	PG_RETURN_BOOL(helper != NULL);
}

PG_FUNCTION_INFO_V1(thanosql_job_checkpoint_wait);

/* Waits until the checkpoint helper started last has ended. */
Datum
thanosql_job_checkpoint_wait(PG_FUNCTION_ARGS)
{
	require_job_worker();
	wait_helper();
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(thanosql_job_remove_files);

/* Removes a job's folder of checkpoint files (thanosql_jobs/<id> in the data directory). */
Datum
thanosql_job_remove_files(PG_FUNCTION_ARGS)
{
	char	   *dir = psprintf("%s/thanosql_jobs/" INT64_FORMAT, DataDir, PG_GETARG_INT64(0));
	struct stat st;

	if (stat(dir, &st) == 0)
		(void) rmtree(dir, true);
	PG_RETURN_VOID();
}

/* -- SQL-callable ---------------------------------------------------------- */

PG_FUNCTION_INFO_V1(thanosql_worker_job);

/* The job this backend is the worker of, or 0: set only by the job worker's own code. */
Datum
thanosql_worker_job(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(current_job);
}

PG_FUNCTION_INFO_V1(thanosql_jobs_wake);

/* After a submission: the launcher looks at the queue as soon as this transaction commits. */
Datum
thanosql_jobs_wake(PG_FUNCTION_ARGS)
{
	if (!wake_callback_registered)
	{
		RegisterXactCallback(wake_callback, NULL);
		wake_callback_registered = true;
	}
	wake_at_commit = true;
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(thanosql_jobs_available);

/* Whether this server runs background jobs (the library is preloaded). */
Datum
thanosql_jobs_available(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(jobs_enabled);
}
