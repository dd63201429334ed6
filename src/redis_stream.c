/*
 * redis_stream.c
 *		Increment events from a Redis stream (counter.redis_stream), read
 *		through a consumer group.
 *
 * An entry has the fields counter, key, delta (default 1), and optionally
 * event (an event id, counted once within the counter's dedup window) and
 * time (Unix milliseconds or an ISO 8601 timestamp; it picks the minute
 * bucket, default the time of the drain).
 *
 * Exactly once: the entries of a read are applied in one transaction that
 * also stores the highest entry id in counter.redis_stream_pos; XACK follows
 * the commit.  After a crash the worker re-reads its own unacknowledged
 * entries (XREADGROUP ... 0): those with an id not above the stored one were
 * applied already and are only acknowledged.  This relies on the group's
 * entries going to this worker's single consumer, in id order; entries left
 * pending by any other consumer of the group are reclaimed with XAUTOCLAIM
 * after a minute and applied.  Entries that cannot be applied are recorded
 * in counter.redis_quarantine (their key: stream/entry id) and stay in the
 * stream.
 */
#include "counter_redis.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/memutils.h"

#define COUNTER_REDIS_CONSUMER "counter-worker"
#define COUNTER_REDIS_AUTOCLAIM_IDLE "60000"

/* One stream entry as read: its id and fields. */
typedef struct StreamEntry
{
	char	   *id;
	char	   *counter;
	char	   *key;
	char	   *delta;
	char	   *event;
	char	   *time;
	char	   *all;			/* every field, for quarantine */
	bool		deleted;		/* in the pending list, gone from the stream */
	bool		binary;			/* a field name or value holds a NUL byte */
} StreamEntry;

static SPIPlanPtr plan_event_bigint = NULL;
static SPIPlanPtr plan_event_text = NULL;
static bool warned_no_event = false;

/* Parse "ms-seq"; false for anything else. */
static bool
CounterStreamId(const char *id, uint64 *ms, uint64 *seq)
{
	char	   *end;

	errno = 0;
	*ms = strtou64(id, &end, 10);
	if (errno || *end != '-')
		return false;
	*seq = strtou64(end + 1, &end, 10);
	return errno == 0 && *end == '\0';
}

/* Whether stream id a is at or below b (b may be NULL: nothing recorded). */
static bool
CounterStreamIdLe(const char *a, const char *b)
{
	uint64		am,
				as,
				bm,
				bs;

	if (b == NULL || !CounterStreamId(a, &am, &as) || !CounterStreamId(b, &bm, &bs))
		return false;
	return am < bm || (am == bm && as <= bs);
}

/* The event time: Unix ms or an ISO 8601 timestamp; false if neither. */
static bool
CounterStreamTime(const char *s, TimestampTz *out)
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

/* Copy the entries of an XREADGROUP/XAUTOCLAIM entry list. */
static int
CounterStreamCopy(redisReply *list, StreamEntry **out)
{
	StreamEntry *e = palloc0(sizeof(StreamEntry) * Max(list->elements, 1));
	size_t		i;

	for (i = 0; i < list->elements; i++)
	{
		redisReply *en = list->element[i];
		redisReply *f;
		StringInfoData all;
		size_t		j;

		if (en->type != REDIS_REPLY_ARRAY || en->elements < 2 ||
			en->element[0]->type != REDIS_REPLY_STRING)
			continue;
		e[i].id = CounterRedisBytes(en->element[0]->str, en->element[0]->len);
		f = en->element[1];
		if (f->type != REDIS_REPLY_ARRAY)
		{
			e[i].deleted = true;
			continue;
		}
		initStringInfo(&all);
		for (j = 0; j + 1 < f->elements; j += 2)
		{
			redisReply *fn = f->element[j];
			redisReply *fv = f->element[j + 1];
			char	   *name;
			char	   *val;

			if (fn->type != REDIS_REPLY_STRING || fv->type != REDIS_REPLY_STRING)
				continue;
			name = CounterRedisBytes(fn->str, fn->len);
			val = CounterRedisBytes(fv->str, fv->len);
			appendStringInfo(&all, "%s%s=%s", all.len ? " " : "",
							 CounterRedisSafeText(fn->str, fn->len, 200),
							 CounterRedisSafeText(fv->str, fv->len, COUNTER_REDIS_SHOW_MAX));
			/* a NUL inside a field would let a C string parse a prefix */
			if (memchr(fn->str, '\0', fn->len) || memchr(fv->str, '\0', fv->len))
				e[i].binary = true;
			if (strcmp(name, "counter") == 0)
				e[i].counter = val;
			else if (strcmp(name, "key") == 0)
				e[i].key = val;
			else if (strcmp(name, "delta") == 0)
				e[i].delta = val;
			else if (strcmp(name, "event") == 0)
				e[i].event = val;
			else if (strcmp(name, "time") == 0)
				e[i].time = val;
		}
		e[i].all = all.data;
	}
	*out = e;
	return (int) list->elements;
}

