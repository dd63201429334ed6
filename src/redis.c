/*
 * redis.c
 *		Redis ingestion, the round: each configured master in turn is
 *		connected, recovered, and drained of the counters' keys and the
 *		stream, in short transactions that never stay open across a Redis
 *		call; and the SQL functions counter.redis_status() and
 *		counter.redis_incr_script().  The transport is redis_conn.c's, the
 *		drains redis_keys.c's and redis_stream.c's.
 */
#include "counter_redis.h"

#include <sys/time.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(counter_redis_status);
PG_FUNCTION_INFO_V1(counter_redis_incr_script);

/* Round state of the worker. */
static bool more_pending = false;
static TimestampTz next_round = 0;
static TimestampTz next_expiry = 0;

/*
 * How long the ingest process may sleep before the next round is due: at
 * most fold_ms, less when Redis ingestion is on and its round comes first.
 */
long
CounterRedisWaitMs(long fold_ms)
{
	TimestampTz now = GetCurrentTimestamp();

	if (CounterRedisSeedCount() == 0)
		return fold_ms;
	if (more_pending || next_round <= now)
		return 0;
	return Min(fold_ms, (long) ((next_round - now) / 1000) + 1);
}

/*
 * Load the counters that drain Redis (a prefix or a stream), longest prefix
 * first, in a transaction of its own; into the caller's memory context.
 */
static CounterRedisCounter *
CounterRedisLoadCounters(int *n)
{
	CounterScope scope;
	CounterRedisCounter *counters;
	MemoryContext cxt = CurrentMemoryContext;
	int			rc;
	uint64		i;

	CounterSourceBegin();
	CounterEnter(&scope);
	rc = SPI_execute("SELECT id, name, key_type, redis_prefix, redis_stream"
					 " FROM counter.definition"
					 " WHERE redis_prefix IS NOT NULL OR redis_stream IS NOT NULL"
					 " ORDER BY pg_catalog.octet_length(redis_prefix) DESC NULLS LAST, id",
					 true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "loading counters for Redis failed: %s", SPI_result_code_string(rc));
	counters = MemoryContextAllocZero(cxt, sizeof(CounterRedisCounter) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *prefix = SPI_getvalue(tup, desc, 4);
		char	   *stream = SPI_getvalue(tup, desc, 5);

		counters[i].id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		strlcpy(counters[i].name, SPI_getvalue(tup, desc, 2), sizeof(counters[i].name));
		counters[i].key_type = strcmp(SPI_getvalue(tup, desc, 3), "text") == 0 ?
			COUNTER_KEY_TEXT : COUNTER_KEY_BIGINT;
		counters[i].prefix = prefix ? MemoryContextStrdup(cxt, prefix) : NULL;
		counters[i].prefix_len = prefix ? strlen(prefix) : 0;
		counters[i].stream = stream ? MemoryContextStrdup(cxt, stream) : NULL;
	}
	*n = (int) SPI_processed;
	CounterLeave(&scope);
	CounterSourceCommit();
	return counters;
}

/* Record a caught error: WARNING, worker status, target status. */
static void
CounterRedisCaught(CounterRedisTarget *t, MemoryContext cxt, const char *what)
{
	ErrorData  *edata;
	char		msg[200];

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(cxt);
	edata->elevel = WARNING;
	ThrowErrorData(edata);
	snprintf(msg, sizeof(msg), "%s: %s", what, edata->message);
	if (t)
	{
		t->need_recovery = true;
		CounterRedisError(t, msg);
	}
	CounterProcError("redis", msg);
	FreeErrorData(edata);
}

/* One target's share of a round: connect, recover, drain keys and stream. */
static void
CounterRedisTargetRound(CounterRedisTarget *t, const CounterRedisCounter *counters,
						int ncounters, TimestampTz deadline)
{
	bool		more = false;
	int			i = CounterRedisTargetIndex(t);
	CounterDbSlot *rs = CounterRedisStatusSlot();

	if (t->ctx == NULL)
	{
		if (GetCurrentTimestamp() < t->retry_at)
			return;
		if (!CounterRedisConnect(t))
			return;
	}
	if (t->need_recovery && !CounterRedisRecover(t, counters, ncounters))
		return;
	if (!CounterRedisDrainKeys(t, counters, ncounters, deadline, &more))
		return;
	if (!CounterRedisDrainStreams(t, counters, ncounters, deadline, &more))
		return;
	SpinLockAcquire(&counter_shared->mutex);
	if (i < rs->redis_nmasters)
	{
		rs->redis[i].connected = true;
		rs->redis[i].backlog_keys = t->backlog;
	}
	SpinLockRelease(&counter_shared->mutex);
	if (more)
		more_pending = true;
}

/*
 * One drain round, called by the worker after each fold, outside any
 * transaction.  It starts its own short transactions and never holds one
 * while talking to Redis.  While a backlog remains it sets the worker's
 * latch, so the next round follows at once; otherwise rounds are
 * counter.redis_poll_interval apart.
 */
