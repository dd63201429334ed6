/*
 * redis_stream.c
 *		Increment events from Redis streams: each counter may name one
 *		(counter.alter(c, redis_stream => 'events')), read through a consumer
 *		group (counter.redis_stream_group) on the master that holds it.
 *		Streams no counter names are never read.
 *
 * An entry has the fields key, delta (default 1), and optionally event (an
 * event id, counted once within the counter's dedup window), time (Unix
 * milliseconds or an ISO 8601 timestamp; it picks the minute bucket,
 * default the time of the drain) and counter (the counter's name: needed
 * when several counters read the stream, and then one of them).
 *
 * Exactly once: the entries of a read are applied in one transaction that
 * also stores the highest entry id in counter.redis_stream_pos; XACK
 * follows the commit.  Every entry of a read is applied, refused as a
 * duplicate event or quarantined in that transaction (source_apply.c), so
 * the stored id never passes an entry that was not dealt with.  After a
 * failure or a crash the worker reads its own unacknowledged entries again
 * (XREADGROUP ... 0): those at or below the stored id were applied already
 * and are only acknowledged.  The group is the worker's alone: entries of
 * other consumers in it are left to them.
 */
#include "counter_redis.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/memutils.h"

#define COUNTER_REDIS_CONSUMER "counter-worker"

/* One stream entry as read: its id and fields. */
typedef struct StreamEntry
{
	char	   *id;
	char	   *counter;
	char	   *key;
	char	   *delta;
	char	   *event;
	char	   *time;
	char	   *all;			/* every field, printable, for the quarantine */
	bool		deleted;		/* in the pending list, gone from the stream */
	bool		binary;			/* a field name or value holds a NUL byte */
} StreamEntry;

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

/* Copy the entries of an XREADGROUP entry list (binary-safe). */
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
		e[i].id = CounterBytes(en->element[0]->str, en->element[0]->len);
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
			name = CounterBytes(fn->str, fn->len);
			val = CounterBytes(fv->str, fv->len);
			appendStringInfo(&all, "%s%s=%s", all.len ? " " : "",
							 CounterSafeText(fn->str, fn->len, 200),
							 CounterSafeText(fv->str, fv->len, COUNTER_SHOW_MAX));
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

/*
 * The counter an entry of stream belongs to: the one it names, which must
 * read that stream, or the stream's only counter.  NULL (with *why) if none.
 */
static const CounterRedisCounter *
CounterStreamOwner(const CounterRedisCounter *counters, int ncounters,
				   const char *stream, const char *name, const char **why)
{
	const CounterRedisCounter *only = NULL;
	int			readers = 0;
	int			i;

	for (i = 0; i < ncounters; i++)
	{
		if (counters[i].stream == NULL || strcmp(counters[i].stream, stream) != 0)
			continue;
		readers++;
		only = &counters[i];
		if (name && strcmp(counters[i].name, name) == 0)
			return &counters[i];
	}
	if (name)
		*why = "the counter it names does not read this stream";
	else if (readers > 1)
		*why = "entry lacks the field counter, and several counters read this stream";
	else
		return only;
	return NULL;
}

/* Turn an entry of stream into a source item, with a reason if it cannot count. */
static void
CounterStreamItem(const CounterRedisCounter *counters, int ncounters, const char *stream,
				  StreamEntry *e, TimestampTz now, CounterSourceItem *it)
{
	const CounterRedisCounter *c;
	const char *why = NULL;

	memset(it, 0, sizeof(*it));
	it->item = psprintf("%s/%s", stream, e->id);
	it->item_len = strlen(it->item);
	it->value = e->all ? e->all : "";
	it->value_len = strlen(it->value);
	it->bucket = CounterMinute(now);
	it->delta = 1;
	if (e->binary)
	{
		it->reason = "entry has a field with a NUL byte";
		return;
	}
	c = CounterStreamOwner(counters, ncounters, stream, e->counter, &why);
	if (c == NULL)
	{
		it->reason = why;
		return;
	}
	it->counter_id = c->id;
	CounterSourceFields(it, c->key_type, e->key, e->delta, e->time, e->event, now);
}