/* Turn an entry into an item, or a quarantined one with the reason. */
static void
CounterStreamItem(StreamEntry *e, TimestampTz now, CounterRedisItem *it)
{
	CounterDef	def;
	CounterRedisCounter *c;
	char	   *end;

	memset(it, 0, sizeof(*it));
	it->rkey = psprintf("%s/%s", counter_redis_stream, e->id);
	it->rkey_len = strlen(it->rkey);
	it->value = e->all ? e->all : "";
	it->value_len = strlen(it->value);
	it->bucket = CounterMinute(now);
	it->delta = 1;
	it->event = e->event;
	if (e->binary)
	{
		it->reason = "entry has a field with a NUL byte";
		goto bad;
	}
	if (e->counter == NULL || e->key == NULL)
	{
		it->reason = "entry lacks the field counter or key";
		goto bad;
	}
	if (strlen(e->counter) > COUNTER_NAME_MAXLEN || !CounterLookupByName(e->counter, &def))
	{
		it->reason = "no such counter";
		goto bad;
	}
	c = palloc0(sizeof(CounterRedisCounter));
	c->id = def.id;
	strlcpy(c->name, def.name, sizeof(c->name));
	c->key_type = def.key_type;
	it->counter = c;
	it->keytext = e->key;
	if (def.key_type == COUNTER_KEY_BIGINT)
	{
		errno = 0;
		it->key = strtoi64(e->key, &end, 10);
		if (*e->key == '\0' || *end != '\0' || errno != 0)
		{
			it->reason = "key is not a bigint";
			goto bad;
		}
	}
	else if (*e->key == '\0' || !pg_verifymbstr(e->key, strlen(e->key), true))
	{
		it->reason = "key is not valid text";
		goto bad;
	}
	if (e->delta)
	{
		errno = 0;
		it->delta = strtoi64(e->delta, &end, 10);
		if (*e->delta == '\0' || *end != '\0' || errno != 0)
		{
			it->reason = "delta is not a bigint";
			goto bad;
		}
	}
	if (e->time)
	{
		TimestampTz at;

		if (!CounterStreamTime(e->time, &at))
		{
			it->reason = "time is neither Unix milliseconds nor a timestamp";
			goto bad;
		}
		it->bucket = CounterMinute(Min(at, now));
	}
	return;
bad:
	it->quarantine = true;
	it->event = NULL;
}

/* Whether counter.incr takes an event id yet (in a transaction). */
static bool
CounterStreamHasEvent(void)
{
	int			rc = SPI_execute("SELECT FROM pg_catalog.pg_proc"
								 " WHERE pronamespace = 'counter'::pg_catalog.regnamespace"
								 " AND proname = 'incr' AND 'event' = ANY (proargnames)",
								 true, 1);

	if (rc != SPI_OK_SELECT)
		elog(ERROR, "looking up counter.incr failed: %s", SPI_result_code_string(rc));
	return SPI_processed > 0;
}

/* Count one event through counter.incr(..., event => id), in scope. */
static void
CounterStreamEvent(CounterRedisItem *it)
{
	bool		text = it->counter->key_type == COUNTER_KEY_TEXT;
	Oid			argtypes[5] = {TEXTOID, text ? TEXTOID : INT8OID, INT8OID,
	TIMESTAMPTZOID, TEXTOID};
	Datum		values[5];
	SPIPlanPtr	plan;
	int			rc;

	values[0] = CStringGetTextDatum(it->counter->name);
	values[1] = text ? CStringGetTextDatum(it->keytext) : Int64GetDatum(it->key);
	values[2] = Int64GetDatum(it->delta);
	values[3] = TimestampTzGetDatum(it->bucket);
	values[4] = CStringGetTextDatum(it->event);
	if (text)
		plan = CounterPlan(&plan_event_text,
						   "SELECT counter.incr($1::counter.counter, $2, $3, $4, event => $5)",
						   5, argtypes);
	else
		plan = CounterPlan(&plan_event_bigint,
						   "SELECT counter.incr($1::counter.counter, $2, $3, $4, event => $5)",
						   5, argtypes);
	rc = SPI_execute_plan(plan, values, NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "counting a stream event failed: %s", SPI_result_code_string(rc));
}

/*
 * Apply entries in one transaction with the new stream position; returns
 * the number applied (entries at or below the recorded position are not).
 */
