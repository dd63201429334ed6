/*
 * ingest.c
 *		The ingest process of a database: folds the shared buffer of its
 *		buffered counters into the tables, drains its sources (Redis keys
 *		and streams, Kafka topics), and answers counter.flush().
 *
 * One per served database, started by the launcher.  Rounds are short and
 * bounded: a fold every counter.flush_interval (at once for a flush()),
 * then the sources until the round's deadline, with a fold between any two
 * source batches that finds one due (counter_source_yield_hook), so no
 * source holds folds back by more than one batch.  Maintenance runs in a
 * process of its own and never delays a fold.  Each unit of work is its own
 * short transaction, never held open while waiting on a network call.
 * SIGTERM makes it fold once more, and again while client backends of its
 * database are still leaving (a clean shutdown loses nothing), then exit.
 */
#include "counter.h"


#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/utility.h"
#include "storage/procarray.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

PGDLLEXPORT void CounterIngestMain(Datum arg);

PG_FUNCTION_INFO_V1(counter_flush);

static CounterDbSlot *my_slot = NULL;
static TimestampTz last_fold_at = 0;	/* start of the last fold */
static int64 round_items = 0;	/* amounts folded in this round */
static char *my_dbname = NULL;	/* this database's name, for quarantine rows */

/* Amounts a fold has taken from the buffer, as items of a source. */
typedef struct FoldBatch
{
	int			n;
	int			cap;
	CounterSourceItem *items;
} FoldBatch;

/* Drain callback: append one amount to the batch. */
static void
CounterFoldCollect(void *arg, int32 counter_id, int64 key, TimestampTz bucket,
				   int64 delta)
{
	FoldBatch  *b = arg;
	CounterSourceItem *it;

	if (b->n == b->cap)
	{
		b->cap = Max(b->cap * 2, 1024);
		b->items = repalloc_huge(b->items, sizeof(CounterSourceItem) * b->cap);
	}
	it = &b->items[b->n++];
	memset(it, 0, sizeof(*it));
	it->counter_id = counter_id;
	it->key = key;
	it->bucket = bucket;
	it->delta = delta;
	it->accepted = true;		/* checked when it was incremented */
	/* what a quarantine row would show: the key and the amount */
	it->item = psprintf(INT64_FORMAT, key);
	it->item_len = strlen(it->item);
	it->value = psprintf(INT64_FORMAT, delta);
	it->value_len = strlen(it->value);
}

/*
 * The oldest xid a snapshot of this database may still not see: the data
 * horizon of counter.tally, which long transactions of other databases do
 * not hold back (in a transaction).
 */
static TransactionId
CounterFoldHorizon(void)
{
	Oid			nsp = get_namespace_oid(COUNTER_SCHEMA, false);
	Relation	rel = table_open(get_relname_relid("tally", nsp), AccessShareLock);
	TransactionId horizon = GetOldestNonRemovableTransactionId(rel);

	table_close(rel, AccessShareLock);
	return horizon;
}

/*
 * One fold: move the buffer's pending deltas into the tables in one
 * transaction, through the apply every source shares: an amount that
 * cannot be applied (a key whose total would leave bigint) is quarantined
 * alone.  On any other failure every amount goes back to the buffer, for
 * the next fold.  Returns the number of amounts folded (-1 on failure).
 *
 * Locals set inside PG_TRY and read in PG_CATCH are volatile: without that
 * the compiler may keep them in registers that longjmp restores, and the
 * give-back of a failed fold would be skipped.
 */
static int
CounterFold(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile TransactionId xid = InvalidTransactionId;
	FoldBatch  *batch;
	TimestampTz start = GetCurrentTimestamp();
	volatile int result = 0;

	if (pg_atomic_read_u32(&counter_shared->nentries) == 0)
	{
		SpinLockAcquire(&counter_shared->mutex);
		my_slot->last_fold = start;
		SpinLockRelease(&counter_shared->mutex);
		return 0;
	}
	CounterProcState("folding");
	batch = palloc0(sizeof(FoldBatch));
	batch->cap = 1024;
	batch->items = palloc(sizeof(CounterSourceItem) * batch->cap);

	PG_TRY();
	{
		CounterSourceBegin();
		if (CounterInstalledHere())
		{
			MemoryContext xcxt = MemoryContextSwitchTo(cxt);

			xid = GetTopTransactionId();
			/* a fold 1.5 intervals old settles even under an old snapshot */
			result = CounterBufDrain(xid, CounterFoldHorizon(),
									 start - (int64) counter_flush_interval * 1500,
									 CounterFoldCollect, batch);
			if (batch->n > 0)
				CounterSourceApply("buffer", my_dbname, batch->items, batch->n,
								   COUNTER_SLOT_FOLD);
			MemoryContextSwitchTo(xcxt);
		}
		CounterSourceCommit();
	}
	PG_CATCH();
	{
		CounterReportFailure("fold", cxt);
		if (TransactionIdIsValid(xid))
			CounterBufUndrain(xid);
		result = -1;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);

	if (result >= 0)
	{
		TimestampTz end = GetCurrentTimestamp();
		int			i;

		for (i = 0; i < batch->n; i++)
		{
			CounterStatsEntry *e = CounterStatsFor(batch->items[i].counter_id);

			if (e && batch->items[i].reason == NULL)
			{
				pg_atomic_fetch_add_u64(&e->n[COUNTER_STAT_FOLDED], 1);
				pg_atomic_write_u64(&e->last_fold, (uint64) end);
			}
		}
		SpinLockAcquire(&counter_shared->mutex);
		my_slot->last_fold = start;
		if (result > 0)
		{
			my_slot->last_fold_ms = (end - start) / 1000.0;
			my_slot->folds++;
			my_slot->folded_deltas += batch->n;
		}
		SpinLockRelease(&counter_shared->mutex);
	}
	pfree(batch->items);
	pfree(batch);
	return result;
}

