/*
 * redis.c
 *		Redis ingestion: the worker drains INCR keys and stream events from
 *		Redis into the tables, exactly once.  This file holds the settings,
 *		the connections and their backoff, the topology (standalone masters
 *		from counter.redis_url, or the masters of a Redis Cluster found with
 *		CLUSTER SLOTS), the worker's round, and the SQL functions
 *		counter.redis_status() and counter.redis_incr_script().
 *
 * Connections live in the worker only.  Every command has a timeout; after
 * any error the context is freed, never reused, and the master is retried
 * with exponential backoff (capped at 30 s).  An outage is logged once when
 * it starts and once when it ends.  No Postgres transaction is open while a
 * Redis command runs.  The status array in shared memory is written here
 * under counter_shared->mutex.
 */
#include "counter_redis.h"

#include <sys/time.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(counter_redis_status);
PG_FUNCTION_INFO_V1(counter_redis_incr_script);

#define COUNTER_REDIS_BACKOFF_MIN 500
#define COUNTER_REDIS_BACKOFF_MAX 30000

char	   *counter_redis_url = NULL;
int			counter_redis_poll_interval = 1000;
int			counter_redis_batch_size = 50000;
char	   *counter_redis_stream = NULL;
char	   *counter_redis_stream_group = NULL;
int			counter_redis_command_timeout = 2000;
static int	counter_redis_connect_timeout = 1000;
static char *counter_redis_password = NULL;
static char *counter_redis_password_file = NULL;

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
static bool more_pending = false;
static TimestampTz next_round = 0;
static TimestampTz next_expiry = 0;

