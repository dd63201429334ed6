/*
 * worker.c
 *		The background worker: folds buffered increments into the tables,
 *		drains Redis, compacts slot rows, rolls minute buckets up to hours and
 *		days, refreshes the ranking top() reads, and answers counter.flush().
 *
 * One worker per cluster, connected to counter.database.  Each unit of work
 * is its own short transaction; the loop sleeps on its latch between rounds
 * and never holds a transaction while it waits.  It idles quietly while the
 * server is in recovery or the extension is not installed.  SIGTERM makes it
 * fold once more, and again while client backends are still leaving (a clean
 * shutdown loses nothing), then exit; SIGHUP rereads the settings.  An error in a round is
 * logged, counted in counter.worker_status(), and retried next round: a fold
 * that fails gives its deltas back to the buffer first.
 */
#include "counter.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"

PGDLLEXPORT void CounterWorkerMain(Datum arg);

PG_FUNCTION_INFO_V1(counter_flush);

static volatile sig_atomic_t shutdown_requested = false;
static volatile sig_atomic_t in_long_pass = false;

/* Amounts a fold has taken from the buffer, as arrays for one statement. */
typedef struct FoldBatch
{
	int			n;
	int			cap;
	Datum	   *ids;
	Datum	   *keys;
	Datum	   *buckets;
	Datum	   *deltas;
} FoldBatch;

/* Register the worker; only possible while shared_preload_libraries loads us. */
void
CounterWorkerInit(void)
{
	BackgroundWorker worker;

	if (!process_shared_preload_libraries_in_progress)
		return;
	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "counter");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "CounterWorkerMain");
	snprintf(worker.bgw_name, BGW_MAXLEN, "counter worker");
	snprintf(worker.bgw_type, BGW_MAXLEN, "counter worker");
	RegisterBackgroundWorker(&worker);
}

/*
 * SIGTERM: fold once more and exit.  A compaction or ranking pass in
 * progress is cancelled (it is redone after the restart), so a shutdown
 * never waits for one.
 */
static void
CounterWorkerSigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	shutdown_requested = true;
	if (in_long_pass)
	{
		QueryCancelPending = true;
		InterruptPending = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

/* Publish the worker's state for counter.worker_status(). */
static void
CounterSetState(const char *state)
{
	SpinLockAcquire(&counter_shared->mutex);
	strlcpy(counter_shared->worker_state, state, sizeof(counter_shared->worker_state));
	counter_shared->last_loop = GetCurrentTimestamp();
	SpinLockRelease(&counter_shared->mutex);
	pgstat_report_activity(STATE_RUNNING, state);
}

/* Record an error of a round; the round is retried later. */
static void
CounterRecordError(const char *what, ErrorData *edata)
{
	SpinLockAcquire(&counter_shared->mutex);
	counter_shared->errors++;
	counter_shared->last_error_at = GetCurrentTimestamp();
	snprintf(counter_shared->last_error, sizeof(counter_shared->last_error),
			 "%s: %s", what, edata->message);
	SpinLockRelease(&counter_shared->mutex);
}

/*
 * In a PG_CATCH of a worker round: abort the transaction, log the error as
 * a WARNING and count it in counter.worker_status(); the round is retried
 * later.  cxt is the memory context the round started in.
 */
static void
CounterReportFailure(const char *what, MemoryContext cxt)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	edata->elevel = WARNING;
	ThrowErrorData(edata);
	CounterRecordError(what, edata);
	FreeErrorData(edata);
}

/* Drain callback: append one amount to the batch. */
static void
CounterFoldCollect(void *arg, int32 counter_id, int64 key, TimestampTz bucket,
				   int64 delta)
{
	FoldBatch  *b = arg;

	if (b->n == b->cap)
	{
		b->cap = Max(b->cap * 2, 1024);
		b->ids = repalloc_huge(b->ids, sizeof(Datum) * b->cap);
		b->keys = repalloc_huge(b->keys, sizeof(Datum) * b->cap);
		b->buckets = repalloc_huge(b->buckets, sizeof(Datum) * b->cap);
		b->deltas = repalloc_huge(b->deltas, sizeof(Datum) * b->cap);
	}
	b->ids[b->n] = Int32GetDatum(counter_id);
	b->keys[b->n] = Int64GetDatum(key);
	b->buckets[b->n] = TimestampTzGetDatum(bucket);
	b->deltas[b->n] = Int64GetDatum(delta);
	b->n++;
}