/* Whether a fold is due: its interval passed, or a flush() waits for one. */
static bool
CounterFoldDue(uint64 *requested)
{
	*requested = pg_atomic_read_u64(&my_slot->fold_requested);
	return *requested != pg_atomic_read_u64(&my_slot->fold_done) ||
		GetCurrentTimestamp() - last_fold_at >= (int64) counter_flush_interval * 1000;
}

/* Fold now, and tell the flush() calls waiting for it. */
static void
CounterFoldAndAnswer(uint64 requested)
{
	int			folded;

	last_fold_at = GetCurrentTimestamp();
	folded = CounterFold();
	if (folded >= 0)
	{
		round_items += folded;
		pg_atomic_write_u64(&my_slot->fold_done, requested);
		ConditionVariableBroadcast(&my_slot->fold_cv);
	}
}

/* Between two source batches: fold if one is due (outside any transaction). */
static void
CounterIngestYield(void)
{
	uint64		requested;

	if (!IsTransactionState() && CounterFoldDue(&requested))
		CounterFoldAndAnswer(requested);
}

/*
 * Take one of the counter.max_databases places for this database (it has
 * the extension); false, with the database marked unserved, when all are
 * taken.
 */
static bool
CounterIngestTakePlace(void)
{
	int			served = 0;
	bool		ok;
	int			i;

	SpinLockAcquire(&counter_shared->mutex);
	for (i = 0; i < COUNTER_MAX_DATABASES; i++)
		if (counter_shared->dbs[i].state == COUNTER_DB_SERVED &&
			&counter_shared->dbs[i] != my_slot)
			served++;
	ok = served < counter_max_databases;
	if (my_slot->dbid == MyDatabaseId && my_slot->state != COUNTER_DB_FREE)
	{
		my_slot->state = ok ? COUNTER_DB_SERVED : COUNTER_DB_UNSERVED;
		my_slot->state_at = GetCurrentTimestamp();
		if (ok)
			my_slot->why[0] = '\0';
		else
			snprintf(my_slot->why, sizeof(my_slot->why),
					 "counter.max_databases (%d) databases are served already.",
					 counter_max_databases);
	}
	SpinLockRelease(&counter_shared->mutex);
	CounterWakeLauncher();
	return ok;
}

/*
 * On SIGTERM: fold now.  In a server shutdown client backends are leaving
 * at the same moment, so keep folding what they commit while any of this
 * database remain, for at most a second.
 */
static void
CounterIngestStop(void)
{
	int			folded;
	int			round;

	CounterProcState("stopping");
	folded = Max(CounterFold(), 0);
	for (round = 0; round < 10 && CountDBConnections(MyDatabaseId) > 0; round++)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		folded += Max(CounterFold(), 0);
	}
	ConditionVariableBroadcast(&my_slot->fold_cv);
	ereport(LOG,
			(errmsg("counter ingest process stopping; folded %d buffered deltas on the way out",
					folded)));
	CounterRedisShutdown();
	CounterKafkaShutdown();
}

