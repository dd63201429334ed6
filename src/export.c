/*
 * export.c
 *		The export step of the maintenance process: settled minute buckets
 *		of the counters with a clickhouse_table, sent to ClickHouse
 *		(clickhouse.c) before rollups coarsen them.
 *
 * The ClickHouse table is a ReplacingMergeTree ordered by (counter, key,
 * minute) with a version column (README): a bucket sent twice, or again
 * with a newer sum and a higher version, leaves one row with the newest
 * sum once read with FINAL or argMax.  Delivery is at least once, the
 * effect exactly once:
 *
 * - Each counter has a frontier in counter.export, a (minute, key)
 *   position: every bucket before it has been sent and acknowledged.  A
 *   batch reads the buckets after the frontier (full sums of the minute
 *   rows: writers' slots, folded and compacted minutes) in key order,
 *   sends them, and only once ClickHouse answered 200 moves the frontier,
 *   in a transaction of its own.  A batch that failed, timed out or was
 *   cut short by a crash is read again and resent with a higher version:
 *   the same buckets, the same or newer sums.
 * - The frontier never passes the settled horizon: the minute holding the
 *   start of the oldest transaction running in the database (from
 *   pg_stat_activity, so track_activities must be on), and never the
 *   current minute.  A write into its own transaction's minute or later
 *   therefore always lands ahead of the frontier.
 * - A write into an earlier minute (a backfill, a late fold, a source item
 *   with its own time) notes its bucket in counter.export_note in the same
 *   transaction (export_note.c).  Each batch also takes the notes behind
 *   the frontier, sends those buckets' full sums, and on the ack deletes
 *   each note whose xid is unchanged; a note written meanwhile stays.  So
 *   finding what changed costs what changed: the sweep reads only minutes
 *   after the frontier (through the partial bucket indexes) and the notes
 *   only the backfilled buckets.
 * - Rollups wait: compaction (compact.c) rolls an exporting counter's
 *   minutes up to hours only before the hour of its frontier and of its
 *   oldest note.  A note for a minute Postgres had rolled up before the
 *   backfill came (an hour or day row of that key covers it, or the day
 *   is past day_retention) cannot be sent with its full sum: it is
 *   counted in counter.exports.skipped and dropped.  A backfill into a
 *   minute before the export began that nothing had rolled up (the key
 *   had no count that hour) is complete, and is sent.
 *
 * A new export starts once every transaction that could have written
 * without seeing the counter's clickhouse_table has ended, at the oldest
 * minute still at minute resolution.
 *
 * Failures (ClickHouse down, slow, an error such as a missing table) never
 * touch ingest: this runs in the maintenance process, holds no
 * transaction across a request, and backs off per counter (doubling from
 * counter.clickhouse_interval to 5 minutes), with the error in
 * counter.exports, worker_status() and the log.  A server that cannot be
 * reached ends the round for every counter.
 *
 * Privileges: the owner of a counter chooses its table (counter.alter);
 * the connection settings are the superuser's.  An export sends the rows
 * of its own counter and nothing else, into a table no other owner's
 * counter uses, and reads nothing back.
 */
#include "counter.h"
#include "counter_clickhouse.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#define COUNTER_CH_COLUMNS "counter, key, minute, value, version"
#define COUNTER_EXPORT_MAX_BACKOFF_MS (5 * 60 * 1000)
/* minute rows: writers' slots, folded from the buffer, compacted */
#define COUNTER_MINUTE_ROWS "(t.slot >= 0 OR t.slot = -1 OR t.slot = -4)"

/* One export as the step reads it. */
typedef struct ExportDef
{
	int32		counter_id;
	char		name[COUNTER_NAME_MAXLEN + 1];
	char		table[2 * COUNTER_NAME_MAXLEN + 2];
	bool		text_keys;
	bool		started;		/* frontier set */
	TimestampTz frontier;
	bool		has_key;		/* frontier_key set: inside the frontier's minute */
	int64		frontier_key;
	TimestampTz seen_at;		/* while not started: when the step first saw it */
	int64		version;
	int32		failures;
	TimestampTz retry_at;
} ExportDef;

