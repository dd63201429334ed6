/*
 * redis_keys.c
 *		Exactly-once drain of Redis INCR keys: `<prefix><key>` and sharded
 *		`<prefix><key>:s<N>` (the key part may be wrapped in a hash tag,
 *		`<prefix>{<key>}`), for the counters that set a redis_prefix.  Keys
 *		under no counter's prefix are never touched.
 *
 * A batch goes through three steps:
 *	1. claim: one Lua script call (per hash slot on a cluster) moves the
 *	   keys' values into an in-flight hash `counter:inflight:{T}:<batch id>`
 *	   and deletes the keys, atomically; T is a hash tag of the keys' slot,
 *	   so every key a call touches shares one slot (no CROSSSLOT);
 *	2. apply: one Postgres transaction applies the amounts (source_apply.c:
 *	   an item that cannot be counted is quarantined alone) and inserts the
 *	   batch id into counter.redis_batch;
 *	3. forget: the in-flight hashes are deleted.
 * A crash between 1 and 2 leaves in-flight hashes whose id is not recorded:
 * recovery applies them.  A crash between 2 and 3 leaves hashes whose id is
 * recorded: recovery just deletes them.  Recovery runs whenever a master
 * (re)connects and after any failed batch, before anything new is claimed.
 *
 * What cannot be counted never blocks the drain: a value that is not an
 * integer within bigint is moved by the script into the hash
 * `counter:quarantine:{T}` (field: the original key, bytes intact); a key
 * under a prefix that is not a string (a hash, a list...) is renamed to
 * `counter:quarantine:{T}:<type>:<key>`; a key part that is not a key of
 * the counter, and whatever Postgres refuses (max_delta, a total leaving
 * bigint), is quarantined by the apply.  All of it lands in
 * counter.quarantine and the log.
 *
 * The scan: one SCAN cursor per master, resumed from round to round, MATCH
 * the longest prefix all counters' prefixes share; a round ends at its
 * deadline.  Its cost is a pass over the keyspace, however many counters.
 */
#include "counter_redis.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#define COUNTER_REDIS_DONE_MAX 64

/*
 * The claim script.  KEYS[1] in-flight hash, KEYS[2] quarantine hash,
 * KEYS[3..] the source keys, the first ARGV[1] of them with a valid key
 * part.  ARGV[2] the batch id, ARGV[3] the claim time (Unix ms).  Returns
 * the fields written, each followed by its value: "+key" for an amount,
 * "!key" for a quarantined value (its first COUNTER_SHOW_MAX bytes; the
 * quarantine hash keeps it whole), "?key" for a key that is not a string
 * (value: its type; the key is renamed next to the quarantine hash, in the
 * same slot).  Lua strings are binary: NUL bytes pass intact.
 */
const char *counter_redis_claim_script =
"local good = tonumber(ARGV[1])\n"
"local function int64(v)\n"
"  local neg = string.sub(v, 1, 1) == '-'\n"
"  local d = neg and string.sub(v, 2) or v\n"
"  if #d == 0 or #d > 19 or not string.match(d, '^%d+$') then return false end\n"
"  if #d < 19 then return true end\n"
"  return d <= (neg and '9223372036854775808' or '9223372036854775807')\n"
"end\n"
"local out = {}\n"
"for i = 3, #KEYS do\n"
"  local k = KEYS[i]\n"
"  local t = redis.call('TYPE', k).ok\n"
"  if t == 'string' then\n"
"    local v = redis.call('GET', k)\n"
"    local f\n"
"    if i - 2 <= good and int64(v) then\n"
"      f = '+' .. k\n"
"    else\n"
"      f = '!' .. k\n"
"      if redis.call('HSETNX', KEYS[2], k, v) == 0 then\n"
"        redis.call('HSET', KEYS[2], k .. '#' .. ARGV[2], v)\n"
"      end\n"
"      if #v > 1024 then v = string.sub(v, 1, 1024) end\n"
"    end\n"
"    redis.call('HSET', KEYS[1], f, v)\n"
"    redis.call('DEL', k)\n"
"    out[#out + 1] = f\n"
"    out[#out + 1] = v\n"
"  elseif t ~= 'none' then\n"
"    local q = KEYS[2] .. ':' .. t .. ':' .. k\n"
"    if redis.call('RENAMENX', k, q) == 0 then\n"
"      redis.call('RENAME', k, q .. '#' .. ARGV[2])\n"
"    end\n"
"    redis.call('HSET', KEYS[1], '?' .. k, t)\n"
"    out[#out + 1] = '?' .. k\n"
"    out[#out + 1] = t\n"
"  end\n"
"end\n"
"if #out > 0 then redis.call('HSET', KEYS[1], '#t', ARGV[3]) end\n"
"return out\n";

