/*
 * redis_keys.c
 *		Exactly-once drain of Redis INCR keys: `<prefix><key>` and sharded
 *		`<prefix><key>:s<N>` (the key part may be wrapped in a hash tag,
 *		`<prefix>{<key>}`), for every counter's prefix.
 *
 * A batch goes through three steps:
 *	1. claim: one Lua script call (per hash slot on a cluster) moves the
 *	   keys' values into an in-flight hash `counter:inflight:{T}:<batch id>`
 *	   and deletes the keys, atomically; T is a hash tag of the keys' slot,
 *	   so every key a call touches shares one slot (no CROSSSLOT);
 *	2. apply: one Postgres transaction adds the amounts to the tally,
 *	   records quarantined items, and inserts the batch id into
 *	   counter.redis_batch;
 *	3. forget: the in-flight hashes are deleted.
 * A crash between 1 and 2 leaves in-flight hashes whose id is not recorded:
 * recovery applies them.  A crash between 2 and 3 leaves hashes whose id is
 * recorded: recovery just deletes them.  Recovery runs whenever a master
 * (re)connects and after any failed batch, before anything new is claimed.
 *
 * Values that are not integers, and keys whose key part is not a key of the
 * counter, are quarantined: the script moves them into the hash
 * `counter:quarantine:{T}` (field: the original key) and the apply step
 * records them in counter.redis_quarantine.
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
 * "!key" for a quarantined value, whose first COUNTER_REDIS_SHOW_MAX bytes
 * are all the in-flight record keeps (the quarantine hash keeps it whole).
 * Lua strings are binary: keys and values with NUL bytes pass intact.
 */
const char *counter_redis_claim_script =
"local good = tonumber(ARGV[1])\n"
"local out = {}\n"
"for i = 3, #KEYS do\n"
"  local k = KEYS[i]\n"
"  local v = redis.pcall('GET', k)\n"
"  if type(v) == 'string' then\n"
"    local f\n"
"    if i - 2 <= good and #v <= 20 and string.match(v, '^%-?%d+$') then\n"
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

/* Whether a value is a decimal integer as INCR writes them. */
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
 * Parse the key part of name (after counter c's prefix): drop a `:s<N>`
 * shard suffix and a {hash tag} around it.  Fills keytext and, for bigint
 * counters, key; false if it is not a valid key of c.
 */
static bool
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
	if (n == 0 || memchr(p, '\0', n) != NULL || !pg_verifymbstr(p, (int) n, true))
		return false;
	*keytext = pnstrdup(p, n);
	if (c->key_type == COUNTER_KEY_BIGINT)
	{
		char	   *end;

		if (!CounterRedisIsInteger(p, n))
			return false;
		errno = 0;
		*key = strtoi64(*keytext, &end, 10);
		if (errno != 0 || *end != '\0')
			return false;
	}
	return true;
}

/*
 * Turn one in-flight field ("+key" or "!key") and its value into an item.
 * Whatever cannot be applied is quarantined with the reason.
 */
static void
CounterRedisItemFrom(const CounterRedisCounter *counters, int ncounters,
					 const char *field, size_t flen, const char *value,
					 size_t vlen, TimestampTz bucket, CounterRedisItem *it)
{
	const CounterRedisCounter *c;
	bool		keyok = false;

	memset(it, 0, sizeof(*it));
	it->rkey = CounterRedisBytes(field + 1, flen - 1);
	it->rkey_len = flen - 1;
	it->value = CounterRedisBytes(value, vlen);
	it->value_len = vlen;
	it->bucket = bucket;
	c = CounterRedisOwner(counters, ncounters, it->rkey, it->rkey_len);
	it->counter = c;
	if (c)
		keyok = CounterRedisParseKey(c, it->rkey, it->rkey_len, &it->keytext, &it->key);
	if (!CounterRedisIsInteger(value, vlen))
		it->reason = "value is not an integer";
	else if (c == NULL)
		it->reason = "no counter has this key prefix";
	else if (!keyok)
		it->reason = c->key_type == COUNTER_KEY_BIGINT ?
			"key part is not a bigint" : "key part is not a valid text key";
	else
	{
		char	   *end;

		errno = 0;
		it->delta = strtoi64(it->value, &end, 10);
		if (errno != 0)
			it->reason = "value is out of range for bigint";
	}
	it->quarantine = (it->reason != NULL) || field[0] != '+';
	if (it->quarantine && it->reason == NULL)
		it->reason = "quarantined";
}

