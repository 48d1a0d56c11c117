#ifndef THANOSQL_JOBS_H
#define THANOSQL_JOBS_H

/* The job settings, and with shared_preload_libraries the job launcher (jobs.c). */
extern void thanosql_jobs_init(void);

#endif
