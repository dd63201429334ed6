/*
 * redis_conn.c
 *		Redis transport: the configured URLs, connections with their timeouts
 *		and backoff, the topology (standalone masters, or every master of a
 *		Redis Cluster found with CLUSTER SLOTS), commands and pipelines,
 *		binary-safe copies of replies, and each master's status in shared
 *		memory.
 *
 * Connections live in the worker only.  Every command has a timeout; after
 * any error the context is freed, never reused, and the master is retried
 * with exponential backoff (capped at 30 s).  An outage is logged once when
 * it starts and once when it ends.  The status array in shared memory is
 * written here under counter_shared->mutex.
 */
#include "counter_redis.h"

#include <sys/time.h>

#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/memutils.h"

#define COUNTER_REDIS_BACKOFF_MIN 500
#define COUNTER_REDIS_BACKOFF_MAX 30000

/* A parsed entry of counter.redis_url. */
typedef struct CounterRedisSeed
{
	char		host[256];
	int			port;
	int			db;
	char		user[128];
	char		password[256];
	char		label[128];
} CounterRedisSeed;

/* Worker-local state, in TopMemoryContext. */
static CounterRedisSeed *seeds = NULL;
static int	nseeds = 0;
static CounterRedisTarget *targets = NULL;
static int	ntargets = 0;
static char *config_seen = NULL;	/* the settings the topology was built for */
static bool reset_soon = false;

/* CRC16 (XMODEM), the hash of Redis Cluster key slots. */
static uint16
CounterCrc16(const char *buf, size_t len)
{
	uint16		crc = 0;
	size_t		i;
	int			b;

	for (i = 0; i < len; i++)
	{
		crc ^= (uint16) ((unsigned char) buf[i]) << 8;
		for (b = 0; b < 8; b++)
			crc = (crc & 0x8000) ? (uint16) ((crc << 1) ^ 0x1021) : (uint16) (crc << 1);
	}
	return crc;
}

/* The cluster slot of a key, honouring a {hash tag}. */
unsigned int
CounterRedisSlot(const char *key, size_t len)
{
	const char *open = memchr(key, '{', len);

	if (open)
	{
		const char *close = memchr(open + 1, '}', len - (open + 1 - key));

		if (close && close > open + 1)
			return CounterCrc16(open + 1, close - open - 1) & (COUNTER_REDIS_SLOTS - 1);
	}
	return CounterCrc16(key, len) & (COUNTER_REDIS_SLOTS - 1);
}

/*
 * The database slot whose Redis status this process writes (looked up
 * once, never under the spinlock that guards it).
 */
CounterDbSlot *
CounterRedisStatusSlot(void)
{
	static CounterDbSlot *slot = NULL;

	if (slot == NULL)
		slot = CounterMySlot();
	return slot;
}

/* The masters to drain now; the array may grow while a round connects. */
CounterRedisTarget *
CounterRedisTargets(int *n)
{
	*n = ntargets;
	return targets;
}

/* How many URLs are configured (0: Redis ingestion is off). */
int
CounterRedisSeedCount(void)
{
	return nseeds;
}

/* Whether the worker has been asked for something (SIGTERM, flush, reload). */
bool
CounterRedisStopSoon(void)
{
	return MyLatch->is_set;
}

/* Make the topology be rebuilt from the URLs at the next round. */
void
CounterRedisResetSoon(void)
{
	reset_soon = true;
}

/* The configured URL a target came from (without password). */
const char *
CounterRedisSeedLabel(CounterRedisTarget *t)
{
	return seeds[t->seed].label;
}

/* A target's position, which is also its status entry's. */
int
CounterRedisTargetIndex(CounterRedisTarget *t)
{
	return (int) (t - targets);
}

/* Copy a string into a fixed buffer, refusing what does not fit. */
static bool
CounterRedisCopy(char *dst, size_t size, const char *src, size_t len)
{
	if (len >= size)
		return false;
	memcpy(dst, src, len);
	dst[len] = '\0';
	return true;
}

/*
 * Parse one redis://[[user]:password@]host[:port][/db] URL.  Returns an
 * error message or NULL.
 */