/* Define the counter.redis_* settings. */
void
CounterRedisGucInit(void)
{
	DefineCustomStringVariable("counter.redis_url",
							   "Redis masters the worker drains, as a comma-separated list of redis://host:port/db URLs.",
							   "Empty turns Redis ingestion off.  A URL naming a Redis Cluster node drains every master of the cluster.",
							   &counter_redis_url, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("counter.redis_password",
							   "Password for the Redis masters (AUTH).",
							   "Readable by superusers only; counter.redis_password_file is the alternative.",
							   &counter_redis_password, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("counter.redis_password_file",
							   "File whose first line is the password for the Redis masters.",
							   NULL,
							   &counter_redis_password_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomIntVariable("counter.redis_poll_interval",
							"How often the worker drains Redis.",
							"A drained increment is in the tables within about this time.",
							&counter_redis_poll_interval,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("counter.redis_batch_size",
							"Redis keys or stream entries claimed per batch.",
							"Each batch is applied in one Postgres transaction.",
							&counter_redis_batch_size,
							50000, 1, 1000000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("counter.redis_stream",
							   "Redis stream of increment events the worker reads; empty for none.",
							   NULL,
							   &counter_redis_stream, "",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("counter.redis_stream_group",
							   "Consumer group the worker reads the stream through.",
							   NULL,
							   &counter_redis_stream_group, "counter",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("counter.redis_connect_timeout",
							"Timeout for connecting to a Redis master.",
							NULL,
							&counter_redis_connect_timeout,
							1000, 10, 60000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("counter.redis_command_timeout",
							"Timeout for one Redis command.",
							NULL,
							&counter_redis_command_timeout,
							2000, 10, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
}

/* The worker's sleep between rounds: Redis may want it shorter. */
long
CounterRedisWaitMs(long fold_ms)
{
	if (counter_redis_url == NULL || counter_redis_url[0] == '\0')
		return fold_ms;
	return Min(fold_ms, (long) counter_redis_poll_interval);
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

	SpinLockAcquire(&counter_shared->mutex);
	for (i = 0; i < ntargets; i++)
	{
		CounterRedisStatus *st = &counter_shared->redis[i];

		if (i >= counter_shared->redis_nmasters ||
			strcmp(st->url, targets[i].label) != 0)
		{
			memset(st, 0, sizeof(*st));
			strlcpy(st->url, targets[i].label, sizeof(st->url));
			st->backlog_keys = -1;
			st->stream_lag = -1;
		}
		st->connected = (targets[i].ctx != NULL);
	}
	counter_shared->redis_nmasters = ntargets;
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

/* Reread counter.redis_url etc.; rebuild everything when they changed. */
static void
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
		return;
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
	more_pending = false;
	next_round = 0;
	CounterRedisResetTargets();
	if (nseeds > 0)
		ereport(LOG, (errmsg("counter worker drains %d Redis URL(s)", nseeds)));
}

/* Record an error in the target's status (no logging). */
void
CounterRedisError(CounterRedisTarget *t, const char *msg)
{
	int			i = CounterRedisTargetIndex(t);

	SpinLockAcquire(&counter_shared->mutex);
	if (i < counter_shared->redis_nmasters)
	{
		strlcpy(counter_shared->redis[i].last_error, msg,
				sizeof(counter_shared->redis[i].last_error));
		counter_shared->redis[i].last_error_at = GetCurrentTimestamp();
		counter_shared->redis[i].connected = (t->ctx != NULL);
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
	t->stream_ready = false;
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

/*
 * One master of a cluster, from CLUSTER SLOTS: its address and whether it
 * holds the stream's slot.
 */
typedef struct CounterRedisMaster
{
	char		host[256];
	int			port;
	bool		owns_stream;
} CounterRedisMaster;

/*
 * Ask a seed whether it is part of a cluster.  Returns the number of masters
 * found (0: standalone, -1: failed).
 */
static int
CounterRedisDiscover(CounterRedisTarget *t, CounterRedisMaster *masters)
{
	const char *argv[2] = {"CLUSTER", "SLOTS"};
	redisReply *r = CounterRedisCommand(t, 2, argv, NULL);
	unsigned int stream_slot = 0;
	bool		has_stream = counter_redis_stream && counter_redis_stream[0];
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
	if (has_stream)
		stream_slot = CounterRedisSlot(counter_redis_stream, strlen(counter_redis_stream));
	for (i = 0; i < r->elements; i++)
	{
		redisReply *range = r->element[i];
		redisReply *node;
		const char *host;
		int			port;
		int			k;

		if (range->type != REDIS_REPLY_ARRAY || range->elements < 3 ||
			range->element[2]->type != REDIS_REPLY_ARRAY ||
			range->element[2]->elements < 2)
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
		if (has_stream && stream_slot >= (unsigned int) range->element[0]->integer &&
			stream_slot <= (unsigned int) range->element[1]->integer)
			masters[k].owns_stream = true;
	}
	freeReplyObject(r);
	return n;
}

/*
 * Connect to a target: timeouts, AUTH, SELECT, the claim script.  A seed
 * that turns out to be a cluster node is replaced by the cluster's masters.
 */
static bool
CounterRedisConnect(CounterRedisTarget *t)
{
	const CounterRedisSeed *seed = &seeds[t->seed];
	struct timeval ctv;
	struct timeval tv;
	char		password[256];
	const char *err;
	redisReply *r;

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
		{
			t->kind = COUNTER_REDIS_PLAIN;
			t->owns_stream = true;
		}
		else
		{
			/* replace this seed with the masters; they connect next */
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
				m->owns_stream = masters[k].owns_stream;
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
	{
		const char *argv[3] = {"SCRIPT", "LOAD", counter_redis_claim_script};

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
	}
	if (t->down_logged)
		ereport(LOG, (errmsg("counter worker: Redis %s is back", t->label)));
	else
		ereport(LOG, (errmsg("counter worker: connected to Redis %s", t->label)));
	t->down_logged = false;
	t->backoff_ms = 0;
	t->failures = 0;
	t->need_recovery = true;
	t->stream_pending = true;
	SpinLockAcquire(&counter_shared->mutex);
	counter_shared->redis[CounterRedisTargetIndex(t)].connected = true;
	SpinLockRelease(&counter_shared->mutex);
	return true;
}

/* Count a committed drain in the target's status. */
void
CounterRedisNoteDrain(CounterRedisTarget *t, int64 items, int64 quarantined)
{
	int			i = CounterRedisTargetIndex(t);

	SpinLockAcquire(&counter_shared->mutex);
	if (i < counter_shared->redis_nmasters)
	{
		counter_shared->redis[i].last_drain = GetCurrentTimestamp();
		counter_shared->redis[i].drained_deltas += items;
		counter_shared->redis[i].quarantined += quarantined;
	}
	SpinLockRelease(&counter_shared->mutex);
}

/* Record the stream's lag in the target's status. */
void
CounterRedisNoteStream(CounterRedisTarget *t, int64 lag)
{
	int			i = CounterRedisTargetIndex(t);

	SpinLockAcquire(&counter_shared->mutex);
	if (i < counter_shared->redis_nmasters)
		counter_shared->redis[i].stream_lag = lag;
	SpinLockRelease(&counter_shared->mutex);
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

/* Load every counter with its prefix, longest prefix first (own transaction). */
static CounterRedisCounter *
CounterRedisLoadCounters(int *n)
{
	CounterScope scope;
	CounterRedisCounter *counters;
	int			rc;
	uint64		i;

	CounterRedisTxnBegin(&scope);
	rc = SPI_execute("SELECT id, name, key_type,"
					 " coalesce(redis_prefix, name OPERATOR(pg_catalog.||) ':') AS p"
					 " FROM counter.definition"
					 " ORDER BY pg_catalog.octet_length(coalesce(redis_prefix, name OPERATOR(pg_catalog.||) ':')) DESC, id",
					 true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "loading counters for Redis failed: %s", SPI_result_code_string(rc));
	counters = MemoryContextAllocZero(txn_return_cxt,
									  sizeof(CounterRedisCounter) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		MemoryContext old;

		counters[i].id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		strlcpy(counters[i].name, SPI_getvalue(tup, desc, 2), sizeof(counters[i].name));
		counters[i].key_type = strcmp(SPI_getvalue(tup, desc, 3), "text") == 0 ?
			COUNTER_KEY_TEXT : COUNTER_KEY_BIGINT;
		old = MemoryContextSwitchTo(txn_return_cxt);
		counters[i].prefix = pstrdup(SPI_getvalue(tup, desc, 4));
		MemoryContextSwitchTo(old);
		counters[i].prefix_len = strlen(counters[i].prefix);
	}
	*n = (int) SPI_processed;
	CounterRedisTxnCommit(&scope);
	return counters;
}

/* Record a caught error: WARNING, worker status, target status. */
static void
CounterRedisCaught(CounterRedisTarget *t, MemoryContext cxt, const char *what)
{
	ErrorData  *edata;
	char		msg[200];

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(cxt);
	edata->elevel = WARNING;
	ThrowErrorData(edata);
	snprintf(msg, sizeof(msg), "%s: %s", what, edata->message);
	if (t)
	{
		t->need_recovery = true;
		CounterRedisError(t, msg);
	}
	SpinLockAcquire(&counter_shared->mutex);
	counter_shared->errors++;
	counter_shared->last_error_at = GetCurrentTimestamp();
	snprintf(counter_shared->last_error, sizeof(counter_shared->last_error),
			 "redis %s", msg);
	SpinLockRelease(&counter_shared->mutex);
	FreeErrorData(edata);
}

/* One target's share of a round: connect, recover, drain keys and stream. */
static void
CounterRedisTargetRound(CounterRedisTarget *t, const CounterRedisCounter *counters,
						int ncounters, TimestampTz deadline)
{
	bool		more = false;
	int			i = CounterRedisTargetIndex(t);

	if (t->ctx == NULL)
	{
		if (GetCurrentTimestamp() < t->retry_at)
			return;
		if (!CounterRedisConnect(t))
			return;
	}
	if (t->need_recovery && !CounterRedisRecover(t, counters, ncounters))
		return;
	if (!CounterRedisDrainKeys(t, counters, ncounters, deadline, &more))
		return;
	if (t->owns_stream && counter_redis_stream[0] &&
		!CounterRedisDrainStream(t, deadline, &more))
		return;
	SpinLockAcquire(&counter_shared->mutex);
	if (i < counter_shared->redis_nmasters)
	{
		counter_shared->redis[i].connected = true;
		counter_shared->redis[i].backlog_keys = t->backlog;
	}
	SpinLockRelease(&counter_shared->mutex);
	if (more)
		more_pending = true;
}

/*
 * One drain round, called by the worker after each fold, outside any
 * transaction.  It starts its own short transactions and never holds one
 * while talking to Redis.  While a backlog remains it sets the worker's
 * latch, so the next round follows at once; otherwise rounds are
 * counter.redis_poll_interval apart.
 */
void
CounterRedisRound(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	CounterRedisCounter *volatile counters = NULL;
	volatile int ncounters = 0;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz deadline;
	volatile int i;

	CounterRedisCheckConfig();
	if (nseeds == 0)
		return;
	if (reset_soon)
		CounterRedisResetTargets();
	if (!more_pending && now < next_round)
		return;
	next_round = now + (int64) counter_redis_poll_interval * 1000;
	deadline = now + Max((int64) counter_redis_poll_interval, 1000) * 1000;
	more_pending = false;

	PG_TRY();
	{
		int			n = 0;

		counters = CounterRedisLoadCounters(&n);
		ncounters = n;
	}
	PG_CATCH();
	{
		CounterRedisCaught(NULL, cxt, "loading counters");
		return;
	}
	PG_END_TRY();

	/* seeds may expand into cluster masters while we go */
	for (i = 0; i < ntargets; i++)
	{
		CounterRedisTarget *volatile t = &targets[i];

		PG_TRY();
		{
			CounterRedisTargetRound(t, counters, ncounters, deadline);
		}
		PG_CATCH();
		{
			CounterRedisCaught(t, cxt, t->label);
		}
		PG_END_TRY();
		if (t->kind == COUNTER_REDIS_CLUSTER && t->ctx == NULL &&
			GetCurrentTimestamp() >= t->retry_at && !CounterRedisStopSoon() &&
			t->failures == 0)
		{
			/* a master just found: connect it in this round too */
			PG_TRY();
			{
				CounterRedisTargetRound(t, counters, ncounters, deadline);
			}
			PG_CATCH();
			{
				CounterRedisCaught(t, cxt, t->label);
			}
			PG_END_TRY();
		}
	}

	if (now >= next_expiry)
	{
		PG_TRY();
		{
			CounterRedisExpireBatches();
		}
		PG_CATCH();
		{
			CounterRedisCaught(NULL, cxt, "expiring batch ids");
		}
		PG_END_TRY();
		next_expiry = now + 60 * USECS_PER_SEC;
	}
	MemoryContextSwitchTo(cxt);
	if (more_pending)
		SetLatch(MyLatch);
}

/* The worker is stopping: drop connections. */
void
CounterRedisShutdown(void)
{
	CounterRedisCloseAll();
}

/*
 * counter.redis_status(): one row per Redis master the worker drains, from
 * shared memory.  The URL never shows a password.
 */
Datum
counter_redis_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CounterRedisStatus st[COUNTER_REDIS_MAX_MASTERS];
	int			n;
	int			i;

	CounterRequireShmem("counter.redis_status()");
	InitMaterializedSRF(fcinfo, 0);
	SpinLockAcquire(&counter_shared->mutex);
	n = counter_shared->redis_nmasters;
	memcpy(st, counter_shared->redis, sizeof(CounterRedisStatus) * n);
	SpinLockRelease(&counter_shared->mutex);
	for (i = 0; i < n; i++)
	{
		Datum		values[9];
		bool		nulls[9] = {0};

		values[0] = CStringGetTextDatum(st[i].url);
		values[1] = BoolGetDatum(st[i].connected);
		values[2] = TimestampTzGetDatum(st[i].last_drain);
		nulls[2] = (st[i].last_drain == 0);
		values[3] = Int64GetDatum(st[i].drained_deltas);
		values[4] = Int64GetDatum(st[i].backlog_keys);
		nulls[4] = (st[i].backlog_keys < 0);
		values[5] = Int64GetDatum(st[i].stream_lag);
		nulls[5] = (st[i].stream_lag < 0);
		values[6] = Int64GetDatum(st[i].quarantined);
		values[7] = CStringGetTextDatum(st[i].last_error);
		nulls[7] = (st[i].last_error[0] == '\0');
		values[8] = TimestampTzGetDatum(st[i].last_error_at);
		nulls[8] = (st[i].last_error_at == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * counter.redis_incr_script(): Lua for a deduplicated increment on the
 * Redis side (the seed's SET NX EX + INCR, atomically), for EVAL/EVALSHA.
 */
Datum
counter_redis_incr_script(PG_FUNCTION_ARGS)
{
	static const char *script =
	"-- counter: deduplicated increment.\n"
	"-- KEYS[1] the dedup key, e.g. viewed:{42}:u7:2026-11-30\n"
	"-- KEYS[2] the counter key, e.g. post_views:{42} (or post_views:{42}:s3)\n"
	"-- ARGV[1] seconds the dedup key lives (default 86400)\n"
	"-- ARGV[2] the delta (default 1)\n"
	"-- Returns the new value, or nil for a duplicate.  On a Redis Cluster\n"
	"-- give both keys the same hash tag, as above.\n"
	"local ttl = tonumber(ARGV[1]) or 86400\n"
	"local delta = tonumber(ARGV[2]) or 1\n"
	"if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ttl) then\n"
	"  return redis.call('INCRBY', KEYS[2], delta)\n"
	"end\n"
	"return false\n";

	PG_RETURN_TEXT_P(cstring_to_text(script));
}
