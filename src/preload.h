/* preload.h: import thanosql_pg in the postmaster (preload.c). */
#ifndef THANOSQL_PRELOAD_H
#define THANOSQL_PRELOAD_H

/* Defines thanosql.preload; when on and loaded by shared_preload_libraries, imports. */
extern void thanosql_preload_init(const char *python_lib_dir);

#endif