/* What the database's transactions allow: minutes before settled are done. */
typedef struct ExportHorizon
{
	TimestampTz settled;
	TimestampTz oldest_start;	/* of a running transaction; now if none */
	const char *why;			/* why nothing can settle, or NULL */
} ExportHorizon;

/* One batch, read and not yet acknowledged. */
typedef struct ExportBatch
{
	MemoryContext cxt;			/* outlives the transactions: the body, the notes */
	StringInfoData body;
	int			rows;			/* buckets in body */
	int			resent;			/* of them, from notes */
	int			skipped;		/* notes dropped: minute already rolled up */
	int			nnotes;			/* notes to delete on the ack */
	Datum	   *note_keys;
	Datum	   *note_minutes;
	Datum	   *note_slots;
	Datum	   *note_xids;
	bool		full;			/* the sweep hit the batch size: more follows */
	TimestampTz frontier;		/* the frontier after the ack */
	bool		has_key;
	int64		frontier_key;
	int64		version;
} ExportBatch;

static bool exports_active = false;
static TimestampTz transport_retry_at = 0;
static int	transport_failures = 0;

/* Whether this database had an export at the last step (for the wait). */
bool
CounterExportActive(void)
{
	return exports_active && counter_clickhouse_url[0] != '\0';
}

/* Milliseconds to wait after the nth failure in a row. */
static int64
CounterExportBackoffMs(int failures)
{
	int64		ms = counter_clickhouse_interval;
	int			i;

	for (i = 1; i < failures && ms < COUNTER_EXPORT_MAX_BACKOFF_MS; i++)
		ms *= 2;
	return Min(ms, COUNTER_EXPORT_MAX_BACKOFF_MS);
}

/* A column of the current SPI row, or 0 / false if null. */
static Datum
CounterExportCol(int row, int col, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, isnull);
}

/*
 * Inside a transaction: create the state of new exports, read the settled
 * horizon, and list the exports.  The horizon is read before any snapshot
 * the batches read rows with.
 */
static int
CounterExportList(ExportDef **out, ExportHorizon *h, MemoryContext cxt)
{
	ExportDef  *defs;
	bool		isnull;
	TimestampTz now = GetCurrentTimestamp();
	Datum		d;
	uint64		i;

	if (SPI_execute("INSERT INTO counter.export (counter_id, clickhouse_table, settled)"
					" SELECT d.id, d.clickhouse_table, pg_catalog.clock_timestamp()"
					" FROM counter.definition d WHERE d.clickhouse_table IS NOT NULL"
					" ORDER BY d.id ON CONFLICT (counter_id) DO NOTHING", false, 0) != SPI_OK_INSERT)
		elog(ERROR, "creating the export state failed");
	if (SPI_execute("SELECT pg_catalog.current_setting('track_activities')::bool,"
					" (SELECT pg_catalog.min(a.xact_start) FROM pg_catalog.pg_stat_activity a"
					"  WHERE a.datid = (SELECT oid FROM pg_catalog.pg_database"
					"   WHERE datname = pg_catalog.current_database())"
					"  AND a.pid <> pg_catalog.pg_backend_pid()),"
					" EXISTS (SELECT FROM pg_catalog.pg_prepared_xacts p"
					"  WHERE p.database = pg_catalog.current_database())",
					true, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "reading the oldest running transaction failed");
	h->why = NULL;
	h->oldest_start = now;
	if (!DatumGetBool(CounterExportCol(0, 1, &isnull)))
		h->why = "track_activities is off, so the oldest running transaction is unknown";
	else if (DatumGetBool(CounterExportCol(0, 3, &isnull)))
		h->why = "a prepared transaction is pending in this database";
	d = CounterExportCol(0, 2, &isnull);
	if (!isnull && DatumGetTimestampTz(d) < now)
		h->oldest_start = DatumGetTimestampTz(d);
	h->settled = CounterMinute(h->oldest_start);

	if (SPI_execute("SELECT e.counter_id, d.name, d.key_type = 'text', e.clickhouse_table,"
					" e.frontier, e.frontier_key, e.settled, e.version, e.failures,"
					" coalesce(e.retry_at, '-infinity')"
					" FROM counter.export e JOIN counter.definition d ON d.id = e.counter_id"
					" AND d.clickhouse_table = e.clickhouse_table ORDER BY e.counter_id",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "listing the exports failed");
	defs = MemoryContextAllocZero(cxt, sizeof(ExportDef) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		ExportDef  *e = &defs[i];

		e->counter_id = DatumGetInt32(CounterExportCol(i, 1, &isnull));
		strlcpy(e->name, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2), sizeof(e->name));
		e->text_keys = DatumGetBool(CounterExportCol(i, 3, &isnull));
		strlcpy(e->table, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 4), sizeof(e->table));
		d = CounterExportCol(i, 5, &isnull);
		e->started = !isnull;
		e->frontier = isnull ? 0 : DatumGetTimestampTz(d);
		d = CounterExportCol(i, 6, &isnull);
		e->has_key = !isnull;
		e->frontier_key = isnull ? 0 : DatumGetInt64(d);
		d = CounterExportCol(i, 7, &isnull);
		e->seen_at = isnull ? now : DatumGetTimestampTz(d);
		e->version = DatumGetInt64(CounterExportCol(i, 8, &isnull));
		e->failures = DatumGetInt32(CounterExportCol(i, 9, &isnull));
		e->retry_at = DatumGetTimestampTz(CounterExportCol(i, 10, &isnull));
	}
	*out = defs;
	return (int) SPI_processed;
}

