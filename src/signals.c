/*
 * signals.c: PostgreSQL's signal handlers must run only on the backend's main
 * thread. (Filled in by the signals work.)
 */
#include "postgres.h"

#include "signals.h"

void
thanosql_guard_signals(void)
{
}