/* Entry point of a database's ingest process; arg is the database's oid. */
void
CounterIngestMain(Datum arg)
{
	Oid			dbid = DatumGetObjectId(arg);
	MemoryContext loop_cxt;
	TimestampTz last_evict = 0;
	TimestampTz last_check = 0;
	char	   *dbname;

	CounterWorkerSignals();
	BackgroundWorkerInitializeConnectionByOid(dbid, InvalidOid, 0);
	pgstat_report_appname("counter ingest");
	my_slot = CounterSlotFor(dbid);
	if (my_slot == NULL || !CounterProcAttach(my_slot, COUNTER_ROLE_INGEST))
		proc_exit(0);
	StartTransactionCommand();
	dbname = MemoryContextStrdup(TopMemoryContext, get_database_name(dbid));
	CommitTransactionCommand();
	my_dbname = dbname;
	switch (CounterInstalledNow())
	{
		case COUNTER_CHECK_NO:
			CounterMarkIdle(my_slot);
			proc_exit(0);
			break;
		case COUNTER_CHECK_FAILED:
			/* still starting: the launcher starts another in a while */
			proc_exit(0);
			break;
		case COUNTER_CHECK_YES:
			break;
	}
	if (!CounterIngestTakePlace())
	{
		ereport(LOG,
				(errmsg("counter: database \"%s\" is not served: counter.max_databases (%d) databases are served already",
						dbname, counter_max_databases),
				 errhint("Raise counter.max_databases (and max_worker_processes), or drop the extension where it is not used.")));
		proc_exit(0);
	}
	ereport(LOG, (errmsg("counter ingest process serving database \"%s\"", dbname)));

	counter_source_yield_hook = CounterIngestYield;
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "counter ingest round",
									 ALLOCSET_DEFAULT_SIZES);
	while (!counter_shutdown_requested)
	{
		TimestampTz start;
		uint64		requested;
		long		wait_ms;
		pgsocket	kafka_fd;

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		CounterReloadIfAsked();
		MemoryContextSwitchTo(loop_cxt);
		start = GetCurrentTimestamp();

		if (CounterFoldDue(&requested))
			CounterFoldAndAnswer(requested);
		CounterProcState("draining sources");
		CounterRedisRound();
		CounterIngestYield();
		CounterKafkaRound();
		CounterIngestYield();

		if (start - last_evict >= 10 * USECS_PER_SEC)
		{
			/* idle buffer entries and cached totals older than a minute */
			CounterBufEvict(60 * USECS_PER_SEC);
			last_evict = start;
		}
		if (start - last_check >= 5 * USECS_PER_SEC)
		{
			last_check = start;
			if (CounterInstalledNow() == COUNTER_CHECK_NO)
			{
				ereport(LOG, (errmsg("counter ingest process: the extension was dropped; stopping")));
				CounterMarkIdle(my_slot);
				break;
			}
		}
		CounterProcRound(start, round_items);
		round_items = 0;
		CounterProcState("idle");
		pgstat_report_activity(STATE_IDLE, NULL);
		MemoryContextReset(loop_cxt);

		/* a flush() request arriving during the round is served at once */
		if (CounterFoldDue(&requested))
			continue;
		wait_ms = (long) ((last_fold_at + (int64) counter_flush_interval * 1000 -
						   GetCurrentTimestamp()) / 1000);
		wait_ms = Min(wait_ms, CounterRedisWaitMs(counter_flush_interval));
		wait_ms = Max(1, CounterKafkaWaitMs(wait_ms));
		/* Kafka messages arriving end the wait */
		kafka_fd = CounterKafkaWaitFd();
		(void) WaitLatchOrSocket(MyLatch,
								 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH |
								 (kafka_fd != PGINVALID_SOCKET ? WL_SOCKET_READABLE : 0),
								 kafka_fd, wait_ms, PG_WAIT_EXTENSION);
	}
	CounterIngestStop();
	proc_exit(0);
}

/*
 * counter.flush(): have this database's ingest process fold now and wait
 * until it has.  What the caller's own transaction has not committed is not
 * folded.
 */
Datum
counter_flush(PG_FUNCTION_ARGS)
{
	CounterDbSlot *slot;
	uint64		target;
	TimestampTz deadline = GetCurrentTimestamp() + 60 * USECS_PER_SEC;

	CounterRequireShmem("counter.flush()");
	/* a standby folds nothing: its counts come from the primary's folds */
	PreventCommandDuringRecovery("counter.flush()");
	slot = CounterMySlot();
	if (!CounterBufferingHere())
		CounterRequireBufferingHere();	/* raises the error saying why */
	target = pg_atomic_add_fetch_u64(&slot->fold_requested, 1);
	ConditionVariablePrepareToSleep(&slot->fold_cv);
	while (pg_atomic_read_u64(&slot->fold_done) < target)
	{
		Latch	   *latch;

		if (GetCurrentTimestamp() > deadline)
		{
			ConditionVariableCancelSleep();
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("the counter ingest process did not fold within 60 seconds"),
					 errhint("counter.worker_status() shows the process's state and last error.")));
		}
		if (!CounterBufferingHere())
		{
			ConditionVariableCancelSleep();
			CounterRequireBufferingHere();
		}
		SpinLockAcquire(&counter_shared->mutex);
		latch = slot->dbid == MyDatabaseId ? slot->proc[COUNTER_ROLE_INGEST].latch : NULL;
		SpinLockRelease(&counter_shared->mutex);
		if (latch)
			SetLatch(latch);
		(void) ConditionVariableTimedSleep(&slot->fold_cv, 100, PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	PG_RETURN_VOID();
}