/* Whether counter is installed in this database (inside a transaction). */
static bool
CounterInstalledHere(void)
{
	return OidIsValid(get_extension_oid("counter", true));
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
 * Record a buffered amount that cannot be applied in counter.quarantine and
 * log it (inside the scope, in the fold's transaction).  Committing the
 * fold then takes it out of the buffer: it is kept, not counted.
 */
static void
CounterFoldQuarantine(int32 counter_id, int64 key, TimestampTz bucket,
					  int64 delta, const char *reason)
{
	Oid			argtypes[5] = {INT4OID, INT8OID, TIMESTAMPTZOID, INT8OID, TEXTOID};
	Datum		values[5];
	int			rc;

	values[0] = Int32GetDatum(counter_id);
	values[1] = Int64GetDatum(key);
	values[2] = TimestampTzGetDatum(bucket);
	values[3] = Int64GetDatum(delta);
	values[4] = CStringGetTextDatum(reason);
	rc = SPI_execute_with_args("INSERT INTO counter.quarantine"
							   " (source, origin, item, value, counter_id, key, bucket, delta, reason)"
							   " VALUES ('buffer', pg_catalog.current_database(),"
							   "  $2::pg_catalog.text, $4::pg_catalog.text, $1, $2, $3, $4, $5)",
							   5, argtypes, values, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "recording a quarantined buffered amount failed: %s",
			 SPI_result_code_string(rc));
	ereport(WARNING,
			(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
			 errmsg("counter worker: quarantined a buffered amount of " INT64_FORMAT " for key " INT64_FORMAT " of counter %d: %s",
					delta, key, counter_id, reason),
			 errdetail("The increments were committed but cannot be added to the tally; see counter.quarantine.")));
}

/*
 * Fold one batch amount by amount, each in its own subtransaction: an amount
 * that fails with a data exception (class 22: a key whose total would leave
 * bigint) is recorded in counter.quarantine and logged instead of applied,
 * so one bad amount never holds back the others.  Any other error (a lock
 * timeout, a cancel) still fails the whole fold, which is then retried.
 * Runs inside the scope, after a batch fold failed.
 */
static void
CounterFoldCareful(FoldBatch *b)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile int i;

	for (i = 0; i < b->n; i++)
	{
		BeginInternalSubTransaction(NULL);
		PG_TRY();
		{
			CounterApplyBatch(NULL, 1, &b->ids[i], &b->keys[i], &b->buckets[i],
							  &b->deltas[i], COUNTER_SLOT_FOLD);
			ReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(cxt);
			CurrentResourceOwner = owner;
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(cxt);
			edata = CopyErrorData();
			FlushErrorState();
			RollbackAndReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(cxt);
			CurrentResourceOwner = owner;
			if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_DATA_EXCEPTION)
				ReThrowError(edata);
			CounterFoldQuarantine(DatumGetInt32(b->ids[i]),
								  DatumGetInt64(b->keys[i]),
								  DatumGetTimestampTz(b->buckets[i]),
								  DatumGetInt64(b->deltas[i]), edata->message);
			FreeErrorData(edata);
		}
		PG_END_TRY();
	}
}

/*
 * One fold: move the buffer's pending deltas into the tables in one
 * transaction.  On failure the deltas go back to the buffer and the next
 * fold goes amount by amount (CounterFoldCareful).  Returns the number of
 * amounts folded (-1 on failure).
 *
 * Locals set inside PG_TRY and read in PG_CATCH are volatile: without that
 * the compiler may keep them in registers that longjmp restores, and the
 * give-back of a failed fold would be skipped.
 */
