/*
 * redis_keys.c
 *		Exactly-once drain of Redis INCR keys: `<prefix><key>` and sharded
 *		`<prefix><key>:s<N>` (the key part may be wrapped in a hash tag,
 *		`<prefix>{<key>}`), for the counters that set a redis_prefix.  Keys
 *		under no counter's prefix are never touched.
 *
 * This file finds the keys and claims them: step 1 of a batch's three (the
 * other two, and the recovery of a crash between any two, are in
 * redis_batch.c):
 *	1. claim: one Lua script call (per hash slot on a cluster) moves the
 *	   keys' values into an in-flight hash `counter:inflight:{T}:<batch id>`
 *	   and deletes the keys, atomically; T is a hash tag of the keys' slot,
 *	   so every key a call touches shares one slot (no CROSSSLOT);
 *	2. apply: one Postgres transaction applies the amounts and records the
 *	   batch id;
 *	3. forget: the in-flight hashes are deleted.
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