static const char *
CounterRedisParseUrl(const char *url, CounterRedisSeed *seed)
{
	const char *p = url;
	const char *at;
	const char *hostend;
	const char *slash;

	memset(seed, 0, sizeof(*seed));
	seed->port = 6379;
	if (strncmp(p, "redis://", 8) != 0)
		return "it does not start with redis://";
	p += 8;
	slash = strchr(p, '/');
	at = strrchr(p, '@');
	if (at && (!slash || at < slash))
	{
		const char *colon = memchr(p, ':', at - p);

		if (colon)
		{
			if (!CounterRedisCopy(seed->user, sizeof(seed->user), p, colon - p) ||
				!CounterRedisCopy(seed->password, sizeof(seed->password),
								  colon + 1, at - colon - 1))
				return "its user or password is too long";
		}
		else if (!CounterRedisCopy(seed->password, sizeof(seed->password), p, at - p))
			return "its password is too long";
		p = at + 1;
	}
	hostend = p + strcspn(p, ":/");
	if (hostend == p)
		return "it names no host";
	if (!CounterRedisCopy(seed->host, sizeof(seed->host), p, hostend - p))
		return "its host name is too long";
	p = hostend;
	if (*p == ':')
	{
		char	   *end;

		seed->port = (int) strtol(p + 1, &end, 10);
		if (end == p + 1 || seed->port <= 0 || seed->port > 65535)
			return "its port is invalid";
		p = end;
	}
	if (*p == '/')
	{
		char	   *end;

		p++;
		if (*p != '\0')
		{
			seed->db = (int) strtol(p, &end, 10);
			if (end == p || *end != '\0' || seed->db < 0)
				return "its database number is invalid";
		}
	}
	else if (*p != '\0')
		return "it has trailing characters";
	snprintf(seed->label, sizeof(seed->label), "%s:%d/%d", seed->host,
			 seed->port, seed->db);
	return NULL;
}

/* Free every connection (the contexts are discarded, never reused). */
static void
CounterRedisCloseAll(void)
{
	int			i;

	for (i = 0; i < ntargets; i++)
		if (targets[i].ctx)
		{
			redisFree(targets[i].ctx);
			targets[i].ctx = NULL;
		}
}

/* Publish the target list in shared memory, keeping what is known. */
static void
CounterRedisPublishTargets(void)
{
	int			i;
	CounterDbSlot *rs = CounterRedisStatusSlot();

	SpinLockAcquire(&counter_shared->mutex);
	for (i = 0; i < ntargets; i++)
	{
		CounterRedisStatus *st = &rs->redis[i];

		if (i >= rs->redis_nmasters ||
			strcmp(st->url, targets[i].label) != 0)
		{
			memset(st, 0, sizeof(*st));
			strlcpy(st->url, targets[i].label, sizeof(st->url));
			st->backlog_keys = -1;
			st->stream_lag = -1;
		}
		st->connected = (targets[i].ctx != NULL);
	}
	rs->redis_nmasters = ntargets;
	SpinLockRelease(&counter_shared->mutex);
}

/*
 * Set the targets to one per configured URL (a cluster URL expands when it
 * connects).  Outage state carries over by label, so a flapping cluster is
 * not logged on every rebuild.
 */
static void
CounterRedisResetTargets(void)
{
	CounterRedisTarget *old = targets;
	int			nold = ntargets;
	int			i,
				j;

	CounterRedisCloseAll();
	targets = MemoryContextAllocZero(TopMemoryContext,
									 sizeof(CounterRedisTarget) * COUNTER_REDIS_MAX_MASTERS);
	ntargets = 0;
	for (i = 0; i < nseeds && ntargets < COUNTER_REDIS_MAX_MASTERS; i++)
	{
		CounterRedisTarget *t = &targets[ntargets++];

		t->kind = COUNTER_REDIS_SEED;
		strlcpy(t->scan_cursor, "0", sizeof(t->scan_cursor));
		t->seed = i;
		strlcpy(t->host, seeds[i].host, sizeof(t->host));
		t->port = seeds[i].port;
		t->db = seeds[i].db;
		strlcpy(t->label, seeds[i].label, sizeof(t->label));
		for (j = 0; j < nold; j++)
			if (strcmp(old[j].label, t->label) == 0)
			{
				t->down_logged = old[j].down_logged;
				t->backoff_ms = old[j].backoff_ms;
				t->retry_at = old[j].retry_at;
			}
	}
	if (old)
		pfree(old);
	reset_soon = false;
	CounterRedisPublishTargets();
}

/*
 * Reread counter.redis_url etc.; rebuild everything when they changed
 * (returns true then).
 */