/*
 * Apply a batch in one transaction and record its id.  With check, a batch
 * already recorded is left alone (returns false).  Errors propagate: the
 * transaction aborts and the in-flight hashes stay for recovery.
 */
static bool
CounterRedisApply(CounterRedisTarget *t, const char *batch_id,
				  CounterRedisItem *items, int n, bool check)
{
	CounterScope scope;
	Oid			argtypes[3] = {TEXTOID, TEXTOID, INT8OID};
	Datum		values[3];
	int			i;
	int			rc;

	CounterRedisTxnBegin(NULL);
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
			CounterRedisTxnCommit(NULL);
			return false;
		}
	}
	CounterRedisMapKeys(items, n);
	CounterEnter(&scope);
	CounterRedisApplyItems(items, n, false);
	CounterRedisQuarantineRows(t, items, n);
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
	CounterRedisTxnCommit(NULL);
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
	char		ngood_buf[16];
	int		   *group_start;
	int			ngroups = 0;
	int			i;
	int		   *argcs;
	const char ***argvs;
	size_t	  **lens;
	redisReply **replies;
	char	  **names;
	int			nnames = 0;
	CounterRedisItem *items;
	int			nitems = 0;
	int			cap;
	int			nq = 0;
	bool		had_recovery = t->need_recovery;

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
		int			from = group_start[i];
		int			to = group_start[i + 1];
		int			nk = to - from;
		int			argc = 3 + 2 + nk + 3;
		const char **argv = palloc(sizeof(char *) * argc);
		size_t	   *len = palloc(sizeof(size_t) * argc);
		const char *tag = t->kind == COUNTER_REDIS_CLUSTER ?
			CounterRedisSlotTag(keys[from].slot) : "0";
		int			a = 0;
		int			ngood = 0;
		int			pass;
		int			j;

		names[i] = psprintf("%s{%s}:%s", COUNTER_REDIS_INFLIGHT, tag, batch_id);
		argv[a] = "EVALSHA";
		len[a++] = 7;
		argv[a] = t->sha;
		len[a++] = 40;
		argv[a] = psprintf("%d", nk + 2);
		len[a] = strlen(argv[a]);
		a++;
		argv[a] = names[i];
		len[a] = strlen(names[i]);
		a++;
		argv[a] = psprintf("%s{%s}", COUNTER_REDIS_QUARANTINE, tag);
		len[a] = strlen(argv[a]);
		a++;
		/* valid keys first, then those to quarantine */
		for (pass = 0; pass < 2; pass++)
			for (j = from; j < to; j++)
				if (keys[j].good == (pass == 0))
				{
					argv[a] = keys[j].name;
					len[a++] = keys[j].len;
					if (pass == 0)
						ngood++;
				}
		snprintf(ngood_buf, sizeof(ngood_buf), "%d", ngood);
		argv[a] = pstrdup(ngood_buf);
		len[a] = strlen(argv[a]);
		a++;
		argv[a] = batch_id;
		len[a] = strlen(batch_id);
		a++;
		argv[a] = now_ms;
		len[a] = strlen(now_ms);
		a++;
		argcs[i] = a;
		argvs[i] = argv;
		lens[i] = len;
	}

	if (!CounterRedisLoadScript(t))
		return false;
	/* from here on, a failure leaves in-flight hashes for recovery */
	t->need_recovery = true;
	if (!CounterRedisPipeline(t, ngroups, argcs, argvs, lens, replies))
		return false;

	cap = nkeys;
	items = palloc(sizeof(CounterRedisItem) * Max(cap, 1));
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
		for (j = 0; j + 1 < r->elements; j += 2)
		{
			redisReply *f = r->element[j];
			redisReply *v = r->element[j + 1];

			if (nitems == cap)
			{
				cap *= 2;
				items = repalloc(items, sizeof(CounterRedisItem) * cap);
			}
			CounterRedisItemFrom(counters, ncounters, f->str, f->len, v->str, v->len,
								 bucket, &items[nitems]);
			if (items[nitems].quarantine)
				nq++;
			nitems++;
		}
	}
	for (i = 0; i < ngroups; i++)
		freeReplyObject(replies[i]);
	if (nitems == 0)
	{
		t->need_recovery = had_recovery;
		return true;
	}

	CounterRedisApply(t, batch_id, items, nitems, false);
	CounterRedisCountStats(items, nitems);
	CounterRedisNoteDrain(t, nitems - nq, nq);
	if (!CounterRedisForget(t, names, nnames))
		return false;
	CounterRedisDone(batch_id);
	t->need_recovery = had_recovery;
	return true;
}

