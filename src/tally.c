/*
 * tally.c
 *		The row protocol of counter.tally: slot rows, the big-key marker and
 *		its overflow check, text keys and their ids, batch apply.
 *
 * Every increment lands in counter.tally, keyed by (counter, key, minute,
 * slot).  A direct counter always writes slot 0, so writers of one key queue
 * on one row, as a plain UPDATE would.  A sharded counter writes the slot
 * numbered after the backend (MyBackendId modulo slots), so up to `slots`
 * concurrent writers of one key never wait on each other's row locks; the
 * README explains how this was chosen over random slots, SKIP LOCKED and
 * insert-only deltas.  A key's total is the sum of all its rows; rows of one
 * minute carry that minute's count, which windows are built on.
 *
 * Overflow: each row's addition is checked by int8 arithmetic.  When a row
 * or a delta reaches COUNTER_CHECK_THRESHOLD (2^40) the key gets a marker row
 * and from then on every increment of it locks the marker and sums the key,
 * failing with 22003 if the total would leave bigint.  A key without a marker
 * has only rows below 2^40, so its total cannot leave bigint unless it holds
 * more than 2^23 rows, which compaction rules out.  Reads sum in numeric and
 * never wrap.
 */
#include "counter.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "storage/backendid.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

/* SQL: whether key $2 of counter $1 has its big-key marker row. */
#define COUNTER_MARKER_EXISTS \
	"EXISTS (SELECT FROM counter.tally m WHERE m.counter_id = $1 AND m.key = $2" \
	" AND m.bucket = '-infinity' AND m.slot = 0)"

static SPIPlanPtr plan_update = NULL;
static SPIPlanPtr plan_upsert = NULL;
static SPIPlanPtr plan_total = NULL;
static SPIPlanPtr plan_batch = NULL;
static SPIPlanPtr plan_is_big = NULL;
static SPIPlanPtr plan_marker = NULL;
static SPIPlanPtr plan_key_find = NULL;
static SPIPlanPtr plan_key_make = NULL;

/* The slot row this backend writes for a counter. */
int16
CounterSlot(const CounterDef *def)
{
	if (def->mode == COUNTER_MODE_DIRECT || def->slots <= 1)
		return 0;
	return (int16) ((MyBackendId > 0 ? MyBackendId - 1 : MyProcPid) % def->slots);
}

/*
 * Lock the key's marker row, creating it if needed.  The marker (bucket
 * -infinity, slot 0, value 0) says that some row of the key once reached
 * COUNTER_CHECK_THRESHOLD; from then on every writer of the key takes this
 * lock and checks the total, so writers of big keys serialize and the check
 * is exact.
 */
static void
CounterLockKey(const CounterDef *def, int64 key)
{
	Oid			argtypes[2] = {INT4OID, INT8OID};
	Datum		values[2] = {Int32GetDatum(def->id), Int64GetDatum(key)};
	int			rc;

	rc = SPI_execute_plan(CounterPlan(&plan_marker,
									  "INSERT INTO counter.tally AS t"
									  " (counter_id, key, bucket, slot, value)"
									  " VALUES ($1, $2, '-infinity', 0, 0)"
									  " ON CONFLICT (counter_id, key, bucket, slot)"
									  " DO UPDATE SET value = t.value",
									  2, argtypes),
						  values, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "counter key lock failed: %s", SPI_result_code_string(rc));
	/* buffered increments of the key must now take this path too */
	CounterBufMarkBig(def->id, key);
}

/*
 * With the key locked, fail with 22003 if its total plus pending (not yet
 * written) is outside bigint.  Runs under a fresh snapshot, so it sees every
 * increment committed by the key's previous lock holders.
 */
static void
CounterCheckTotal(const CounterDef *def, int64 key, int64 pending)
{
	Oid			argtypes[3] = {INT4OID, INT8OID, INT8OID};
	Datum		values[3] = {Int32GetDatum(def->id), Int64GetDatum(key),
	Int64GetDatum(pending)};
	bool		isnull;
	int			rc;

	CounterLockKey(def, key);
	rc = SPI_execute_plan(CounterPlan(&plan_total,
									  "SELECT s > 9223372036854775807::numeric"
									  " OR s < (-9223372036854775808)::numeric"
									  " FROM (SELECT coalesce(sum(value), 0) + $3 AS s"
									  " FROM counter.tally"
									  " WHERE counter_id = $1 AND key = $2) AS t",
									  3, argtypes),
						  values, NULL, false, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "counter total check failed: %s", SPI_result_code_string(rc));
	if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
								   SPI_tuptable->tupdesc, 1, &isnull)))
		CounterOverflow(def, &key, false);
}