/*
 * Start an export (inside a transaction): its frontier at the oldest
 * minute the counter still has at minute resolution, or the horizon.
 */
static void
CounterExportStart(ExportDef *e, const ExportHorizon *h)
{
	Oid			argtypes[2] = {INT4OID, TIMESTAMPTZOID};
	Datum		values[2];
	bool		isnull;

	values[0] = Int32GetDatum(e->counter_id);
	values[1] = TimestampTzGetDatum(h->settled);
	if (SPI_execute_with_args("UPDATE counter.export SET frontier = s.m, since = s.m, frontier_key = NULL"
							  " FROM (SELECT least($2, (SELECT min(t.bucket) FROM counter.tally t"
							  "  WHERE t.counter_id = $1 AND " COUNTER_MINUTE_ROWS
							  "  AND t.bucket > '-infinity')) AS m) s"
							  " WHERE counter_id = $1 AND frontier IS NULL RETURNING s.m",
							  2, argtypes, values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "starting the export failed");
	if (SPI_processed != 1)
		return;
	e->started = true;
	e->has_key = false;
	e->frontier = DatumGetTimestampTz(CounterExportCol(0, 1, &isnull));
}

/* Append one bucket as a TabSeparated row (text keys escaped). */
static void
CounterExportRow(ExportBatch *b, const ExportDef *e, const char *key,
				 TimestampTz minute, int64 value)
{
	struct pg_tm tm;
	fsec_t		fsec;
	const char *p;

	if (timestamp2tm(minute, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "minute out of range");
	appendStringInfo(&b->body, "%s\t", e->name);
	for (p = key; *p; p++)
	{
		if (*p == '\t')
			appendStringInfoString(&b->body, "\\t");
		else if (*p == '\n')
			appendStringInfoString(&b->body, "\\n");
		else if (*p == '\\')
			appendStringInfoString(&b->body, "\\\\");
		else
			appendStringInfoChar(&b->body, *p);
	}
	appendStringInfo(&b->body, "\t%04d-%02d-%02d %02d:%02d:00\t" INT64_FORMAT "\t" INT64_FORMAT "\n",
					 tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min,
					 value, b->version);
	b->rows++;
}

/*
 * The notes behind the frontier (inside a transaction): each backfilled
 * bucket once, with its full sum, or skipped if Postgres rolled its minute
 * up before the note; every note read is deleted on the ack if unchanged.
 */
static void
CounterExportNotes(ExportBatch *b, const ExportDef *e, int limit)
{
	Oid			argtypes[4] = {INT4OID, TIMESTAMPTZOID, INT8OID, INT4OID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	uint64		i;
	int64		last_key = 0;
	TimestampTz last_minute = DT_NOBEGIN;

	values[0] = Int32GetDatum(e->counter_id);
	values[1] = TimestampTzGetDatum(e->frontier);
	values[2] = Int64GetDatum(e->frontier_key);
	nulls[2] = e->has_key ? ' ' : 'n';
	values[3] = Int32GetDatum(limit);
	if (SPI_execute_with_args("SELECT n.key, n.minute, n.slot, n.xid,"
							  " (SELECT coalesce(sum(t.value), 0)::int8 FROM counter.tally t"
							  "  WHERE t.counter_id = $1 AND t.key = n.key AND t.bucket = n.minute"
							  "  AND " COUNTER_MINUTE_ROWS "),"
							  " EXISTS (SELECT FROM counter.tally r"
							  "  WHERE r.counter_id = $1 AND r.key = n.key"
							  "  AND ((r.slot = -2 AND r.bucket = date_trunc('hour', n.minute, 'UTC'))"
							  "   OR (r.slot = -3 AND r.bucket = date_trunc('day', n.minute, 'UTC'))))"
							  "  OR (d.day_retention > '0' AND n.minute < date_trunc('day', now() - d.day_retention, 'UTC')),"
							  " coalesce(k.name, n.key::text)"
							  " FROM counter.export_note n"
							  " JOIN counter.definition d ON d.id = n.counter_id"
							  " LEFT JOIN counter.text_key k ON d.key_type = 'text'"
							  "  AND k.counter_id = n.counter_id AND k.id = n.key"
							  " WHERE n.counter_id = $1 AND (n.minute < $2"
							  "  OR (n.minute = $2 AND $3::int8 IS NOT NULL AND n.key <= $3))"
							  " ORDER BY n.minute, n.key, n.slot LIMIT $4",
							  4, argtypes, values, nulls, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the backfills of counter \"%s\" failed", e->name);
	b->nnotes = (int) SPI_processed;
	b->note_keys = MemoryContextAlloc(b->cxt, sizeof(Datum) * Max(b->nnotes, 1));
	b->note_minutes = MemoryContextAlloc(b->cxt, sizeof(Datum) * Max(b->nnotes, 1));
	b->note_slots = MemoryContextAlloc(b->cxt, sizeof(Datum) * Max(b->nnotes, 1));
	b->note_xids = MemoryContextAlloc(b->cxt, sizeof(Datum) * Max(b->nnotes, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int64		key = DatumGetInt64(CounterExportCol(i, 1, &isnull));
		TimestampTz minute = DatumGetTimestampTz(CounterExportCol(i, 2, &isnull));
		bool		same = (i > 0 && key == last_key && minute == last_minute);

		b->note_keys[i] = Int64GetDatum(key);
		b->note_minutes[i] = TimestampTzGetDatum(minute);
		b->note_slots[i] = CounterExportCol(i, 3, &isnull);
		b->note_xids[i] = CounterExportCol(i, 4, &isnull);
		last_key = key;
		last_minute = minute;
		if (same)
			continue;
		if (DatumGetBool(CounterExportCol(i, 6, &isnull)))
		{
			b->skipped++;
			continue;
		}
		CounterExportRow(b, e, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 7),
						 minute, DatumGetInt64(CounterExportCol(i, 5, &isnull)));
		b->resent++;
	}
}

/*
 * The buckets after the frontier and before the horizon (inside a
 * transaction), in (minute, key) order, up to limit; sets the frontier the
 * ack moves to.
 */
static void
CounterExportSweep(ExportBatch *b, const ExportDef *e, TimestampTz settled, int limit)
{
	Oid			argtypes[5] = {INT4OID, TIMESTAMPTZOID, INT8OID, TIMESTAMPTZOID, INT4OID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	uint64		i;

	b->full = false;
	if (limit <= 0 || settled <= e->frontier)
	{
		/* nothing settled after the frontier, or no room: it stays */
		b->frontier = e->frontier;
		b->has_key = e->has_key;
		b->frontier_key = e->frontier_key;
		return;
	}
	b->frontier = settled;
	b->has_key = false;
	values[0] = Int32GetDatum(e->counter_id);
	values[1] = TimestampTzGetDatum(e->frontier);
	values[2] = Int64GetDatum(e->frontier_key);
	nulls[2] = e->has_key ? ' ' : 'n';
	values[3] = TimestampTzGetDatum(settled);
	values[4] = Int32GetDatum(limit);
	if (SPI_execute_with_args(e->text_keys ?
							  "SELECT s.key, s.bucket, s.v, k.name FROM (SELECT t.key, t.bucket, sum(t.value)::int8 AS v"
							  " FROM counter.tally t WHERE t.counter_id = $1 AND t.bucket >= $2 AND t.bucket < $4"
							  " AND " COUNTER_MINUTE_ROWS " AND (t.bucket > $2 OR $3::int8 IS NULL OR t.key > $3)"
							  " GROUP BY t.bucket, t.key ORDER BY t.bucket, t.key LIMIT $5) s"
							  " LEFT JOIN counter.text_key k ON k.counter_id = $1 AND k.id = s.key"
							  " ORDER BY s.bucket, s.key" :
							  "SELECT t.key, t.bucket, sum(t.value)::int8, t.key::text"
							  " FROM counter.tally t WHERE t.counter_id = $1 AND t.bucket >= $2 AND t.bucket < $4"
							  " AND " COUNTER_MINUTE_ROWS " AND (t.bucket > $2 OR $3::int8 IS NULL OR t.key > $3)"
							  " GROUP BY t.bucket, t.key ORDER BY t.bucket, t.key LIMIT $5",
							  5, argtypes, values, nulls, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the minutes of counter \"%s\" failed", e->name);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		char	   *key = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 4);

		CounterExportRow(b, e, key ? key : "",
						 DatumGetTimestampTz(CounterExportCol(i, 2, &isnull)),
						 DatumGetInt64(CounterExportCol(i, 3, &isnull)));
	}
	if (SPI_processed == (uint64) limit && limit > 0)
	{
		bool		isnull;

		/* more may follow: the frontier stops after the last bucket sent */
		b->full = true;
		b->has_key = true;
		b->frontier_key = DatumGetInt64(CounterExportCol(SPI_processed - 1, 1, &isnull));
		b->frontier = DatumGetTimestampTz(CounterExportCol(SPI_processed - 1, 2, &isnull));
	}
}

/*
 * Record an acknowledged batch (inside a transaction): move the frontier,
 * drop the notes sent that no write changed since.  False if the export
 * was changed or restarted meanwhile (then nothing is recorded).
 */
static bool
CounterExportAck(const ExportDef *e, const ExportBatch *b, TimestampTz settled)
{
	Oid			argtypes[12] = {INT4OID, TEXTOID, TIMESTAMPTZOID, INT8OID, TIMESTAMPTZOID,
		INT8OID, INT8OID, INT8OID, INT8OID, TIMESTAMPTZOID, INT8OID, BOOLOID};
	Datum		values[12];
	char		nulls[12] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Oid			dargtypes[5] = {INT4OID, INT8ARRAYOID, TIMESTAMPTZARRAYOID, INT2ARRAYOID, INT8ARRAYOID};
	Datum		dvalues[5];

	values[0] = Int32GetDatum(e->counter_id);
	values[1] = CStringGetTextDatum(e->table);
	values[2] = TimestampTzGetDatum(b->frontier);
	values[3] = Int64GetDatum(b->frontier_key);
	nulls[3] = b->has_key ? ' ' : 'n';
	values[4] = TimestampTzGetDatum(settled);
	values[5] = Int64GetDatum(b->version);
	values[6] = Int64GetDatum(b->rows);
	values[7] = Int64GetDatum(b->resent);
	values[8] = Int64GetDatum(b->skipped);
	values[9] = TimestampTzGetDatum(e->frontier);
	values[10] = Int64GetDatum(e->frontier_key);
	nulls[10] = e->has_key ? ' ' : 'n';
	values[11] = BoolGetDatum(b->rows > 0);
	if (SPI_execute_with_args("UPDATE counter.export SET frontier = $3, frontier_key = $4, settled = $5,"
							  " version = CASE WHEN $12 THEN $6 ELSE version END,"
							  " batches = batches + CASE WHEN $12 THEN 1 ELSE 0 END,"
							  " buckets = buckets + $7, resent = resent + $8, skipped = skipped + $9,"
							  " last_export = CASE WHEN $12 THEN clock_timestamp() ELSE last_export END,"
							  " failures = 0, retry_at = NULL, last_error = NULL"
							  " WHERE counter_id = $1 AND clickhouse_table = $2"
							  " AND frontier = $10 AND frontier_key IS NOT DISTINCT FROM $11",
							  12, argtypes, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "recording the export failed");
	if (SPI_processed != 1)
		return false;
	if (b->nnotes == 0)
		return true;
	dvalues[0] = Int32GetDatum(e->counter_id);
	dvalues[1] = PointerGetDatum(construct_array(b->note_keys, b->nnotes, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	dvalues[2] = PointerGetDatum(construct_array(b->note_minutes, b->nnotes, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	dvalues[3] = PointerGetDatum(construct_array(b->note_slots, b->nnotes, INT2OID, 2, true, TYPALIGN_SHORT));
	dvalues[4] = PointerGetDatum(construct_array(b->note_xids, b->nnotes, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (SPI_execute_with_args("DELETE FROM counter.export_note n USING unnest($2, $3, $4, $5) AS u(k, m, s, x)"
							  " WHERE n.counter_id = $1 AND n.key = u.k AND n.minute = u.m"
							  " AND n.slot = u.s AND n.xid = u.x",
							  5, dargtypes, dvalues, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "dropping the exported backfills failed");
	return true;
}

/* Say in every export's status why no minute settles (inside a transaction). */
static void
CounterExportHeld(const char *why)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];

	values[0] = CStringGetTextDatum(psprintf("waiting: %s", why));
	if (SPI_execute_with_args("UPDATE counter.export SET last_error = $1, last_error_at = clock_timestamp()"
							  " WHERE last_error IS DISTINCT FROM $1",
							  1, argtypes, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "recording why the export waits failed");
}

/* Record a failure of an export (a transaction of its own) and log it. */
static void
CounterExportFailed(ExportDef *e, const char *error)
{
	CounterScope scope;
	Oid			argtypes[4] = {INT4OID, TEXTOID, TEXTOID, TIMESTAMPTZOID};
	Datum		values[4];
	TimestampTz now = GetCurrentTimestamp();

	e->failures++;
	e->retry_at = now + CounterExportBackoffMs(e->failures) * 1000;
	ereport(WARNING,
			(errmsg("counter export of \"%s\" to ClickHouse table %s failed: %s",
					e->name, e->table, error),
			 errdetail("Failure %d in a row; retrying in %d ms, from the same frontier.",
					   e->failures, (int) ((e->retry_at - now) / 1000))));
	CounterProcError("export", error);
	values[0] = Int32GetDatum(e->counter_id);
	values[1] = CStringGetTextDatum(e->table);
	values[2] = CStringGetTextDatum(error);
	values[3] = TimestampTzGetDatum(e->retry_at);
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	CounterEnter(&scope);
	if (SPI_execute_with_args("UPDATE counter.export SET failures = failures + 1, retry_at = $4,"
							  " last_error = $3, last_error_at = clock_timestamp()"
							  " WHERE counter_id = $1 AND clickhouse_table = $2",
							  4, argtypes, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "recording the export failure failed");
	CounterLeave(&scope);
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * One batch of one export: read (a transaction), send (none), record the
 * ack (a transaction).  Returns 1 if more is waiting, 0 if caught up, -1 on
 * a failure (recorded); *transport says the server could not be reached.
 */
static int
CounterExportBatchDo(ExportDef *e, const ExportHorizon *h, MemoryContext cxt,
					 bool *transport)
{
	CounterScope scope;
	ExportBatch b;
	CounterChResult res;
	bool		recorded;
	int			limit = counter_clickhouse_batch_size;

	memset(&b, 0, sizeof(b));
	b.cxt = cxt;
	initStringInfo(&b.body);
	b.version = Max(GetCurrentTimestamp(), e->version + 1);
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	CounterEnter(&scope);
	CounterExportNotes(&b, e, Max(limit / 2, 1));
	CounterExportSweep(&b, e, h->why ? e->frontier : h->settled, Max(limit - b.rows, 0));
	CounterLeave(&scope);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);

	if (b.rows > 0)
	{
		CounterProcState("exporting");
		if (!CounterClickhouseInsert(e->table, COUNTER_CH_COLUMNS, b.body.data, b.body.len, &res))
		{
			CHECK_FOR_INTERRUPTS();
			if (res.aborted)
				return 0;
			*transport = res.transport;
			CounterExportFailed(e, res.error);
			return -1;
		}
	}
	else if (b.nnotes == 0 && b.frontier == e->frontier && b.has_key == e->has_key &&
			 (!b.has_key || b.frontier_key == e->frontier_key))
		return 0;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	CounterEnter(&scope);
	recorded = CounterExportAck(e, &b, h->why ? e->frontier : h->settled);
	CounterLeave(&scope);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	if (!recorded)
		return 0;
	if (b.rows > 0)
		e->version = b.version;
	e->frontier = b.frontier;
	e->has_key = b.has_key;
	e->frontier_key = b.frontier_key;
	e->failures = 0;
	return (b.full || b.nnotes >= Max(limit / 2, 1)) ? 1 : 0;
}

/* One batch in a memory context of its own, gone after it (see CounterExportBatchDo). */
static int
CounterExportBatchRun(ExportDef *e, const ExportHorizon *h, MemoryContext cxt,
					  bool *transport)
{
	MemoryContext batch_cxt = AllocSetContextCreate(cxt, "counter export batch",
													ALLOCSET_DEFAULT_SIZES);
	int			rc;

	MemoryContextSwitchTo(batch_cxt);
	rc = CounterExportBatchDo(e, h, batch_cxt, transport);
	MemoryContextSwitchTo(cxt);
	MemoryContextDelete(batch_cxt);
	return rc;
}

/*
 * The export step: for each export that is due, batches until it caught
 * up (or 50 batches, so one counter cannot hold the others back).
 */
void
CounterExportStepRun(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	CounterScope scope;
	ExportDef  *defs;
	ExportHorizon h;
	TimestampTz now = GetCurrentTimestamp();
	int			n;
	int			i;

	if (counter_clickhouse_url[0] == '\0' || now < transport_retry_at)
		return;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	CounterEnter(&scope);
	n = CounterExportList(&defs, &h, cxt);
	if (h.why)
		CounterExportHeld(h.why);
	for (i = 0; i < n; i++)
		if (!defs[i].started && h.why == NULL && h.oldest_start > defs[i].seen_at)
			CounterExportStart(&defs[i], &h);
	CounterLeave(&scope);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	exports_active = n > 0;

	for (i = 0; i < n && !counter_shutdown_requested; i++)
	{
		ExportDef  *e = &defs[i];
		bool		transport = false;
		int			batch;

		if (!e->started || e->retry_at > now)
			continue;
		for (batch = 0; batch < 50 && !counter_shutdown_requested; batch++)
		{
			int			rc = CounterExportBatchRun(e, &h, cxt, &transport);

			if (rc <= 0)
				break;
		}
		if (transport)
		{
			/* the server is down or unreachable: the others wait too */
			transport_failures++;
			transport_retry_at = GetCurrentTimestamp() +
				CounterExportBackoffMs(transport_failures) * 1000;
			return;
		}
	}
	transport_failures = 0;
}