bool
CounterRedisCheckConfig(void)
{
	StringInfoData cfg;
	char	   *list;
	char	   *tok;
	char	   *save;

	initStringInfo(&cfg);
	appendStringInfo(&cfg, "%s|%s|%s|%s|%s", counter_redis_url,
					 counter_redis_password, counter_redis_password_file,
					 counter_redis_stream, counter_redis_stream_group);
	if (config_seen && strcmp(config_seen, cfg.data) == 0)
	{
		pfree(cfg.data);
		if (reset_soon)
			CounterRedisResetTargets();
		return false;
	}
	if (config_seen)
		pfree(config_seen);
	config_seen = MemoryContextStrdup(TopMemoryContext, cfg.data);
	pfree(cfg.data);

	CounterRedisCloseAll();
	if (seeds)
		pfree(seeds);
	seeds = MemoryContextAllocZero(TopMemoryContext,
								   sizeof(CounterRedisSeed) * COUNTER_REDIS_MAX_MASTERS);
	nseeds = 0;
	list = pstrdup(counter_redis_url);
	for (tok = strtok_r(list, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save))
	{
		const char *err;

		if (nseeds == COUNTER_REDIS_MAX_MASTERS)
		{
			ereport(WARNING,
					(errmsg("counter.redis_url names more than %d masters; the rest are ignored",
							COUNTER_REDIS_MAX_MASTERS)));
			break;
		}
		err = CounterRedisParseUrl(tok, &seeds[nseeds]);
		if (err)
		{
			ereport(WARNING,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("ignoring an invalid URL in counter.redis_url: %s", err),
					 errhint("Write redis://host:port/db, e.g. redis://127.0.0.1:6379/0.")));
			continue;
		}
		nseeds++;
	}
	pfree(list);
	CounterRedisResetTargets();
	if (nseeds > 0)
		ereport(LOG, (errmsg("counter worker drains %d Redis URL(s)", nseeds)));
	return true;
}

/* Record an error in the target's status (no logging). */
void
CounterRedisError(CounterRedisTarget *t, const char *msg)
{
	int			i = CounterRedisTargetIndex(t);
	CounterDbSlot *rs = CounterRedisStatusSlot();

	SpinLockAcquire(&counter_shared->mutex);
	if (i < rs->redis_nmasters)
	{
		strlcpy(rs->redis[i].last_error, msg,
				sizeof(rs->redis[i].last_error));
		rs->redis[i].last_error_at = GetCurrentTimestamp();
		rs->redis[i].connected = (t->ctx != NULL);
	}
	SpinLockRelease(&counter_shared->mutex);
}

/*
 * A command or connect failed: free the context, schedule a retry with
 * backoff, record the error, and log it if this starts an outage.
 */
void
CounterRedisFail(CounterRedisTarget *t, const char *what, const char *detail)
{
	char		msg[200];

	snprintf(msg, sizeof(msg), "%s: %s", what, detail ? detail : "unknown error");
	if (t->ctx)
	{
		redisFree(t->ctx);
		t->ctx = NULL;
	}
	t->sha[0] = '\0';
	/* a new connection makes sure of every group and re-reads what is pending */
	t->nstreams = 0;
	t->need_recovery = true;
	t->backoff_ms = t->backoff_ms == 0 ? COUNTER_REDIS_BACKOFF_MIN :
		Min(t->backoff_ms * 2, COUNTER_REDIS_BACKOFF_MAX);
	t->retry_at = GetCurrentTimestamp() + (int64) t->backoff_ms * 1000;
	t->failures++;
	if (!t->down_logged)
	{
		ereport(WARNING,
				(errmsg("counter worker: Redis %s unavailable: %s", t->label, msg),
				 errdetail("Nothing is lost; the worker retries with backoff up to %d s and logs when it is back.",
						   COUNTER_REDIS_BACKOFF_MAX / 1000)));
		t->down_logged = true;
	}
	CounterRedisError(t, msg);
	/* a cluster master that keeps failing may have moved: ask the cluster */
	if (t->kind == COUNTER_REDIS_CLUSTER && t->failures >= 3)
		reset_soon = true;
}

