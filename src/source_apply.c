/*
 * source_apply.c
 *		What every source of increments shares once its items are read (the
 *		shared buffer's fold, Redis keys and streams, Kafka): binary-safe
 *		copies of what a client library handed back, the transaction the
 *		items are applied in, and the apply itself, with one error policy.
 *
 * The policy: an item is counted, refused as a duplicate event, or
 * quarantined with its reason, never dropped silently.  An item that
 * cannot be counted (no such counter, a delta beyond max_delta, a key
 * whose total would leave bigint, a text key too long) is quarantined
 * alone, in counter.quarantine and the log, and the rest of its batch is
 * applied: the batch is tried whole in a subtransaction, and if that fails
 * item by item.  An error that says nothing about the items (a lock
 * timeout, a cancel, a shutdown) fails the whole batch instead, which the
 * source then retries: nothing is half applied.
 *
 * Runs in the background processes, outside any caller's transaction.
 */
#include "counter.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

/* Called between two source batches: the ingest process folds there. */
void		(*counter_source_yield_hook) (void) = NULL;

/* Where to return after a source's transaction: the caller's context. */
static MemoryContext txn_return_cxt = NULL;

/*
 * A binary-safe copy of len bytes a client library handed back: every
 * byte, embedded NULs included, plus a terminating NUL.  Never pnstrdup,
 * which stops at the first NUL while callers go on using len.
 */
char *
CounterBytes(const char *s, size_t len)
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
CounterSafeText(const char *s, size_t len, size_t max)
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

/* The event time: Unix ms or an ISO 8601 timestamp; false if neither. */
static bool
CounterSourceTime(const char *s, TimestampTz *out)
{
	char		workbuf[MAXDATELEN + MAXDATEFIELDS];
	char	   *field[MAXDATEFIELDS];
	int			ftype[MAXDATEFIELDS];
	int			nf;
	struct pg_tm tt;
	fsec_t		fsec;
	int			tz;
	int			dtype;
	const char *p;

	for (p = s; *p >= '0' && *p <= '9'; p++)
		;
	if (*s && *p == '\0' && p - s <= 15)
	{
		int64		ms = strtoi64(s, NULL, 10);

		*out = (TimestampTz) (ms - ((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) *
									SECS_PER_DAY * 1000)) * 1000;
		return true;
	}
	if (strlen(s) >= MAXDATELEN)
		return false;
	if (ParseDateTime(s, workbuf, sizeof(workbuf), field, ftype, MAXDATEFIELDS, &nf) != 0)
		return false;
	if (DecodeDateTime(field, ftype, nf, &dtype, &tt, &fsec, &tz) != 0 || dtype != DTK_DATE)
		return false;
	return tm2timestamp(&tt, fsec, &tz, out) == 0;
}

/*
 * Fill an event item's key, delta, minute and event id from the fields a
 * source read (Redis stream entries and Kafka messages carry the same
 * ones; NULL: absent), for a counter with keys of key_type; sets
 * it->reason when they cannot count.  A time picks the minute (never
 * later than now); the delta defaults to 1.
 */
void
CounterSourceFields(CounterSourceItem *it, CounterKeyType key_type, const char *key,
					const char *delta, const char *time, const char *event,
					TimestampTz now)
{
	char	   *end;

	if (key == NULL || *key == '\0')
	{
		it->reason = "entry lacks the field key";
		return;
	}
	if (key_type == COUNTER_KEY_BIGINT)
	{
		errno = 0;
		it->key = strtoi64(key, &end, 10);
		if (*end != '\0' || errno != 0 || !isdigit((unsigned char) key[*key == '-']))
		{
			it->reason = "key is not a bigint";
			return;
		}
	}
	else if (!pg_verifymbstr(key, strlen(key), true))
	{
		it->reason = "key is not valid text";
		return;
	}
	else if (strlen(key) > COUNTER_TEXT_KEY_MAXLEN)
	{
		it->reason = "key is longer than a text key may be";
		return;
	}
	else
		it->keytext = (char *) key;
	if (delta)
	{
		errno = 0;
		it->delta = strtoi64(delta, &end, 10);
		if (*delta == '\0' || *end != '\0' || errno != 0)
		{
			it->reason = "delta is not a bigint";
			return;
		}
	}
	if (time)
	{
		TimestampTz at;

		if (!CounterSourceTime(time, &at))
		{
			it->reason = "time is neither Unix milliseconds nor a timestamp";
			return;
		}
		it->bucket = CounterMinute(Min(at, now));
	}
	if (event && *event)
	{
		if (!pg_verifymbstr(event, strlen(event), true))
		{
			it->reason = "event is not valid text";
			return;
		}
		it->event = (char *) event;
	}
}

