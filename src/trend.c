/*
 * trend.c
 *		Trend and decay of one key: trend_score(), decayed_score() and
 *		decayed_value(), and the accumulator the ranking (rank.c) uses too.
 *
 * One accumulator (RankAcc) turns a key's rows into its total, its count in
 * each trend span (window rule: a bucket counts when its start lies in
 * [t - span, t)), its trend (sum of weight x count, in span order) and its
 * decayed mass.  The mass is a forward-decayed sum against a landmark, kept
 * in the log domain with a sign, so that neither 0.5^(age / half_life) of
 * an old bucket underflows nor 2^(time / half_life) of a late one
 * overflows: with M = sum of value x 2^((bucket - landmark) / half_life),
 * dsign = sign(M) and dlog = dsign x log2 |M| (so that ordering by (dsign,
 * dlog) orders by the score at any time), and the score at T is
 * dsign x 2^(dsign x dlog - (T - landmark) / half_life).  The
 * SQL functions and the ranking use the same code on the same rows in the
 * same order, so a refresh at t stores exactly what trend_score(), get()
 * and decayed_score() say at t.
 */
#include "counter_rank.h"

#include <float.h>
#include <math.h>

#include "access/xact.h"
#include "utils/float.h"

PG_FUNCTION_INFO_V1(counter_trend_score);
PG_FUNCTION_INFO_V1(counter_decayed_score);
PG_FUNCTION_INFO_V1(counter_decayed_value);

/* Saturate a 128-bit sum to bigint. */
static inline int64
CounterClamp(int128 v)
{
	if (v > PG_INT64_MAX)
		return PG_INT64_MAX;
	if (v < PG_INT64_MIN)
		return PG_INT64_MIN;
	return (int64) v;
}

/* Start accumulating a key. */
void
CounterAccReset(RankAcc *acc, int64 key)
{
	memset(acc, 0, sizeof(*acc));
	acc->key = key;
	acc->m = -INFINITY;
}

/* Add one row (or pending amount) of the key at bucket, as of run->t. */
void
CounterAccAdd(const RankRun *run, RankAcc *acc, TimestampTz bucket, int64 value)
{
	const CounterDef *def = run->def;
	int			i;

	acc->total += value;
	if (TIMESTAMP_NOT_FINITE(bucket))
		return;
	if (bucket < run->t)
		for (i = 0; i < def->nspans; i++)
			if (bucket >= run->lows[i])
				acc->windows[i] += value;
	if (bucket <= run->t && value != 0)
	{
		double		e = (double) (bucket - COUNTER_LANDMARK) / (double) def->half_life_us;

		if (acc->m == -INFINITY)
		{
			acc->m = e;
			acc->s = (double) value;
		}
		else if (e > acc->m)
		{
			acc->s = acc->s * exp2(acc->m - e) + (double) value;
			acc->m = e;
		}
		else
			acc->s += (double) value * exp2(e - acc->m);
	}
}

/* Sum of weight x count over the spans, in span order. */
static double
CounterTrendOf(const CounterDef *def, const int64 *windows)
{
	double		trend = 0;
	int			i;

	for (i = 0; i < def->nspans; i++)
		trend += def->weight[i] * (double) windows[i];
	return trend;
}

/* The ranked values of an accumulated key. */
void
CounterAccFinish(const CounterDef *def, const RankAcc *acc, RankRow *row)
{
	int			i;

	row->key = acc->key;
	row->total = CounterClamp(acc->total);
	for (i = 0; i < def->nspans; i++)
		row->windows[i] = CounterClamp(acc->windows[i]);
	row->trend = CounterTrendOf(def, row->windows);
	if (acc->s > 0 || acc->s < 0)
	{
		/* negative masses keep -log2 |mass|, so (dsign, dlog) sorts by value */
		row->dsign = acc->s > 0 ? 1 : -1;
		row->dlog = row->dsign * (acc->m + log2(fabs(acc->s)));
	}
	else
	{
		row->dsign = 0;
		row->dlog = 0;
	}
}

/*
 * The decayed score at T of a mass (dsign, dlog): dsign x 2^(dlog - (T -
 * landmark) / half_life), 0 where it underflows, never an error.
 */
double
CounterDecayedAt(int16 dsign, double dlog, int64 half_life_us, TimestampTz at)
{
	double		x;

	if (dsign == 0)
		return 0;
	x = dsign * dlog - (double) (at - COUNTER_LANDMARK) / (double) half_life_us;
	if (x < -1100)
		return 0;
	if (x > 1023)
		return dsign > 0 ? DBL_MAX : -DBL_MAX;
	return dsign * exp2(x);
}

/* Prepare a run of def as of t. */
void
CounterRunInit(RankRun *run, const CounterDef *def, TimestampTz t)
{
	int			i;

	memset(run, 0, sizeof(*run));
	run->def = def;
	run->t = t;
	for (i = 0; i < def->nspans; i++)
		run->lows[i] = t - def->span_us[i];
}