/* Run one command; NULL (and the target failed) on a connection error. */
redisReply *
CounterRedisCommand(CounterRedisTarget *t, int argc, const char **argv,
					const size_t *lens)
{
	redisReply *r;

	if (t->ctx == NULL)
		return NULL;
	r = redisCommandArgv(t->ctx, argc, argv, lens);
	if (r == NULL)
	{
		CounterRedisFail(t, argv[0], t->ctx->errstr);
		return NULL;
	}
	if (r->type == REDIS_REPLY_ERROR &&
		(strncmp(r->str, "MOVED", 5) == 0 || strncmp(r->str, "ASK", 3) == 0 ||
		 strncmp(r->str, "CLUSTERDOWN", 11) == 0))
		reset_soon = true;
	return r;
}

/*
 * Send ncmds commands at once and read every reply.  False (and the target
 * failed, replies freed) on a connection error.
 */
bool
CounterRedisPipeline(CounterRedisTarget *t, int ncmds, int *argcs,
					 const char ***argvs, size_t **lens, redisReply **replies)
{
	int			i;

	if (t->ctx == NULL)
		return false;
	for (i = 0; i < ncmds; i++)
		if (redisAppendCommandArgv(t->ctx, argcs[i], argvs[i], lens[i]) != REDIS_OK)
		{
			CounterRedisFail(t, argvs[i][0], t->ctx->errstr);
			return false;
		}
	for (i = 0; i < ncmds; i++)
	{
		void	   *r = NULL;

		if (redisGetReply(t->ctx, &r) != REDIS_OK || r == NULL)
		{
			int			j;

			for (j = 0; j < i; j++)
				freeReplyObject(replies[j]);
			CounterRedisFail(t, argvs[i][0], t->ctx->errstr);
			return false;
		}
		replies[i] = r;
		if (replies[i]->type == REDIS_REPLY_ERROR &&
			(strncmp(replies[i]->str, "MOVED", 5) == 0 ||
			 strncmp(replies[i]->str, "ASK", 3) == 0 ||
			 strncmp(replies[i]->str, "CLUSTERDOWN", 11) == 0))
			reset_soon = true;
	}
	return true;
}

/* The password to AUTH with: the URL's, else the file's, else the setting's. */
static bool
CounterRedisPassword(const CounterRedisSeed *seed, char *buf, size_t size,
					 const char **err)
{
	buf[0] = '\0';
	*err = NULL;
	if (seed->password[0])
		strlcpy(buf, seed->password, size);
	else if (counter_redis_password_file && counter_redis_password_file[0])
	{
		FILE	   *f = AllocateFile(counter_redis_password_file, "r");

		if (f == NULL)
		{
			*err = "cannot read counter.redis_password_file";
			return false;
		}
		if (fgets(buf, (int) size, f) == NULL)
			buf[0] = '\0';
		FreeFile(f);
		buf[strcspn(buf, "\r\n")] = '\0';
	}
	else if (counter_redis_password && counter_redis_password[0])
		strlcpy(buf, counter_redis_password, size);
	return true;
}

/* Send a command whose reply must not be an error; false if it was. */
static bool
CounterRedisSimple(CounterRedisTarget *t, int argc, const char **argv,
				   const char *what)
{
	redisReply *r = CounterRedisCommand(t, argc, argv, NULL);

	if (r == NULL)
		return false;
	if (r->type == REDIS_REPLY_ERROR)
	{
		char		detail[160];

		strlcpy(detail, r->str, sizeof(detail));
		freeReplyObject(r);
		CounterRedisFail(t, what, detail);
		return false;
	}
	freeReplyObject(r);
	return true;
}

/* One master of a cluster, from CLUSTER SLOTS: its address and its slots. */
typedef struct CounterRedisMaster
{
	char		host[256];
	int			port;
	int			nranges;
	uint16		range_lo[COUNTER_REDIS_MAX_RANGES];
	uint16		range_hi[COUNTER_REDIS_MAX_RANGES];
} CounterRedisMaster;

/* Whether a key lives on this master (every key does on a standalone one). */
bool
CounterRedisHolds(CounterRedisTarget *t, const char *key)
{
	unsigned int slot;
	int			i;

	if (t->kind != COUNTER_REDIS_CLUSTER)
		return true;
	slot = CounterRedisSlot(key, strlen(key));
	for (i = 0; i < t->nranges; i++)
		if (slot >= t->range_lo[i] && slot <= t->range_hi[i])
			return true;
	return false;
}

/*
 * Ask a seed whether it is part of a cluster.  Returns the number of masters
 * found (0: standalone, -1: failed).
 */
