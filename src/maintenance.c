/*
 * maintenance.c
 *		The maintenance process of a database: compaction and rollups,
 *		retention, the purge of expired event ids and rate windows, and the
 *		ranking refresh top() reads, each a step with its own interval.
 *
 * One per served database, started by the launcher once the database's
 * ingest process found the extension.  It runs apart from ingest, so no
 * step, however long, delays a fold or a drain.  Each step works in short
 * transactions; a failing step is logged, counted in worker_status() and
 * retried at its next turn, and the other steps go on.  SIGTERM cancels a
 * step in progress and exits.
 */
#include "counter.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

PGDLLEXPORT void CounterMaintenanceMain(Datum arg);

static CounterDbSlot *my_slot = NULL;
static int64 step_items = 0;

/* Compaction, rollups, retention and purge, in batches of 10,000 rows. */
static void
CounterCompactStepRun(void)
{
	int64		moved;

	CounterProcState("compacting");
	moved = CounterCompactAll(GetCurrentTimestamp(), 10000, 20);
	SpinLockAcquire(&counter_shared->mutex);
	my_slot->compacted_rows += moved;
	SpinLockRelease(&counter_shared->mutex);
	step_items += moved;
}

/* One ranking refresh of every counter, in its own transaction. */
static void
CounterRankStepRun(void)
{
	CounterScope scope;

	CounterProcState("ranking");
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (CounterInstalledHere())
	{
		CounterEnter(&scope);
		if (SPI_execute("SELECT counter.refresh_ranking()", false, 0) != SPI_OK_SELECT)
			elog(ERROR, "counter ranking refresh failed");
		CounterLeave(&scope);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/* Milliseconds until a step with this interval, last run at last, is due. */
static long
CounterStepWait(TimestampTz now, TimestampTz last, int interval_ms)
{
	if (interval_ms <= 0)
		return 60 * 1000L;
	return Max(0, (long) ((last + (int64) interval_ms * 1000 - now) / 1000));
}

/* Entry point of a database's maintenance process; arg is the database's oid. */
void
CounterMaintenanceMain(Datum arg)
{
	Oid			dbid = DatumGetObjectId(arg);
	MemoryContext loop_cxt;
	TimestampTz last_compact = 0;
	TimestampTz last_rank = 0;

	CounterWorkerSignals();
	BackgroundWorkerInitializeConnectionByOid(dbid, InvalidOid, 0);
	pgstat_report_appname("counter maintenance");
	my_slot = CounterSlotFor(dbid);
	if (my_slot == NULL || !CounterProcAttach(my_slot, COUNTER_ROLE_MAINTENANCE))
		proc_exit(0);
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "counter maintenance round",
									 ALLOCSET_DEFAULT_SIZES);
	while (!counter_shutdown_requested)
	{
		TimestampTz now;
		long		wait_ms;

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		CounterReloadIfAsked();
		MemoryContextSwitchTo(loop_cxt);
		if (!CounterInstalledNow())
		{
			CounterMarkIdle(my_slot);
			break;
		}
		now = GetCurrentTimestamp();
		step_items = 0;
		if (counter_compact_interval > 0 &&
			now - last_compact >= (int64) counter_compact_interval * 1000)
		{
			CounterGuardedStep("compaction", CounterCompactStepRun);
			last_compact = now;
		}
		if (counter_rank_interval > 0 &&
			now - last_rank >= (int64) counter_rank_interval * 1000)
		{
			CounterGuardedStep("ranking", CounterRankStepRun);
			last_rank = now;
		}
		CounterProcRound(now, step_items);
		CounterProcState("idle");
		pgstat_report_activity(STATE_IDLE, NULL);
		MemoryContextReset(loop_cxt);

		now = GetCurrentTimestamp();
		wait_ms = Min(CounterStepWait(now, last_compact, counter_compact_interval),
					  CounterStepWait(now, last_rank, counter_rank_interval));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(wait_ms, 10L), PG_WAIT_EXTENSION);
	}
	proc_exit(0);
}
