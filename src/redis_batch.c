/*
 * redis_batch.c
 *		A claimed batch of Redis keys: reading its in-flight hash into items,
 *		applying them in one Postgres transaction that records the batch id,
 *		deleting the hashes, and recovering whatever a crash left between
 *		those steps.  redis_keys.c finds and claims the keys.
 *
 * A batch goes through three steps:
 *	1. claim (redis_keys.c): the keys' values move into an in-flight hash
 *	   `counter:inflight:{T}:<batch id>`, atomically;
 *	2. apply: one Postgres transaction applies the amounts (source_apply.c:
 *	   an item that cannot be counted is quarantined alone) and inserts the
 *	   batch id into counter.redis_batch;
 *	3. forget: the in-flight hashes are deleted.
 * A crash between 1 and 2 leaves in-flight hashes whose id is not recorded:
 * recovery applies them.  A crash between 2 and 3 leaves hashes whose id is
 * recorded: recovery just deletes them.  Recovery runs whenever a master
 * (re)connects and after any failed batch, before anything new is claimed.
 * Batch ids older than a week are expired.
 */
#include "counter_redis.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

/* Batches whose hashes are gone, forgotten in the next apply's transaction. */
#define COUNTER_REDIS_DONE_MAX 64

static char *done_ids[COUNTER_REDIS_DONE_MAX];
static int	ndone = 0;

/* Whether a value is a decimal integer as INCR writes them (digits, a sign). */
static bool
CounterRedisIsInteger(const char *v, size_t len)
{
	size_t		i = 0;

	if (len > 0 && v[0] == '-')
		i = 1;
	if (i == len || len > 20)
		return false;
	for (; i < len; i++)
		if (v[i] < '0' || v[i] > '9')
			return false;
	return true;
}

/*
 * The counter whose prefix is the longest one starting name, or NULL; the
 * worker's own keys belong to none.  counters is sorted longest prefix
 * first; counters without a prefix are not in it.
 */
const CounterRedisCounter *
CounterRedisOwner(const CounterRedisCounter *counters, int ncounters,
				  const char *name, size_t len)
{
	size_t		own = strlen(COUNTER_REDIS_OWN);
	int			i;

	if (len >= own && memcmp(name, COUNTER_REDIS_OWN, own) == 0)
		return NULL;
	for (i = 0; i < ncounters; i++)
		if (counters[i].prefix != NULL && len >= (size_t) counters[i].prefix_len &&
			memcmp(name, counters[i].prefix, counters[i].prefix_len) == 0)
			return &counters[i];
	return NULL;
}

/*
 * Parse the key part of name (after counter c's prefix): drop a `:s<N>`
 * shard suffix and a {hash tag} around it.  Fills keytext and, for bigint
 * counters, key; returns NULL, or why it is not a valid key of c.
 */
const char *
CounterRedisParseKey(const CounterRedisCounter *c, const char *name, size_t len,
					 char **keytext, int64 *key)
{
	const char *p = name + c->prefix_len;
	size_t		n = len - c->prefix_len;
	size_t		i;

	/* a shard suffix, `:s` and digits at the end */
	for (i = n; i > 0 && p[i - 1] >= '0' && p[i - 1] <= '9'; i--)
		;
	if (i < n && i >= 2 && p[i - 1] == 's' && p[i - 2] == ':')
		n = i - 2;
	if (n >= 2 && p[0] == '{' && p[n - 1] == '}')
	{
		p++;
		n -= 2;
	}
	if (n == 0)
		return "key part is empty";
	if (memchr(p, '\0', n) != NULL || !pg_verifymbstr(p, (int) n, true))
		return "key part is not valid text";
	*keytext = pnstrdup(p, n);
	if (c->key_type == COUNTER_KEY_BIGINT)
	{
		char	   *end;

		if (!CounterRedisIsInteger(p, n))
			return "key part is not a bigint";
		errno = 0;
		*key = strtoi64(*keytext, &end, 10);
		if (errno != 0 || *end != '\0')
			return "key part is not a bigint";
		*keytext = NULL;		/* nothing to map */
	}
	else if (n > COUNTER_TEXT_KEY_MAXLEN)
		return "key part is longer than a text key may be";
	return NULL;
}

/*
 * Turn one in-flight field ("+key", "!key" or "?key") and its value into a
 * source item; whatever cannot be applied gets its reason.
 */