/* Between two batches of a source, outside any transaction. */
void
CounterSourceYield(void)
{
	if (counter_source_yield_hook)
		counter_source_yield_hook();
}

/* Start a transaction for a source's batch. */
void
CounterSourceBegin(void)
{
	txn_return_cxt = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
}

/* Commit what CounterSourceBegin started; back in the caller's context. */
void
CounterSourceCommit(void)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(txn_return_cxt);
}

/* The memory context the current source transaction returns to. */
MemoryContext
CounterSourceContext(void)
{
	return txn_return_cxt;
}

/*
 * Whether an error says nothing about the items being applied: the batch
 * is then retried whole, later, instead of quarantining what it touched.
 */
static bool
CounterErrorIsTransient(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_CONNECTION_EXCEPTION:
		case ERRCODE_INVALID_TRANSACTION_STATE:
		case ERRCODE_TRANSACTION_ROLLBACK:
		case ERRCODE_INSUFFICIENT_RESOURCES:
		case ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE:
		case ERRCODE_OPERATOR_INTERVENTION:
		case ERRCODE_SYSTEM_ERROR:
		case ERRCODE_INTERNAL_ERROR:
			return true;
	}
	return false;
}

/*
 * Resolve one item before it is applied (inside the scope): its counter
 * must exist and take the delta; a text key gets its id.  Sets the reason
 * of an item that cannot be applied.
 */
static void
CounterSourceResolve(CounterSourceItem *it, CounterDef *def)
{
	if (!CounterLookupById(it->counter_id, def))
	{
		it->reason = "no such counter";
		return;
	}
	if (!it->accepted && def->max_delta > 0 &&
		(it->delta > def->max_delta || it->delta < -def->max_delta))
	{
		it->reason = psprintf("delta " INT64_FORMAT " exceeds max_delta " INT64_FORMAT,
							  it->delta, def->max_delta);
		return;
	}
	if (def->key_type == COUNTER_KEY_TEXT && it->keytext)
		it->key = CounterTextKeyId(def, cstring_to_text(it->keytext), true);
}

/*
 * Apply the items of [from, to) that have no reason yet, inside the scope:
 * event ids first (a duplicate is refused), then one batch apply of every
 * amount.  Errors propagate.
 */
static void
CounterSourceApplyRange(CounterSourceItem *items, int from, int to, int16 slot)
{
	int			n = to - from;
	Datum	   *ids = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *keys = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *buckets = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *deltas = palloc(sizeof(Datum) * Max(n, 1));
	int			m = 0;
	int			i;

	for (i = from; i < to; i++)
	{
		CounterSourceItem *it = &items[i];
		CounterDef	def;

		it->deduplicated = false;
		if (it->reason)
			continue;
		CounterSourceResolve(it, &def);
		if (it->reason)
			continue;
		if (it->event && def.dedup_window_us > 0 &&
			!CounterEventRecord(&def, cstring_to_text(it->event), it->bucket))
		{
			it->deduplicated = true;
			continue;
		}
		if (it->delta == 0)
			continue;
		ids[m] = Int32GetDatum(it->counter_id);
		keys[m] = Int64GetDatum(it->key);
		buckets[m] = TimestampTzGetDatum(it->bucket);
		deltas[m] = Int64GetDatum(it->delta);
		m++;
	}
	if (m > 0)
		CounterApplyBatch(NULL, m, ids, keys, buckets, deltas, slot);
}

/*
 * Run CounterSourceApplyRange in a subtransaction.  On an error about the
 * items, roll it back and return the error's message (palloc'd in cxt);
 * any other error is re-thrown.  NULL when it worked.
 */
