/*
 * read.c
 *		The read paths: counter.get, counter.get_many and counter.window.
 *
 * A key's total is the sum of its tally rows; a window sums the rows whose
 * minute lies in it.  Reads run in the caller's snapshot, so they see the
 * session's own uncommitted increments and everything committed before.
 */
#include "counter.h"

#include "catalog/pg_type.h"
#include "access/htup_details.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "access/xact.h"
#include "common/int.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(counter_get);
PG_FUNCTION_INFO_V1(counter_get_many);
PG_FUNCTION_INFO_V1(counter_window);
PG_FUNCTION_INFO_V1(counter_key_list);

static SPIPlanPtr plan_get_many_text = NULL;

/* A 128-bit sum as a key's total; past bigint is the counter's overflow. */
static int64
CounterTotalOf(const CounterDef *def, const int64 *key, int128 sum)
{
	if (sum > PG_INT64_MAX || sum < PG_INT64_MIN)
		CounterOverflow(def, key, true);
	return (int64) sum;
}

/* The sum of all of a key's rows in the tables, in the caller's snapshot. */
static int64
CounterRowsSum(const CounterDef *def, int64 key)
{
	int64		sum;

	if (!CounterTallySums(def->id, 1, &key, &sum))
		CounterOverflow(def, &key, true);
	return sum;
}

/* CounterTallyVisit's visitor for a sum of values. */
static void
CounterSumRow(void *arg, TimestampTz bucket, int64 value)
{
	*(int128 *) arg += value;
}

/* Fetch the counter argument, refusing null. */
static void
CounterArg(FunctionCallInfo fcinfo, CounterDef *def)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("counter must not be null")));
	CounterGetById(PG_GETARG_INT32(0), def);
}

/*
 * Add what is not in the tables yet: the shared buffer's pending deltas as
 * seen by this statement's snapshot, and this transaction's own buffered
 * increments.
 */
static int64
CounterAddPending(const CounterDef *def, int64 key, int64 total,
				  TimestampTz from, TimestampTz to)
{
	int64		pending;

	pending = CounterBufPending(def->id, key, from, to, GetActiveSnapshot());
	if (pg_add_s64_overflow(pending, CounterLocalPending(def->id, key, from, to),
							&pending) ||
		pg_add_s64_overflow(total, pending, &total))
		CounterOverflow(def, &key, true);
	return total;
}

/* The time as of which this statement's snapshot is at least current. */
static TimestampTz
CounterSnapshotTime(void)
{
	return IsolationUsesXactSnapshot() ? GetCurrentTransactionStartTimestamp()
		: GetCurrentStatementStartTimestamp();
}

/*
 * counter.get(counter, key, max_age): the exact total, 0 for a key never
 * counted.  With max_age, a total computed by any session no longer than
 * max_age ago may be returned from the shared cache instead.
 */
Datum
counter_get(PG_FUNCTION_ARGS)
{
	CounterDef	def;
	int64		key;
	int64		total;
	int64		max_age_us = -1;
	bool		known;

	CounterArg(fcinfo, &def);
	if (PG_NARGS() > 2 && !PG_ARGISNULL(2))
	{
		Interval   *max_age = PG_GETARG_INTERVAL_P(2);

		if (max_age->month != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_age must not be given in months or years")));
		/* capped at 100 years: a longer age means any cached total */
		max_age_us = CounterIntervalUs(max_age);
		if (max_age_us < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_age must not be negative")));
		CounterRequireShmem("counter.get with max_age");
	}
	key = CounterKeyArg(fcinfo, 1, &def, false, &known);
	if (!known)
		PG_RETURN_INT64(0);
	if (max_age_us >= 0 && CounterCacheGet(def.id, key, max_age_us, &total))
	{
		CounterCountStat(def.id, COUNTER_STAT_CACHE_HITS, 1);
		PG_RETURN_INT64(total);
	}
	total = CounterRowsSum(&def, key);
	total = CounterAddPending(&def, key, total, DT_NOBEGIN, DT_NOEND);
	/* cache only what other sessions may see: nothing of ours uncommitted */
	if (max_age_us >= 0 && !CounterLocalWrites())
		CounterCachePut(def.id, key, total, CounterSnapshotTime());
	PG_RETURN_INT64(total);
}

/*
 * counter.window(counter, key, span, now): the count in [now - span, now),
 * summing the minute buckets that start in that range.
 */
Datum
counter_window(PG_FUNCTION_ARGS)
{
	CounterDef	def;
	int64		key;
	int64		total;
	int128		sum = 0;
	Interval   *span;
	TimestampTz now;
	TimestampTz from;
	Interval	zero = {0};
	bool		known;

	CounterArg(fcinfo, &def);
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("window span must not be null")));
	span = PG_GETARG_INTERVAL_P(2);
	if (DatumGetInt32(DirectFunctionCall2(interval_cmp, IntervalPGetDatum(span),
										  IntervalPGetDatum(&zero))) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("window span must not be negative"),
				 errhint("Give a span such as '1 hour'.")));
	now = PG_ARGISNULL(3) ? GetCurrentTransactionStartTimestamp()
		: PG_GETARG_TIMESTAMPTZ(3);
	if (TIMESTAMP_NOT_FINITE(now))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("now must be a finite timestamp")));
	/* a day is 24 hours and a month 30 days, whatever the session's time zone */
	from = now - CounterIntervalUs(span);
	key = CounterKeyArg(fcinfo, 1, &def, false, &known);
	if (!known)
		PG_RETURN_INT64(0);
	CounterTallyVisit(def.id, key, from, now, CounterSumRow, &sum);
	total = CounterTotalOf(&def, &key, sum);
	PG_RETURN_INT64(CounterAddPending(&def, key, total, from, now));
}