void
CounterRedisItemFrom(const CounterRedisCounter *counters, int ncounters,
					 const char *field, size_t flen, const char *value,
					 size_t vlen, TimestampTz bucket, CounterSourceItem *it)
{
	const CounterRedisCounter *c;
	const char *keyerr = NULL;

	memset(it, 0, sizeof(*it));
	it->item = CounterBytes(field + 1, flen - 1);
	it->item_len = flen - 1;
	it->value = CounterBytes(value, vlen);
	it->value_len = vlen;
	it->bucket = bucket;
	c = CounterRedisOwner(counters, ncounters, it->item, it->item_len);
	if (c)
	{
		it->counter_id = c->id;
		keyerr = CounterRedisParseKey(c, it->item, it->item_len, &it->keytext, &it->key);
	}
	if (field[0] == '?')
		it->reason = psprintf("key is a %s, not a string; moved to %s{...}:%s:<key>",
							  it->value, COUNTER_REDIS_QUARANTINE, it->value);
	else if (!CounterRedisIsInteger(value, vlen))
		it->reason = "value is not an integer";
	else if (c == NULL)
		it->reason = "no counter has this key prefix";
	else if (keyerr)
		it->reason = keyerr;
	else
	{
		char	   *end;

		errno = 0;
		it->delta = strtoi64(it->value, &end, 10);
		if (errno != 0)
			it->reason = "value is out of range for bigint";
	}
	if (it->reason == NULL && field[0] != '+')
		it->reason = "quarantined";
}

/* Count a batch's items as the master's drain status shows them. */
void
CounterRedisNoteItems(CounterRedisTarget *t, CounterSourceItem *items, int n)
{
	int64		counted = CounterSourceCountStats(items, n, COUNTER_STAT_REDIS);
	int64		quarantined = 0;
	int			i;

	for (i = 0; i < n; i++)
		if (items[i].reason)
			quarantined++;
	CounterRedisNoteDrain(t, counted, quarantined);
}

/*
 * Apply a batch in one transaction and record its id.  With check, a batch
 * already recorded is left alone (returns false).  Errors propagate: the
 * transaction aborts and the in-flight hashes stay for recovery.
 */
bool
CounterRedisApply(CounterRedisTarget *t, const char *batch_id,
				  CounterSourceItem *items, int n, bool check)
{
	CounterScope scope;
	Oid			argtypes[3] = {TEXTOID, TEXTOID, INT8OID};
	Datum		values[3];
	int			i;
	int			rc;

	CounterSourceBegin();
	if (check)
	{
		bool		recorded;

		CounterEnter(&scope);
		values[0] = CStringGetTextDatum(batch_id);
		rc = SPI_execute_with_args("SELECT FROM counter.redis_batch WHERE batch_id = $1",
								   1, argtypes, values, NULL, true, 1);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "batch lookup failed: %s", SPI_result_code_string(rc));
		recorded = SPI_processed > 0;
		CounterLeave(&scope);
		if (recorded)
		{
			CounterSourceCommit();
			return false;
		}
	}
	CounterSourceApply("redis", t->label, items, n, COUNTER_SLOT_FOLD);
	CounterEnter(&scope);
	values[0] = CStringGetTextDatum(batch_id);
	values[1] = CStringGetTextDatum(t->label);
	values[2] = Int64GetDatum(n);
	rc = SPI_execute_with_args("INSERT INTO counter.redis_batch (batch_id, master, items)"
							   " VALUES ($1, $2, $3)",
							   3, argtypes, values, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "recording Redis batch failed: %s", SPI_result_code_string(rc));
	if (ndone > 0)
	{
		/* batches whose in-flight hashes are gone need no record any more */
		Oid			dtype[1] = {TEXTARRAYOID};
		Datum		dval[1];
		Datum	   *d = palloc(sizeof(Datum) * ndone);

		for (i = 0; i < ndone; i++)
			d[i] = CStringGetTextDatum(done_ids[i]);
		dval[0] = PointerGetDatum(construct_array(d, ndone, TEXTOID, -1, false, TYPALIGN_INT));
		rc = SPI_execute_with_args("DELETE FROM counter.redis_batch WHERE batch_id = ANY ($1)",
								   1, dtype, dval, NULL, false, 0);
		if (rc != SPI_OK_DELETE)
			elog(ERROR, "forgetting Redis batches failed: %s", SPI_result_code_string(rc));
	}
	CounterLeave(&scope);
	CounterSourceCommit();
	for (i = 0; i < ndone; i++)
		pfree(done_ids[i]);
	ndone = 0;
	return true;
}

