/*
 * write.c
 *		The write paths: counter.incr and counter.incr_many, with their
 *		arguments, limits and statistics; the rows themselves are written by
 *		tally.c, buffered increments by buffered.c.
 */
#include "counter.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "storage/backendid.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

PG_FUNCTION_INFO_V1(counter_incr);
PG_FUNCTION_INFO_V1(counter_incr_many);
PG_FUNCTION_INFO_V1(counter_key_id);
PG_FUNCTION_INFO_V1(counter_correct);


/*
 * The time of an increment: argument argno (`at`) when given, else the
 * transaction's start.  Backfills may reach any past time; a time more than
 * a minute ahead of the clock is refused.  Its minute is the bucket.
 */
static TimestampTz
CounterTimeArg(FunctionCallInfo fcinfo, int argno)
{
	TimestampTz at;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return GetCurrentTransactionStartTimestamp();
	at = PG_GETARG_TIMESTAMPTZ(argno);
	if (TIMESTAMP_NOT_FINITE(at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("increment time must be finite")));
	if (at > GetCurrentTimestamp() + USECS_PER_MINUTE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("increment time is in the future"),
				 errdetail("Time %s is more than one minute ahead of the server clock.",
						   timestamptz_to_str(at))));
	return at;
}

/* Refuse a delta larger than the counter's max_delta. */
static void
CounterCheckDelta(const CounterDef *def, int64 delta)
{
	if (def->max_delta > 0 && (delta > def->max_delta || delta < -def->max_delta))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("delta " INT64_FORMAT " exceeds max_delta " INT64_FORMAT " of counter \"%s\"",
						delta, def->max_delta, def->name),
				 errhint("Raise it with counter.alter('%s', max_delta => ...).", def->name)));
}

/* Error out on a null argument that has no meaning. */
static void
CounterNotNull(FunctionCallInfo fcinfo, int argno, const char *what)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
}

/* The statistic a durable increment of this counter counts under. */
static CounterStat
CounterPathStat(const CounterDef *def)
{
	switch (def->mode)
	{
		case COUNTER_MODE_DIRECT:
			return COUNTER_STAT_DIRECT;
		case COUNTER_MODE_SHARDED:
			return COUNTER_STAT_SHARDED;
		case COUNTER_MODE_BUFFERED:
			break;
	}
	return COUNTER_STAT_FALLBACK;
}

/*
 * counter.incr(counter, key, delta, at, event, actor): add delta to key,
 * attributed to the minute of `at` (default: the transaction's start),
 * inside the caller's transaction.  Buffered counters add to shared memory
 * at commit; the others write their slot row now.  Returns false when the
 * event was already counted within dedup_window or the actor has used up
 * max_per_actor for this key and rate_window; true when counted.
 */
Datum
counter_incr(PG_FUNCTION_ARGS)
{
	CounterDef	def;
	CounterScope scope;
	int64		key;
	int64		delta;
	TimestampTz when;
	TimestampTz bucket;
	bool		known;
	text	   *event = NULL;
	text	   *actor = NULL;

	PreventCommandIfReadOnly("counter.incr()");
	CounterNotNull(fcinfo, 0, "counter");
	CounterNotNull(fcinfo, 1, "key");
	CounterNotNull(fcinfo, 2, "delta");
	CounterGetById(PG_GETARG_INT32(0), &def);
	delta = PG_GETARG_INT64(2);
	CounterCheckDelta(&def, delta);
	when = CounterTimeArg(fcinfo, 3);
	bucket = CounterMinute(when);
	if (PG_NARGS() > 4 && !PG_ARGISNULL(4) && def.dedup_window_us > 0)
		event = PG_GETARG_TEXT_PP(4);
	if (PG_NARGS() > 5 && !PG_ARGISNULL(5) && def.max_per_actor > 0)
		actor = PG_GETARG_TEXT_PP(5);

	key = CounterKeyArg(fcinfo, 1, &def, true, &known);

	/*
	 * Limits: a duplicate spends no budget, and a refused increment marks no
	 * event as seen.  (A duplicate racing its original may still spend one
	 * unit of budget.)
	 */
	if (event || actor)
	{
		CounterStat refused = COUNTER_STAT_COUNT;

		CounterEnter(&scope);
		if (event && actor && CounterEventSeen(&def, event, when))
			refused = COUNTER_STAT_DEDUPED;
		else if (actor && !CounterActorAllow(&def, actor, key, when))
			refused = COUNTER_STAT_LIMITED;
		else if (event && !CounterEventRecord(&def, event, when))
			refused = COUNTER_STAT_DEDUPED;
		CounterLeave(&scope);
		if (refused != COUNTER_STAT_COUNT)
		{
			CounterCountStat(def.id, refused, 1);
			PG_RETURN_BOOL(false);
		}
	}
	if (delta == 0)
		PG_RETURN_BOOL(true);

	if (def.mode == COUNTER_MODE_BUFFERED &&
		CounterBufferedIncr(&def, key, delta, bucket))
	{
		CounterCountStat(def.id, COUNTER_STAT_BUFFERED, 1);
		PG_RETURN_BOOL(true);
	}
	CounterIncrement(&def, key, delta, bucket);
	CounterCountStat(def.id, CounterPathStat(&def), 1);
	PG_RETURN_BOOL(true);
}

/* Unpack a one-dimensional bigint array, refusing null elements. */
static int
CounterUnpackInt8Array(ArrayType *arr, const char *what, Datum **elems)
{
	bool	   *nulls;
	int			n;
	int			i;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array", what)));
	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  elems, &nulls, &n);
	for (i = 0; i < n; i++)
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not contain nulls", what)));
	return n;
}