/*
 * Apply entries of stream in one transaction with the new stream position;
 * entries at or below the recorded position were applied before.  Returns
 * the number dealt with now.
 */
static int
CounterStreamApply(CounterRedisTarget *t, const char *stream,
				   const CounterRedisCounter *counters, int ncounters,
				   StreamEntry *entries, int n)
{
	CounterScope scope;
	Oid			argtypes[4] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[4];
	char	   *last = NULL;
	char	   *max_id = NULL;
	CounterSourceItem *items = palloc(sizeof(CounterSourceItem) * Max(n, 1));
	int			nitems = 0;
	int64		counted;
	int64		quarantined = 0;
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext cxt = CurrentMemoryContext;
	int			rc;
	int			i;

	/* made here, in the caller's memory: the scope's SPI memory goes at each leave */
	values[0] = CStringGetTextDatum(CounterRedisSeedLabel(t));
	values[1] = CStringGetTextDatum(stream);
	values[2] = CStringGetTextDatum(counter_redis_stream_group);
	CounterSourceBegin();
	CounterEnter(&scope);
	rc = SPI_execute_with_args("SELECT last_id FROM counter.redis_stream_pos"
							   " WHERE master = $1 AND stream = $2 AND grp = $3 FOR UPDATE",
							   3, argtypes, values, NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading the stream position failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
		last = MemoryContextStrdup(cxt, SPI_getvalue(SPI_tuptable->vals[0],
													 SPI_tuptable->tupdesc, 1));
	CounterLeave(&scope);
	MemoryContextSwitchTo(cxt);

	for (i = 0; i < n; i++)
	{
		if (entries[i].id == NULL || entries[i].deleted || CounterStreamIdLe(entries[i].id, last))
			continue;
		if (max_id == NULL || !CounterStreamIdLe(entries[i].id, max_id))
			max_id = entries[i].id;
		CounterStreamItem(counters, ncounters, stream, &entries[i], now, &items[nitems++]);
	}
	if (max_id == NULL)
	{
		CounterSourceCommit();
		return 0;
	}
	CounterSourceApply("redis stream", t->label, items, nitems, COUNTER_SLOT_FOLD);
	values[3] = CStringGetTextDatum(max_id);
	CounterEnter(&scope);
	rc = SPI_execute_with_args("INSERT INTO counter.redis_stream_pos AS p (master, stream, grp, last_id)"
							   " VALUES ($1, $2, $3, $4)"
							   " ON CONFLICT (master, stream, grp)"
							   " DO UPDATE SET last_id = excluded.last_id, updated_at = pg_catalog.now()",
							   4, argtypes, values, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "storing the stream position failed: %s", SPI_result_code_string(rc));
	CounterLeave(&scope);
	CounterSourceCommit();
	counted = CounterSourceCountStats(items, nitems, COUNTER_STAT_REDIS);
	for (i = 0; i < nitems; i++)
		if (items[i].reason)
			quarantined++;
	CounterRedisNoteDrain(t, counted, quarantined);
	return nitems;
}

/* Acknowledge entries after their transaction committed. */
static bool
CounterStreamAck(CounterRedisTarget *t, const char *stream, StreamEntry *entries, int n)
{
	const char **argv = palloc(sizeof(char *) * (n + 3));
	int			argc = 0;
	int			i;
	redisReply *r;

	argv[argc++] = "XACK";
	argv[argc++] = stream;
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

/* Run a read command and copy its entries; -1 if it failed. */
static int
CounterStreamRead(CounterRedisTarget *t, CounterRedisStreamState *ss, int argc,
				  const char **argv, StreamEntry **entries)
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
		ss->ready = false;
		CounterRedisError(t, detail);
		return -1;
	}
	if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
		r->element[0]->type == REDIS_REPLY_ARRAY &&
		r->element[0]->elements == 2)
		n = CounterStreamCopy(r->element[0]->element[1], entries);
	freeReplyObject(r);
	return n;
}