/*
 * get_many of bigint keys: every key's rows summed in one pass over the
 * primary key, plus what is pending; a null key reads 0.  keys come back
 * as text when they were given as an untyped literal.
 */
static void
CounterGetManyInt(const CounterDef *def, ReturnSetInfo *rsinfo, ArrayType *arr,
				  bool literal)
{
	int			n = ArrayGetNItems(ARR_NDIM(arr), ARR_DIMS(arr));
	bool	   *nulls = NULL;
	int64	   *ids;
	int64	   *sums = palloc(sizeof(int64) * Max(n, 1));
	int			i;

	if (ARR_ELEMTYPE(arr) != INT8OID)
		elog(ERROR, "get_many expected bigint keys, got type %u", ARR_ELEMTYPE(arr));
	if (!ARR_HASNULL(arr))
		ids = (int64 *) ARR_DATA_PTR(arr);	/* int8 elements, aligned */
	else
	{
		Datum	   *elems;

		deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
						  &elems, &nulls, &n);
		ids = palloc(sizeof(int64) * Max(n, 1));
		for (i = 0; i < n; i++)
			ids[i] = nulls[i] ? 0 : DatumGetInt64(elems[i]);
	}
	/* the tables, then the shared buffer for all keys at once, then our own */
	if (!CounterTallySums(def->id, n, ids, sums) ||
		!CounterBufPendingMany(def->id, n, ids, nulls, GetActiveSnapshot(), sums))
		CounterOverflow(def, NULL, true);
	if (!literal)
	{
		/*
		 * Two bigints and no nulls: one row is formed, and each result is
		 * that row with its values written over, copied into the tuplestore
		 * (forming each of 1,000 rows anew cost a tenth of the call).
		 */
		Datum		out[2] = {Int64GetDatum(0), Int64GetDatum(0)};
		bool		outnulls[2] = {false, false};
		HeapTuple	row = heap_form_tuple(rsinfo->setDesc, out, outnulls);
		int64	   *cols = (int64 *) ((char *) row->t_data + row->t_data->t_hoff);

		Assert(TupleDescAttr(rsinfo->setDesc, 0)->atttypid == INT8OID &&
			   TupleDescAttr(rsinfo->setDesc, 1)->atttypid == INT8OID);
		for (i = 0; i < n; i++)
		{
			if (nulls != NULL && nulls[i])
			{
				outnulls[0] = true;
				out[1] = Int64GetDatum(0);
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, outnulls);
				continue;
			}
			if (pg_add_s64_overflow(sums[i], CounterLocalPending(def->id, ids[i], DT_NOBEGIN,
																 DT_NOEND), &cols[1]))
				CounterOverflow(def, &ids[i], true);
			cols[0] = ids[i];
			tuplestore_puttuple(rsinfo->setResult, row);
		}
		heap_freetuple(row);
		return;
	}
	for (i = 0; i < n; i++)
	{
		bool		isnull = nulls != NULL && nulls[i];
		Datum		out[2];
		bool		outnulls[2] = {isnull, false};
		int64		total = 0;

		if (!isnull &&
			pg_add_s64_overflow(sums[i], CounterLocalPending(def->id, ids[i], DT_NOBEGIN,
															 DT_NOEND), &total))
			CounterOverflow(def, &ids[i], true);
		out[0] = isnull ? (Datum) 0 : CStringGetTextDatum(psprintf(INT64_FORMAT, ids[i]));
		out[1] = Int64GetDatum(total);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, outnulls);
	}
}

