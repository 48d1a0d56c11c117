/* signals.h: PostgreSQL's signal handlers run only on the backend's main thread (signals.c). */
#ifndef THANOSQL_SIGNALS_H
#define THANOSQL_SIGNALS_H

/* Idempotent; called once per backend from thanosql._session_init(), on the main thread. */
extern void thanosql_guard_signals(void);

#endif