/* The group's lag plus its pending entries, from XINFO GROUPS; -1 unknown. */
static int64
CounterStreamLag(CounterRedisTarget *t, const char *stream)
{
	const char *argv[3] = {"XINFO", "GROUPS", stream};
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
				redisReply *k = g->element[j];
				redisReply *v = g->element[j + 1];

				if (k->type != REDIS_REPLY_STRING)
					continue;
				if (strcmp(k->str, "name") == 0 && v->type == REDIS_REPLY_STRING)
					ours = strcmp(v->str, counter_redis_stream_group) == 0;
				else if (strcmp(k->str, "pending") == 0 && v->type == REDIS_REPLY_INTEGER)
					pending = v->integer;
				else if (strcmp(k->str, "lag") == 0 && v->type == REDIS_REPLY_INTEGER)
					glag = v->integer;
			}
			if (ours)
				lag = pending + glag;
		}
	freeReplyObject(r);
	return lag;
}

/* This master's state of a stream, made on first use; NULL if too many. */
static CounterRedisStreamState *
CounterStreamState(CounterRedisTarget *t, const char *stream)
{
	int			i;

	for (i = 0; i < t->nstreams; i++)
		if (strcmp(t->streams[i].name, stream) == 0)
			return &t->streams[i];
	if (t->nstreams == COUNTER_REDIS_MAX_STREAMS || strlen(stream) >= sizeof(t->streams[0].name))
		return NULL;
	memset(&t->streams[t->nstreams], 0, sizeof(t->streams[0]));
	strlcpy(t->streams[t->nstreams].name, stream, sizeof(t->streams[0].name));
	t->streams[t->nstreams].pending = true;
	return &t->streams[t->nstreams++];
}

/*
 * Read one stream until it is drained or the round's time is up; sets
 * *more when entries may be left.  False if Redis failed.
 */
static bool
CounterRedisDrainOneStream(CounterRedisTarget *t, const char *stream,
						   const CounterRedisCounter *counters, int ncounters,
						   TimestampTz deadline, bool *more, int64 *lag)
{
	CounterRedisStreamState *ss = CounterStreamState(t, stream);
	char		count[16];

	if (ss == NULL)
		return true;
	snprintf(count, sizeof(count), "%d", counter_redis_batch_size);
	if (!ss->ready)
	{
		const char *argv[6] = {"XGROUP", "CREATE", stream,
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
		ss->ready = true;
		ss->pending = true;
	}
	for (;;)
	{
		StreamEntry *entries;
		bool		from_pending = ss->pending;
		const char *argv[9] = {"XREADGROUP", "GROUP", counter_redis_stream_group,
			COUNTER_REDIS_CONSUMER, "COUNT", count, "STREAMS", stream,
		from_pending ? "0" : ">"};
		int			n = CounterStreamRead(t, ss, 9, argv, &entries);

		if (n < 0)
			return t->ctx != NULL;
		if (n > 0)
		{
			/* a failure here leaves the entries pending, read again first */
			ss->pending = true;
			CounterStreamApply(t, stream, counters, ncounters, entries, n);
			if (!CounterStreamAck(t, stream, entries, n))
				return false;
			CounterSourceYield();
		}
		ss->pending = from_pending && n >= counter_redis_batch_size;
		if (!from_pending && n < counter_redis_batch_size)
			break;
		if (GetCurrentTimestamp() >= deadline || CounterRedisStopSoon())
		{
			*more = true;
			break;
		}
	}
	*lag += Max(CounterStreamLag(t, stream), 0);
	return t->ctx != NULL;
}

/*
 * Read every stream a counter names whose key this master holds.  False
 * if Redis failed.
 */
bool
CounterRedisDrainStreams(CounterRedisTarget *t, const CounterRedisCounter *counters,
						 int ncounters, TimestampTz deadline, bool *more)
{
	int64		lag = 0;
	bool		any = false;
	int			i,
				j;

	for (i = 0; i < ncounters; i++)
	{
		const char *stream = counters[i].stream;

		if (stream == NULL || !CounterRedisHolds(t, stream))
			continue;
		for (j = 0; j < i; j++)
			if (counters[j].stream && strcmp(counters[j].stream, stream) == 0)
				break;
		if (j < i)
			continue;			/* read for an earlier counter already */
		any = true;
		if (!CounterRedisDrainOneStream(t, stream, counters, ncounters, deadline, more, &lag))
			return false;
	}
	CounterRedisNoteStream(t, any ? lag : -1);
	return true;
}
