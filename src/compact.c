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
 * Cut-offs are whole UTC units; `d` is the counter's definition row.
 */
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
	{"t.slot = -1", "date_trunc('hour', $1 - d.minute_retention, 'UTC')",
	"date_trunc('hour', bucket, 'UTC')", COUNTER_SLOT_HOUR},
	{"t.slot = -2", "date_trunc('day', $1 - d.hour_retention, 'UTC')",
	"date_trunc('day', bucket, 'UTC')", COUNTER_SLOT_DAY},
	{"t.slot = -3 AND d.day_retention > '0'", "date_trunc('day', $1 - d.day_retention, 'UTC')",
	"'-infinity'::timestamptz", COUNTER_SLOT_DAY},
};

/*
 * One compaction step in the current transaction, as of `now`: move up to
 * `limit` rows matching the step (over all counters) into its target rows.
 * Returns the rows moved.
 */
static int64
CounterCompactStep(const CompactStep *step, TimestampTz now, int limit)
{
	StringInfoData sql;
	Oid			argtypes[3] = {TIMESTAMPTZOID, INT2OID, INT4OID};
	Datum		values[3];
	int			rc;
	bool		isnull;
	int64		moved;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "WITH moved AS ("
					 "  DELETE FROM counter.tally WHERE ctid = ANY (ARRAY("
					 "   SELECT x.ctid FROM counter.definition d CROSS JOIN LATERAL ("
					 "    SELECT t.ctid FROM counter.tally t"
					 "    WHERE t.counter_id = d.id AND %s"
					 "    AND t.bucket > '-infinity' AND t.bucket < %s"
					 "    LIMIT $3) x"
					 "   LIMIT $3))"
					 "  RETURNING counter_id, key, %s AS b, value),"
					 " ins AS ("
					 "  INSERT INTO counter.tally AS t (counter_id, key, bucket, slot, value)"
					 "  SELECT counter_id, key, b, $2, sum(value)::int8 FROM moved"
					 "  GROUP BY counter_id, key, b ORDER BY counter_id, key, b"
					 "  ON CONFLICT (counter_id, key, bucket, slot)"
					 "  DO UPDATE SET value = t.value + excluded.value)"
					 " SELECT count(*) FROM moved",
					 step->pred, step->cutoff, step->target_bucket);
	values[0] = TimestampTzGetDatum(now);
	values[1] = Int16GetDatum(step->target_slot);
	values[2] = Int32GetDatum(limit);
	rc = SPI_execute_with_args(sql.data, 3, argtypes, values, NULL, false, 0);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "counter compaction failed: %s", SPI_result_code_string(rc));
	moved = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										SPI_tuptable->tupdesc, 1, &isnull));
	pfree(sql.data);
	return moved;
}

/*
 * Compact the tally (the steps of compact_steps), in short transactions of
 * at most `limit` rows each.  With the default retention a key holds at
 * most its current writers' rows, about two hours of minute rows, a week of
 * hour rows, one row per older day and a base row.  Expired event ids and
 * stale rate windows are purged in the same round.
 * Totals and windows (at their resolution) are unchanged by every step.
 * Returns the rows moved.
 */
int64
CounterCompactAll(TimestampTz now, int limit, int max_rounds)
{
	int64		total = 0;
	int			i;

	for (i = 0; i < lengthof(compact_steps); i++)
	{
		const CompactStep *step = &compact_steps[i];
		int			round;

		for (round = 0; round < max_rounds; round++)
		{
			CounterScope scope;
			int64		moved;

			CHECK_FOR_INTERRUPTS();
			SetCurrentStatementStartTimestamp();
			StartTransactionCommand();
			PushActiveSnapshot(GetTransactionSnapshot());
			if (!OidIsValid(get_extension_oid("counter", true)))
			{
				PopActiveSnapshot();
				CommitTransactionCommand();
				return total;
			}
			CounterEnter(&scope);
			moved = CounterCompactStep(step, now, limit);
			CounterLeave(&scope);
			PopActiveSnapshot();
			CommitTransactionCommand();
			total += moved;
			if (moved < limit)
				break;
		}
	}
	/* expired event ids and stale rate windows, in batches too */
	{
		int			round;

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
	}
	return total;
}

/*
 * counter.compact(now): run the worker's compaction, and its purge of
 * expired event ids and rate windows, in this session, e.g. in tests with
 * an explicit now, or where no worker runs.  For the extension's owner
 * (it rewrites every counter's rows).
 */
Datum
counter_compact(PG_FUNCTION_ARGS)
{
	TimestampTz now = PG_ARGISNULL(0) ? GetCurrentTimestamp() : PG_GETARG_TIMESTAMPTZ(0);
	CounterScope scope;
	int64		total = 0;
	int			i;

	CounterRequireExtensionOwner("counter.compact()");
	if (TIMESTAMP_NOT_FINITE(now))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("now must be a finite timestamp")));
	CounterEnter(&scope);
	for (i = 0; i < lengthof(compact_steps); i++)
	{
		total += CounterCompactStep(&compact_steps[i], now, INT_MAX);
	}
	total += CounterPurgeLimits(now, INT_MAX);
	CounterLeave(&scope);
	PG_RETURN_INT64(total);
}