/* The time argument argno (now by default), which must be finite. */
TimestampTz
CounterNowArg(FunctionCallInfo fcinfo, int argno)
{
	TimestampTz t;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return GetCurrentTransactionStartTimestamp();
	t = PG_GETARG_TIMESTAMPTZ(argno);
	if (TIMESTAMP_NOT_FINITE(t))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("now must be a finite timestamp")));
	return t;
}

/* The counter argument, which must not be null. */
void
CounterArgDef(FunctionCallInfo fcinfo, CounterDef *def)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("counter must not be null")));
	CounterGetById(PG_GETARG_INT32(0), def);
}

/* What CounterAccRow accumulates into. */
typedef struct RankVisit
{
	const RankRun *run;
	RankAcc    *acc;
} RankVisit;

/* CounterTallyVisit's visitor: add one row to the accumulator. */
static void
CounterAccRow(void *arg, TimestampTz bucket, int64 value)
{
	RankVisit  *v = arg;

	CounterAccAdd(v->run, v->acc, bucket, value);
}

/*
 * Accumulate one key's rows with buckets in [from, to) (all rows with
 * DT_NOBEGIN, DT_NOEND), in (bucket, slot) order, plus what is still
 * pending for it in the buffer and in this transaction, as of run->t: one
 * pass over the key's rows for every span at once.
 */
static void
CounterAccKey(RankRun *run, RankAcc *acc, int64 key, TimestampTz from, TimestampTz to)
{
	const CounterDef *def = run->def;
	RankVisit	visit = {run, acc};
	TimestampTz buckets[COUNTER_BUF_SLOTS + 8];
	int64		amounts[COUNTER_BUF_SLOTS + 8];
	int			npending;
	int			i;

	CounterAccReset(acc, key);
	CounterTallyVisit(def->id, key, from, to, CounterAccRow, &visit);
	npending = CounterPendingBuckets(def->id, key, from, to, buckets, amounts,
									 lengthof(buckets));
	for (i = 0; i < npending; i++)
		CounterAccAdd(run, acc, buckets[i], amounts[i]);
}

/* Fetch the key argument; false for a text key never counted (all zero). */
static bool
CounterRankKeyArg(FunctionCallInfo fcinfo, const CounterDef *def, int64 *key)
{
	bool		known;

	*key = CounterKeyArg(fcinfo, 1, def, false, &known);
	return known;
}

/*
 * counter.trend_score(counter, key, now): sum of weight x count over the
 * counter's trend spans, by default 1.0 x last hour + 0.5 x last day + 0.1
 * x last week; one read of the key's rows within the longest span.
 */
Datum
counter_trend_score(PG_FUNCTION_ARGS)
{
	CounterDef	def;
	RankRun		run;
	RankAcc		acc;
	RankRow		row;
	TimestampTz t;
	TimestampTz from;
	int64		key;
	int			i;

	CounterArgDef(fcinfo, &def);
	t = CounterNowArg(fcinfo, 2);
	if (!CounterRankKeyArg(fcinfo, &def, &key))
		PG_RETURN_FLOAT8(0);
	CounterRunInit(&run, &def, t);
	from = t;
	for (i = 0; i < def.nspans; i++)
		from = Min(from, run.lows[i]);
	CounterAccKey(&run, &acc, key, from, t);
	CounterAccFinish(&def, &acc, &row);
	PG_RETURN_FLOAT8(row.trend);
}

/*
 * counter.decayed_score(counter, key, now): sum of each increment x 0.5 ^
 * (age / half_life) at minute resolution; never underflows.
 */
Datum
counter_decayed_score(PG_FUNCTION_ARGS)
{
	CounterDef	def;
	RankRun		run;
	RankAcc		acc;
	RankRow		row;
	TimestampTz t;
	int64		key;

	CounterArgDef(fcinfo, &def);
	t = CounterNowArg(fcinfo, 2);
	if (!CounterRankKeyArg(fcinfo, &def, &key))
		PG_RETURN_FLOAT8(0);
	CounterRunInit(&run, &def, t);
	CounterAccKey(&run, &acc, key, DT_NOBEGIN, DT_NOEND);
	CounterAccFinish(&def, &acc, &row);
	PG_RETURN_FLOAT8(CounterDecayedAt(row.dsign, row.dlog, def.half_life_us, t));
}

/*
 * counter.decayed_value(dsign, dlog, half_life, at): a ranked decayed mass
 * as a score at time at (for top()).
 */
Datum
counter_decayed_value(PG_FUNCTION_ARGS)
{
	int16		dsign = PG_GETARG_INT16(0);
	double		dlog = PG_GETARG_FLOAT8(1);
	int64		half_life_us = CounterIntervalUs(PG_GETARG_INTERVAL_P(2));
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(3);

	if (half_life_us <= 0 || TIMESTAMP_NOT_FINITE(at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("half_life must be positive and at finite")));
	PG_RETURN_FLOAT8(CounterDecayedAt(dsign, dlog, half_life_us, at));
}
