/*
 * compact.c
 *		Compaction: slot rows merged into one row per minute, minutes rolled
 *		up to hours and days by retention, days folded into a key's base
 *		row; expired event ids and stale rate windows purged.  Run by the
 *		worker every counter.compact_interval, or now by counter.compact().
 *
 * Each step moves rows of one kind whose bucket is older than a cut-off,
 * found through the partial indexes on counter.tally, so a pass reads only
 * the rows that are due.  Totals never change; windows change only at the
 * resolution the retention allows.
 */
#include "counter.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(counter_compact);

/*
 * Compaction steps, in order.  Each moves rows of one kind (by slot,
 * matching the partial indexes on counter.tally) whose bucket is older than
 * a cut-off into rows of the next kind:
 *	1. writers' and folded minute rows (2 minutes old) -> one row per minute;
 *	2. minute rows older than the counter's minute_retention -> hour rows;
 *	3. hour rows older than its hour_retention -> day rows;
 *	4. day rows older than its day_retention (0: never) -> the key's base row
 *	   (bucket -infinity), which keeps the all-time total.
 * Cut-offs are whole UTC units; `d` is the counter's definition row.  A
 * counter that exports to ClickHouse rolls up no minute at or after its
 * export frontier or its oldest backfill note (export.c): those are not in
 * ClickHouse yet.
 */
#define COUNTER_EXPORT_HOLD \
	"CASE WHEN d.clickhouse_table IS NULL THEN $1 - d.minute_retention" \
	" ELSE least($1 - d.minute_retention, coalesce((SELECT least(e.frontier," \
	"  (SELECT min(n.minute) FROM counter.export_note n WHERE n.counter_id = d.id))" \
	"  FROM counter.export e WHERE e.counter_id = d.id" \
	"  AND e.clickhouse_table = d.clickhouse_table AND e.frontier IS NOT NULL)," \
	"  '-infinity')) END"

typedef struct CompactStep
{
	const char *pred;
	const char *cutoff;
	const char *target_bucket;
	int16		target_slot;
} CompactStep;

static const CompactStep compact_steps[] = {
	{"(t.slot >= 0 OR t.slot = -4)",
		"date_trunc('minute', $1 - interval '2 minutes', 'UTC')",
	"date_trunc('minute', bucket, 'UTC')", COUNTER_SLOT_MINUTE},
	{"t.slot = -1", "date_trunc('hour', " COUNTER_EXPORT_HOLD ", 'UTC')",
	"date_trunc('hour', bucket, 'UTC')", COUNTER_SLOT_HOUR},
	{"t.slot = -2", "date_trunc('day', $1 - d.hour_retention, 'UTC')",
	"date_trunc('day', bucket, 'UTC')", COUNTER_SLOT_DAY},
	{"t.slot = -3 AND d.day_retention > '0'", "date_trunc('day', $1 - d.day_retention, 'UTC')",
	"'-infinity'::timestamptz", COUNTER_SLOT_DAY},
};

/*
 * One compaction step of one counter in the current transaction (inside the
 * scope), as of `now`: move up to `limit` rows matching the step into its
 * target rows.  A rollup (every step but the first, which only merges slot
 * rows of a minute) changes the key's windows and decay: its keys are noted
 * as changed, so the ranking follows.  Returns the rows moved.
 */
