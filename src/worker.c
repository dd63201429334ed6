/*
 * worker.c
 *		What every background process of the extension shares: its status in
 *		shared memory, its signal handling, and the guard that turns an error
 *		of a round into a logged, counted warning and a retry.
 *
 * A process attaches to its status entry once (the launcher's, or its
 * database slot's ingest or maintenance entry) and writes only that entry,
 * under counter_shared->mutex.  SIGTERM asks it to stop; while it runs a
 * long step (CounterGuardedStep) the step is also cancelled, so a shutdown
 * never waits for a compaction or a ranking pass.  SIGHUP rereads the
 * configuration file and, in a database, the database's own settings.
 */
#include "counter.h"

#include "access/xact.h"
#include "catalog/pg_db_role_setting.h"
#include "commands/extension.h"
#include "access/table.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

volatile sig_atomic_t counter_shutdown_requested = false;
static volatile sig_atomic_t in_long_step = false;
static CounterProcStatus *my_status = NULL;

/*
 * SIGTERM: stop at the next check.  A long step in progress is cancelled
 * (it is redone after the restart), so a shutdown never waits for one.
 */
static void
CounterWorkerSigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	counter_shutdown_requested = true;
	if (in_long_step)
	{
		QueryCancelPending = true;
		InterruptPending = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

/* Forget our status entry's pid and latch when the process exits. */
static void
CounterProcDetach(int code, Datum arg)
{
	if (my_status == NULL)
		return;
	SpinLockAcquire(&counter_shared->mutex);
	if (my_status->pid == MyProcPid)
	{
		my_status->pid = 0;
		my_status->latch = NULL;
		strlcpy(my_status->state, "stopped", sizeof(my_status->state));
	}
	if (my_status == &counter_shared->launcher)
		counter_shared->launcher_latch = NULL;
	SpinLockRelease(&counter_shared->mutex);
	my_status = NULL;
}

/* Install the signal handlers every process of ours uses; unblock signals. */
void
CounterWorkerSignals(void)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, CounterWorkerSigterm);
	BackgroundWorkerUnblockSignals();
}

/*
 * Take a status entry for this process: the launcher's (slot NULL) or a
 * database slot's entry for role.  Returns false if another live process
 * holds it already (the caller then exits).
 */
bool
CounterProcAttach(CounterDbSlot *slot, CounterRole role)
{
	CounterProcStatus *st = slot ? &slot->proc[role] : &counter_shared->launcher;
	bool		ok;

	SpinLockAcquire(&counter_shared->mutex);
	ok = (st->pid == 0 || st->pid == MyProcPid);
	if (ok)
	{
		memset(st, 0, sizeof(*st));
		st->pid = MyProcPid;
		st->latch = MyLatch;
		st->started_at = GetCurrentTimestamp();
		strlcpy(st->state, "starting", sizeof(st->state));
		if (slot == NULL)
			counter_shared->launcher_latch = MyLatch;
	}
	SpinLockRelease(&counter_shared->mutex);
	if (ok)
	{
		my_status = st;
		before_shmem_exit(CounterProcDetach, (Datum) 0);
	}
	return ok;
}

/* Publish what this process is doing, for counter.worker_status(). */
void
CounterProcState(const char *state)
{
	if (my_status)
	{
		SpinLockAcquire(&counter_shared->mutex);
		strlcpy(my_status->state, state, sizeof(my_status->state));
		SpinLockRelease(&counter_shared->mutex);
	}
	pgstat_report_activity(STATE_RUNNING, state);
}

/* Count a finished round that began at start and did items units of work. */
void
CounterProcRound(TimestampTz start, int64 items)
{
	TimestampTz end = GetCurrentTimestamp();

	if (my_status == NULL)
		return;
	SpinLockAcquire(&counter_shared->mutex);
	my_status->round_at = end;
	my_status->round_ms = (end - start) / 1000.0;
	my_status->rounds++;
	my_status->items += items;
	SpinLockRelease(&counter_shared->mutex);
}

/* Record an error of a round in this process's status. */
void
CounterProcError(const char *what, const char *message)
{
	if (my_status == NULL)
		return;
	SpinLockAcquire(&counter_shared->mutex);
	my_status->errors++;
	my_status->error_at = GetCurrentTimestamp();
	snprintf(my_status->error, sizeof(my_status->error), "%s: %s", what, message);
	SpinLockRelease(&counter_shared->mutex);
}

/*
 * In a PG_CATCH of a round: abort the transaction, log the error as a
 * WARNING and count it in the status; the round is retried later.  cxt is
 * the memory context the round started in.
 */
