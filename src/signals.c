/*
 * signals.c: PostgreSQL's signal handlers run only on the backend's main
 * thread.
 *
 * PostgreSQL's backends are single-threaded, and so are its signal handlers:
 * StatementCancelHandler, die, handle_sig_alarm (timeout.c),
 * procsignal_sigusr1_handler and the others set flags and bookkeeping that
 * only the main thread reads and writes (InterruptHoldoffCount, the active
 * timeouts, the latch). A session that runs a model has many more threads:
 * torch's intra-op (OpenMP) pool, the decoding pool, threads of the libraries.
 * The kernel delivers a signal sent to the process (kill, pg_cancel_backend,
 * the SIGALRM of statement_timeout) to any thread that does not block it, so
 * without this a handler could run on one of those threads, concurrently with
 * the main thread running PostgreSQL code.
 *
 * thanosql_guard_signals(), called once per session on the main thread before
 * thanosql_pg (and torch) can start a thread, replaces each installed handler
 * by forward_signal(): on the main thread it calls PostgreSQL's handler as
 * before; on any other thread it re-sends the signal to the main thread
 * (tgkill) and returns, so the handler runs there. Python's side
 * (thanosql_pg.algorithms.shared.devices) also starts torch's threads and the
 * decoding threads with these signals blocked, so that the kernel does not
 * pick them in the first place; the forwarder covers every thread it does not
 * know about.
 *
 * The main thread is the one whose thread id is the process id: a backend's
 * only thread when it is forked, also when the postmaster imported torch
 * (thanosql.preload) before forking it. Signals that report a fault of the
 * thread that receives them (SIGSEGV, SIGFPE, ...) are left alone: they must
 * be handled by that thread.
 */
#include "postgres.h"

#include <errno.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "signals.h"

/* Signals are 1 .. 31 here; realtime signals are not PostgreSQL's (glibc keeps some). */
#define GUARDED_MAX 32

/*
 * PostgreSQL's handler for each wrapped signal, as it was installed. Written
 * on the main thread before the forwarder is installed for that signal, read
 * by the forwarder.
 */
static struct sigaction originals[GUARDED_MAX];

static bool
is_main_thread(void)
{
	return (pid_t) syscall(SYS_gettid) == getpid();
}

/* Async-signal-safe: two system calls and the original handler. */
static void
forward_signal(int signo, siginfo_t *info, void *context)
{
	const struct sigaction *orig;

	if (!is_main_thread())
	{
		int			save_errno = errno;
		pid_t		pid = getpid();

		/* tgkill: to the main thread itself, which runs the handler below */
		(void) syscall(SYS_tgkill, pid, pid, signo);
		errno = save_errno;
		return;
	}
	orig = &originals[signo];
	if (orig->sa_flags & SA_SIGINFO)
		orig->sa_sigaction(signo, info, context);
	else if (orig->sa_handler != SIG_DFL && orig->sa_handler != SIG_IGN)
		orig->sa_handler(signo);
}

/* Signals that report a fault of the thread that gets them, and those no handler can take. */
static bool
thread_directed(int signo)
{
	switch (signo)
	{
		case SIGILL:
		case SIGTRAP:
		case SIGABRT:
		case SIGBUS:
		case SIGFPE:
		case SIGSEGV:
		case SIGSYS:
		case SIGPIPE:			/* raised in the thread that wrote */
		case SIGXFSZ:			/* idem */
		case SIGKILL:
		case SIGSTOP:
			return true;
		default:
			return false;
	}
}

/*
 * Wrap every installed handler (not SIG_DFL, not SIG_IGN) of an asynchronous
 * signal with forward_signal. Idempotent: a handler that is already the
 * forwarder is left as it is, and one that PostgreSQL installed since the
 * last call is wrapped in turn.
 */
void
thanosql_guard_signals(void)
{
	if (!is_main_thread())
		return;					/* PostgreSQL never calls it elsewhere */

	for (int signo = 1; signo < GUARDED_MAX; signo++)
	{
		struct sigaction current;
		struct sigaction wrapper;
		bool		siginfo;

		if (thread_directed(signo) || sigaction(signo, NULL, &current) != 0)
			continue;
		siginfo = (current.sa_flags & SA_SIGINFO) != 0;
		if (siginfo && current.sa_sigaction == forward_signal)
			continue;			/* wrapped already */
		if (!siginfo && (current.sa_handler == SIG_DFL || current.sa_handler == SIG_IGN))
			continue;

		originals[signo] = current;
		wrapper = current;		/* same mask and flags (SA_RESTART ...) */
		wrapper.sa_flags |= SA_SIGINFO;
		wrapper.sa_flags &= ~SA_RESETHAND;
		wrapper.sa_sigaction = forward_signal;
		if (sigaction(signo, &wrapper, NULL) != 0)
			ereport(WARNING,
					(errmsg("thanosql: could not guard the handler of signal %d: %m", signo)));
	}
}
