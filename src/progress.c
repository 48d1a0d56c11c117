/*
 * progress.c: what thanosql statements are doing right now, server-wide, in
 * shared memory.
 *
 * One slot per backend (indexed by MyBackendId), written only by its own
 * backend and read by anyone through thanosql.progress. Nothing here touches
 * a table, so a cancelled BUILD leaves no trace: the slot is cleared when the
 * statement ends, when its transaction aborts, and when the backend exits.
 *
 * The slots also count the sessions that are running models (training or
 * inference), which thanosql_pg uses to share the CPU cores between them
 * instead of giving every session all of them.
 *
 * Shared memory must be requested at server start, so this needs
 * shared_preload_libraries = 'thanosql'. Without it the writers do nothing
 * and the view says what to configure.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/backendid.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/timestamp.h"

#include "progress.h"

#define STATEMENT_LEN 16
#define MODEL_LEN 128
#define PHASE_LEN 32

typedef struct ProgressSlot
{
	slock_t		mutex;
	int			pid;			/* 0: no statement running */
	bool		busy;			/* running a model (any statement, PREDICT too) */
	Oid			roleid;
	Oid			dbid;
	char		statement[STATEMENT_LEN];
	char		model[MODEL_LEN];
	char		phase[PHASE_LEN];
	int32		epoch;
	int32		epochs;
	int64		step;
	int64		steps;
	double		loss;
	double		rate;			/* samples per second */
	double		eta;			/* seconds; < 0 unknown */
	TimestampTz started;
	TimestampTz updated;
} ProgressSlot;

static ProgressSlot *slots = NULL;
static int	nslots = 0;
static bool cleanup_registered = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
slots_size(void)
{
	return mul_size(MaxBackends, sizeof(ProgressSlot));
}

static void
progress_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(slots_size());
}

static void
progress_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	slots = ShmemInitStruct("thanosql progress", slots_size(), &found);
	if (!found)
	{
		memset(slots, 0, slots_size());
		for (int i = 0; i < MaxBackends; i++)
			SpinLockInit(&slots[i].mutex);
	}
	nslots = MaxBackends;
	LWLockRelease(AddinShmemInitLock);
}

void
thanosql_progress_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = progress_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = progress_shmem_startup;
}

/* This backend's slot, or NULL without shared memory. */
static ProgressSlot *
my_slot(void)
{
	if (slots == NULL || MyBackendId == InvalidBackendId || MyBackendId > nslots)
		return NULL;
	return &slots[MyBackendId - 1];
}

static void
clear_slot(bool statement_only)
{
	ProgressSlot *s = my_slot();

	if (s == NULL)
		return;
	SpinLockAcquire(&s->mutex);
	s->pid = 0;
	if (!statement_only)
		s->busy = false;
	SpinLockRelease(&s->mutex);
}

static void
progress_xact_callback(XactEvent event, void *arg)
{
	/* An error or cancel ends the statement: nothing of it may linger. */
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		clear_slot(false);
}

static void
progress_exit(int code, Datum arg)
{
	clear_slot(false);
}

static void
ensure_cleanup(void)
{
	if (cleanup_registered)
		return;
	RegisterXactCallback(progress_xact_callback, NULL);
	before_shmem_exit(progress_exit, (Datum) 0);
	cleanup_registered = true;
}

void
thanosql_progress_session_init(void)
{
	ensure_cleanup();
}

/*
 * The writers, called in-process by thanosql_pg (through ctypes, see
 * thanosql_pg/server/native.py), never through SQL: no session can mark
 * itself busy or write a row it is not running. They never raise an error
 * (nothing may longjmp through Python's frames): strings arrive as C strings
 * in the server's encoding, already cut to the slots' sizes.
 */
static void
copy_cstring(char *dst, int len, const char *src)
{
	strlcpy(dst, src ? src : "", len);
}

/* A BUILD/FIT/EVALUATE/CONVERT starts. */
extern PGDLLEXPORT void thanosql_progress_begin(const char *statement, const char *model);
void
thanosql_progress_begin(const char *statement, const char *model)
{
	ProgressSlot *s = my_slot();
	TimestampTz now = GetCurrentTimestamp();

	if (s == NULL || !cleanup_registered)
		return;
	SpinLockAcquire(&s->mutex);
	s->roleid = GetUserId();
	s->dbid = MyDatabaseId;
	copy_cstring(s->statement, STATEMENT_LEN, statement);
	copy_cstring(s->model, MODEL_LEN, model);
	s->phase[0] = '\0';
	s->epoch = s->epochs = 0;
	s->step = s->steps = 0;
	s->loss = s->rate = 0;
	s->eta = -1;
	s->started = s->updated = now;
	s->pid = MyProcPid;
	s->busy = true;
	SpinLockRelease(&s->mutex);
}