static int
CounterStreamApply(CounterRedisTarget *t, StreamEntry *entries, int n)
{
	CounterScope scope;
	Oid			argtypes[4] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[4];
	char	   *last = NULL;
	char	   *max_id = NULL;
	CounterRedisItem *items = palloc(sizeof(CounterRedisItem) * Max(n, 1));
	int			nitems = 0;
	int			nq = 0;
	TimestampTz now = GetCurrentTimestamp();
	bool		has_event;
	int			rc;
	int			i;

	MemoryContext cxt = CurrentMemoryContext;

	CounterRedisTxnBegin(&scope);
	values[0] = CStringGetTextDatum(CounterRedisSeedLabel(t));
	values[1] = CStringGetTextDatum(counter_redis_stream);
	values[2] = CStringGetTextDatum(counter_redis_stream_group);
	rc = SPI_execute_with_args("SELECT last_id FROM counter.redis_stream_pos"
							   " WHERE master = $1 AND stream = $2 AND grp = $3 FOR UPDATE",
							   3, argtypes, values, NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading the stream position failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
		last = MemoryContextStrdup(TopTransactionContext,
								   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	has_event = CounterStreamHasEvent();
	CounterLeave(&scope);
	/* the items outlive the transaction (statistics after the commit) */
	MemoryContextSwitchTo(cxt);

	for (i = 0; i < n; i++)
	{
		if (entries[i].id == NULL || entries[i].deleted || CounterStreamIdLe(entries[i].id, last))
			continue;
		if (max_id == NULL || !CounterStreamIdLe(entries[i].id, max_id))
			max_id = entries[i].id;
		CounterStreamItem(&entries[i], now, &items[nitems]);
		if (items[nitems].event && !has_event)
		{
			if (!warned_no_event)
				ereport(WARNING,
						(errmsg("counter worker: counter.incr has no event argument; stream event ids are not deduplicated")));
			warned_no_event = true;
			items[nitems].event = NULL;
		}
		if (items[nitems].quarantine)
			nq++;
		nitems++;
	}
	if (max_id == NULL)
	{
		CounterRedisTxnCommit(NULL);
		return 0;
	}
	CounterRedisMapKeys(items, nitems);
	CounterEnter(&scope);
	CounterRedisApplyItems(items, nitems, true);
	for (i = 0; i < nitems; i++)
		if (!items[i].quarantine && items[i].event)
			CounterStreamEvent(&items[i]);
	CounterRedisQuarantineRows(t, items, nitems);
	values[0] = CStringGetTextDatum(CounterRedisSeedLabel(t));
	values[1] = CStringGetTextDatum(counter_redis_stream);
	values[2] = CStringGetTextDatum(counter_redis_stream_group);
	values[3] = CStringGetTextDatum(max_id);
	rc = SPI_execute_with_args("INSERT INTO counter.redis_stream_pos AS p (master, stream, grp, last_id)"
							   " VALUES ($1, $2, $3, $4)"
							   " ON CONFLICT (master, stream, grp)"
							   " DO UPDATE SET last_id = excluded.last_id, updated_at = pg_catalog.now()",
							   4, argtypes, values, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "storing the stream position failed: %s", SPI_result_code_string(rc));
	CounterRedisTxnCommit(&scope);
	for (i = 0; i < nitems; i++)
		if (!items[i].quarantine && items[i].event)
		{
			/* counter.incr counted these itself */
			items[i].counter = NULL;
		}
	CounterRedisCountStats(items, nitems);
	CounterRedisNoteDrain(t, nitems - nq, nq);
	return nitems;
}

/* Acknowledge entries after their transaction committed. */
static bool
CounterStreamAck(CounterRedisTarget *t, StreamEntry *entries, int n)
{
	const char **argv = palloc(sizeof(char *) * (n + 3));
	int			argc = 0;
	int			i;
	redisReply *r;

	argv[argc++] = "XACK";
	argv[argc++] = counter_redis_stream;
	argv[argc++] = counter_redis_stream_group;
	for (i = 0; i < n; i++)
		if (entries[i].id)
			argv[argc++] = entries[i].id;
	if (argc == 3)
		return true;
	r = CounterRedisCommand(t, argc, argv, NULL);
	if (r == NULL)
		return false;
	freeReplyObject(r);
	return true;
}

/* Run a read command and copy its entries; -1 if Redis failed. */
static int
CounterStreamRead(CounterRedisTarget *t, int argc, const char **argv, bool autoclaim,
				  StreamEntry **entries)
{
	redisReply *r = CounterRedisCommand(t, argc, argv, NULL);
	int			n = 0;

	*entries = NULL;
	if (r == NULL)
		return -1;
	if (r->type == REDIS_REPLY_ERROR)
	{
		char		detail[160];

		strlcpy(detail, r->str, sizeof(detail));
		freeReplyObject(r);
		/* NOGROUP: the stream or group was deleted; make them again */
		t->stream_ready = false;
		CounterRedisError(t, detail);
		return -1;
	}
	if (autoclaim)
	{
		if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2 &&
			r->element[1]->type == REDIS_REPLY_ARRAY)
			n = CounterStreamCopy(r->element[1], entries);
	}
	else if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
			 r->element[0]->type == REDIS_REPLY_ARRAY &&
			 r->element[0]->elements == 2)
		n = CounterStreamCopy(r->element[0]->element[1], entries);
	freeReplyObject(r);
	return n;
}