/* Escape glob characters of a prefix for SCAN MATCH. */
static char *
CounterRedisGlob(const char *prefix)
{
	StringInfoData buf;
	const char *p;

	initStringInfo(&buf);
	for (p = prefix; *p; p++)
	{
		if (strchr("*?[]\\", *p))
			appendStringInfoChar(&buf, '\\');
		appendStringInfoChar(&buf, *p);
	}
	appendStringInfoChar(&buf, '*');
	return buf.data;
}

/*
 * Scan for the keys of every counter and claim them in batches of
 * counter.redis_batch_size.  Sets *more when time ran out with keys left.
 * False if Redis failed.
 */
bool
CounterRedisDrainKeys(CounterRedisTarget *t, const CounterRedisCounter *counters,
					  int ncounters, TimestampTz deadline, bool *more)
{
	ClaimKey   *pending = palloc(sizeof(ClaimKey) * counter_redis_batch_size);
	int			npending = 0;
	int64		found = 0;
	int			c;

	for (c = 0; c < ncounters; c++)
	{
		char	   *pattern = CounterRedisGlob(counters[c].prefix);
		char		cursor[32] = "0";

		do
		{
			const char *argv[8] = {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000",
			"TYPE", "string"};
			redisReply *r = CounterRedisCommand(t, 8, argv, NULL);
			redisReply *list;
			size_t		j;

			if (r == NULL)
				return false;
			if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
				r->element[1]->type != REDIS_REPLY_ARRAY)
			{
				char		detail[160];

				strlcpy(detail, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply",
						sizeof(detail));
				freeReplyObject(r);
				CounterRedisFail(t, "SCAN", detail);
				return false;
			}
			strlcpy(cursor, r->element[0]->str, sizeof(cursor));
			list = r->element[1];
			for (j = 0; j < list->elements; j++)
			{
				redisReply *k = list->element[j];
				const CounterRedisCounter *owner;
				ClaimKey   *ck;
				char	   *keytext;
				int64		key;

				owner = CounterRedisOwner(counters, ncounters, k->str, k->len);
				if (owner != &counters[c])
					continue;	/* a longer prefix's, or ours */
				ck = &pending[npending++];
				ck->name = CounterRedisBytes(k->str, k->len);
				ck->len = k->len;
				ck->good = CounterRedisParseKey(owner, k->str, k->len, &keytext, &key);
				ck->slot = CounterRedisSlot(k->str, k->len);
				found++;
				if (npending == counter_redis_batch_size)
					break;		/* the rest: by a later scan */
			}
			if (npending == counter_redis_batch_size)
			{
				/*
				 * Keys of this reply after the full batch are picked up by a
				 * later scan; SCAN returns every key that stays.
				 */
				freeReplyObject(r);
				if (!CounterRedisClaim(t, counters, ncounters, pending, npending))
					return false;
				npending = 0;
				CounterSourceYield();
				if (GetCurrentTimestamp() >= deadline || CounterRedisStopSoon())
				{
					*more = true;
					t->backlog = found;
					return true;
				}
				/* start over: the claimed keys are gone */
				*more = true;
			}
			else
				freeReplyObject(r);
		} while (strcmp(cursor, "0") != 0);
	}
	if (npending > 0 && !CounterRedisClaim(t, counters, ncounters, pending, npending))
		return false;
	t->backlog = found;
	return true;
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
		if (r->type != REDIS_REPLY_ARRAY || r->elements != 2)
		{
			char		detail[160];

			strlcpy(detail, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply",
					sizeof(detail));
			freeReplyObject(r);
			CounterRedisFail(t, "SCAN", detail);
			return false;
		}
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
			names[nnames++] = CounterRedisBytes(name->str, name->len);
		}
		freeReplyObject(r);
	} while (strcmp(cursor, "0") != 0);

	/* one batch at a time: all hashes with the same id */
	group = palloc(sizeof(char *) * Max(nnames, 1));
	for (i = 0; i < nnames; i++)
	{
		const char *id = strrchr(names[i], ':') + 1;
		int			ng = 0;
		CounterRedisItem *items;
		int			nitems = 0;
		int			icap = 64;
		int			nq = 0;
		int			j;
		bool		applied;

		if (names[i][0] == '\0')
			continue;			/* done with as part of an earlier batch */
		for (j = i; j < nnames; j++)
			if (names[j][0] != '\0' && strcmp(strrchr(names[j], ':') + 1, id) == 0)
				group[ng++] = names[j];
		items = palloc(sizeof(CounterRedisItem) * icap);
		for (j = 0; j < ng; j++)
		{
			const char *argv[2] = {"HGETALL", group[j]};
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
					char	   *ms = CounterRedisBytes(r->element[k + 1]->str, r->element[k + 1]->len);

					bucket = CounterMinute(CounterFromUnixMs(strtoi64(ms, NULL, 10)));
				}
			for (k = 0; k + 1 < r->elements; k += 2)
			{
				redisReply *f = r->element[k];
				redisReply *v = r->element[k + 1];

				if (f->len < 2 || (f->str[0] != '+' && f->str[0] != '!'))
					continue;
				if (nitems == icap)
				{
					icap *= 2;
					items = repalloc(items, sizeof(CounterRedisItem) * icap);
				}
				CounterRedisItemFrom(counters, ncounters, f->str, f->len, v->str, v->len,
									 bucket, &items[nitems]);
				if (items[nitems].quarantine)
					nq++;
				nitems++;
			}
			freeReplyObject(r);
		}
		applied = CounterRedisApply(t, id, items, nitems, true);
		if (applied)
		{
			CounterRedisCountStats(items, nitems);
			CounterRedisNoteDrain(t, nitems - nq, nq);
			ereport(LOG,
					(errmsg("counter worker: applied in-flight Redis batch %s from %s (%d items)",
							id, t->label, nitems)));
		}
		else
			ereport(LOG,
					(errmsg("counter worker: discarded in-flight Redis batch %s from %s, applied before",
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

	CounterRedisTxnBegin(&scope);
	rc = SPI_execute("DELETE FROM counter.redis_batch WHERE ctid = ANY (ARRAY("
					 " SELECT ctid FROM counter.redis_batch"
					 " WHERE applied_at < pg_catalog.now() OPERATOR(pg_catalog.-) '7 days'::pg_catalog.interval"
					 " LIMIT 10000))", false, 0);
	if (rc != SPI_OK_DELETE)
		elog(ERROR, "expiring Redis batch ids failed: %s", SPI_result_code_string(rc));
	CounterRedisTxnCommit(&scope);
}

/*
 * The counter whose prefix is the longest one starting name, or NULL; the
 * worker's own keys belong to none.  counters is sorted longest prefix first.
 */
const CounterRedisCounter *
CounterRedisOwner(const CounterRedisCounter *counters, int ncounters,
				  const char *name, size_t len)
{
	int			i;

	if ((len >= strlen(COUNTER_REDIS_INFLIGHT) &&
		 memcmp(name, COUNTER_REDIS_INFLIGHT, strlen(COUNTER_REDIS_INFLIGHT)) == 0) ||
		(len >= strlen(COUNTER_REDIS_QUARANTINE) &&
		 memcmp(name, COUNTER_REDIS_QUARANTINE, strlen(COUNTER_REDIS_QUARANTINE)) == 0))
		return NULL;
	for (i = 0; i < ncounters; i++)
		if (len > (size_t) counters[i].prefix_len &&
			memcmp(name, counters[i].prefix, counters[i].prefix_len) == 0)
			return &counters[i];
	return NULL;
}