/* Remember a batch whose in-flight hashes were deleted. */
void
CounterRedisDone(const char *batch_id)
{
	if (ndone == COUNTER_REDIS_DONE_MAX)
		return;					/* the expiry takes care of it */
	done_ids[ndone++] = MemoryContextStrdup(TopMemoryContext, batch_id);
}

/*
 * Delete in-flight hashes (one command each: they may be in many slots).
 * False if any DEL failed: then the batch id must stay recorded, so that
 * recovery discards the surviving hash instead of applying it again.
 */
bool
CounterRedisForget(CounterRedisTarget *t, char **names, int n)
{
	int			i;
	int			chunk = 1000;
	bool		ok = true;

	for (i = 0; i < n; i += chunk)
	{
		int			k = Min(chunk, n - i);
		int		   *argcs = palloc(sizeof(int) * k);
		const char ***argvs = palloc(sizeof(char **) * k);
		size_t	  **lens = palloc0(sizeof(size_t *) * k);
		redisReply **replies = palloc0(sizeof(redisReply *) * k);
		int			j;

		for (j = 0; j < k; j++)
		{
			argcs[j] = 2;
			argvs[j] = palloc(sizeof(char *) * 2);
			argvs[j][0] = "DEL";
			argvs[j][1] = names[i + j];
			lens[j] = NULL;
		}
		if (!CounterRedisPipeline(t, k, argcs, argvs, lens, replies))
			return false;
		for (j = 0; j < k; j++)
		{
			if (replies[j] == NULL || replies[j]->type == REDIS_REPLY_ERROR)
				ok = false;
			if (replies[j])
				freeReplyObject(replies[j]);
		}
	}
	return ok;
}

/* Timestamp of Unix milliseconds. */
static TimestampTz
CounterFromUnixMs(int64 ms)
{
	return (TimestampTz) (ms - ((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) *
								SECS_PER_DAY * 1000)) * 1000;
}

/*
 * Is r a SCAN reply (a cursor and an array of names)?  If not, it is freed
 * and the target failed with what Redis said.
 */
bool
CounterRedisScanReply(CounterRedisTarget *t, redisReply *r)
{
	char		detail[160];

	if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
		r->element[0]->type == REDIS_REPLY_STRING &&
		r->element[1]->type == REDIS_REPLY_ARRAY)
		return true;
	strlcpy(detail, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply",
			sizeof(detail));
	freeReplyObject(r);
	CounterRedisFail(t, "SCAN", detail);
	return false;
}

/*
 * Whether a key has the shape of the in-flight records this worker writes,
 * counter:inflight:{tag}:<id> with an id of letters, digits, '-' and '_'.
 * Only such names are recovered, so no NUL byte can cut one short.
 */
static bool
CounterRedisIsInflightName(const char *s, size_t len)
{
	size_t		plen = strlen(COUNTER_REDIS_INFLIGHT);
	size_t		i = plen;
	size_t		start;

	if (len <= plen || memcmp(s, COUNTER_REDIS_INFLIGHT, plen) != 0 || s[i++] != '{')
		return false;
	while (i < len && s[i] != '}' && s[i] != '\0')
		i++;
	if (i + 1 >= len || s[i] != '}' || s[i + 1] != ':')
		return false;
	i += 2;
	start = i;
	while (i < len && (isalnum((unsigned char) s[i]) || s[i] == '-' || s[i] == '_'))
		i++;
	return i == len && i > start;
}

/*
 * The items of one in-flight hash, appended to *items; false if Redis
 * failed.
 */
static bool
CounterRedisReadInflight(CounterRedisTarget *t, const char *name,
						 const CounterRedisCounter *counters, int ncounters,
						 CounterSourceItem **items, int *nitems, int *cap)
{
	const char *argv[2] = {"HGETALL", name};
	redisReply *r = CounterRedisCommand(t, 2, argv, NULL);
	TimestampTz bucket = CounterMinute(GetCurrentTimestamp());
	size_t		k;

	if (r == NULL)
		return false;
	if (r->type != REDIS_REPLY_ARRAY)
	{
		freeReplyObject(r);
		CounterRedisFail(t, "HGETALL", "unexpected reply");
		return false;
	}
	for (k = 0; k + 1 < r->elements; k += 2)
		if (r->element[k]->len == 2 && memcmp(r->element[k]->str, "#t", 2) == 0)
		{
			char	   *ms = CounterBytes(r->element[k + 1]->str, r->element[k + 1]->len);

			bucket = CounterMinute(CounterFromUnixMs(strtoi64(ms, NULL, 10)));
		}
	for (k = 0; k + 1 < r->elements; k += 2)
	{
		redisReply *f = r->element[k];
		redisReply *v = r->element[k + 1];

		if (f->len < 2 || (f->str[0] != '+' && f->str[0] != '!' && f->str[0] != '?'))
			continue;
		if (*nitems == *cap)
		{
			*cap *= 2;
			*items = repalloc(*items, sizeof(CounterSourceItem) * *cap);
		}
		CounterRedisItemFrom(counters, ncounters, f->str, f->len, v->str, v->len,
							 bucket, &(*items)[(*nitems)++]);
	}
	freeReplyObject(r);
	return true;
}

