/*
 * rank.c
 *		The ranking top() reads, kept by refresh_ranking() and by the
 *		maintenance process, from the accumulator of trend.c.
 *
 * A refresh reads only what can have changed since the last one: the keys
 * whose rows changed (changed.c) and the keys with a bucket that crossed a
 * span's edge, or entered the windows, between the two refreshes; each of
 * those keys is recomputed from its rows.  It rebuilds a counter from all
 * its rows only when asked (full), the first time, when its spans, weights
 * or half-life changed, when time went backwards, or when the changed keys
 * of its database were lost (a new epoch: a restart, an overflow).  Rows
 * are written only when a value changed.
 */
#include "counter_rank.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(counter_refresh_ranking);
PG_FUNCTION_INFO_V1(counter_rank_exact);

/* Keys per upsert, keys per read of their rows, rows per cursor fetch. */
#define COUNTER_RANK_BATCH 10000
#define COUNTER_RANK_FETCH 50000

/* advisory lock class of a counter's ranking: 'coun' */
#define COUNTER_RANK_LOCK 0x636f756e

static void CounterRunAdd(RankRun *run, const RankAcc *acc);

static SPIPlanPtr plan_state = NULL;
static SPIPlanPtr plan_all_rows = NULL;
static SPIPlanPtr plan_key_rows = NULL;
static SPIPlanPtr plan_crossing = NULL;
static SPIPlanPtr plan_next_due = NULL;
static SPIPlanPtr plan_gone = NULL;
static SPIPlanPtr plan_save_state = NULL;
static SPIPlanPtr plan_upsert[COUNTER_MAX_SPANS + 1];

/* The SQL that upserts nspans-span rows, built and prepared once per count. */
static SPIPlanPtr
CounterUpsertPlan(int nspans)
{
	StringInfoData sql;
	Oid			argtypes[7 + COUNTER_MAX_SPANS];
	int			i;

	if (plan_upsert[nspans])
		return plan_upsert[nspans];
	initStringInfo(&sql);
	appendStringInfoString(&sql,
						   "INSERT INTO counter.ranking AS r"
						   " (counter_id, key, total, windows, trend, dsign, dlog, refreshed_at)"
						   " SELECT $1, u.k, u.t, ARRAY[");
	for (i = 0; i < nspans; i++)
		appendStringInfo(&sql, "%su.w%d", i ? ", " : "", i);
	appendStringInfoString(&sql, "]::pg_catalog.int8[], u.tr, u.ds, u.dl, $2"
						   " FROM unnest($3, $4, $5, $6, $7");
	for (i = 0; i < nspans; i++)
		appendStringInfo(&sql, ", $%d", 8 + i);
	appendStringInfoString(&sql, ") AS u(k, t, tr, ds, dl");
	for (i = 0; i < nspans; i++)
		appendStringInfo(&sql, ", w%d", i);
	appendStringInfoString(&sql,
						   ") ON CONFLICT (counter_id, key) DO UPDATE SET"
						   " total = excluded.total, windows = excluded.windows,"
						   " trend = excluded.trend, dsign = excluded.dsign,"
						   " dlog = excluded.dlog, refreshed_at = excluded.refreshed_at"
						   " WHERE (r.total, r.windows, r.trend, r.dsign, r.dlog)"
						   " IS DISTINCT FROM (excluded.total, excluded.windows,"
						   " excluded.trend, excluded.dsign, excluded.dlog)");
	argtypes[0] = INT4OID;
	argtypes[1] = TIMESTAMPTZOID;
	argtypes[2] = INT8ARRAYOID;
	argtypes[3] = INT8ARRAYOID;
	argtypes[4] = FLOAT8ARRAYOID;
	argtypes[5] = INT2ARRAYOID;
	argtypes[6] = FLOAT8ARRAYOID;
	for (i = 0; i < nspans; i++)
		argtypes[7 + i] = INT8ARRAYOID;
	plan_upsert[nspans] = CounterPlan(&plan_upsert[nspans], sql.data, 7 + nspans, argtypes);
	pfree(sql.data);
	return plan_upsert[nspans];
}