/* keys and deltas of a batch must pair up */
static void
CounterSameLength(int nkeys, int ndeltas)
{
	if (ndeltas != nkeys)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("keys and deltas must have the same length"),
				 errdetail("keys has %d elements, deltas has %d.", nkeys, ndeltas)));
}

/* Apply a batch of (key, delta) at one bucket through the durable path, and count it. */
static void
CounterApplyMany(const CounterDef *def, int nkeys, Datum *keys, Datum *deltas,
				 TimestampTz bucket)
{
	CounterScope scope;
	Datum	   *ids = palloc(sizeof(Datum) * nkeys);
	Datum	   *buckets = palloc(sizeof(Datum) * nkeys);
	int			i;

	for (i = 0; i < nkeys; i++)
	{
		ids[i] = Int32GetDatum(def->id);
		buckets[i] = TimestampTzGetDatum(bucket);
	}
	CounterEnter(&scope);
	CounterApplyBatch(def, nkeys, ids, keys, buckets, deltas, CounterSlot(def));
	CounterLeave(&scope);
	CounterCountStat(def->id, CounterPathStat(def), nkeys);
}

/*
 * counter.incr_many(counter, keys, deltas, at): add deltas[i] to keys[i] for
 * every i in one statement (deltas null means 1 each).  Returns the number
 * of increments applied.  Buffered counters take the durable path here: a
 * batch is already one round trip.
 */
Datum
counter_incr_many(PG_FUNCTION_ARGS)
{
	CounterDef	def;
	Datum	   *keys;
	Datum	   *deltas;
	int			nkeys;
	int			ndeltas;
	int			i;
	TimestampTz bucket;

	PreventCommandIfReadOnly("counter.incr_many()");
	CounterNotNull(fcinfo, 0, "counter");
	CounterNotNull(fcinfo, 1, "keys");
	CounterGetById(PG_GETARG_INT32(0), &def);
	if (def.key_type == COUNTER_KEY_TEXT)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("counter \"%s\" has text keys", def.name),
				 errhint("counter.incr_many takes bigint keys; call counter.incr for each text key.")));
	nkeys = CounterUnpackInt8Array(PG_GETARG_ARRAYTYPE_P(1), "keys", &keys);
	if (PG_ARGISNULL(2))
	{
		deltas = palloc(sizeof(Datum) * Max(nkeys, 1));
		for (i = 0; i < nkeys; i++)
			deltas[i] = Int64GetDatum(1);
		ndeltas = nkeys;
	}
	else
		ndeltas = CounterUnpackInt8Array(PG_GETARG_ARRAYTYPE_P(2), "deltas", &deltas);
	CounterSameLength(nkeys, ndeltas);
	if (nkeys == 0)
		PG_RETURN_INT64(0);
	bucket = CounterMinute(CounterTimeArg(fcinfo, 3));
	for (i = 0; i < nkeys; i++)
		CounterCheckDelta(&def, DatumGetInt64(deltas[i]));
	CounterApplyMany(&def, nkeys, keys, deltas, bucket);
	PG_RETURN_INT64(nkeys);
}

/* counter.key_id(counter, key text): the stable id of a text key, or null. */
Datum
counter_key_id(PG_FUNCTION_ARGS)
{
	CounterDef	def;
	int64		id;

	CounterGetById(PG_GETARG_INT32(0), &def);
	if (def.key_type != COUNTER_KEY_TEXT)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("counter \"%s\" has bigint keys", def.name)));
	id = CounterTextKeyId(&def, PG_GETARG_TEXT_PP(1), false);
	if (id < 0)
		PG_RETURN_NULL();
	PG_RETURN_INT64(id);
}

/*
 * counter.correct(counter, keys text[], deltas bigint[]): what reconcile
 * applies.  Like incr_many at the current minute, for bigint and text
 * keys, and without max_delta: a correction may be as large as the drift
 * it repairs.  Event ids and actors do not apply to it.
 */
Datum
counter_correct(PG_FUNCTION_ARGS)
{
	CounterDef	def;
	Datum	   *texts;
	bool	   *tnulls;
	Datum	   *deltas;
	Datum	   *keys;
	ArrayType  *arr;
	int			nkeys;
	int			ndeltas;
	int			i;
	TimestampTz bucket;

	PreventCommandIfReadOnly("counter.correct()");
	CounterNotNull(fcinfo, 0, "counter");
	CounterNotNull(fcinfo, 1, "keys");
	CounterNotNull(fcinfo, 2, "deltas");
	CounterGetById(PG_GETARG_INT32(0), &def);
	arr = PG_GETARG_ARRAYTYPE_P(1);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("keys must be a one-dimensional array")));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &texts, &tnulls, &nkeys);
	ndeltas = CounterUnpackInt8Array(PG_GETARG_ARRAYTYPE_P(2), "deltas", &deltas);
	CounterSameLength(nkeys, ndeltas);
	if (nkeys == 0)
		PG_RETURN_INT64(0);
	keys = palloc(sizeof(Datum) * nkeys);
	bucket = CounterMinute(GetCurrentTransactionStartTimestamp());
	for (i = 0; i < nkeys; i++)
	{
		if (tnulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("keys must not contain nulls")));
		/* the key as incr(counter, text) reads it */
		keys[i] = Int64GetDatum(CounterKeyText(&def, DatumGetTextPP(texts[i]), true));
	}
	CounterApplyMany(&def, nkeys, keys, deltas, bucket);
	PG_RETURN_INT64(nkeys);
}