/* Whether a value is large enough that the key's total must be checked. */
static inline bool
CounterNeedsCheck(int64 v)
{
	return v >= COUNTER_CHECK_THRESHOLD || v <= -COUNTER_CHECK_THRESHOLD;
}

/* Add delta to the key's row for this minute and slot (inside the scope). */
void
CounterApply(const CounterDef *def, int64 key, int64 delta, TimestampTz bucket)
{
	Oid			argtypes[5] = {INT4OID, INT8OID, TIMESTAMPTZOID, INT2OID, INT8OID};
	Datum		values[5];
	bool		isnull;
	bool		checked = false;
	int64		row;
	bool		marked;
	int			rc;

	if (CounterNeedsCheck(delta))
	{
		CounterCheckTotal(def, key, delta);
		checked = true;
	}
	values[0] = Int32GetDatum(def->id);
	values[1] = Int64GetDatum(key);
	values[2] = TimestampTzGetDatum(bucket);
	values[3] = Int16GetDatum(CounterSlot(def));
	values[4] = Int64GetDatum(delta);
	/*
	 * The row usually exists (this backend wrote it earlier this minute), and
	 * a plain UPDATE is cheaper than INSERT ... ON CONFLICT, which locks the
	 * row before updating it.  The first write of a minute inserts.
	 */
	rc = CounterExecGuarded(def, &key, false, CounterPlan(&plan_update,
														  "UPDATE counter.tally SET value = value + $5"
														  " WHERE counter_id = $1 AND key = $2"
														  " AND bucket = $3 AND slot = $4"
														  " RETURNING value, " COUNTER_MARKER_EXISTS,
														  5, argtypes),
							values);
	if (rc != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "counter increment failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
	{
		rc = CounterExecGuarded(def, &key, false, CounterPlan(&plan_upsert,
															  "INSERT INTO counter.tally AS t"
															  " (counter_id, key, bucket, slot, value)"
															  " VALUES ($1, $2, $3, $4, $5)"
															  " ON CONFLICT (counter_id, key, bucket, slot)"
															  " DO UPDATE SET value = t.value + excluded.value"
															  " RETURNING t.value, " COUNTER_MARKER_EXISTS,
															  5, argtypes),
								values);
		if (rc != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "counter increment failed: %s", SPI_result_code_string(rc));
	}
	if (SPI_processed != 1)
		elog(ERROR, "counter increment wrote " UINT64_FORMAT " rows", SPI_processed);
	row = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull));
	marked = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
										SPI_tuptable->tupdesc, 2, &isnull));
	if (!checked && (marked || CounterNeedsCheck(row)))
		CounterCheckTotal(def, key, 0);
	CounterChangedNote(def->id, key);
	CounterExportNote(def, key, bucket, DatumGetInt16(values[3]));
}

/*
 * Add delta to the key's row for this minute and slot: straight through the
 * access methods when the row exists and the key is not big (tally_am.c),
 * else through SQL in the private scope.  Either way a row reaching 2^40
 * has the key's total checked.
 */
void
CounterIncrement(const CounterDef *def, int64 key, int64 delta, TimestampTz bucket)
{
	CounterScope scope;
	int64		row;

	/* a backfill the export must note takes the SQL path, which notes it */
	if (!CounterNeedsCheck(delta) && !CounterExportNoteNeeded(def, bucket) &&
		CounterTallyAdd(def->id, key, bucket, CounterSlot(def), delta, &row))
	{
		if (CounterNeedsCheck(row))
		{
			CounterEnter(&scope);
			CounterCheckTotal(def, key, 0);
			CounterLeave(&scope);
		}
		CounterChangedNote(def->id, key);
		return;
	}
	CounterEnter(&scope);
	CounterApply(def, key, delta, bucket);
	CounterLeave(&scope);
}

/*
 * The bigint id of a text key (inside the scope).  With create, a new key
 * gets the next id from counter.text_key_id_seq; ids are never reused, so the
 * mapping is stable.  Returns -1 for an unknown key without create.
 */