/* A key found by SCAN, waiting to be claimed. */
typedef struct ClaimKey
{
	char	   *name;
	size_t		len;
	bool		good;			/* key part valid for its counter */
	unsigned int slot;
} ClaimKey;

static char (*slot_tags)[8] = NULL;
static char batch_prefix[20] = "";
static uint64 batch_seq = 0;
static char *done_ids[COUNTER_REDIS_DONE_MAX];
static int	ndone = 0;

/* A short hash tag for every slot: "{tag}" hashes to that slot. */
static const char *
CounterRedisSlotTag(unsigned int slot)
{
	if (slot_tags == NULL)
	{
		int			filled = 0;
		unsigned int i;

		slot_tags = MemoryContextAllocZero(TopMemoryContext,
										   sizeof(*slot_tags) * COUNTER_REDIS_SLOTS);
		for (i = 0; filled < COUNTER_REDIS_SLOTS; i++)
		{
			char		buf[8];
			unsigned int s;

			snprintf(buf, sizeof(buf), "%x", i);
			s = CounterRedisSlot(buf, strlen(buf));
			if (slot_tags[s][0] == '\0')
			{
				strlcpy(slot_tags[s], buf, sizeof(slot_tags[s]));
				filled++;
			}
		}
	}
	return slot_tags[slot];
}

/* A batch id unique across worker restarts: random prefix, sequence. */
static char *
CounterRedisBatchId(void)
{
	if (batch_prefix[0] == '\0')
	{
		uint64		r;

		if (!pg_strong_random(&r, sizeof(r)))
			r = (uint64) GetCurrentTimestamp() ^ ((uint64) MyProcPid << 32);
		snprintf(batch_prefix, sizeof(batch_prefix), "%012llx",
				 (unsigned long long) (r & UINT64CONST(0xffffffffffff)));
	}
	return psprintf("%s-" UINT64_FORMAT, batch_prefix, ++batch_seq);
}

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
static const char *
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
static void
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
static void
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
static bool
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
static void
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
static bool
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