static char *
CounterSourceTry(CounterSourceItem *items, int from, int to, int16 slot,
				 MemoryContext cxt)
{
	ResourceOwner owner = CurrentResourceOwner;
	char	   *volatile failure = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		CounterSourceApplyRange(items, from, to, slot);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		if (CounterErrorIsTransient(edata->sqlerrcode))
			ReThrowError(edata);
		failure = pstrdup(edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	return failure;
}

/* Insert the quarantined items into counter.quarantine and log them (in scope). */
static void
CounterSourceQuarantine(const char *source, const char *origin,
						CounterSourceItem *items, int n)
{
	Oid			argtypes[9] = {TEXTOID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID,
		INT4ARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID, INT8ARRAYOID,
	TEXTARRAYOID};
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Datum	   *it,
			   *va,
			   *ci,
			   *ke,
			   *bu,
			   *de,
			   *re;
	bool	   *cin,
			   *ken;
	int			nq = 0;
	int			i;
	int			rc;
	int			dims[1];
	int			lbs[1] = {1};

	it = palloc(sizeof(Datum) * Max(n, 1));
	va = palloc(sizeof(Datum) * Max(n, 1));
	ci = palloc(sizeof(Datum) * Max(n, 1));
	ke = palloc(sizeof(Datum) * Max(n, 1));
	bu = palloc(sizeof(Datum) * Max(n, 1));
	de = palloc(sizeof(Datum) * Max(n, 1));
	re = palloc(sizeof(Datum) * Max(n, 1));
	cin = palloc(sizeof(bool) * Max(n, 1));
	ken = palloc(sizeof(bool) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		CounterSourceItem *q = &items[i];
		char	   *shown_item;
		char	   *shown_value;

		if (q->reason == NULL)
			continue;
		shown_item = CounterSafeText(q->item, q->item_len, COUNTER_SHOW_MAX);
		shown_value = CounterSafeText(q->value, q->value_len, COUNTER_SHOW_MAX);
		it[nq] = CStringGetTextDatum(shown_item);
		va[nq] = CStringGetTextDatum(shown_value);
		ci[nq] = Int32GetDatum(q->counter_id);
		cin[nq] = q->counter_id == 0;
		ke[nq] = Int64GetDatum(q->key);
		ken[nq] = q->counter_id == 0;
		bu[nq] = TimestampTzGetDatum(q->bucket);
		de[nq] = Int64GetDatum(q->delta);
		re[nq] = CStringGetTextDatum(q->reason);
		ereport(WARNING,
				(errmsg("counter: quarantined %s item \"%s\" from %s: %s",
						source, CounterSafeText(q->item, q->item_len, 200), origin,
						q->reason),
				 errdetail("Value \"%s\"; see counter.quarantine.",
						   CounterSafeText(q->value, q->value_len, 200))));
		nq++;
	}
	if (nq == 0)
		return;
	dims[0] = nq;
	values[0] = CStringGetTextDatum(source);
	values[1] = CStringGetTextDatum(origin);
	values[2] = PointerGetDatum(construct_array(it, nq, TEXTOID, -1, false, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array(va, nq, TEXTOID, -1, false, TYPALIGN_INT));
	values[4] = PointerGetDatum(construct_md_array(ci, cin, 1, dims, lbs, INT4OID, 4, true, TYPALIGN_INT));
	values[5] = PointerGetDatum(construct_md_array(ke, ken, 1, dims, lbs, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[6] = PointerGetDatum(construct_array(bu, nq, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[7] = PointerGetDatum(construct_array(de, nq, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[8] = PointerGetDatum(construct_array(re, nq, TEXTOID, -1, false, TYPALIGN_INT));
	rc = SPI_execute_with_args("INSERT INTO counter.quarantine"
							   " (source, origin, item, value, counter_id, key, bucket, delta, reason)"
							   " SELECT $1, $2, u.i, u.v, u.c, u.k, u.b, u.d, u.r"
							   " FROM unnest($3, $4, $5, $6, $7, $8, $9) AS u(i, v, c, k, b, d, r)",
							   9, argtypes, values, nulls, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "recording quarantined items failed: %s", SPI_result_code_string(rc));
}

/*
 * Apply a source's items in the current transaction (see the file header):
 * afterwards each item is counted, or refused as a duplicate event
 * (deduplicated), or quarantined (reason set, and recorded).  Amounts are
 * written to slot.  Errors that say nothing about the items propagate: the
 * transaction then aborts and nothing of the batch is applied.
 */
void
CounterSourceApply(const char *source, const char *origin,
				   CounterSourceItem *items, int n, int16 slot)
{
	MemoryContext cxt = CurrentMemoryContext;
	CounterScope scope;
	char	   *failure;
	int			i;

	CounterEnter(&scope);
	failure = CounterSourceTry(items, 0, n, slot, cxt);
	if (failure != NULL)
	{
		/* one by one: what fails alone is quarantined with its error */
		for (i = 0; i < n; i++)
		{
			char	   *why;

			if (items[i].reason)
				continue;
			why = CounterSourceTry(items, i, i + 1, slot, cxt);
			if (why)
				items[i].reason = why;
		}
	}
	CounterSourceQuarantine(source, origin, items, n);
	CounterLeave(&scope);
}

/*
 * Count applied items in counter.stats under stat, and duplicates under
 * deduplicated (after the commit).  Returns the items counted.
 */
int64
CounterSourceCountStats(CounterSourceItem *items, int n, CounterStat stat)
{
	int64		counted = 0;
	int			i;

	for (i = 0; i < n; i++)
	{
		CounterStatsEntry *e;

		if (items[i].reason || items[i].counter_id == 0)
			continue;
		e = CounterStatsFor(items[i].counter_id);
		if (e)
			pg_atomic_fetch_add_u64(&e->n[items[i].deduplicated ? COUNTER_STAT_DEDUPED : stat], 1);
		if (!items[i].deduplicated)
			counted++;
	}
	return counted;
}