static int64
CounterCompactStep(const CompactStep *step, int32 counter_id, TimestampTz now, int limit)
{
	StringInfoData sql;
	Oid			argtypes[4] = {TIMESTAMPTZOID, INT2OID, INT4OID, INT4OID};
	Datum		values[4];
	int			rc;
	int64		moved = 0;
	uint64		i;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "WITH moved AS ("
					 "  DELETE FROM counter.tally WHERE ctid = ANY (ARRAY("
					 "   SELECT t.ctid FROM counter.definition d JOIN counter.tally t"
					 "   ON t.counter_id = d.id AND %s"
					 "   AND t.bucket > '-infinity' AND t.bucket < %s"
					 "   WHERE d.id = $4"
					 "   LIMIT $3))"
					 "  RETURNING counter_id, key, %s AS b, value),"
					 " ins AS ("
					 "  INSERT INTO counter.tally AS t (counter_id, key, bucket, slot, value)"
					 "  SELECT counter_id, key, b, $2, sum(value)::int8 FROM moved"
					 "  GROUP BY counter_id, key, b ORDER BY counter_id, key, b"
					 "  ON CONFLICT (counter_id, key, bucket, slot)"
					 "  DO UPDATE SET value = t.value + excluded.value)"
					 " SELECT key, count(*) FROM moved GROUP BY key",
					 step->pred, step->cutoff, step->target_bucket);
	values[0] = TimestampTzGetDatum(now);
	values[1] = Int16GetDatum(step->target_slot);
	values[2] = Int32GetDatum(limit);
	values[3] = Int32GetDatum(counter_id);
	rc = SPI_execute_with_args(sql.data, 4, argtypes, values, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "counter compaction failed: %s", SPI_result_code_string(rc));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int64		key = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													  SPI_tuptable->tupdesc, 1, &isnull));

		moved += DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
											 SPI_tuptable->tupdesc, 2, &isnull));
		if (step != &compact_steps[0])
			CounterChangedNote(counter_id, key);
	}
	pfree(sql.data);
	return moved;
}

/*
 * The counters with rows due for a step as of now, in the current
 * transaction (inside the scope): their ids, and in *due a bit per step.
 * One probe of a partial index per counter and step, so a pass over many
 * counters with little to do costs little.
 */
