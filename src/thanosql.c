/*
 * thanosql.c: the small native part of the thanosql extension.
 *
 * - Defines the extension's settings as real GUCs, so that the superuser-only
 *   ones (thanosql.python_lib_dir, thanosql.data_dir) cannot be changed by an
 *   ordinary role with SET: they decide which Python code runs in the backend
 *   and which server files non-privileged roles may read.
 * - thanosql.raise_error(): raises an error with a chosen SQLSTATE *and*
 *   cursor position. PL/pgSQL and PL/Python cannot set the position field, and
 *   the proxy needs it so that psql marks the error in the user's own text.
 */
#include "postgres.h"

#include <limits.h>

#include "access/xact.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/guc.h"

#include "preload.h"
#include "progress.h"
#include "jobs.h"
#include "signals.h"

PG_MODULE_MAGIC;

#ifndef THANOSQL_VERSION
#error "THANOSQL_VERSION must be defined (the Makefile takes it from thanosql_pg/__init__.py)"
#endif

#ifndef THANOSQL_DEFAULT_LIB_DIR
#define THANOSQL_DEFAULT_LIB_DIR ""
#endif

static char *python_lib_dir = NULL;
static char *data_dir = NULL;
static char *device = NULL;
static int	progress_interval = 10;
static bool progress_fields = false;
static int	max_image_pixels = 40000000;
static int	max_audio_seconds = 1800;
static int	keep_versions = 3;
static int	max_threads = 0;
static char *cache_dir = NULL;
static int	cache_size = 8192;
static int	max_text_bytes = 65536;
static int	query_cache_size = 256;
static int	max_workers = 4;
static char *worker_listen_address = NULL;

/*
 * PL/Python reports an exception raised by Python code as
 * "plpy.Error: message" (or "spiexceptions.Name: message") with a Python
 * traceback as context. For errors that thanosql_pg raises on purpose, the
 * message is already written for the user: thanosql_pg arms clean_next_error
 * just before raising, and the hook below strips the class prefix and the
 * traceback from that one error. Other PL/Python errors are left alone.
 */
static bool clean_next_error = false;
static emit_log_hook_type prev_emit_log_hook = NULL;