/* Where the running statement is; loss NaN and eta < 0 when unknown. */
extern PGDLLEXPORT void thanosql_progress_report(const char *phase, int epoch, int epochs, int64 step,
												 int64 steps, double loss, double rate, double eta);
void
thanosql_progress_report(const char *phase, int epoch, int epochs, int64 step, int64 steps,
						 double loss, double rate, double eta)
{
	ProgressSlot *s = my_slot();
	TimestampTz now = GetCurrentTimestamp();

	if (s == NULL || s->pid != MyProcPid)
		return;
	SpinLockAcquire(&s->mutex);
	copy_cstring(s->phase, PHASE_LEN, phase);
	s->epoch = epoch;
	s->epochs = epochs;
	s->step = step;
	s->steps = steps;
	s->loss = loss;
	s->rate = rate;
	s->eta = eta;
	s->updated = now;
	SpinLockRelease(&s->mutex);
}

/* The statement ended (an error or cancel clears the slot at abort as well). */
extern PGDLLEXPORT void thanosql_progress_finish(void);
void
thanosql_progress_finish(void)
{
	clear_slot(false);
}

/*
 * Marks this session as running a model (or not) and returns how many
 * sessions of the server are, this one included; 0 without shared memory
 * (the caller then cannot share).
 */
extern PGDLLEXPORT int thanosql_busy(int busy);
int
thanosql_busy(int busy)
{
	ProgressSlot *s = my_slot();
	int			n = 0;

	if (s == NULL || !cleanup_registered)
		return 0;
	SpinLockAcquire(&s->mutex);
	s->busy = busy != 0;
	if (busy)
		s->dbid = MyDatabaseId;
	SpinLockRelease(&s->mutex);
	for (int i = 0; i < nslots; i++)
	{
		/* a racy read is fine: this is a hint for choosing a thread count */
		if (slots[i].busy)
			n++;
	}
	return n;
}

PG_FUNCTION_INFO_V1(thanosql_progress_available);

Datum
thanosql_progress_available(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(slots != NULL);
}

PG_FUNCTION_INFO_V1(thanosql_progress_slots);

/*
 * The running statements the current role may see: its own (and its member
 * roles'), or all for superusers and members of pg_read_all_stats, as
 * pg_stat_activity decides.
 */
Datum
thanosql_progress_slots(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		all;
	Oid			me = GetUserId();

	if (slots == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("thanosql.progress needs the thanosql library loaded at server start"),
				 errhint("Add thanosql to shared_preload_libraries in postgresql.conf and restart the server.")));
	InitMaterializedSRF(fcinfo, 0);
	all = has_privs_of_role(me, ROLE_PG_READ_ALL_STATS);
	for (int i = 0; i < nslots; i++)
	{
		ProgressSlot copy;
		Datum		values[15];
		bool		nulls[15];

		SpinLockAcquire(&slots[i].mutex);
		memcpy(&copy, &slots[i], sizeof(copy));
		SpinLockRelease(&slots[i].mutex);
		if (copy.pid == 0)
			continue;
		if (!all && !has_privs_of_role(me, copy.roleid))
			continue;
		memset(nulls, 0, sizeof(nulls));
		values[0] = Int32GetDatum(copy.pid);
		values[1] = ObjectIdGetDatum(copy.roleid);
		values[2] = ObjectIdGetDatum(copy.dbid);
		values[3] = CStringGetTextDatum(copy.statement);
		values[4] = CStringGetTextDatum(copy.model);
		values[5] = CStringGetTextDatum(copy.phase);
		values[6] = Int32GetDatum(copy.epoch);
		values[7] = Int32GetDatum(copy.epochs);
		values[8] = Int64GetDatum(copy.step);
		values[9] = Int64GetDatum(copy.steps);
		values[10] = Float8GetDatum(copy.loss);
		values[11] = Float8GetDatum(copy.rate);
		values[12] = Float8GetDatum(copy.eta);
		nulls[12] = copy.eta < 0;
		values[13] = TimestampTzGetDatum(copy.started);
		values[14] = TimestampTzGetDatum(copy.updated);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
