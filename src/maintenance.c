/*
 * maintenance.c
 *		The maintenance process of a database: compaction and rollups,
 *		retention, the purge of expired event ids and rate windows, the
 *		ranking refresh top() reads, the syncs into application tables and
 *		the export to ClickHouse, each a step with its own interval.
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
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"

PGDLLEXPORT void CounterMaintenanceMain(Datum arg);

static CounterDbSlot *my_slot = NULL;
static int64 step_items = 0;
static TimestampTz last_sync = 0;
static TimestampTz last_export = 0;
static const char *step_state = "idle";	/* what a step in progress shows */

/*
 * Run the syncs if their step is due: from the main loop, and between the
 * transactions of a long compaction or ranking pass, so that syncs keep
 * their interval whatever else runs.  Outside any transaction.
 */
static void
CounterSyncIfDue(void)
{
	static bool running = false;
	MemoryContext cxt = CurrentMemoryContext;
	TimestampTz now = GetCurrentTimestamp();

	if (running || now - last_sync < (int64) COUNTER_SYNC_STEP_MS * 1000)
		return;
	running = true;
	last_sync = now;
	PG_TRY();
	{
		CounterSyncStepRun();
	}
	PG_CATCH();
	{
		running = false;
		if (counter_shutdown_requested)
			PG_RE_THROW();
		CounterReportFailure("sync", cxt);
	}
	PG_END_TRY();
	running = false;
	MemoryContextSwitchTo(cxt);
	CounterProcState(step_state);
}

/*
 * Run the ClickHouse export if it is due: like the syncs, from the main
 * loop and between the transactions of a long pass.  Outside any
 * transaction.
 */
static void
CounterExportIfDue(void)
{
	static bool running = false;
	MemoryContext cxt = CurrentMemoryContext;
	TimestampTz now = GetCurrentTimestamp();

	if (running || counter_clickhouse_url[0] == '\0' ||
		now - last_export < (int64) counter_clickhouse_interval * 1000)
		return;
	running = true;
	last_export = now;
	PG_TRY();
	{
		CounterExportStepRun();
	}
	PG_CATCH();
	{
		running = false;
		if (counter_shutdown_requested)
			PG_RE_THROW();
		CounterReportFailure("export", cxt);
	}
	PG_END_TRY();
	running = false;
	MemoryContextSwitchTo(cxt);
	CounterProcState(step_state);
}

/* Between two transactions of a long step: the syncs and the export, if due. */
static void
CounterBetweenSteps(void)
{
	CounterSyncIfDue();
	CounterExportIfDue();
}

/* Compaction, rollups, retention and purge, in batches of 10,000 rows. */
static void
CounterCompactStepRun(void)
{
	int64		moved;

	step_state = "compacting";
	CounterProcState(step_state);
	moved = CounterCompactAll(GetCurrentTimestamp(), 10000, 20, CounterReportFailure);
	SpinLockAcquire(&counter_shared->mutex);
	my_slot->compacted_rows += moved;
	SpinLockRelease(&counter_shared->mutex);
	step_items += moved;
}