/*
 * Finish what a crash or an error left in flight on this master: apply the
 * in-flight hashes whose batch id is not recorded, then delete them all.
 */
bool
CounterRedisRecover(CounterRedisTarget *t, const CounterRedisCounter *counters,
					int ncounters)
{
	char	  **group;
	char		cursor[32] = "0";
	char	  **names = NULL;
	int			nnames = 0;
	int			cap = 16;
	int			i;

	names = palloc(sizeof(char *) * cap);
	do
	{
		const char *argv[8] = {"SCAN", cursor, "MATCH", COUNTER_REDIS_INFLIGHT "*",
		"COUNT", "1000", "TYPE", "hash"};
		redisReply *r = CounterRedisCommand(t, 8, argv, NULL);
		size_t		j;

		if (r == NULL)
			return false;
		if (!CounterRedisScanReply(t, r))
			return false;
		strlcpy(cursor, r->element[0]->str, sizeof(cursor));
		for (j = 0; j < r->element[1]->elements; j++)
		{
			redisReply *name = r->element[1]->element[j];

			if (nnames == cap)
			{
				cap *= 2;
				names = repalloc(names, sizeof(char *) * cap);
			}
			/* a hash someone else made under our prefix is not ours */
			if (name->type != REDIS_REPLY_STRING ||
				!CounterRedisIsInflightName(name->str, name->len))
				continue;
			names[nnames++] = CounterBytes(name->str, name->len);
		}
		freeReplyObject(r);
	} while (strcmp(cursor, "0") != 0);

	/* one batch at a time: all hashes with the same id */
	group = palloc(sizeof(char *) * Max(nnames, 1));
	for (i = 0; i < nnames; i++)
	{
		const char *id = strrchr(names[i], ':') + 1;
		int			ng = 0;
		CounterSourceItem *items;
		int			nitems = 0;
		int			icap = 64;
		int			j;

		if (names[i][0] == '\0')
			continue;			/* done with as part of an earlier batch */
		for (j = i; j < nnames; j++)
			if (names[j][0] != '\0' && strcmp(strrchr(names[j], ':') + 1, id) == 0)
				group[ng++] = names[j];
		items = palloc(sizeof(CounterSourceItem) * icap);
		for (j = 0; j < ng; j++)
			if (!CounterRedisReadInflight(t, group[j], counters, ncounters,
										  &items, &nitems, &icap))
				return false;
		if (CounterRedisApply(t, id, items, nitems, true))
		{
			CounterRedisNoteItems(t, items, nitems);
			ereport(LOG,
					(errmsg("counter: applied in-flight Redis batch %s from %s (%d items)",
							id, t->label, nitems)));
		}
		else
			ereport(LOG,
					(errmsg("counter: discarded in-flight Redis batch %s from %s, applied before",
							id, t->label)));
		if (!CounterRedisForget(t, group, ng))
			return false;
		CounterRedisDone(id);
		for (j = 0; j < ng; j++)
			group[j][0] = '\0';
	}
	t->need_recovery = false;
	return true;
}

/* Delete batch ids older than a week, 10000 at a time (own transaction). */
void
CounterRedisExpireBatches(void)
{
	CounterScope scope;
	int			rc;

	CounterSourceBegin();
	CounterEnter(&scope);
	rc = SPI_execute("DELETE FROM counter.redis_batch WHERE ctid = ANY (ARRAY("
					 " SELECT ctid FROM counter.redis_batch"
					 " WHERE applied_at < pg_catalog.now() OPERATOR(pg_catalog.-) '7 days'::pg_catalog.interval"
					 " LIMIT 10000))", false, 0);
	if (rc != SPI_OK_DELETE)
		elog(ERROR, "expiring Redis batch ids failed: %s", SPI_result_code_string(rc));
	CounterLeave(&scope);
	CounterSourceCommit();
}
