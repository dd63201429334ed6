/*
 * stats.c
 *		counter.stats_raw() behind the counter.stats view, and
 *		counter.worker_status().  Both read shared memory only.
 */
#include "counter.h"

#include "funcapi.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(counter_stats_raw);
PG_FUNCTION_INFO_V1(counter_worker_status);

/* One row per counter that has statistics: counts per path, pending, folds. */
Datum
counter_stats_raw(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int32	   *ids;
	int			nids = 0;
	int			cap = 64;
	int			i;

	CounterRequireShmem("counter.stats");
	InitMaterializedSRF(fcinfo, 0);
	ids = palloc(sizeof(int32) * cap);
	CounterStatsIds(&ids, &nids, &cap);
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
		CounterBufCounterTotals(ids[i], &pending, &keys);
		values[COUNTER_STAT_COUNT + 1] = Int64GetDatum(pending);
		values[COUNTER_STAT_COUNT + 2] = Int64GetDatum(keys);
		last = pg_atomic_read_u64(&e->last_fold);
		values[COUNTER_STAT_COUNT + 3] = TimestampTzGetDatum((TimestampTz) last);
		nulls[COUNTER_STAT_COUNT + 3] = (last == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* The worker's state, last round, folds, compaction and errors. */
Datum
counter_worker_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[13];
	bool		nulls[13] = {0};
	CounterShared snap;

	CounterRequireShmem("counter.worker_status()");
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	SpinLockAcquire(&counter_shared->mutex);
	memcpy(&snap, counter_shared, sizeof(snap));
	SpinLockRelease(&counter_shared->mutex);

	values[0] = Int32GetDatum(snap.worker_pid);
	nulls[0] = (snap.worker_pid == 0);
	values[1] = CStringGetTextDatum(snap.worker_state[0] ? snap.worker_state : "not started");
	values[2] = TimestampTzGetDatum(snap.last_loop);
	nulls[2] = (snap.last_loop == 0);
	values[3] = TimestampTzGetDatum(snap.last_fold);
	nulls[3] = (snap.last_fold == 0);
	values[4] = Float8GetDatum(snap.last_fold_ms);
	nulls[4] = (snap.last_fold == 0);
	values[5] = Int64GetDatum(snap.folds);
	values[6] = Int64GetDatum(snap.folded_deltas);
	values[7] = Int64GetDatum(snap.compacted_rows);
	values[8] = Int64GetDatum(snap.errors);
	values[9] = CStringGetTextDatum(snap.last_error);
	nulls[9] = (snap.last_error[0] == '\0');
	values[10] = TimestampTzGetDatum(snap.last_error_at);
	nulls[10] = (snap.last_error_at == 0);
	values[11] = Int32GetDatum((int32) pg_atomic_read_u32(&counter_shared->nentries));
	values[12] = Int32GetDatum(counter_buffer_keys);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