static int
CounterFold(void)
{
	static bool careful = false;
	MemoryContext cxt = CurrentMemoryContext;
	volatile TransactionId xid = InvalidTransactionId;
	FoldBatch  *batch;
	TimestampTz start = GetCurrentTimestamp();
	volatile int result = 0;

	if (pg_atomic_read_u32(&counter_shared->nentries) == 0)
		return 0;
	batch = palloc0(sizeof(FoldBatch));
	batch->cap = 1024;
	batch->ids = palloc(sizeof(Datum) * batch->cap);
	batch->keys = palloc(sizeof(Datum) * batch->cap);
	batch->buckets = palloc(sizeof(Datum) * batch->cap);
	batch->deltas = palloc(sizeof(Datum) * batch->cap);

	PG_TRY();
	{
		CounterScope scope;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		if (CounterInstalledHere())
		{
			MemoryContext xcxt = MemoryContextSwitchTo(cxt);

			xid = GetTopTransactionId();
			result = CounterBufDrain(xid, CounterFoldHorizon(),
									 start - 2 * (int64) counter_flush_interval * 1000,
									 CounterFoldCollect, batch);
			MemoryContextSwitchTo(xcxt);
			if (batch->n > 0)
			{
				CounterEnter(&scope);
				if (careful)
					CounterFoldCareful(batch);
				else
					CounterApplyBatch(NULL, batch->n, batch->ids, batch->keys,
									  batch->buckets, batch->deltas,
									  COUNTER_SLOT_FOLD);
				CounterLeave(&scope);
			}
		}
		PopActiveSnapshot();
		CommitTransactionCommand();
		careful = false;
	}
	PG_CATCH();
	{
		CounterReportFailure("fold", cxt);
		if (TransactionIdIsValid(xid))
			CounterBufUndrain(xid);
		careful = true;
		result = -1;
	}
	PG_END_TRY();

	if (result > 0)
	{
		TimestampTz end = GetCurrentTimestamp();
		int			i;

		for (i = 0; i < batch->n; i++)
		{
			CounterStatsEntry *e = CounterStatsFor(DatumGetInt32(batch->ids[i]));

			if (e)
			{
				pg_atomic_fetch_add_u64(&e->n[COUNTER_STAT_FOLDED], 1);
				pg_atomic_write_u64(&e->last_fold, (uint64) end);
			}
		}
		SpinLockAcquire(&counter_shared->mutex);
		counter_shared->last_fold = end;
		counter_shared->last_fold_ms = (end - start) / 1000.0;
		counter_shared->folds++;
		counter_shared->folded_deltas += batch->n;
		SpinLockRelease(&counter_shared->mutex);
	}
	pfree(batch->ids);
	pfree(batch->keys);
	pfree(batch->buckets);
	pfree(batch->deltas);
	pfree(batch);
	return result;
}

/* One compaction pass for the worker. */
static void
CounterCompactPass(void)
{
	CounterCompactAll(GetCurrentTimestamp(), 10000, 20);
}