/* One counter's refresh, in a transaction of its own (see CounterRankStepRun). */
static int64
CounterRankOne(int32 id, TimestampTz t, const int64 *keys, int nkeys)
{
	CounterScope scope;
	CounterDef	def;
	int64		changed = 0;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (CounterLookupById(id, &def))
	{
		CounterEnter(&scope);
		changed = CounterRankRefresh(&def, t, false, keys, nkeys, false);
		CounterLeave(&scope);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	return changed;
}

/*
 * Refresh the ranking of every counter as of now: take the changed keys
 * first, then each counter that has some, or rows that can still cross a
 * window edge, in a transaction of its own.  A counter that fails (or is
 * being refreshed by a session) gets its keys back and is retried next
 * turn; the others go on.
 */
static void
CounterRankStepRun(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	CounterChangedKey *changed;
	int			nchanged;
	int32	   *ids;
	bool	   *idle;
	int			nids = 0;
	TimestampTz t;
	int			i,
				c;

	step_state = "ranking";
	CounterProcState(step_state);
	nchanged = CounterChangedTake(COUNTER_CONSUMER_RANK, 0, &changed);
	t = GetCurrentTimestamp();

	/* the counters, and which of them nothing can have changed */
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	{
		CounterScope scope;
		Oid			argtypes[2] = {TIMESTAMPTZOID, INT8OID};
		Datum		values[2];
		char		nulls[2] = {' ', ' '};
		uint64		epoch = CounterChangedEpoch(COUNTER_CONSUMER_RANK);
		MemoryContext old;

		values[0] = TimestampTzGetDatum(t);
		values[1] = Int64GetDatum((int64) epoch);
		CounterEnter(&scope);
		if (SPI_execute_with_args("SELECT d.id, s.counter_id IS NOT NULL AND s.epoch = $2"
								  " AND s.refreshed_at <= $1 AND s.next_due > $1"
								  " AND (s.spans, s.weights, s.half_life) IS NOT DISTINCT FROM"
								  " (d.trend_spans, d.trend_weights, d.half_life)"
								  " FROM counter.definition d"
								  " LEFT JOIN counter.ranking_state s ON s.counter_id = d.id"
								  " ORDER BY d.id",
								  2, argtypes, values, nulls, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "listing counters for the ranking failed");
		old = MemoryContextSwitchTo(cxt);
		ids = palloc(sizeof(int32) * Max(SPI_processed, 1));
		idle = palloc(sizeof(bool) * Max(SPI_processed, 1));
		MemoryContextSwitchTo(old);
		for (i = 0; i < (int) SPI_processed; i++)
		{
			bool		isnull;

			ids[nids] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
			idle[nids++] = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		}
		CounterLeave(&scope);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);

	for (i = 0, c = 0; i < nids && !counter_shutdown_requested; i++)
	{
		volatile int first;
		int64	   *keys;
		int			nkeys = 0;
		volatile int64 changed_rows = 0;
		volatile bool ok = true;

		while (c < nchanged && changed[c].counter_id < ids[i])
			c++;
		first = c;
		while (c < nchanged && changed[c].counter_id == ids[i])
			c++;
		if (c == first && idle[i])
			continue;
		keys = palloc(sizeof(int64) * Max(c - first, 1));
		for (nkeys = 0; nkeys < c - first; nkeys++)
			keys[nkeys] = changed[first + nkeys].key;
		PG_TRY();
		{
			changed_rows = CounterRankOne(ids[i], t, keys, nkeys);
		}
		PG_CATCH();
		{
			ok = false;
			if (counter_shutdown_requested)
			{
				/* cancelled: every key from this counter on is taken again */
				CounterChangedGiveBack(COUNTER_CONSUMER_RANK, &changed[first],
									   nchanged - first);
				PG_RE_THROW();
			}
			CounterReportFailure(psprintf("ranking counter %d", ids[i]), cxt);
		}
		PG_END_TRY();
		MemoryContextSwitchTo(cxt);
		if (!ok || changed_rows < 0)
			CounterChangedGiveBack(COUNTER_CONSUMER_RANK, &changed[first], c - first);
		else
			step_items += changed_rows;
		pfree(keys);
		CounterBetweenSteps();
	}
	/* what was not reached before a shutdown is taken again after it */
	if (c < nchanged)
		CounterChangedGiveBack(COUNTER_CONSUMER_RANK, &changed[c], nchanged - c);
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

	/*
	 * What maintenance commits can be lost in a crash without harm: rows are
	 * moved atomically or not at all, and the ranking is rebuilt after a
	 * crash anyway.  Not waiting for WAL flushes makes a pass over many
	 * counters (a transaction each) several times faster.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	my_slot = CounterSlotFor(dbid);
	if (my_slot == NULL || !CounterProcAttach(my_slot, COUNTER_ROLE_MAINTENANCE))
		proc_exit(0);
	counter_compact_yield_hook = CounterBetweenSteps;
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "counter maintenance round",
									 ALLOCSET_DEFAULT_SIZES);
	while (!counter_shutdown_requested)
	{
		TimestampTz now;
		long		wait_ms;
		CounterCheck check;

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		CounterReloadIfAsked();
		MemoryContextSwitchTo(loop_cxt);
		check = CounterInstalledNow();
		if (check == COUNTER_CHECK_NO)
		{
			CounterMarkIdle(my_slot);
			break;
		}
		if (check == COUNTER_CHECK_FAILED)
		{
			/* logged; nothing is known, so nothing is done until the next try */
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 1000L, PG_WAIT_EXTENSION);
			MemoryContextReset(loop_cxt);
			continue;
		}
		/* follow the changed keys for the ranking and the syncs there are */
		CounterChangedFollow((counter_rank_interval > 0 ? COUNTER_CONSUMER_RANK : 0) |
							 (CounterSyncsActive() ? COUNTER_CONSUMER_SYNC : 0));
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
		step_state = "syncing";
		CounterGuardedStep("sync", CounterSyncIfDue);
		step_state = "exporting";
		CounterGuardedStep("export", CounterExportIfDue);
		step_state = "idle";
		CounterProcRound(now, step_items);
		CounterProcState("idle");
		pgstat_report_activity(STATE_IDLE, NULL);
		MemoryContextReset(loop_cxt);

		now = GetCurrentTimestamp();
		wait_ms = Min(CounterStepWait(now, last_compact, counter_compact_interval),
					  CounterStepWait(now, last_rank, counter_rank_interval));
		wait_ms = Min(wait_ms, CounterStepWait(now, last_sync, COUNTER_SYNC_STEP_MS));
		if (counter_clickhouse_url[0] != '\0')
			wait_ms = Min(wait_ms, CounterStepWait(now, last_export, counter_clickhouse_interval));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(wait_ms, 10L), PG_WAIT_EXTENSION);
	}
	proc_exit(0);
}