/* The group's lag plus its pending entries, from XINFO GROUPS; -1 unknown. */
static int64
CounterStreamLag(CounterRedisTarget *t)
{
	const char *argv[3] = {"XINFO", "GROUPS", counter_redis_stream};
	redisReply *r = CounterRedisCommand(t, 3, argv, NULL);
	int64		lag = -1;
	size_t		i,
				j;

	if (r == NULL)
		return -1;
	if (r->type == REDIS_REPLY_ARRAY)
		for (i = 0; i < r->elements; i++)
		{
			redisReply *g = r->element[i];
			bool		ours = false;
			int64		pending = 0;
			int64		glag = 0;

			if (g->type != REDIS_REPLY_ARRAY)
				continue;
			for (j = 0; j + 1 < g->elements; j += 2)
			{
				const char *k = g->element[j]->str;
				redisReply *v = g->element[j + 1];

				if (strcmp(k, "name") == 0 && v->type == REDIS_REPLY_STRING)
					ours = strcmp(v->str, counter_redis_stream_group) == 0;
				else if (strcmp(k, "pending") == 0 && v->type == REDIS_REPLY_INTEGER)
					pending = v->integer;
				else if (strcmp(k, "lag") == 0 && v->type == REDIS_REPLY_INTEGER)
					glag = v->integer;
			}
			if (ours)
				lag = pending + glag;
		}
	freeReplyObject(r);
	return lag;
}

/*
 * Read the stream until it is drained or the round's time is up; sets
 * *more when entries may be left.  False if Redis failed.
 */
bool
CounterRedisDrainStream(CounterRedisTarget *t, TimestampTz deadline, bool *more)
{
	char		count[16];
	bool		autoclaim_due;

	snprintf(count, sizeof(count), "%d", counter_redis_batch_size);
	if (!t->stream_ready)
	{
		const char *argv[6] = {"XGROUP", "CREATE", counter_redis_stream,
		counter_redis_stream_group, "0", "MKSTREAM"};
		redisReply *r = CounterRedisCommand(t, 6, argv, NULL);

		if (r == NULL)
			return false;
		if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0)
		{
			char		detail[160];

			strlcpy(detail, r->str, sizeof(detail));
			freeReplyObject(r);
			CounterRedisError(t, detail);
			return true;		/* keys still drain; the stream waits */
		}
		freeReplyObject(r);
		t->stream_ready = true;
		t->stream_pending = true;
	}
	autoclaim_due = GetCurrentTimestamp() - t->last_autoclaim >= 30 * USECS_PER_SEC;
	for (;;)
	{
		StreamEntry *entries;
		int			n;
		bool		from_pending = t->stream_pending;
		bool		claimed = false;

		if (from_pending || !autoclaim_due)
		{
			const char *argv[10] = {"XREADGROUP", "GROUP", counter_redis_stream_group,
				COUNTER_REDIS_CONSUMER, "COUNT", count, "STREAMS", counter_redis_stream,
			from_pending ? "0" : ">"};

			n = CounterStreamRead(t, 9, argv, false, &entries);
		}
		else
		{
			const char *argv[8] = {"XAUTOCLAIM", counter_redis_stream,
				counter_redis_stream_group, COUNTER_REDIS_CONSUMER,
			COUNTER_REDIS_AUTOCLAIM_IDLE, "0-0", "COUNT", count};

			n = CounterStreamRead(t, 8, argv, true, &entries);
			t->last_autoclaim = GetCurrentTimestamp();
			autoclaim_due = false;
			claimed = true;
		}
		if (n < 0)
			return t->ctx != NULL;
		if (n > 0)
		{
			CounterStreamApply(t, entries, n);
			if (!CounterStreamAck(t, entries, n))
				return false;
			CounterSourceYield();
		}
		if (from_pending && n < counter_redis_batch_size)
			t->stream_pending = false;
		else if (!from_pending && !claimed && n < counter_redis_batch_size)
			break;
		if (GetCurrentTimestamp() >= deadline || CounterRedisStopSoon())
		{
			*more = true;
			break;
		}
	}
	CounterRedisNoteStream(t, CounterStreamLag(t));
	return t->ctx != NULL;
}