static void
thanosql_emit_log_hook(ErrorData *edata)
{
	if (clean_next_error && edata->elevel >= ERROR)
	{
		clean_next_error = false;
		if (edata->message)
		{
			const char *m = edata->message;

			/*
			 * A prefix is a dotted Python class name followed by ": ". An
			 * error raised in a nested PL/Python call has several
			 * ("spiexceptions.X: plpy.Error: message"): strip them all.
			 */
			for (;;)
			{
				const char *p = m;

				while (*p && (isalnum((unsigned char) *p) || *p == '_' || *p == '.'))
					p++;
				if (p > m && p[0] == ':' && p[1] == ' ' && memchr(m, '.', p - m) != NULL)
					m = p + 2;
				else
					break;
			}
			if (m != edata->message)
				edata->message = pstrdup(m);
		}
		edata->context = NULL;
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

void		_PG_init(void);

void
_PG_init(void)
{
	DefineCustomStringVariable("thanosql.python_lib_dir",
							   "Virtualenv (or site-packages directory) holding thanosql_pg and its dependencies.",
							   NULL, &python_lib_dir, THANOSQL_DEFAULT_LIB_DIR,
							   PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("thanosql.data_dir",
							   "Directory that relative image/audio paths resolve under; roles without pg_read_server_files may only read below it.",
							   NULL, &data_dir, "",
							   PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("thanosql.device",
							   "Where models run: auto, cpu or cuda.",
							   NULL, &device, "auto",
							   PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("thanosql.progress_interval",
							"Seconds between progress NOTICEs of long statements.",
							NULL, &progress_interval, 10, 1, 3600,
							PGC_USERSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomBoolVariable("thanosql.progress_fields",
							 "Progress NOTICEs carry their counters as JSON in DETAIL.",
							 "For clients that draw progress (the notebook magic sets it): they read the fields, never the message's wording.",
							 &progress_fields, false,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	/*
	 * Resource limits, checked from a file's header before it is decoded:
	 * superuser-only, so that an ordinary role cannot lift them for itself.
	 */
	DefineCustomIntVariable("thanosql.max_image_pixels",
							"Largest image (width x height, in pixels) that thanosql decodes.",
							NULL, &max_image_pixels, 40000000, 1, INT_MAX,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("thanosql.max_audio_seconds",
							"Longest audio clip (in seconds) that thanosql decodes.",
							NULL, &max_audio_seconds, 1800, 1, 86400,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("thanosql.max_text_bytes",
							"Longest text (in bytes) that thanosql tokenizes: a search text, a caption.",
							NULL, &max_text_bytes, 65536, 1, 64 * 1024 * 1024,
							PGC_SUSET, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomIntVariable("thanosql.keep_versions",
							"Earlier versions of a model kept by BUILD (overwrite) and FIT, for rollback.",
							NULL, &keep_versions, 3, 0, 1000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("thanosql.max_threads",
							"Threads that the sessions running models share (0: the cores the server may use).",
							"Each session running a model takes its share of them; without "
							"shared_preload_libraries = 'thanosql' each takes them all.",
							&max_threads, 0, 0, 1024,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("thanosql.cache_dir",
							   "Folder of the weights files that sessions map and share ('off': none).",
							   "Empty: thanosql_cache in the server's data directory.",
							   &cache_dir, "", PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("thanosql.cache_size",
							"Size of the shared weights cache (0: no cache).",
							NULL, &cache_size, 8192, 0, INT_MAX,
							PGC_SUSET, GUC_UNIT_MB, NULL, NULL, NULL);
	DefineCustomIntVariable("thanosql.query_cache_size",
							"SEARCH query embeddings a session keeps for repeated searches (0: none).",
							NULL, &query_cache_size, 256, 0, 16384,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("thanosql.max_workers",
							"Most training processes one BUILD or FIT may start (its option workers).",
							NULL, &max_workers, 4, 1, 1024,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("thanosql.worker_listen_address",
							   "Where a BUILD with remote_workers waits for workers of other machines, and the address its first worker's rendezvous binds.",
							   NULL, &worker_listen_address, "127.0.0.1",
							   PGC_SUSET, 0, NULL, NULL, NULL);
	/* last: with thanosql.preload on, this imports thanosql_pg using the settings above */
	thanosql_jobs_init();
	thanosql_preload_init(python_lib_dir);
	MarkGUCPrefixReserved("thanosql");

	thanosql_progress_init();

	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = thanosql_emit_log_hook;
}

PG_FUNCTION_INFO_V1(thanosql_clean_next_error);

/* Called by thanosql_pg right before it raises an error meant for the user. */
Datum
thanosql_clean_next_error(PG_FUNCTION_ARGS)
{
	clean_next_error = true;
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(thanosql_raise_error);

/* raise_error(sqlstate text, message text, detail text, hint text, position int) */
Datum
thanosql_raise_error(PG_FUNCTION_ARGS)
{
	char	   *state = PG_ARGISNULL(0) ? "XX000" : text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *message = PG_ARGISNULL(1) ? "thanosql error" : text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *detail = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	char	   *hint = PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3));
	int			position = PG_ARGISNULL(4) ? 0 : PG_GETARG_INT32(4);
	int			sqlerrcode;

	/*
	 * An error's SQLSTATE: five of [0-9A-Z], and not of the classes that say
	 * success, warning or no data (00, 01, 02), which an ERROR must not carry.
	 */
	{
		bool		valid = strlen(state) == 5;

		for (int i = 0; valid && i < 5; i++)
			valid = (state[i] >= '0' && state[i] <= '9') || (state[i] >= 'A' && state[i] <= 'Z');
		if (valid && state[0] == '0' && (state[1] == '0' || state[1] == '1' || state[1] == '2'))
			valid = false;
		if (!valid)
			state = "XX000";
	}
	sqlerrcode = MAKE_SQLSTATE(state[0], state[1], state[2], state[3], state[4]);

	ereport(ERROR,
			(errcode(sqlerrcode),
			 errmsg_internal("%s", message),
			 detail ? errdetail_internal("%s", detail) : 0,
			 hint ? errhint("%s", hint) : 0,
			 position > 0 ? errposition(position) : 0));
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(thanosql_native_version);

/*
 * Earlier releases whose SQL this module also serves: it keeps every C symbol
 * their scripts bind. Their thanosql._load() accepts the module only when it
 * reports their own release, so a database still at one of them (before its
 * ALTER EXTENSION UPDATE, say) gets that release's number here.
 */
static const char *const served_releases[] = {"0.2.0"};

/* Calling any function of this module loads it, which defines the settings. */
Datum
thanosql_native_version(PG_FUNCTION_ARGS)
{
	const char *version = THANOSQL_VERSION;

	if (IsTransactionState() && SPI_connect() == SPI_OK_CONNECT)
	{
		if (SPI_execute("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'thanosql'",
						true, 1) == SPI_OK_SELECT && SPI_processed == 1)
		{
			char	   *installed = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

			for (int i = 0; installed != NULL && i < lengthof(served_releases); i++)
			{
				if (strcmp(installed, served_releases[i]) == 0)
					version = served_releases[i];
			}
		}
		SPI_finish();
	}
	PG_RETURN_TEXT_P(cstring_to_text(version));
}

PG_FUNCTION_INFO_V1(thanosql_settings);

/*
 * _settings(names text[]) -> text[]: each setting's value as GetConfigOption
 * gives it, integers in their base unit ('1800', not '30min'), NULL for an
 * unknown name; a setting the caller may not read (data_directory, say) is
 * refused as by SHOW. pg_settings gives the same, at the price of building
 * every setting's row (about 0.4 ms a query), which SEARCH and every media
 * read paid.
 */
Datum
thanosql_settings(PG_FUNCTION_ARGS)
{
	ArrayType  *names = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	Datum	   *out;
	bool	   *outnulls;
	int			dims[1];
	int			lbs[1] = {1};

	deconstruct_array(names, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	out = palloc(sizeof(Datum) * Max(n, 1));
	outnulls = palloc(sizeof(bool) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		const char *value = nulls[i] ? NULL : GetConfigOption(TextDatumGetCString(elems[i]), true, true);

		outnulls[i] = value == NULL;
		out[i] = value == NULL ? (Datum) 0 : CStringGetTextDatum(value);
	}
	dims[0] = n;
	PG_RETURN_ARRAYTYPE_P(construct_md_array(out, outnulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * For server/embeddings.py, through ctypes: set_config(name, value, true), a
 * setting for the rest of the transaction, without an SPI round trip (SEARCH
 * IMAGE's HNSW iterative scans, on every search). A value the setting refuses
 * is reported at DEBUG1 and returns false: no ERROR may unwind through the
 * caller's Python frames. The caller passes only a setting it has read.
 */
extern PGDLLEXPORT bool thanosql_set_local(const char *name, const char *value);
bool
thanosql_set_local(const char *name, const char *value)
{
	return set_config_option(name, value, superuser() ? PGC_SUSET : PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, DEBUG1, false) > 0;
}

PG_FUNCTION_INFO_V1(thanosql_session_init);

/*
 * Called by thanosql._load() once per session, on the backend's main thread,
 * before thanosql_pg (and torch's threads) start: PostgreSQL's signal handlers
 * are made to run on this thread only, and the progress slot is cleared when a
 * transaction aborts or the backend exits. Idempotent, so harmless to anyone.
 */
Datum
thanosql_session_init(PG_FUNCTION_ARGS)
{
	thanosql_guard_signals();
	thanosql_progress_session_init();
	PG_RETURN_VOID();
}