void
CounterReportFailure(const char *what, MemoryContext cxt)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(cxt);
	edata->elevel = WARNING;
	/* the log says which step failed, as worker_status() does */
	edata->context = edata->context ?
		psprintf("%s\ncounter: %s", edata->context, what) : psprintf("counter: %s", what);
	ThrowErrorData(edata);
	CounterProcError(what, edata->message);
	FreeErrorData(edata);
}

/* Why this database was last found not ready to serve (CounterMarkIdle). */
static char idle_why[COUNTER_WHY_LEN] = "The extension is not installed in this database.";

/*
 * Whether counter is installed in this database at this library's version
 * (inside a transaction).  An older version waits for ALTER EXTENSION
 * counter UPDATE, which wakes the launcher at its commit.
 */
bool
CounterInstalledHere(void)
{
	char	   *version = CounterInstalledVersion();

	if (version == NULL)
	{
		strlcpy(idle_why, "The extension is not installed in this database.", sizeof(idle_why));
		return false;
	}
	if (strcmp(version, COUNTER_VERSION) != 0)
	{
		snprintf(idle_why, sizeof(idle_why),
				 "counter %s is installed here and the library is %s: run ALTER EXTENSION counter UPDATE.",
				 version, COUNTER_VERSION);
		return false;
	}
	return true;
}

/*
 * Whether counter is installed here, looked up in a transaction of its own.
 * A check that fails (a lock held on pg_extension past lock_timeout, say)
 * answers COUNTER_CHECK_FAILED, logged as a WARNING: the caller carries on
 * and asks again later, for a failure says nothing about the extension.
 */
CounterCheck
CounterInstalledNow(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile CounterCheck answer = COUNTER_CHECK_FAILED;

	PG_TRY();
	{
		StartTransactionCommand();
		/* a user's lock on the catalogs must not hold up the whole round */
		(void) set_config_option("lock_timeout", "1s", PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
		answer = CounterInstalledHere() ? COUNTER_CHECK_YES : COUNTER_CHECK_NO;
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		answer = COUNTER_CHECK_FAILED;
		CounterReportFailure("checking for the extension", cxt);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	return answer;
}

/*
 * Reload the configuration on SIGHUP: the file, then this database's own
 * settings (ALTER DATABASE ... SET counter.redis_url = ...), which only a
 * new connection would otherwise see.
 */
void
CounterReloadIfAsked(void)
{
	MemoryContext cxt = CurrentMemoryContext;

	if (!ConfigReloadPending)
		return;
	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);
	if (!OidIsValid(MyDatabaseId))
		return;
	PG_TRY();
	{
		Relation	rel;

		StartTransactionCommand();
		rel = table_open(DbRoleSettingRelationId, AccessShareLock);
		ApplySetting(GetCatalogSnapshot(DbRoleSettingRelationId), MyDatabaseId,
					 InvalidOid, rel, PGC_S_DATABASE);
		table_close(rel, AccessShareLock);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		CounterReportFailure("reloading this database's settings", cxt);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
}

/*
 * Run one step of a round: an error is logged as a WARNING, counted in the
 * status, and the step is retried at its next turn.  A SIGTERM cancels the
 * step; that is not counted.  Returns false if the step failed.
 */
bool
CounterGuardedStep(const char *what, void (*step) (void))
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = true;

	if (counter_shutdown_requested)
		return false;
	in_long_step = true;
	PG_TRY();
	{
		step();
	}
	PG_CATCH();
	{
		in_long_step = false;
		QueryCancelPending = false;
		ok = false;
		if (counter_shutdown_requested)
		{
			MemoryContextSwitchTo(cxt);
			FlushErrorState();
			AbortCurrentTransaction();
		}
		else
			CounterReportFailure(what, cxt);
	}
	PG_END_TRY();
	in_long_step = false;
	QueryCancelPending = false;	/* a SIGTERM that came as the step ended */
	MemoryContextSwitchTo(cxt);
	return ok;
}

/* Mark a database idle: the extension is not (or no longer) installed there. */
void
CounterMarkIdle(CounterDbSlot *slot)
{
	SpinLockAcquire(&counter_shared->mutex);
	if (slot->dbid == MyDatabaseId && slot->state != COUNTER_DB_FREE &&
		slot->state != COUNTER_DB_PAUSED)
	{
		slot->state = slot->recheck ? COUNTER_DB_WANTED : COUNTER_DB_IDLE;
		slot->recheck = false;
		slot->state_at = GetCurrentTimestamp();
		strlcpy(slot->why, idle_why, sizeof(slot->why));
	}
	SpinLockRelease(&counter_shared->mutex);
	CounterWakeLauncher();
}
