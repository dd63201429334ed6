/*
 * export_note.c
 *		Backfills of counters that export to ClickHouse, noted in the same
 *		transaction as the write, so the export step (export.c) sends their
 *		minutes again with the new sums.
 *
 * The rule (why a note is needed exactly when this writes one): the export
 * step moves a counter's frontier only up to the settled horizon, the
 * minute that holds the start of the oldest transaction running in the
 * database (never past the current minute).  A write whose bucket is at or
 * after the minute of its own transaction's start therefore lands ahead of
 * the frontier, and the sweep reads it when it passes.  A write into an
 * earlier minute (incr(..., at => an old time), a fold of buffered deltas
 * from a minute that has ended, a stream entry or message with its own
 * time) may land behind it: that write upserts a row (counter, key,
 * minute, slot) into counter.export_note carrying its transaction's id.
 * The export step sends the bucket's full sum and then deletes the note
 * only if its xid is still the one it read; a write that came in between
 * changed the xid, so its note stays and is sent next time.  Notes are per
 * slot like tally rows, so concurrent writers of one bucket never wait on
 * each other's note.
 *
 * Counters without a clickhouse_table pay one comparison per write.
 */
#include "counter.h"

#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "utils/array.h"

static SPIPlanPtr plan_note = NULL;
static SPIPlanPtr plan_note_batch = NULL;

/* The first minute a write of this transaction cannot land behind the frontier in. */
static inline TimestampTz
CounterExportNoteFrom(void)
{
	return CounterMinute(GetCurrentTransactionStartTimestamp());
}

/* Whether a write of bucket to def is a backfill the export must note. */
bool
CounterExportNoteNeeded(const CounterDef *def, TimestampTz bucket)
{
	return def->exports && bucket < CounterExportNoteFrom();
}

/* Note a write of (key, bucket) into one slot row, if it is a backfill (inside the scope). */
void
CounterExportNote(const CounterDef *def, int64 key, TimestampTz bucket, int16 slot)
{
	Oid			argtypes[5] = {INT4OID, INT8OID, TIMESTAMPTZOID, INT2OID, INT8OID};
	Datum		values[5];

	if (!def->exports || bucket >= CounterExportNoteFrom())
		return;
	values[0] = Int32GetDatum(def->id);
	values[1] = Int64GetDatum(key);
	values[2] = TimestampTzGetDatum(bucket);
	values[3] = Int16GetDatum(slot);
	values[4] = Int64GetDatum((int64) U64FromFullTransactionId(GetTopFullTransactionId()));
	if (SPI_execute_plan(CounterPlan(&plan_note,
									 "INSERT INTO counter.export_note AS n"
									 " (counter_id, key, minute, slot, xid) VALUES ($1, $2, $3, $4, $5)"
									 " ON CONFLICT (counter_id, key, minute, slot)"
									 " DO UPDATE SET xid = excluded.xid",
									 5, argtypes),
						 values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "noting a backfill for the export failed");
}

/*
 * Note the backfills of a batch (n tuples of counter, key, bucket, all
 * written to slot), for those of its counters that export (inside the
 * scope).  Costs nothing when no bucket is older than this transaction's
 * minute.
 */
void
CounterExportNoteBatch(int n, Datum *counter_ids, Datum *keys, Datum *buckets, int16 slot)
{
	TimestampTz from = CounterExportNoteFrom();
	Oid			argtypes[6] = {INT4ARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID,
	INT2OID, INT8OID, TIMESTAMPTZOID};
	Datum		values[6];
	int			i;

	for (i = 0; i < n; i++)
		if (DatumGetTimestampTz(buckets[i]) < from)
			break;
	if (i == n)
		return;
	values[0] = PointerGetDatum(construct_array(counter_ids, n, INT4OID, 4, true, TYPALIGN_INT));
	values[1] = PointerGetDatum(construct_array(keys, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[2] = PointerGetDatum(construct_array(buckets, n, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[3] = Int16GetDatum(slot);
	values[4] = Int64GetDatum((int64) U64FromFullTransactionId(GetTopFullTransactionId()));
	values[5] = TimestampTzGetDatum(from);
	if (SPI_execute_plan(CounterPlan(&plan_note_batch,
									 "INSERT INTO counter.export_note AS n"
									 " (counter_id, key, minute, slot, xid)"
									 " SELECT DISTINCT u.c, u.k, u.b, $4, $5"
									 " FROM unnest($1, $2, $3) AS u(c, k, b)"
									 " WHERE u.b < $6 AND EXISTS (SELECT FROM counter.definition d"
									 "  WHERE d.id = u.c AND d.clickhouse_table IS NOT NULL)"
									 " ORDER BY 1, 2, 3"
									 " ON CONFLICT (counter_id, key, minute, slot)"
									 " DO UPDATE SET xid = excluded.xid",
									 6, argtypes),
						 values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "noting backfills for the export failed");
}