void
CounterRedisRound(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	CounterRedisCounter *volatile counters = NULL;
	volatile int ncounters = 0;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz deadline;
	volatile int i;
	volatile int guard = 0;

	if (CounterRedisCheckConfig())
	{
		more_pending = false;
		next_round = 0;
	}
	if (CounterRedisSeedCount() == 0)
		return;
	if (!more_pending && now < next_round)
		return;
	/* keep the cadence: a round a little late does not push the next one */
	if (next_round + (int64) counter_redis_poll_interval * 1000 <= now)
		next_round = now + (int64) counter_redis_poll_interval * 1000;
	else
		next_round += (int64) counter_redis_poll_interval * 1000;
	deadline = now + Max((int64) counter_redis_poll_interval, 1000) * 1000;
	more_pending = false;

	PG_TRY();
	{
		int			n = 0;

		counters = CounterRedisLoadCounters(&n);
		ncounters = n;
	}
	PG_CATCH();
	{
		CounterRedisCaught(NULL, cxt, "loading counters");
		return;
	}
	PG_END_TRY();

	/*
	 * Seeds may turn into cluster masters as we go: a target replaced or
	 * removed at i is looked at again at i, so none is skipped (a master
	 * just found connects in this round too).
	 */
	for (i = 0;;)
	{
		int			ntargets;
		CounterRedisTarget *targets = CounterRedisTargets(&ntargets);
		CounterRedisTarget *volatile t;
		char		label[128];

		if (i >= ntargets || CounterRedisStopSoon())
			break;
		t = &targets[i];
		strlcpy(label, t->label, sizeof(label));
		PG_TRY();
		{
			CounterRedisTargetRound(t, counters, ncounters, deadline);
		}
		PG_CATCH();
		{
			CounterRedisCaught(t, cxt, label);
		}
		PG_END_TRY();
		targets = CounterRedisTargets(&ntargets);
		if (i < ntargets && strcmp(targets[i].label, label) == 0)
			i++;
		else if (++guard > 4 * COUNTER_REDIS_MAX_MASTERS)
			break;
	}

	if (now >= next_expiry)
	{
		PG_TRY();
		{
			CounterRedisExpireBatches();
		}
		PG_CATCH();
		{
			CounterRedisCaught(NULL, cxt, "expiring batch ids");
		}
		PG_END_TRY();
		next_expiry = now + 60 * USECS_PER_SEC;
	}
	MemoryContextSwitchTo(cxt);
	if (more_pending)
		SetLatch(MyLatch);
}

/*
 * counter.redis_status(): one row per Redis master the worker drains, from
 * shared memory.  The URL never shows a password.
 */
Datum
counter_redis_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CounterRedisStatus st[COUNTER_REDIS_MAX_MASTERS];
	int			n;
	int			i;
	CounterDbSlot *rs;

	CounterRequireShmem("counter.redis_status()");
	InitMaterializedSRF(fcinfo, 0);
	rs = CounterMySlot();
	if (rs == NULL)
		return (Datum) 0;
	SpinLockAcquire(&counter_shared->mutex);
	n = rs->redis_nmasters;
	memcpy(st, rs->redis, sizeof(CounterRedisStatus) * n);
	SpinLockRelease(&counter_shared->mutex);
	for (i = 0; i < n; i++)
	{
		Datum		values[9];
		bool		nulls[9] = {0};

		values[0] = CStringGetTextDatum(st[i].url);
		values[1] = BoolGetDatum(st[i].connected);
		values[2] = TimestampTzGetDatum(st[i].last_drain);
		nulls[2] = (st[i].last_drain == 0);
		values[3] = Int64GetDatum(st[i].drained_deltas);
		values[4] = Int64GetDatum(st[i].backlog_keys);
		nulls[4] = (st[i].backlog_keys < 0);
		values[5] = Int64GetDatum(st[i].stream_lag);
		nulls[5] = (st[i].stream_lag < 0);
		values[6] = Int64GetDatum(st[i].quarantined);
		values[7] = CStringGetTextDatum(st[i].last_error);
		nulls[7] = (st[i].last_error[0] == '\0');
		values[8] = TimestampTzGetDatum(st[i].last_error_at);
		nulls[8] = (st[i].last_error_at == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * counter.redis_incr_script(): Lua for a deduplicated increment on the
 * Redis side (the seed's SET NX EX + INCR, atomically), for EVAL/EVALSHA.
 */
Datum
counter_redis_incr_script(PG_FUNCTION_ARGS)
{
	static const char *script =
	"-- counter: deduplicated increment.\n"
	"-- KEYS[1] the dedup key, e.g. viewed:{42}:u7:2026-11-30\n"
	"-- KEYS[2] the counter key, e.g. post_views:{42} (or post_views:{42}:s3)\n"
	"-- ARGV[1] seconds the dedup key lives (default 86400)\n"
	"-- ARGV[2] the delta (default 1)\n"
	"-- Returns the new value, or nil for a duplicate.  On a Redis Cluster\n"
	"-- give both keys the same hash tag, as above.\n"
	"local ttl = tonumber(ARGV[1]) or 86400\n"
	"local delta = tonumber(ARGV[2]) or 1\n"
	"if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ttl) then\n"
	"  return redis.call('INCRBY', KEYS[2], delta)\n"
	"end\n"
	"return false\n";

	PG_RETURN_TEXT_P(cstring_to_text(script));
}