/* get_many of text keys: mapped through counter.text_key, in SQL. */
static void
CounterGetManyText(const CounterDef *def, ReturnSetInfo *rsinfo, Datum keys)
{
	CounterScope scope;
	Oid			argtypes[2] = {INT4OID, TEXTARRAYOID};
	Datum		values[2] = {Int32GetDatum(def->id), keys};
	int			rc;
	uint64		i;

	CounterEnter(&scope);
	rc = CounterExecGuarded(def, NULL, true, CounterPlan(&plan_get_many_text,
														  "SELECT u.k, coalesce((SELECT sum(t.value)::int8"
														  "  FROM counter.tally t"
														  "  WHERE t.counter_id = $1 AND t.key = m.id), 0), m.id"
														  " FROM unnest($2) WITH ORDINALITY AS u(k, o)"
														  " LEFT JOIN counter.text_key m"
														  "  ON m.counter_id = $1 AND m.name = u.k"
														  " ORDER BY u.o",
														  2, argtypes),
							values);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "counter read failed: %s", SPI_result_code_string(rc));
	for (i = 0; i < SPI_processed; i++)
	{
		Datum		out[2];
		bool		nulls[2];
		bool		noid;
		Datum		id;

		out[0] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &nulls[0]);
		out[1] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &nulls[1]);
		id = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3, &noid);
		if (!noid)
			out[1] = Int64GetDatum(CounterAddPending(def, DatumGetInt64(id),
													 DatumGetInt64(out[1]),
													 DT_NOBEGIN, DT_NOEND));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, nulls);
	}
	CounterLeave(&scope);
}

/*
 * counter.get_many(counter, keys): (key, value) for each key, in the order
 * given, 0 for keys never counted.  Takes bigint[] or, for text counters,
 * text[].
 */
Datum
counter_get_many(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CounterDef	def;
	Oid			arrtype = get_fn_expr_argtype(fcinfo->flinfo, 1);
	bool		literal = (arrtype == TEXTOID);
	bool		textkeys;
	Datum		keys;

	CounterArg(fcinfo, &def);
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("keys must not be null")));
	keys = PG_GETARG_DATUM(1);
	if (literal)
	{
		/*
		 * An array literal (an untyped list from a driver): read as an array
		 * of the counter's key type, keys returned as text.
		 */
		arrtype = def.key_type == COUNTER_KEY_TEXT ? TEXTARRAYOID : INT8ARRAYOID;
		keys = OidFunctionCall3(F_ARRAY_IN, CStringGetDatum(TextDatumGetCString(keys)),
								ObjectIdGetDatum(get_element_type(arrtype)),
								Int32GetDatum(-1));
	}
	textkeys = (arrtype == TEXTARRAYOID);
	if (textkeys != (def.key_type == COUNTER_KEY_TEXT))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("counter \"%s\" has %s keys", def.name,
						def.key_type == COUNTER_KEY_TEXT ? "text" : "bigint"),
				 errhint("Pass the keys as %s.",
						 def.key_type == COUNTER_KEY_TEXT ? "text[]" : "bigint[]")));
	if (ARR_NDIM(DatumGetArrayTypeP(keys)) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("keys must be a one-dimensional array")));
	InitMaterializedSRF(fcinfo, 0);
	if (textkeys)
		CounterGetManyText(&def, rsinfo, keys);
	else
		CounterGetManyInt(&def, rsinfo, DatumGetArrayTypeP(keys), literal);
	return (Datum) 0;
}

/*
 * counter.key_list(counter): every key the counter has rows for, as text
 * (for reconcile, which needs the keys the source does not name).  Keys
 * only in the shared buffer, never folded, are not listed.
 */
Datum
counter_key_list(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CounterDef	def;
	CounterScope scope;
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1];
	uint64		i;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("counter must not be null")));
	CounterGetById(PG_GETARG_INT32(0), &def);
	/* one column: a scalar result, described by the caller */
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	values[0] = Int32GetDatum(def.id);
	CounterEnter(&scope);
	if (SPI_execute_with_args(def.key_type == COUNTER_KEY_TEXT ?
							  "SELECT name FROM counter.text_key WHERE counter_id = $1 ORDER BY name" :
							  "SELECT key::text FROM (SELECT DISTINCT key FROM counter.tally WHERE counter_id = $1) k",
							  1, argtypes, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "listing the keys of counter \"%s\" failed", def.name);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
		bool		nulls[1] = {false};

		/* the tuplestore copies the value */
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &d, nulls);
	}
	CounterLeave(&scope);
	PG_RETURN_NULL();
}