static int64
CounterTextKeyIdScoped(const CounterDef *def, text *key, bool create)
{
	Oid			argtypes[2] = {INT4OID, TEXTOID};
	Datum		values[2] = {Int32GetDatum(def->id), PointerGetDatum(key)};
	bool		isnull;
	int			attempt;

	for (attempt = 0; attempt < 2; attempt++)
	{
		int			rc;

		rc = SPI_execute_plan(CounterPlan(&plan_key_find,
										  "SELECT id FROM counter.text_key"
										  " WHERE counter_id = $1 AND name = $2",
										  2, argtypes),
							  values, NULL, attempt == 0, 1);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "text key lookup failed: %s", SPI_result_code_string(rc));
		if (SPI_processed == 1)
			return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));
		if (!create)
			return -1;

		/*
		 * Not there: insert it.  If a concurrent session inserted it first,
		 * DO NOTHING waits for it and returns no row; the next SELECT, under
		 * a new snapshot, then sees the committed id.
		 */
		rc = SPI_execute_plan(CounterPlan(&plan_key_make,
										  "INSERT INTO counter.text_key (counter_id, name, id)"
										  " VALUES ($1, $2, nextval('counter.text_key_id_seq'))"
										  " ON CONFLICT DO NOTHING RETURNING id",
										  2, argtypes),
							  values, NULL, false, 1);
		if (rc != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "text key insert failed: %s", SPI_result_code_string(rc));
		if (SPI_processed == 1)
			return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));
		CommandCounterIncrement();
	}
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not map text key \"%s\" of counter \"%s\"",
					text_to_cstring(key), def->name),
			 errdetail("A concurrent transaction created the same key."),
			 errhint("Retry the transaction.")));
	return -1;
}

/* Public wrapper: enter the private scope to map a text key. */
int64
CounterTextKeyId(const CounterDef *def, text *key, bool create)
{
	CounterScope scope;
	int64		id;

	CounterEnter(&scope);
	id = CounterTextKeyIdScoped(def, key, create);
	CounterLeave(&scope);
	return id;
}

/*
 * Resolve argument argno, a bigint or a text key, to the key id for def.
 * A text key for a bigint counter must spell a bigint; a bigint key for a
 * text counter is refused.  Text keys of text counters go through the key
 * table: with create a new key gets an id, without it an unknown key
 * returns -1 with *known false.  Used by the write and the read paths.
 */
int64
CounterKeyArg(FunctionCallInfo fcinfo, int argno, const CounterDef *def,
			  bool create, bool *known)
{
	Oid			argtype = get_fn_expr_argtype(fcinfo->flinfo, argno);
	int64		id;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("key must not be null")));
	*known = true;
	if (argtype == INT8OID)
	{
		if (def->key_type == COUNTER_KEY_TEXT)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("counter \"%s\" has text keys", def->name),
					 errhint("Pass the key as text, e.g. '42'::text.")));
		return PG_GETARG_INT64(argno);
	}
	id = CounterKeyText(def, PG_GETARG_TEXT_PP(argno), create);
	*known = id >= 0;
	return id;
}

/*
 * A key given as text, for def: a bigint counter's must spell a bigint;
 * a text counter's goes through the key table (with create a new key gets
 * an id; without it an unknown key is -1).
 */
int64
CounterKeyText(const CounterDef *def, text *key, bool create)
{
	if (def->key_type == COUNTER_KEY_BIGINT)
	{
		char	   *s = text_to_cstring(key);
		char	   *end;
		int64		id;

		errno = 0;
		id = strtoi64(s, &end, 10);
		/* digits and a sign only: strtoi64 would skip leading blanks */
		if (!(isdigit((unsigned char) s[0]) || (s[0] == '-' && isdigit((unsigned char) s[1]))) ||
			*end != '\0' || errno != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("invalid key \"%s\" for counter \"%s\"", s, def->name),
					 errdetail("Counter \"%s\" has bigint keys.", def->name),
					 errhint("Create a counter with key_type => 'text' for text keys.")));
		return id;
	}
	return CounterTextKeyId(def, key, create);
}

