/*
 * stats.c
 *		counter.stats_raw() behind the counter.stats view,
 *		counter.worker_status() and counter.buffer_usage().  They read
 *		shared memory only.
 */
#include "counter.h"

#include "funcapi.h"
#include "miscadmin.h"
#include "commands/dbcommands.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(counter_stats_raw);
PG_FUNCTION_INFO_V1(counter_worker_status);
PG_FUNCTION_INFO_V1(counter_buffer_usage);

/* One row per counter that has statistics: counts per path, pending, folds. */
Datum
counter_stats_raw(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int32	   *ids;
	int			nids = 0;
	int			cap = 64;
	int			i;
	CounterDbSlot *slot;
	TimestampTz db_fold = 0;
	int64	   *pendings;
	int64	   *nkeys;

	CounterRequireShmem("counter.stats");
	slot = CounterSlotFor(MyDatabaseId);
	if (slot)
	{
		SpinLockAcquire(&counter_shared->mutex);
		if (slot->dbid == MyDatabaseId)
			db_fold = slot->last_fold;
		SpinLockRelease(&counter_shared->mutex);
	}
	InitMaterializedSRF(fcinfo, 0);
	ids = palloc(sizeof(int32) * cap);
	CounterStatsIds(&ids, &nids, &cap);
	pendings = palloc(sizeof(int64) * Max(nids, 1));
	nkeys = palloc(sizeof(int64) * Max(nids, 1));
	CounterBufCounterTotals(ids, nids, pendings, nkeys);
	for (i = 0; i < nids; i++)
	{
		CounterStatsEntry *e = CounterStatsFor(ids[i]);
		Datum		values[COUNTER_STAT_COUNT + 4];
		bool		nulls[COUNTER_STAT_COUNT + 4] = {0};
		int64		pending;
		int64		keys;
		uint64		last;
		int			j;

		if (e == NULL)
			continue;
		/* counter_id, one column per CounterStat, pending, pending_keys, last_fold */
		values[0] = Int32GetDatum(ids[i]);
		for (j = 0; j < COUNTER_STAT_COUNT; j++)
			values[1 + j] = Int64GetDatum((int64) pg_atomic_read_u64(&e->n[j]));
		pending = pendings[i];
		keys = nkeys[i];
		values[COUNTER_STAT_COUNT + 1] = Int64GetDatum(pending);
		values[COUNTER_STAT_COUNT + 2] = Int64GetDatum(keys);
		last = pg_atomic_read_u64(&e->last_fold);

		/*
		 * A fold carries every pending delta committed before it started, so
		 * a buffered counter is folded up to the database's last fold.
		 */
		if (last != 0 || pending != 0 || pg_atomic_read_u64(&e->n[COUNTER_STAT_BUFFERED]) != 0)
			last = Max(last, (uint64) db_fold);
		values[COUNTER_STAT_COUNT + 3] = TimestampTzGetDatum((TimestampTz) last);
		nulls[COUNTER_STAT_COUNT + 3] = (last == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* Append one row of counter.worker_status() for a process's status. */
static void
CounterStatusRow(ReturnSetInfo *rsinfo, const CounterProcStatus *st, Oid dbid,
				 const char *role, const char *slot_state)
{
	Datum		values[12];
	bool		nulls[12] = {0};
	char	   *dbname = OidIsValid(dbid) ? get_database_name(dbid) : NULL;

	values[0] = Int32GetDatum(st->pid);
	nulls[0] = (st->pid == 0);
	if (dbname)
		values[1] = DirectFunctionCall1(namein, CStringGetDatum(dbname));
	nulls[1] = (dbname == NULL);
	values[2] = CStringGetTextDatum(role);
	values[3] = CStringGetTextDatum(st->pid != 0 ? st->state : slot_state);
	values[4] = TimestampTzGetDatum(st->started_at);
	nulls[4] = (st->pid == 0 || st->started_at == 0);
	values[5] = TimestampTzGetDatum(st->round_at);
	nulls[5] = (st->round_at == 0);
	values[6] = Float8GetDatum(st->round_ms);
	nulls[6] = (st->round_at == 0);
	values[7] = Int64GetDatum(st->rounds);
	values[8] = Int64GetDatum(st->items);
	values[9] = Int64GetDatum(st->errors);
	values[10] = CStringGetTextDatum(st->error);
	nulls[10] = (st->error[0] == '\0');
	values[11] = TimestampTzGetDatum(st->error_at);
	nulls[11] = (st->error_at == 0);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * counter.worker_status(): one row per background process: the launcher,
 * and the ingest and maintenance process of every database that is served
 * or waits to be (idle databases, without the extension, are left out).
 * A process that is not running shows why in its state.
 */
Datum
counter_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CounterProcStatus launcher;
	CounterDbSlot *slots;
	int			i;

	CounterRequireShmem("counter.worker_status()");
	InitMaterializedSRF(fcinfo, 0);
	slots = palloc(sizeof(CounterDbSlot) * COUNTER_MAX_DATABASES);
	SpinLockAcquire(&counter_shared->mutex);
	launcher = counter_shared->launcher;
	memcpy(slots, counter_shared->dbs, sizeof(CounterDbSlot) * COUNTER_MAX_DATABASES);
	SpinLockRelease(&counter_shared->mutex);

	CounterStatusRow(rsinfo, &launcher, InvalidOid, "launcher", "not running");
	for (i = 0; i < COUNTER_MAX_DATABASES; i++)
	{
		CounterDbSlot *slot = &slots[i];
		char	   *state;
		int			r;

		if (slot->state == COUNTER_DB_FREE || slot->state == COUNTER_DB_IDLE)
			continue;
		state = slot->why[0] ?
			psprintf("%s: %s", CounterDbStateName(slot->state), slot->why) :
			pstrdup(CounterDbStateName(slot->state));
		for (r = 0; r < COUNTER_ROLES; r++)
			CounterStatusRow(rsinfo, &slot->proc[r], slot->dbid,
							 r == COUNTER_ROLE_INGEST ? "ingest" : "maintenance", state);
	}
	return (Datum) 0;
}

/* counter.buffer_usage(): entries of the shared buffer in use, and the most. */
Datum
counter_buffer_usage(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {0};

	CounterRequireShmem("counter.buffer_usage()");
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = Int32GetDatum((int32) pg_atomic_read_u32(&counter_shared->nentries));
	values[1] = Int32GetDatum(counter_buffer_keys);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