static int
CounterRedisDiscover(CounterRedisTarget *t, CounterRedisMaster *masters)
{
	const char *argv[2] = {"CLUSTER", "SLOTS"};
	redisReply *r = CounterRedisCommand(t, 2, argv, NULL);
	int			n = 0;
	size_t		i;

	if (r == NULL)
		return -1;
	if (r->type == REDIS_REPLY_ERROR)
	{
		/* "ERR This instance has cluster support disabled" */
		freeReplyObject(r);
		return 0;
	}
	if (r->type != REDIS_REPLY_ARRAY)
	{
		freeReplyObject(r);
		CounterRedisFail(t, "CLUSTER SLOTS", "unexpected reply");
		return -1;
	}
	for (i = 0; i < r->elements; i++)
	{
		redisReply *range = r->element[i];
		redisReply *node;
		const char *host;
		int			port;
		int			k;

		if (range->type != REDIS_REPLY_ARRAY || range->elements < 3 ||
			range->element[0]->type != REDIS_REPLY_INTEGER ||
			range->element[1]->type != REDIS_REPLY_INTEGER ||
			range->element[2]->type != REDIS_REPLY_ARRAY ||
			range->element[2]->elements < 2 ||
			range->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
			continue;
		node = range->element[2];
		host = (node->element[0]->type == REDIS_REPLY_STRING && node->element[0]->len > 0) ?
			node->element[0]->str : t->host;
		port = (int) node->element[1]->integer;
		for (k = 0; k < n; k++)
			if (masters[k].port == port && strcmp(masters[k].host, host) == 0)
				break;
		if (k == n)
		{
			if (n == COUNTER_REDIS_MAX_MASTERS)
				continue;
			memset(&masters[n], 0, sizeof(masters[n]));
			strlcpy(masters[n].host, host, sizeof(masters[n].host));
			masters[n].port = port;
			n++;
		}
		if (masters[k].nranges < COUNTER_REDIS_MAX_RANGES)
		{
			masters[k].range_lo[masters[k].nranges] = (uint16) range->element[0]->integer;
			masters[k].range_hi[masters[k].nranges++] = (uint16) range->element[1]->integer;
		}
	}
	freeReplyObject(r);
	return n;
}

/*
 * Replace the seed target t, found to be a node of a Redis Cluster, with
 * the cluster's masters (those no other URL brought already); they connect
 * next.
 */
static void
CounterRedisUseMasters(CounterRedisTarget *t, const CounterRedisSeed *seed,
					   const CounterRedisMaster *masters, int n)
{
	int			self = CounterRedisTargetIndex(t);
	int			seedno = t->seed;
	bool		reused = false;
	int			k;

	redisFree(t->ctx);
	t->ctx = NULL;
	for (k = 0; k < n; k++)
	{
		CounterRedisTarget *m;
		int			x;

		for (x = 0; x < ntargets; x++)
			if (targets[x].port == masters[k].port &&
				strcmp(targets[x].host, masters[k].host) == 0 &&
				targets[x].kind == COUNTER_REDIS_CLUSTER)
				break;
		if (x < ntargets)
			continue;
		if (!reused)
		{
			m = &targets[self];
			reused = true;
		}
		else if (ntargets < COUNTER_REDIS_MAX_MASTERS)
			m = &targets[ntargets++];
		else
			break;
		memset(m, 0, sizeof(*m));
		m->kind = COUNTER_REDIS_CLUSTER;
		m->seed = seedno;
		strlcpy(m->host, masters[k].host, sizeof(m->host));
		m->port = masters[k].port;
		m->nranges = masters[k].nranges;
		memcpy(m->range_lo, masters[k].range_lo, sizeof(m->range_lo));
		memcpy(m->range_hi, masters[k].range_hi, sizeof(m->range_hi));
		strlcpy(m->scan_cursor, "0", sizeof(m->scan_cursor));
		snprintf(m->label, sizeof(m->label), "%s:%d/0", m->host, m->port);
		m->need_recovery = true;
	}
	if (!reused)
	{
		/* another URL of the same cluster brought them already */
		memmove(&targets[self], &targets[self + 1],
				sizeof(CounterRedisTarget) * (ntargets - self - 1));
		ntargets--;
	}
	ereport(LOG,
			(errmsg("counter worker: Redis %s is a cluster node; draining its %d masters",
					seed->label, n)));
	CounterRedisPublishTargets();
}

/*
 * Connect to a target: timeouts, AUTH, SELECT, the claim script.  A seed
 * that turns out to be a cluster node is replaced by the cluster's masters.
 */
bool
CounterRedisConnect(CounterRedisTarget *t)
{
	const CounterRedisSeed *seed = &seeds[t->seed];
	struct timeval ctv;
	struct timeval tv;
	char		password[256];
	const char *err;
	CounterDbSlot *rs = CounterRedisStatusSlot();

	ctv.tv_sec = counter_redis_connect_timeout / 1000;
	ctv.tv_usec = (counter_redis_connect_timeout % 1000) * 1000;
	tv.tv_sec = counter_redis_command_timeout / 1000;
	tv.tv_usec = (counter_redis_command_timeout % 1000) * 1000;

	t->ctx = redisConnectWithTimeout(t->host, t->port, ctv);
	if (t->ctx == NULL || t->ctx->err)
	{
		char		detail[160];

		strlcpy(detail, t->ctx ? t->ctx->errstr : "out of memory", sizeof(detail));
		CounterRedisFail(t, "connect", detail);
		return false;
	}
	if (redisSetTimeout(t->ctx, tv) != REDIS_OK)
	{
		CounterRedisFail(t, "connect", "cannot set the command timeout");
		return false;
	}
	(void) redisEnableKeepAlive(t->ctx);

	if (!CounterRedisPassword(seed, password, sizeof(password), &err))
	{
		CounterRedisFail(t, "AUTH", err);
		return false;
	}
	if (password[0])
	{
		const char *argv[3] = {"AUTH", seed->user[0] ? seed->user : password, password};

		if (!CounterRedisSimple(t, seed->user[0] ? 3 : 2, argv, "AUTH"))
			return false;
	}
	if (t->kind == COUNTER_REDIS_SEED)
	{
		CounterRedisMaster masters[COUNTER_REDIS_MAX_MASTERS];
		int			n = CounterRedisDiscover(t, masters);

		if (n < 0)
			return false;
		if (n == 0)
			t->kind = COUNTER_REDIS_PLAIN;
		else
		{
			CounterRedisUseMasters(t, seed, masters, n);
			return false;
		}
	}
	if (t->db != 0 && t->kind == COUNTER_REDIS_PLAIN)
	{
		char		db[16];
		const char *argv[2] = {"SELECT", db};

		snprintf(db, sizeof(db), "%d", t->db);
		if (!CounterRedisSimple(t, 2, argv, "SELECT"))
			return false;
	}
	if (t->down_logged)
		ereport(LOG, (errmsg("counter worker: Redis %s is back", t->label)));
	else
		ereport(LOG, (errmsg("counter worker: connected to Redis %s", t->label)));
	t->down_logged = false;
	t->backoff_ms = 0;
	t->failures = 0;
	t->need_recovery = true;
	t->nstreams = 0;
	SpinLockAcquire(&counter_shared->mutex);
	rs->redis[CounterRedisTargetIndex(t)].connected = true;
	SpinLockRelease(&counter_shared->mutex);
	return true;
}

/* Count a committed drain in the target's status. */
void
CounterRedisNoteDrain(CounterRedisTarget *t, int64 items, int64 quarantined)
{
	int			i = CounterRedisTargetIndex(t);
	CounterDbSlot *rs = CounterRedisStatusSlot();

	SpinLockAcquire(&counter_shared->mutex);
	if (i < rs->redis_nmasters)
	{
		rs->redis[i].last_drain = GetCurrentTimestamp();
		rs->redis[i].drained_deltas += items;
		rs->redis[i].quarantined += quarantined;
	}
	SpinLockRelease(&counter_shared->mutex);
}

/* Record the stream's lag in the target's status. */
void
CounterRedisNoteStream(CounterRedisTarget *t, int64 lag)
{
	int			i = CounterRedisTargetIndex(t);
	CounterDbSlot *rs = CounterRedisStatusSlot();

	SpinLockAcquire(&counter_shared->mutex);
	if (i < rs->redis_nmasters)
		rs->redis[i].stream_lag = lag;
	SpinLockRelease(&counter_shared->mutex);
}

/* The worker is stopping: drop connections. */
void
CounterRedisShutdown(void)
{
	CounterRedisCloseAll();
}