/* Unix milliseconds of now. */
static int64
CounterUnixMsNow(void)
{
	return GetCurrentTimestamp() / 1000 +
		(int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;
}

/* qsort: claim keys by slot. */
static int
CounterClaimKeyCmp(const void *a, const void *b)
{
	const ClaimKey *x = a;
	const ClaimKey *y = b;

	if (x->slot != y->slot)
		return x->slot < y->slot ? -1 : 1;
	return 0;
}

/*
 * Load the claim script on a master once per connection; its SHA1 stays in
 * the target until the connection fails.  False if Redis failed.
 */
static bool
CounterRedisLoadScript(CounterRedisTarget *t)
{
	const char *argv[3] = {"SCRIPT", "LOAD", counter_redis_claim_script};
	redisReply *r;

	if (t->sha[0] != '\0')
		return true;
	r = CounterRedisCommand(t, 3, argv, NULL);
	if (r == NULL)
		return false;
	if (r->type != REDIS_REPLY_STRING || r->len != 40)
	{
		char		detail[160];

		strlcpy(detail, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply",
				sizeof(detail));
		freeReplyObject(r);
		CounterRedisFail(t, "SCRIPT LOAD", detail);
		return false;
	}
	memcpy(t->sha, r->str, 40);
	t->sha[40] = '\0';
	freeReplyObject(r);
	return true;
}

/*
 * The claim script's call for keys[from..to), one slot: its arguments.
 * Keys with a valid key part go first.
 */
static void
CounterRedisClaimArgs(CounterRedisTarget *t, ClaimKey *keys, int from, int to,
					  const char *inflight, const char *batch_id, const char *now_ms,
					  int *argc, const char ***argv, size_t **lens)
{
	int			nk = to - from;
	const char **a = palloc(sizeof(char *) * (nk + 8));
	size_t	   *l = palloc(sizeof(size_t) * (nk + 8));
	const char *tag = t->kind == COUNTER_REDIS_CLUSTER ?
		CounterRedisSlotTag(keys[from].slot) : "0";
	int			n = 0;
	int			ngood = 0;
	int			pass;
	int			j;

	a[n] = "EVALSHA";
	l[n++] = 7;
	a[n] = t->sha;
	l[n++] = 40;
	a[n] = psprintf("%d", nk + 2);
	l[n] = strlen(a[n]);
	n++;
	a[n] = inflight;
	l[n] = strlen(inflight);
	n++;
	a[n] = psprintf("%s{%s}", COUNTER_REDIS_QUARANTINE, tag);
	l[n] = strlen(a[n]);
	n++;
	for (pass = 0; pass < 2; pass++)
		for (j = from; j < to; j++)
			if (keys[j].good == (pass == 0))
			{
				a[n] = keys[j].name;
				l[n++] = keys[j].len;
				if (pass == 0)
					ngood++;
			}
	a[n] = psprintf("%d", ngood);
	l[n] = strlen(a[n]);
	n++;
	a[n] = batch_id;
	l[n] = strlen(batch_id);
	n++;
	a[n] = now_ms;
	l[n] = strlen(now_ms);
	n++;
	*argc = n;
	*argv = a;
	*lens = l;
}

/*
 * Claim, apply and forget one batch of keys.  False if Redis failed (the
 * target is then disconnected and recovers on reconnect).
 */
static bool
CounterRedisClaim(CounterRedisTarget *t, const CounterRedisCounter *counters,
				  int ncounters, ClaimKey *keys, int nkeys)
{
	char	   *batch_id = CounterRedisBatchId();
	TimestampTz bucket = CounterMinute(GetCurrentTimestamp());
	char		now_ms[24];
	int		   *group_start;
	int			ngroups = 0;
	int			i;
	int		   *argcs;
	const char ***argvs;
	size_t	  **lens;
	redisReply **replies;
	char	  **names;
	int			nnames = 0;
	CounterSourceItem *items;
	int			nitems = 0;
	bool		had_recovery = t->need_recovery;

	if (!CounterRedisLoadScript(t))
		return false;
	snprintf(now_ms, sizeof(now_ms), INT64_FORMAT, CounterUnixMsNow());
	if (t->kind == COUNTER_REDIS_CLUSTER)
		qsort(keys, nkeys, sizeof(ClaimKey), CounterClaimKeyCmp);
	group_start = palloc(sizeof(int) * (nkeys + 1));
	for (i = 0; i < nkeys; i++)
		if (i == 0 || (t->kind == COUNTER_REDIS_CLUSTER && keys[i].slot != keys[i - 1].slot))
			group_start[ngroups++] = i;
	group_start[ngroups] = nkeys;

	argcs = palloc(sizeof(int) * ngroups);
	argvs = palloc(sizeof(char **) * ngroups);
	lens = palloc(sizeof(size_t *) * ngroups);
	replies = palloc0(sizeof(redisReply *) * ngroups);
	names = palloc(sizeof(char *) * ngroups);
	for (i = 0; i < ngroups; i++)
	{
		const char *tag = t->kind == COUNTER_REDIS_CLUSTER ?
			CounterRedisSlotTag(keys[group_start[i]].slot) : "0";

		names[i] = psprintf("%s{%s}:%s", COUNTER_REDIS_INFLIGHT, tag, batch_id);
		CounterRedisClaimArgs(t, keys, group_start[i], group_start[i + 1], names[i],
							  batch_id, now_ms, &argcs[i], &argvs[i], &lens[i]);
	}

	/* from here on, a failure leaves in-flight hashes for recovery */
	t->need_recovery = true;
	if (!CounterRedisPipeline(t, ngroups, argcs, argvs, lens, replies))
		return false;

	items = palloc(sizeof(CounterSourceItem) * Max(nkeys, 1));
	for (i = 0; i < ngroups; i++)
	{
		redisReply *r = replies[i];
		size_t		j;

		if (r->type != REDIS_REPLY_ARRAY)
		{
			char		detail[160];
			int			k;

			strlcpy(detail, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply",
					sizeof(detail));
			for (k = 0; k < ngroups; k++)
				freeReplyObject(replies[k]);
			CounterRedisFail(t, "claim script", detail);
			return false;
		}
		if (r->elements > 0)
			names[nnames++] = names[i];
		for (j = 0; j + 1 < r->elements && nitems < nkeys; j += 2)
			CounterRedisItemFrom(counters, ncounters, r->element[j]->str, r->element[j]->len,
								 r->element[j + 1]->str, r->element[j + 1]->len,
								 bucket, &items[nitems++]);
	}
	for (i = 0; i < ngroups; i++)
		freeReplyObject(replies[i]);
	if (nitems == 0)
	{
		t->need_recovery = had_recovery;
		return true;
	}

	CounterRedisApply(t, batch_id, items, nitems, false);
	CounterRedisNoteItems(t, items, nitems);
	if (!CounterRedisForget(t, names, nnames))
		return false;
	CounterRedisDone(batch_id);
	t->need_recovery = had_recovery;
	return true;
}

/*
 * Is r a SCAN reply (a cursor and an array of names)?  If not, it is freed
 * and the target failed with what Redis said.
 */
static bool
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

/* The SCAN MATCH pattern: the prefix every counter's prefix starts with, escaped. */
static char *
CounterRedisPattern(const CounterRedisCounter *counters, int ncounters)
{
	StringInfoData buf;
	const char *first = NULL;
	int			common = 0;
	int			i,
				j;

	for (i = 0; i < ncounters; i++)
	{
		if (counters[i].prefix == NULL)
			continue;
		if (first == NULL)
		{
			first = counters[i].prefix;
			common = counters[i].prefix_len;
			continue;
		}
		for (j = 0; j < common && counters[i].prefix[j] == first[j]; j++)
			;
		common = j;
	}
	initStringInfo(&buf);
	for (j = 0; j < common; j++)
	{
		if (strchr("*?[]\\", first[j]))
			appendStringInfoChar(&buf, '\\');
		appendStringInfoChar(&buf, first[j]);
	}
	appendStringInfoChar(&buf, '*');
	return buf.data;
}

/*
 * Go on scanning for the counters' keys, from where the last round left
 * off, and claim them in batches of counter.redis_batch_size, until a full
 * pass ends or the deadline.  Each batch's memory is freed once it is
 * applied.  Sets *more when time ran out with keys left.  False if Redis
 * failed.
 */
bool
CounterRedisDrainKeys(CounterRedisTarget *t, const CounterRedisCounter *counters,
					  int ncounters, TimestampTz deadline, bool *more)
{
	MemoryContext batch_cxt;
	MemoryContext old;
	ClaimKey   *pending;
	int			npending = 0;
	int			cap;
	char	   *pattern;
	bool		ok = true;
	int			i;

	for (i = 0; i < ncounters && counters[i].prefix == NULL; i++)
		;
	if (i == ncounters)
		return true;			/* no counter drains keys */
	pattern = CounterRedisPattern(counters, ncounters);
	batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "counter redis batch",
									  ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(batch_cxt);
	cap = 1024;
	pending = palloc(sizeof(ClaimKey) * cap);
	for (;;)
	{
		const char *argv[6] = {"SCAN", t->scan_cursor, "MATCH", pattern, "COUNT", "1000"};
		redisReply *r = CounterRedisCommand(t, 6, argv, NULL);
		redisReply *list;
		size_t		j;
		bool		pass_done;

		if (r == NULL)
		{
			ok = false;
			break;
		}
		if (!CounterRedisScanReply(t, r))
		{
			ok = false;
			break;
		}
		strlcpy(t->scan_cursor, r->element[0]->str, sizeof(t->scan_cursor));
		pass_done = strcmp(t->scan_cursor, "0") == 0;
		list = r->element[1];
		for (j = 0; j < list->elements; j++)
		{
			redisReply *k = list->element[j];
			const CounterRedisCounter *owner;
			ClaimKey   *ck;
			char	   *keytext;
			int64		key;

			if (k->type != REDIS_REPLY_STRING)
				continue;
			owner = CounterRedisOwner(counters, ncounters, k->str, k->len);
			if (owner == NULL)
				continue;		/* nobody's, or ours: never touched */
			if (npending == cap)
			{
				cap *= 2;
				pending = repalloc(pending, sizeof(ClaimKey) * cap);
			}
			ck = &pending[npending++];
			ck->name = CounterBytes(k->str, k->len);
			ck->len = k->len;
			ck->good = CounterRedisParseKey(owner, k->str, k->len, &keytext, &key) == NULL;
			ck->slot = CounterRedisSlot(k->str, k->len);
			t->scan_found++;
		}
		freeReplyObject(r);
		if (pass_done)
		{
			t->backlog = t->scan_found;
			t->scan_found = 0;
		}
		if (npending >= counter_redis_batch_size || (pass_done && npending > 0))
		{
			if (!CounterRedisClaim(t, counters, ncounters, pending, npending))
			{
				ok = false;
				break;
			}
			npending = 0;
			MemoryContextSwitchTo(old);
			MemoryContextReset(batch_cxt);
			CounterSourceYield();
			MemoryContextSwitchTo(batch_cxt);
			cap = 1024;
			pending = palloc(sizeof(ClaimKey) * cap);
		}
		if (pass_done)
			break;
		if (GetCurrentTimestamp() >= deadline || CounterRedisStopSoon())
		{
			*more = true;
			break;
		}
	}
	if (ok && npending > 0 && !CounterRedisClaim(t, counters, ncounters, pending, npending))
		ok = false;
	MemoryContextSwitchTo(old);
	MemoryContextDelete(batch_cxt);
	return ok;
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