static int32 *
CounterCompactDue(TimestampTz now, int *n, int **due, MemoryContext cxt)
{
	StringInfoData sql;
	Oid			argtypes[1] = {TIMESTAMPTZOID};
	Datum		values[1];
	int32	   *ids;
	uint64		i;
	int			j;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "SELECT id, due FROM (SELECT d.id, 0");
	for (j = 0; j < lengthof(compact_steps); j++)
		appendStringInfo(&sql,
						 " | CASE WHEN EXISTS (SELECT FROM counter.tally t"
						 "  WHERE t.counter_id = d.id AND %s"
						 "  AND t.bucket > '-infinity' AND t.bucket < %s) THEN %d ELSE 0 END",
						 compact_steps[j].pred, compact_steps[j].cutoff, 1 << j);
	appendStringInfoString(&sql, " AS due FROM counter.definition d) s WHERE due <> 0 ORDER BY id");
	values[0] = TimestampTzGetDatum(now);
	if (SPI_execute_with_args(sql.data, 1, argtypes, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "listing the counters due for compaction failed");
	ids = MemoryContextAlloc(cxt, sizeof(int32) * Max(SPI_processed, 1));
	*due = MemoryContextAlloc(cxt, sizeof(int) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		(*due)[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
	}
	*n = (int) SPI_processed;
	pfree(sql.data);
	return ids;
}

/*
 * Called between two transactions of a compaction pass, when set: the
 * maintenance process runs the syncs that are due there, so a long pass
 * does not hold them back.
 */
void		(*counter_compact_yield_hook) (void) = NULL;

/*
 * Compact one counter as of now: the steps in `due` (and any step after one
 * that moved rows), in short transactions of at most `limit` rows, up to
 * max_rounds of them per step.  Returns the rows moved.
 */
static int64
CounterCompactCounter(int32 id, int due, TimestampTz now, int limit, int max_rounds)
{
	int64		total = 0;
	bool		fed = false;
	int			i;

	for (i = 0; i < lengthof(compact_steps); i++)
	{
		int			round;
		int64		step_moved = 0;

		if (!(due & (1 << i)) && !fed)
			continue;
		for (round = 0; round < max_rounds; round++)
		{
			CounterScope scope;
			int64		moved;

			CHECK_FOR_INTERRUPTS();
			SetCurrentStatementStartTimestamp();
			StartTransactionCommand();
			PushActiveSnapshot(GetTransactionSnapshot());
			CounterEnter(&scope);
			moved = CounterCompactStep(&compact_steps[i], id, now, limit);
			CounterLeave(&scope);
			PopActiveSnapshot();
			CommitTransactionCommand();
			if (counter_compact_yield_hook)
				counter_compact_yield_hook();
			step_moved += moved;
			if (moved < limit)
				break;
		}
		total += step_moved;
		fed = step_moved > 0;
	}
	return total;
}

/*
 * Compact every counter (the steps of compact_steps) as of now, each on its
 * own: a counter whose compaction fails is reported through on_error (with
 * the transaction still to abort) and the others go on.  With the default
 * retention a key holds at most its current writers' rows, about two hours
 * of minute rows, a week of hour rows, one row per older day and a base
 * row.  Expired event ids and stale rate windows are purged afterwards.
 * Totals, and windows at their resolution, are unchanged by every step.
 * Returns the rows moved or purged.
 */
int64
CounterCompactAll(TimestampTz now, int limit, int max_rounds,
				  void (*on_error) (const char *what, MemoryContext cxt))
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile int64 total = 0;
	int32	   *ids;
	int		   *due;
	int			nids;
	int			i;
	int			round;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (!OidIsValid(get_extension_oid("counter", true)))
	{
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(cxt);
		return 0;
	}
	{
		CounterScope scope;

		CounterEnter(&scope);
		ids = CounterCompactDue(now, &nids, &due, cxt);
		CounterLeave(&scope);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);

	for (i = 0; i < nids; i++)
	{
		PG_TRY();
		{
			total += CounterCompactCounter(ids[i], due[i], now, limit, max_rounds);
		}
		PG_CATCH();
		{
			if (on_error == NULL)
				PG_RE_THROW();
			on_error(psprintf("compacting counter %d", ids[i]), cxt);
		}
		PG_END_TRY();
		MemoryContextSwitchTo(cxt);
	}

	/* expired event ids and stale rate windows, in batches too */
	for (round = 0; round < max_rounds; round++)
	{
		CounterScope scope;
		int64		purged;

		CHECK_FOR_INTERRUPTS();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		CounterEnter(&scope);
		purged = CounterPurgeLimits(now, limit);
		CounterLeave(&scope);
		PopActiveSnapshot();
		CommitTransactionCommand();
		total += purged;
		if (purged < limit)
			break;
	}
	MemoryContextSwitchTo(cxt);
	return total;
}

/*
 * counter.compact(now): run the maintenance process's compaction, and its
 * purge of expired event ids and rate windows, in this session, e.g. in
 * tests with an explicit now, or where no background process runs.  For
 * the extension's owner (it rewrites every counter's rows).
 */
Datum
counter_compact(PG_FUNCTION_ARGS)
{
	TimestampTz now = PG_ARGISNULL(0) ? GetCurrentTimestamp() : PG_GETARG_TIMESTAMPTZ(0);
	CounterScope scope;
	int64		total = 0;
	int32	   *ids;
	int		   *due;
	int			nids;
	int			i,
				c;

	CounterRequireExtensionOwner("counter.compact()");
	PreventCommandIfReadOnly("counter.compact()");
	if (TIMESTAMP_NOT_FINITE(now))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("now must be a finite timestamp")));
	CounterEnter(&scope);
	ids = CounterCompactDue(now, &nids, &due, CurrentMemoryContext);
	for (c = 0; c < nids; c++)
	{
		bool		fed = false;

		for (i = 0; i < lengthof(compact_steps); i++)
		{
			int64		moved = 0;

			if ((due[c] & (1 << i)) || fed)
				moved = CounterCompactStep(&compact_steps[i], ids[c], now, INT_MAX);
			total += moved;
			fed = moved > 0;
		}
	}
	total += CounterPurgeLimits(now, INT_MAX);
	CounterLeave(&scope);
	PG_RETURN_INT64(total);
}
