/*
 * source_apply.c
 *		What every source shares once its items are read: the transaction
 *		they are applied in, text keys mapped to ids, the batch apply into
 *		the tally, the rows of the quarantine, and the statistics.
 *
 * Runs in the worker only, outside the transaction of any caller.  Items
 * are palloc'd copies: no reply of a source's client library is alive here.
 */
#include "counter_redis.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

/*
 * A binary-safe copy of len bytes that hiredis handed back: every byte,
 * embedded NULs included, plus a terminating NUL.  Never pnstrdup, which
 * stops at the first NUL while callers go on using len.
 */
char *
CounterRedisBytes(const char *s, size_t len)
{
	char	   *copy = palloc(len + 1);

	memcpy(copy, s, len);
	copy[len] = '\0';
	return copy;
}

/*
 * Text safe to store and log: valid UTF-8 without NULs as is, anything else
 * as a \x hex spelling of every byte; at most max bytes of s are shown (0:
 * all), with a note of the full length when cut.
 */
char *
CounterRedisSafeText(const char *s, size_t len, size_t max)
{
	StringInfoData buf;
	size_t		shown = (max > 0 && len > max) ? max : len;
	size_t		i;

	initStringInfo(&buf);
	if (memchr(s, '\0', shown) == NULL && pg_verifymbstr(s, (int) shown, true))
		appendBinaryStringInfo(&buf, s, (int) shown);
	else
	{
		appendStringInfoString(&buf, "\\x");
		for (i = 0; i < shown; i++)
			appendStringInfo(&buf, "%02x", (unsigned char) s[i]);
	}
	if (shown < len)
		appendStringInfo(&buf, "... (%zu bytes in all)", len);
	return buf.data;
}

/* Called between two source batches: the ingest process folds there. */
void		(*counter_source_yield_hook) (void) = NULL;

/* Between two batches of a source, outside any transaction. */
void
CounterSourceYield(void)
{
	if (counter_source_yield_hook)
		counter_source_yield_hook();
}

/* Where to return after a drain transaction: the caller's context. */
static MemoryContext txn_return_cxt = NULL;

/* Start a transaction for a drain and enter the private scope. */
void
CounterRedisTxnBegin(CounterScope *scope)
{
	txn_return_cxt = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (scope)
		CounterEnter(scope);
}

/* Leave the scope and commit what CounterRedisTxnBegin started. */
void
CounterRedisTxnCommit(CounterScope *scope)
{
	if (scope)
		CounterLeave(scope);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(txn_return_cxt);
}

/* Count committed drains in counter.stats (column redis). */
void
CounterRedisCountStats(CounterRedisItem *items, int n)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		CounterStatsEntry *e;

		if (items[i].quarantine || items[i].counter == NULL)
			continue;
		e = CounterStatsFor(items[i].counter->id);
		if (e)
			pg_atomic_fetch_add_u64(&e->n[COUNTER_STAT_REDIS], 1);
	}
}

/*
 * Give text keys their ids (in a transaction, outside the private scope);
 * returns the number of amounts to apply.
 */
int64
CounterRedisMapKeys(CounterRedisItem *items, int n)
{
	int64		count = 0;
	int			i;

	for (i = 0; i < n; i++)
	{
		CounterRedisItem *it = &items[i];

		if (it->quarantine || it->counter == NULL)
			continue;
		if (it->counter->key_type == COUNTER_KEY_TEXT && it->event == NULL)
		{
			CounterDef	def;

			memset(&def, 0, sizeof(def));
			def.id = it->counter->id;
			strlcpy(def.name, it->counter->name, sizeof(def.name));
			def.key_type = COUNTER_KEY_TEXT;
			it->key = CounterTextKeyId(&def, cstring_to_text(it->keytext), true);
		}
		count++;
	}
	return count;
}

/*
 * Apply the countable items as one batch (in scope): all but the
 * quarantined ones and, with skip_events, those carrying an event id (which
 * go through counter.incr for deduplication).
 */
void
CounterRedisApplyItems(CounterRedisItem *items, int n, bool skip_events)
{
	Datum	   *ids = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *keys = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *buckets = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *deltas = palloc(sizeof(Datum) * Max(n, 1));
	int			m = 0;
	int			i;

	for (i = 0; i < n; i++)
	{
		if (items[i].quarantine || (skip_events && items[i].event))
			continue;
		ids[m] = Int32GetDatum(items[i].counter->id);
		keys[m] = Int64GetDatum(items[i].key);
		buckets[m] = TimestampTzGetDatum(items[i].bucket);
		deltas[m] = Int64GetDatum(items[i].delta);
		m++;
	}
	if (m > 0)
		CounterApplyBatch(NULL, m, ids, keys, buckets, deltas, COUNTER_SLOT_FOLD);
}

/* Insert the quarantined items into counter.redis_quarantine (in scope). */
void
CounterRedisQuarantineRows(CounterRedisTarget *t, CounterRedisItem *items, int n)
{
	Oid			argtypes[4] = {TEXTOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID};
	Datum		values[4];
	Datum	   *k,
			   *v,
			   *r;
	int			nq = 0;
	int			i;
	int			rc;

	k = palloc(sizeof(Datum) * Max(n, 1));
	v = palloc(sizeof(Datum) * Max(n, 1));
	r = palloc(sizeof(Datum) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		if (!items[i].quarantine)
			continue;
		k[nq] = CStringGetTextDatum(CounterRedisSafeText(items[i].rkey, items[i].rkey_len,
														 COUNTER_REDIS_SHOW_MAX));
		v[nq] = CStringGetTextDatum(CounterRedisSafeText(items[i].value, items[i].value_len,
														 COUNTER_REDIS_SHOW_MAX));
		r[nq] = CStringGetTextDatum(items[i].reason);
		ereport(WARNING,
				(errmsg("counter worker: quarantined Redis key \"%s\" from %s: %s",
						CounterRedisSafeText(items[i].rkey, items[i].rkey_len, 200),
						t->label, items[i].reason),
				 errdetail("Value \"%s\"; see counter.redis_quarantine.",
						   CounterRedisSafeText(items[i].value, items[i].value_len, 200))));
		nq++;
	}
	if (nq == 0)
		return;
	values[0] = CStringGetTextDatum(t->label);
	values[1] = PointerGetDatum(construct_array(k, nq, TEXTOID, -1, false, TYPALIGN_INT));
	values[2] = PointerGetDatum(construct_array(v, nq, TEXTOID, -1, false, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array(r, nq, TEXTOID, -1, false, TYPALIGN_INT));
	rc = SPI_execute_with_args("INSERT INTO counter.redis_quarantine (master, redis_key, value, reason)"
							   " SELECT $1, k, v, r FROM unnest($2, $3, $4) AS u(k, v, r)",
							   4, argtypes, values, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "recording quarantined Redis items failed: %s",
			 SPI_result_code_string(rc));
}

/* The memory context the current drain transaction returns to. */
MemoryContext
CounterRedisTxnContext(void)
{
	return txn_return_cxt;
}