/* Write the run's accumulated rows (in scope); only changed values are written. */
static void
CounterRunFlush(RankRun *run)
{
	const CounterDef *def = run->def;
	int			n = run->nrows;
	Datum		values[7 + COUNTER_MAX_SPANS];
	Datum	   *k,
			   *t,
			   *tr,
			   *ds,
			   *dl;
	int			i,
				j;
	int			rc;

	if (n == 0)
		return;
	k = palloc(sizeof(Datum) * n);
	t = palloc(sizeof(Datum) * n);
	tr = palloc(sizeof(Datum) * n);
	ds = palloc(sizeof(Datum) * n);
	dl = palloc(sizeof(Datum) * n);
	for (i = 0; i < n; i++)
	{
		k[i] = Int64GetDatum(run->rows[i].key);
		t[i] = Int64GetDatum(run->rows[i].total);
		tr[i] = Float8GetDatum(run->rows[i].trend);
		ds[i] = Int16GetDatum(run->rows[i].dsign);
		dl[i] = Float8GetDatum(run->rows[i].dlog);
	}
	values[0] = Int32GetDatum(def->id);
	values[1] = TimestampTzGetDatum(run->t);
	values[2] = PointerGetDatum(construct_array(k, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[3] = PointerGetDatum(construct_array(t, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[4] = PointerGetDatum(construct_array(tr, n, FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[5] = PointerGetDatum(construct_array(ds, n, INT2OID, 2, true, TYPALIGN_SHORT));
	values[6] = PointerGetDatum(construct_array(dl, n, FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	for (j = 0; j < def->nspans; j++)
	{
		Datum	   *w = palloc(sizeof(Datum) * n);

		for (i = 0; i < n; i++)
			w[i] = Int64GetDatum(run->rows[i].windows[j]);
		values[7 + j] = PointerGetDatum(construct_array(w, n, INT8OID, 8, FLOAT8PASSBYVAL,
														TYPALIGN_DOUBLE));
	}
	rc = SPI_execute_plan(CounterUpsertPlan(def->nspans), values, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "writing the ranking failed: %s", SPI_result_code_string(rc));
	run->changed += SPI_processed;
	run->nrows = 0;
}

/* Emit for a refresh: finish a key into the batch, writing a full batch. */
static void
CounterRunAdd(RankRun *run, const RankAcc *acc)
{
	if (run->rows == NULL)
		run->rows = palloc(sizeof(RankRow) * COUNTER_RANK_BATCH);
	CounterAccFinish(run->def, acc, &run->rows[run->nrows++]);
	if (run->nrows == COUNTER_RANK_BATCH)
		CounterRunFlush(run);
}

/*
 * Accumulate rows (key, bucket, value) ordered by key, of one result;
 * *acc and *have carry a key across results.  Keys found are appended to
 * found (if not NULL).
 */
static void
CounterRunTuples(RankRun *run, SPITupleTable *tt, uint64 ntuples, RankAcc *acc,
				 bool *have, int64 *found, int *nfound)
{
	uint64		i;

	for (i = 0; i < ntuples; i++)
	{
		HeapTuple	tup = tt->vals[i];
		TupleDesc	desc = tt->tupdesc;
		bool		isnull;
		int64		key = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		TimestampTz b = DatumGetTimestampTz(SPI_getbinval(tup, desc, 2, &isnull));
		int64		v = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));

		if (!*have || key != acc->key)
		{
			if (*have)
				run->emit(run, acc);
			CounterAccReset(acc, key);
			*have = true;
			if (found)
				found[(*nfound)++] = key;
		}
		CounterAccAdd(run, acc, b, v);
	}
}

/*
 * Accumulate every row a plan returns (key, bucket, value, ordered by key),
 * through a cursor, a fetch at a time: for a whole counter.
 */
static void
CounterRunRows(RankRun *run, SPIPlanPtr plan, Datum *values)
{
	Portal		portal = SPI_cursor_open(NULL, plan, values, NULL, true);
	RankAcc		acc;
	bool		have = false;

	for (;;)
	{
		SPITupleTable *tt;
		uint64		ntuples;

		SPI_cursor_fetch(portal, true, COUNTER_RANK_FETCH);
		/* emit() may run SPI (a batch's upsert): keep this fetch's result */
		tt = SPI_tuptable;
		ntuples = SPI_processed;
		if (ntuples == 0)
			break;
		CounterRunTuples(run, tt, ntuples, &acc, &have, NULL, NULL);
		SPI_freetuptable(tt);
		CHECK_FOR_INTERRUPTS();
	}
	if (have)
		run->emit(run, &acc);
	SPI_cursor_close(portal);
}

/*
 * Accumulate the rows of a batch of keys (sorted) of def, in one statement:
 * their rows are bounded by the batch.  Keys found are appended to found.
 */
static void
CounterRunKeys(RankRun *run, const int64 *keys, int n, int64 *found, int *nfound)
{
	Oid			at[2] = {INT4OID, INT8ARRAYOID};
	Datum		kv[2];
	Datum	   *k = palloc(sizeof(Datum) * n);
	SPITupleTable *tt;
	uint64		ntuples;
	RankAcc		acc;
	bool		have = false;
	int			j;
	int			rc;

	for (j = 0; j < n; j++)
		k[j] = Int64GetDatum(keys[j]);
	kv[0] = Int32GetDatum(run->def->id);
	kv[1] = PointerGetDatum(construct_array(k, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	rc = SPI_execute_plan(CounterPlan(&plan_key_rows,
									  /* one index lookup per key, whatever the statistics say */
									  "SELECT k.key, x.bucket, x.value FROM unnest($2) AS k(key)"
									  " CROSS JOIN LATERAL (SELECT t.bucket, t.slot, t.value"
									  "  FROM counter.tally t WHERE t.counter_id = $1 AND t.key = k.key"
									  "  ORDER BY t.bucket, t.slot) AS x"
									  " ORDER BY k.key, x.bucket, x.slot",
									  2, at),
						  kv, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading keys' rows failed: %s", SPI_result_code_string(rc));
	tt = SPI_tuptable;
	ntuples = SPI_processed;
	CounterRunTuples(run, tt, ntuples, &acc, &have, found, nfound);
	if (have)
		run->emit(run, &acc);
	SPI_freetuptable(tt);
	pfree(k);
}

/* Every row of counter $1, in key order (as every read of a key orders them). */
static SPIPlanPtr
CounterAllRowsPlan(void)
{
	Oid			at[1] = {INT4OID};

	return CounterPlan(&plan_all_rows,
					   "SELECT key, bucket, value FROM counter.tally"
					   " WHERE counter_id = $1 ORDER BY key, bucket, slot",
					   1, at);
}

/* qsort: bigint keys ascending. */
static int
CounterKeyCmp(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : x > y;
}

/*
 * The keys of def with a bucket that crossed an edge between t1 and t: out
 * of a span ([t1 - span, t - span)) or into the windows ([t1, t], the end
 * included for the decay).  Each kind of row is found through its partial
 * index.  Appends to keys.
 */
static void
CounterCrossingKeys(RankRun *run, TimestampTz t1, int64 **keys, int *nkeys, int *cap)
{
	const CounterDef *def = run->def;
	Oid			argtypes[3] = {INT4OID, TIMESTAMPTZARRAYOID, TIMESTAMPTZARRAYOID};
	Datum		values[3];
	Datum		lo[COUNTER_MAX_SPANS + 1];
	Datum		hi[COUNTER_MAX_SPANS + 1];
	int			n = 0;
	int			i;
	uint64		j;
	int			rc;

	for (i = 0; i < def->nspans; i++)
	{
		lo[n] = TimestampTzGetDatum(t1 - def->span_us[i]);
		hi[n++] = TimestampTzGetDatum(run->t - def->span_us[i]);
	}
	lo[n] = TimestampTzGetDatum(t1);
	hi[n++] = TimestampTzGetDatum(run->t + 1);
	values[0] = Int32GetDatum(def->id);
	values[1] = PointerGetDatum(construct_array(lo, n, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[2] = PointerGetDatum(construct_array(hi, n, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
#define COUNTER_CROSS(pred) \
	" SELECT tl.key FROM unnest($2, $3) AS r(lo, hi) JOIN counter.tally tl" \
	" ON tl.counter_id = $1 AND " pred " AND tl.bucket >= r.lo AND tl.bucket < r.hi"
	rc = SPI_execute_plan(CounterPlan(&plan_crossing,
									  COUNTER_CROSS("(tl.slot >= 0 OR tl.slot = -4)")
									  " UNION" COUNTER_CROSS("tl.slot = -1")
									  " UNION" COUNTER_CROSS("tl.slot = -2")
									  " UNION" COUNTER_CROSS("tl.slot = -3"),
									  3, argtypes),
						  values, NULL, true, 0);
#undef COUNTER_CROSS
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "finding keys across window edges failed: %s", SPI_result_code_string(rc));
	for (j = 0; j < SPI_processed; j++)
	{
		bool		isnull;

		if (*nkeys == *cap)
		{
			*cap = Max(*cap * 2, 1024);
			*keys = repalloc_huge(*keys, sizeof(int64) * *cap);
		}
		(*keys)[(*nkeys)++] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[j],
														  SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * The earliest time after t at which a row of def changes its ranked values
 * without being written: a bucket leaving a span (at bucket + span) or a
 * future bucket entering the windows.  Until then a refresh with no changed
 * keys has nothing to do.  DT_NOEND if no row ever will.  One probe of each
 * partial index per span.
 */
static TimestampTz
CounterNextDue(const CounterDef *def, TimestampTz t)
{
	Oid			argtypes[2] = {INT4OID, TIMESTAMPTZARRAYOID};
	Datum		values[2];
	Datum		lo[COUNTER_MAX_SPANS + 1];
	int64		off[COUNTER_MAX_SPANS + 1];
	TimestampTz due = DT_NOEND;
	int			n = 0;
	int			i;
	uint64		j;
	int			rc;

	for (i = 0; i < def->nspans; i++)
	{
		lo[n] = TimestampTzGetDatum(t - def->span_us[i]);
		off[n++] = def->span_us[i];
	}
	lo[n] = TimestampTzGetDatum(t + 1);
	off[n++] = 0;
	values[0] = Int32GetDatum(def->id);
	values[1] = PointerGetDatum(construct_array(lo, n, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
#define COUNTER_NEXT(pred) \
	" SELECT r.i, (SELECT min(tl.bucket) FROM counter.tally tl" \
	" WHERE tl.counter_id = $1 AND " pred " AND tl.bucket >= r.lo) AS b" \
	" FROM unnest($2) WITH ORDINALITY AS r(lo, i)"
	rc = SPI_execute_plan(CounterPlan(&plan_next_due,
									  COUNTER_NEXT("(tl.slot >= 0 OR tl.slot = -4)")
									  " UNION ALL" COUNTER_NEXT("tl.slot = -1")
									  " UNION ALL" COUNTER_NEXT("tl.slot = -2")
									  " UNION ALL" COUNTER_NEXT("tl.slot = -3"),
									  2, argtypes),
						  values, NULL, true, 0);
#undef COUNTER_NEXT
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "finding the ranking's next edge failed: %s", SPI_result_code_string(rc));
	for (j = 0; j < SPI_processed; j++)
	{
		bool		null1,
					null2;
		int64		k = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[j], SPI_tuptable->tupdesc, 1, &null1));
		TimestampTz b = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[j], SPI_tuptable->tupdesc, 2, &null2));

		if (null1 || null2 || k < 1 || k > n || TIMESTAMP_NOT_FINITE(b))
			continue;
		/* spans are checked at alter: bucket + span stays in range */
		due = Min(due, b + off[k - 1]);
	}
	SPI_freetuptable(SPI_tuptable);
	return due;
}

/* Delete the ranking rows of keys that have no row left (in scope). */
static void
CounterRankGone(const CounterDef *def, const int64 *keys, int n)
{
	Oid			argtypes[2] = {INT4OID, INT8ARRAYOID};
	Datum		values[2];
	Datum	   *k;
	int			i;
	int			rc;

	if (n == 0)
		return;
	k = palloc(sizeof(Datum) * n);
	for (i = 0; i < n; i++)
		k[i] = Int64GetDatum(keys[i]);
	values[0] = Int32GetDatum(def->id);
	values[1] = PointerGetDatum(construct_array(k, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	rc = SPI_execute_plan(CounterPlan(&plan_gone,
									  "DELETE FROM counter.ranking r WHERE r.counter_id = $1"
									  " AND r.key = ANY ($2) AND NOT EXISTS (SELECT FROM counter.tally tl"
									  " WHERE tl.counter_id = $1 AND tl.key = r.key)",
									  2, argtypes),
						  values, NULL, false, 0);
	if (rc != SPI_OK_DELETE)
		elog(ERROR, "deleting ranking rows failed: %s", SPI_result_code_string(rc));
}

/*
 * The incremental part of a refresh: recompute the changed keys and those
 * with a bucket that crossed a span's edge since t1 (when next_due says one
 * may have), in batches; a key without rows leaves the ranking.
 */
static void
CounterRankChanged(RankRun *run, TimestampTz t1, TimestampTz next_due,
				   const int64 *changed, int nchanged)
{
	const CounterDef *def = run->def;
	TimestampTz t = run->t;
	int			cap = Max(nchanged, 1024);
	int64	   *keys = palloc(sizeof(int64) * cap);
	int			nkeys = 0;
	int			i;

	if (nchanged > 0)
		memcpy(keys, changed, sizeof(int64) * nchanged);
	nkeys = nchanged;
	if (next_due <= t)
		CounterCrossingKeys(run, t1, &keys, &nkeys, &cap);
	if (nkeys > 1)
	{
		int			m = 1;

		qsort(keys, nkeys, sizeof(int64), CounterKeyCmp);
		for (i = 1; i < nkeys; i++)
			if (keys[i] != keys[m - 1])
				keys[m++] = keys[i];
		nkeys = m;
	}
	for (i = 0; i < nkeys; i += COUNTER_RANK_BATCH)
	{
		int			n = Min(COUNTER_RANK_BATCH, nkeys - i);
		int64	   *found = palloc(sizeof(int64) * n);
		int64	   *gone = palloc(sizeof(int64) * n);
		int			nfound = 0;
		int			ngone = 0;
		int			j,
					f;

		CounterRunKeys(run, &keys[i], n, found, &nfound);
		for (j = 0, f = 0; j < n; j++)
		{
			while (f < nfound && found[f] < keys[i + j])
				f++;
			if (f >= nfound || found[f] != keys[i + j])
				gone[ngone++] = keys[i + j];
		}
		CounterRankGone(def, gone, ngone);
	}
	CounterRunFlush(run);
}

/* Remember when, under which epoch and settings, and when rows next cross. */
static void
CounterRankSaveState(const CounterDef *def, TimestampTz t, uint64 epoch)
{
	Oid			argtypes[4] = {INT4OID, TIMESTAMPTZOID, INT8OID, TIMESTAMPTZOID};
	int			rc;
	Datum		sv[6];
	char		sn[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	TimestampTz due = CounterNextDue(def, t);

	sv[0] = Int32GetDatum(def->id);
	sv[1] = TimestampTzGetDatum(t);
	sv[2] = Int64GetDatum((int64) epoch);
	if (epoch == 0)
		sn[2] = 'n';
	sv[3] = TimestampTzGetDatum(due);
	rc = SPI_execute_plan(CounterPlan(&plan_save_state,
									  "INSERT INTO counter.ranking_state AS s"
									  " (counter_id, refreshed_at, epoch, next_due, spans, weights, half_life)"
									  " SELECT $1, $2, $3, $4, d.trend_spans, d.trend_weights, d.half_life"
									  " FROM counter.definition d WHERE d.id = $1"
									  " ON CONFLICT (counter_id) DO UPDATE SET"
									  " refreshed_at = excluded.refreshed_at, epoch = excluded.epoch,"
									  " next_due = excluded.next_due, spans = excluded.spans,"
									  " weights = excluded.weights, half_life = excluded.half_life",
									  4, argtypes),
						  sv, sn, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "saving the ranking state failed: %s", SPI_result_code_string(rc));
}

/*
 * Refresh def's ranking as of t (inside the scope, in a transaction).
 * changed are the keys whose rows changed since the last refresh (sorted);
 * they are ignored by a full build.  With wait false a refresh running in
 * another session makes this one give up (returns -1).  Returns the rows
 * written.
 */
int64
CounterRankRefresh(const CounterDef *def, TimestampTz t, bool full,
				   const int64 *changed, int nchanged, bool wait)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1];
	RankRun		run;
	uint64		epoch = CounterChangedEpoch(COUNTER_CONSUMER_RANK);
	TimestampTz t1 = 0;
	TimestampTz next_due = DT_NOBEGIN;
	bool		isnull;
	int			rc;

	/* one refresh of a counter at a time */
	rc = SPI_execute(psprintf("SELECT pg_catalog.%s(%d, %d)",
							  wait ? "pg_advisory_xact_lock" : "pg_try_advisory_xact_lock",
							  COUNTER_RANK_LOCK, def->id), false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "locking the ranking failed: %s", SPI_result_code_string(rc));
	if (!wait && !DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		return -1;

	/* a build from all rows, or only what can have changed? */
	values[0] = Int32GetDatum(def->id);
	rc = SPI_execute_plan(CounterPlan(&plan_state,
									  "SELECT s.refreshed_at, s.epoch, s.next_due,"
									  " (s.spans, s.weights, s.half_life) IS NOT DISTINCT FROM"
									  " (d.trend_spans, d.trend_weights, d.half_life)"
									  " FROM counter.ranking_state s JOIN counter.definition d ON d.id = s.counter_id"
									  " WHERE s.counter_id = $1",
									  1, argtypes),
						  values, NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading the ranking state failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		full = true;
	else
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		n1,
					n2,
					n3;
		Datum		e;

		t1 = DatumGetTimestampTz(SPI_getbinval(tup, desc, 1, &isnull));
		e = SPI_getbinval(tup, desc, 2, &n1);
		next_due = DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &n2));
		if (n2)
			next_due = DT_NOBEGIN;	/* unknown: look */
		if (epoch == 0 || n1 || (uint64) DatumGetInt64(e) != epoch ||
			!DatumGetBool(SPI_getbinval(tup, desc, 4, &n3)) || t < t1)
			full = true;
	}
	/* a caller whose snapshot is older than the changed keys cannot follow them */
	if (IsolationUsesXactSnapshot())
		full = true;

	CounterRunInit(&run, def, t);
	run.emit = CounterRunAdd;
	if (full)
	{
		Oid			at[1] = {INT4OID};

		values[0] = Int32GetDatum(def->id);
		CounterRunRows(&run, CounterAllRowsPlan(), values);
		CounterRunFlush(&run);
		rc = SPI_execute_with_args("DELETE FROM counter.ranking r WHERE r.counter_id = $1"
								   " AND NOT EXISTS (SELECT FROM counter.tally tl"
								   " WHERE tl.counter_id = $1 AND tl.key = r.key)",
								   1, at, values, NULL, false, 0);
		if (rc != SPI_OK_DELETE)
			elog(ERROR, "deleting ranking rows failed: %s", SPI_result_code_string(rc));
	}
	else
		CounterRankChanged(&run, t1, next_due, changed, nchanged);
	CounterRankSaveState(def, t, epoch);
	return run.changed;
}

/*
 * counter.refresh_ranking(counter, now, full): refresh the ranking top()
 * reads, of one counter or of all, as the maintenance process does every
 * counter.rank_interval; returns the rows changed.
 */
Datum
counter_refresh_ranking(PG_FUNCTION_ARGS)
{
	TimestampTz t = CounterNowArg(fcinfo, 1);
	bool		full = !PG_ARGISNULL(2) && PG_GETARG_BOOL(2);
	int32		only = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT32(0);
	CounterChangedKey *changed;
	int			nchanged;
	int32	   *ids;
	int			nids = 0;
	int64		total = 0;
	CounterScope scope;
	int			i,
				c;

	PreventCommandIfReadOnly("counter.refresh_ranking()");
	if (only != 0)
	{
		CounterDef	def;

		CounterGetById(only, &def);
	}
	nchanged = CounterChangedTake(COUNTER_CONSUMER_RANK, only, &changed);
	CounterEnter(&scope);
	if (SPI_execute(only != 0 ? psprintf("SELECT id FROM counter.definition WHERE id = %d", only) :
					"SELECT id FROM counter.definition ORDER BY id", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "listing counters failed");
	ids = palloc(sizeof(int32) * Max(SPI_processed, 1));
	for (i = 0; i < (int) SPI_processed; i++)
	{
		bool		isnull;

		ids[nids++] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
												  SPI_tuptable->tupdesc, 1, &isnull));
	}
	for (i = 0, c = 0; i < nids; i++)
	{
		CounterDef	def;
		int64	   *keys = palloc(sizeof(int64) * Max(nchanged, 1));
		int			nkeys = 0;

		while (c < nchanged && changed[c].counter_id < ids[i])
			c++;
		while (c < nchanged && changed[c].counter_id == ids[i])
			keys[nkeys++] = changed[c++].key;
		CounterGetById(ids[i], &def);
		total += CounterRankRefresh(&def, t, full, keys, nkeys, true);
		pfree(keys);
	}
	if (only == 0 && SPI_execute("DELETE FROM counter.ranking_state s WHERE NOT EXISTS"
								 " (SELECT FROM counter.definition d WHERE d.id = s.counter_id)",
								 false, 0) != SPI_OK_DELETE)
		elog(ERROR, "forgetting ranking states failed");
	CounterLeave(&scope);
	PG_RETURN_INT64(total);
}

/* Emit for rank_exact: one row of (key, total, trend, decayed) per key. */
static void
CounterRunEmitExact(RankRun *run, const RankAcc *acc)
{
	RankRow		row;
	Datum		out[4];
	bool		nulls[4] = {0};

	CounterAccFinish(run->def, acc, &row);
	out[0] = Int64GetDatum(row.key);
	out[1] = Int64GetDatum(row.total);
	out[2] = Float8GetDatum(row.trend);
	out[3] = Float8GetDatum(CounterDecayedAt(row.dsign, row.dlog, run->def->half_life_us, run->t));
	tuplestore_putvalues(run->rsinfo->setResult, run->rsinfo->setDesc, out, nulls);
}

/*
 * counter.rank_exact(counter, now): every key's total, trend and decayed
 * score computed from the tallies as of now (top() with now => reads it).
 */
Datum
counter_rank_exact(PG_FUNCTION_ARGS)
{
	CounterDef	def;
	RankRun		run;
	CounterScope scope;
	Datum		values[1];

	CounterArgDef(fcinfo, &def);
	InitMaterializedSRF(fcinfo, 0);
	CounterRunInit(&run, &def, CounterNowArg(fcinfo, 1));
	run.emit = CounterRunEmitExact;
	run.rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	values[0] = Int32GetDatum(def.id);
	CounterEnter(&scope);
	CounterRunRows(&run, CounterAllRowsPlan(), values);
	CounterLeave(&scope);
	return (Datum) 0;
}