/* One ranking refresh for the worker, in its own transaction. */
static void
CounterRankPass(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (CounterInstalledHere())
	{
		CounterScope scope;

		CounterEnter(&scope);
		if (SPI_execute("SELECT counter.refresh_ranking()", false, 0) != SPI_OK_SELECT)
			elog(ERROR, "counter ranking refresh failed");
		CounterLeave(&scope);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * Run one maintenance pass as a worker round: an error is logged as a
 * WARNING, counted in counter.worker_status(), and the pass is retried at
 * its next turn.
 */
static void
CounterGuardedPass(const char *what, void (*pass) (void))
{
	MemoryContext cxt = CurrentMemoryContext;

	if (shutdown_requested)
		return;
	in_long_pass = true;
	PG_TRY();
	{
		pass();
	}
	PG_CATCH();
	{
		in_long_pass = false;
		QueryCancelPending = false;
		if (shutdown_requested)
		{
			/* cancelled for shutdown: not an error worth counting */
			MemoryContextSwitchTo(cxt);
			FlushErrorState();
			AbortCurrentTransaction();
		}
		else
			CounterReportFailure(what, cxt);
	}
	PG_END_TRY();
	in_long_pass = false;
	QueryCancelPending = false;	/* a SIGTERM that came as the pass ended */
}

/* Whether this server can run transactions that write (not a standby). */
static bool
CounterCanWrite(void)
{
	return !RecoveryInProgress();
}

/* Entry point of the background worker. */
void
CounterWorkerMain(Datum arg)
{
	MemoryContext loop_cxt;
	TimestampTz last_compact = 0;
	TimestampTz last_rank = 0;
	TimestampTz last_evict = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, CounterWorkerSigterm);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(counter_database, NULL, 0);
	pgstat_report_appname("counter worker");

	SpinLockAcquire(&counter_shared->mutex);
	counter_shared->worker_pid = MyProcPid;
	counter_shared->worker_latch = MyLatch;
	SpinLockRelease(&counter_shared->mutex);
	ereport(LOG, (errmsg("counter worker started in database \"%s\"", counter_database)));

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "counter worker loop",
									 ALLOCSET_DEFAULT_SIZES);
	while (!shutdown_requested)
	{
		uint64		requested = pg_atomic_read_u64(&counter_shared->fold_requested);
		TimestampTz now;
		bool		ready;

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		MemoryContextSwitchTo(loop_cxt);

		ready = CounterCanWrite();
		if (ready)
		{
			StartTransactionCommand();
			ready = CounterInstalledHere();
			CommitTransactionCommand();
			MemoryContextSwitchTo(loop_cxt);
		}
		if (ready)
		{
			CounterSetState("folding");
			if (CounterFold() >= 0)
			{
				pg_atomic_write_u64(&counter_shared->fold_done, requested);
				ConditionVariableBroadcast(&counter_shared->fold_cv);
			}
			CounterSetState("draining redis");
			CounterRedisRound();
			now = GetCurrentTimestamp();
			if (counter_compact_interval > 0 &&
				now - last_compact >= (int64) counter_compact_interval * 1000)
			{
				CounterSetState("compacting");
				CounterGuardedPass("compaction", CounterCompactPass);
				last_compact = now;
			}
			if (now - last_evict >= 10 * USECS_PER_SEC)
			{
				/* idle buffer entries and cached totals older than a minute */
				CounterBufEvict(60 * USECS_PER_SEC);
				last_evict = now;
			}
			if (counter_rank_interval > 0 &&
				now - last_rank >= (int64) counter_rank_interval * 1000)
			{
				CounterSetState("ranking");
				CounterGuardedPass("ranking", CounterRankPass);
				last_rank = now;
			}
			CounterSetState("idle");
		}
		else
			CounterSetState(RecoveryInProgress() ? "waiting for recovery to end" :
							"waiting for CREATE EXTENSION counter");
		pgstat_report_activity(STATE_IDLE, NULL);
		MemoryContextReset(loop_cxt);

		/* a flush() request arriving during the round is served at once */
		if (pg_atomic_read_u64(&counter_shared->fold_requested) != requested)
			continue;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 ready ? CounterRedisWaitMs(counter_flush_interval) : 1000L,
						 PG_WAIT_EXTENSION);
	}

	/*
	 * SIGTERM: fold now.  In a server shutdown client backends are leaving
	 * at the same moment, so keep folding what they commit while any remain,
	 * for at most a second; then exit.  Outside a shutdown whatever is
	 * committed later waits in the buffer for the restarted worker.
	 */
	CounterSetState("stopping");
	if (CounterCanWrite())
	{
		int			folded = Max(CounterFold(), 0);
		int			round;

		for (round = 0; round < 10 && CountDBConnections(InvalidOid) > 0; round++)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 100L, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			folded += Max(CounterFold(), 0);
		}
		ereport(LOG,
				(errmsg("counter worker stopping; folded %d buffered deltas on the way out", folded)));
	}
	CounterRedisShutdown();
	SpinLockAcquire(&counter_shared->mutex);
	counter_shared->worker_pid = 0;
	counter_shared->worker_latch = NULL;
	strlcpy(counter_shared->worker_state, "stopped", sizeof(counter_shared->worker_state));
	SpinLockRelease(&counter_shared->mutex);
	ConditionVariableBroadcast(&counter_shared->fold_cv);
	proc_exit(1);			/* 1: the postmaster starts us again */
}

/*
 * counter.flush(): ask the worker to fold now and wait until it has.  What
 * the caller's own transaction has not committed is not folded.
 */
Datum
counter_flush(PG_FUNCTION_ARGS)
{
	uint64		target;
	Latch	   *latch;
	pid_t		pid;
	TimestampTz deadline = GetCurrentTimestamp() + 60 * USECS_PER_SEC;

	CounterRequireShmem("counter.flush()");
	SpinLockAcquire(&counter_shared->mutex);
	pid = counter_shared->worker_pid;
	latch = counter_shared->worker_latch;
	SpinLockRelease(&counter_shared->mutex);
	if (pid == 0 || latch == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the counter worker is not running"),
				 errhint("Check counter.database and the server log; counter.worker_status() shows the worker's state.")));

	target = pg_atomic_add_fetch_u64(&counter_shared->fold_requested, 1);
	SetLatch(latch);
	ConditionVariablePrepareToSleep(&counter_shared->fold_cv);
	while (pg_atomic_read_u64(&counter_shared->fold_done) < target)
	{
		if (GetCurrentTimestamp() > deadline)
		{
			ConditionVariableCancelSleep();
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("counter worker did not fold within 60 seconds"),
					 errhint("counter.worker_status() shows the worker's state and last error.")));
		}
		SpinLockAcquire(&counter_shared->mutex);
		latch = counter_shared->worker_latch;
		SpinLockRelease(&counter_shared->mutex);
		if (latch)
			SetLatch(latch);
		(void) ConditionVariableTimedSleep(&counter_shared->fold_cv, 100,
										   PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	PG_RETURN_VOID();
}

