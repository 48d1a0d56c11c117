/* progress.h: server-wide progress of thanosql statements (progress.c). */
#ifndef THANOSQL_PROGRESS_H
#define THANOSQL_PROGRESS_H

/* From _PG_init: requests shared memory when loaded by shared_preload_libraries. */
extern void thanosql_progress_init(void);

/* Once per session (thanosql._session_init): slot clean-up at abort and exit. */
extern void thanosql_progress_session_init(void);

#endif