/* Whether key has a marker row, i.e. some row of it once reached 2^40. */
bool
CounterKeyIsBig(const CounterDef *def, int64 key)
{
	CounterScope scope;
	Oid			argtypes[2] = {INT4OID, INT8OID};
	Datum		values[2] = {Int32GetDatum(def->id), Int64GetDatum(key)};
	int			rc;
	bool		big;
	bool		isnull;

	CounterEnter(&scope);
	rc = SPI_execute_plan(CounterPlan(&plan_is_big,
									  "SELECT " COUNTER_MARKER_EXISTS,
									  2, argtypes),
						  values, NULL, true, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "counter marker probe failed: %s", SPI_result_code_string(rc));
	big = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull));
	CounterLeave(&scope);
	return big;
}

/*
 * Apply a batch of increments (inside the scope): n tuples of (counter, key,
 * minute, delta), all written to `slot`.  Tuples of one (counter, key,
 * minute) are summed and rows are written in key order, so two batches never
 * deadlock on each other; tuples of counters that no longer exist are
 * dropped.  Keys left big are checked as CounterApply does.  def names the
 * counter in errors when the batch is of one counter (else NULL).  Returns
 * the number of rows written.
 */
uint64
CounterApplyBatch(const CounterDef *def, int n, Datum *counter_ids, Datum *keys,
				  Datum *buckets, Datum *deltas, int16 slot)
{
	Oid			argtypes[5] = {INT4ARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID,
	INT8ARRAYOID, INT2OID};
	Datum		values[5];
	int			rc;
	uint64		written;
	uint64		j;
	int32	   *check_ids;
	int64	   *check_keys;
	uint64		nchecks;

	values[0] = PointerGetDatum(construct_array(counter_ids, n, INT4OID, 4, true, TYPALIGN_INT));
	values[1] = PointerGetDatum(construct_array(keys, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[2] = PointerGetDatum(construct_array(buckets, n, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[3] = PointerGetDatum(construct_array(deltas, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[4] = Int16GetDatum(slot);

	rc = CounterExecGuarded(def, NULL, false, CounterPlan(&plan_batch,
														   "WITH d AS ("
														   "  SELECT c, k, b, sum(dl)::int8 AS dl"
														   "  FROM unnest($1, $2, $3, $4) AS u(c, k, b, dl)"
														   "  WHERE EXISTS (SELECT FROM counter.definition def WHERE def.id = u.c)"
														   "  GROUP BY c, k, b),"
														   " w AS ("
														   "  INSERT INTO counter.tally AS t"
														   "  (counter_id, key, bucket, slot, value)"
														   "  SELECT c, k, b, $5, dl FROM d WHERE dl <> 0 ORDER BY c, k, b"
														   "  ON CONFLICT (counter_id, key, bucket, slot)"
														   "  DO UPDATE SET value = t.value + excluded.value"
														   "  RETURNING t.counter_id, t.key, t.bucket, t.value)"
														   " SELECT w.counter_id, w.key,"
														   "  w.value >= 1099511627776 OR w.value <= -1099511627776"
														   "  OR d.dl >= 1099511627776 OR d.dl <= -1099511627776"
														   "  OR EXISTS (SELECT FROM counter.tally m"
														   "   WHERE m.counter_id = w.counter_id AND m.key = w.key"
														   "   AND m.bucket = '-infinity' AND m.slot = 0)"
														   " FROM w JOIN d ON d.c = w.counter_id AND d.k = w.key AND d.b = w.bucket"
														   " ORDER BY 1, 2",
														   5, argtypes),
							values);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "counter batch increment failed: %s", SPI_result_code_string(rc));
	written = SPI_processed;
	check_ids = palloc(sizeof(int32) * Max(written, 1));
	check_keys = palloc(sizeof(int64) * Max(written, 1));
	nchecks = 0;
	for (j = 0; j < written; j++)
	{
		HeapTuple	tup = SPI_tuptable->vals[j];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		int32		id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		int64		key = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));

		CounterChangedNote(id, key);
		if (!DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull)))
			continue;
		check_ids[nchecks] = id;
		check_keys[nchecks] = key;
		nchecks++;
	}
	for (j = 0; j < nchecks; j++)
	{
		CounterDef	def;

		if (j > 0 && check_ids[j] == check_ids[j - 1] && check_keys[j] == check_keys[j - 1])
			continue;
		CounterGetById(check_ids[j], &def);
		CounterCheckTotal(&def, check_keys[j], 0);
	}
	CounterExportNoteBatch(n, counter_ids, keys, buckets, slot);
	return written;
}
