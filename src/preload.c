/*
 * preload.c: import thanosql_pg and its ML libraries once, in the postmaster.
 *
 * A new session's first PREDICT used to spend seconds importing torch and
 * timm. With shared_preload_libraries = 'plpython3, thanosql' and
 * thanosql.preload = on, the postmaster (where PL/Python has already started
 * the interpreter) imports them at server start; every backend is forked with
 * them loaded, and shares their memory pages with the others until it writes
 * to them.
 *
 * Fork safety: nothing here starts a thread or touches CUDA (importing torch
 * does neither; thanosql_pg.server.preload only imports). If anything fails,
 * the server starts anyway and each session imports on first use, as without
 * the setting.
 *
 * PL/Python is not linked into this module: its functions are found with
 * dlsym, in the global namespace where PostgreSQL loaded plpython3.so.
 */
#include "postgres.h"

#include <dlfcn.h>

#include "miscadmin.h"
#include "utils/guc.h"

#include "preload.h"

typedef int (*py_is_initialized_fn) (void);
typedef int (*py_run_simple_string_fn) (const char *);
typedef void (*py_initialize_fn) (void);
typedef void *(*py_init_module_fn) (void);
typedef int (*py_append_inittab_fn) (const char *, py_init_module_fn);
typedef void *(*py_import_module_fn) (const char *);

static bool preload = false;

/*
 * The path travels as hex, so that no character of it can end the Python
 * string literal it is decoded from.
 */
static char *
hex_of(const char *s)
{
	static const char digits[] = "0123456789abcdef";
	size_t		n = strlen(s);
	char	   *out = palloc(2 * n + 1);

	for (size_t i = 0; i < n; i++)
	{
		out[2 * i] = digits[((unsigned char) s[i]) >> 4];
		out[2 * i + 1] = digits[((unsigned char) s[i]) & 15];
	}
	out[2 * n] = '\0';
	return out;
}

void
thanosql_preload_init(const char *python_lib_dir)
{
	py_is_initialized_fn is_initialized;
	py_run_simple_string_fn run;
	char	   *code;

	DefineCustomBoolVariable("thanosql.preload",
							 "Import thanosql_pg and its ML libraries in the postmaster, so that sessions start with them loaded.",
							 "Needs shared_preload_libraries = 'plpython3, thanosql' (in that order).",
							 &preload, false, PGC_POSTMASTER, 0, NULL, NULL, NULL);
	if (!process_shared_preload_libraries_in_progress || !preload)
		return;
	is_initialized = (py_is_initialized_fn) dlsym(RTLD_DEFAULT, "Py_IsInitialized");
	run = (py_run_simple_string_fn) dlsym(RTLD_DEFAULT, "PyRun_SimpleString");
	if (is_initialized == NULL || run == NULL)
	{
		ereport(WARNING,
				(errmsg("thanosql.preload is on, but PL/Python is not loaded in the postmaster"),
				 errhint("List plpython3 before thanosql in shared_preload_libraries.")));
		return;
	}
	if (!is_initialized())
	{
		/*
		 * PL/Python starts its interpreter on the first call of a function, in
		 * each backend. Start it here instead, exactly as it does (register
		 * its plpy module, initialize, import plpy); its own start in each
		 * backend then finds the interpreter running and only sets up its
		 * per-session state.
		 */
		py_append_inittab_fn append = (py_append_inittab_fn) dlsym(RTLD_DEFAULT, "PyImport_AppendInittab");
		py_init_module_fn init_plpy = (py_init_module_fn) dlsym(RTLD_DEFAULT, "PyInit_plpy");
		py_initialize_fn initialize = (py_initialize_fn) dlsym(RTLD_DEFAULT, "Py_Initialize");
		py_import_module_fn import = (py_import_module_fn) dlsym(RTLD_DEFAULT, "PyImport_ImportModule");

		if (append == NULL || init_plpy == NULL || initialize == NULL || import == NULL)
		{
			ereport(WARNING, (errmsg("thanosql.preload: PL/Python's functions were not found")));
			return;
		}
		append("plpy", init_plpy);
		initialize();
		if (import("plpy") == NULL)
		{
			ereport(WARNING, (errmsg("thanosql.preload: the plpy module could not be imported")));
			return;
		}
	}
	code = psprintf("def _thanosql_boot(lib):\n"
					"    import glob, os, site, sys\n"
					"    if lib:\n"
					"        found = sorted(glob.glob(os.path.join(lib, 'lib', 'python3*', 'site-packages')))\n"
					"        sp = found[-1] if found else lib\n"
					"        before = list(sys.path)\n"
					"        site.addsitedir(sp)\n"
					"        sys.path[:] = [p for p in sys.path if p not in before] + before\n"
					"    flags = sys.getdlopenflags()\n"
					"    sys.setdlopenflags(os.RTLD_NOW | os.RTLD_DEEPBIND)\n"
					"    try:\n"
					"        import pglast.parser\n"
					"    finally:\n"
					"        sys.setdlopenflags(flags)\n"
					"    import thanosql_pg.server.preload\n"
					"    thanosql_pg.server.preload.run()\n"
					"try:\n"
					"    _thanosql_boot(bytes.fromhex('%s').decode())\n"
					"finally:\n"
					"    del _thanosql_boot\n",
					hex_of(python_lib_dir ? python_lib_dir : ""));
	if (run(code) != 0)
		ereport(WARNING,
				(errmsg("thanosql.preload: importing thanosql_pg in the postmaster failed (the traceback is in the server log)"),
				 errhint("Sessions will import it on first use.")));
	else
		ereport(LOG, (errmsg("thanosql.preload: thanosql_pg and its ML libraries are loaded")));
}
