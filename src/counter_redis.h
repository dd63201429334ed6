/*
 * counter_redis.h
 *		Declarations shared by the Redis ingestion files, from the bottom up:
 *		redis_conn.c (connections, topology, backoff, status), source_apply.c
 *		(what every source shares to apply what it read), redis_keys.c
 *		(exactly-once drain of INCR keys), redis_stream.c (stream events) and
 *		redis.c (the worker's round, the SQL status functions).
 *
 * Everything here runs in the background worker only, single-threaded; the
 * one piece of shared state is the status array in CounterShared, written by
 * the worker and read by counter.redis_status(), both under
 * counter_shared->mutex.  No redisReply is ever alive while Postgres code
 * that can raise an ERROR runs: replies are copied into palloc'd items and
 * freed first.  Bytes from Redis are binary: every copy keeps its length
 * (CounterRedisBytes), and nothing parses them as C strings unchecked.
 */
#ifndef COUNTER_REDIS_H
#define COUNTER_REDIS_H

#include "counter.h"

#include <hiredis/hiredis.h>

/* Names of the worker's own keys in Redis; never drained as counter keys. */
#define COUNTER_REDIS_INFLIGHT "counter:inflight:"
#define COUNTER_REDIS_QUARANTINE "counter:quarantine:"

/*
 * Bytes of a quarantined value kept in the in-flight record and the table;
 * the Redis quarantine hash keeps the value whole.
 */
#define COUNTER_REDIS_SHOW_MAX 1024

/* Hash slots of a Redis Cluster. */
#define COUNTER_REDIS_SLOTS 16384

typedef enum CounterRedisKind
{
	COUNTER_REDIS_SEED,			/* a configured URL, not yet asked CLUSTER SLOTS */
	COUNTER_REDIS_PLAIN,		/* a standalone master */
	COUNTER_REDIS_CLUSTER		/* a master of a Redis Cluster */
} CounterRedisKind;

/* One Redis master the worker drains. */
typedef struct CounterRedisTarget
{
	CounterRedisKind kind;
	int			seed;			/* index of the URL it came from */
	char		host[256];
	int			port;
	int			db;
	char		label[128];		/* host:port/db, for logs, status, tables */
	redisContext *ctx;			/* NULL while disconnected */
	TimestampTz retry_at;
	int			backoff_ms;
	int			failures;		/* consecutive failed connects */
	bool		down_logged;	/* an outage was logged; log the recovery */
	bool		need_recovery;	/* look for leftover in-flight batches */
	bool		owns_stream;	/* the stream's key lives here */
	bool		stream_ready;	/* consumer group made */
	bool		stream_pending;	/* re-read our own unacked entries first */
	TimestampTz last_autoclaim;
	char		sha[41];		/* SHA1 of the claim script on this server */
	int64		backlog;		/* keys found by the last scan */
} CounterRedisTarget;

/* A counter as the drain sees it: id, name, key type and Redis prefix. */
typedef struct CounterRedisCounter
{
	int32		id;
	char		name[COUNTER_NAME_MAXLEN + 1];
	CounterKeyType key_type;
	char	   *prefix;
	int			prefix_len;
} CounterRedisCounter;

/* One drained amount (or quarantined item) on its way into the tables. */
typedef struct CounterRedisItem
{
	char	   *rkey;			/* the Redis key or stream entry id */
	size_t		rkey_len;
	char	   *value;			/* value as read, for quarantine */
	size_t		value_len;
	bool		quarantine;
	const char *reason;
	const CounterRedisCounter *counter;
	char	   *keytext;		/* key part, for text keys and events */
	int64		key;
	int64		delta;
	TimestampTz bucket;
	char	   *event;			/* event id of a stream entry, or NULL */
} CounterRedisItem;

/* redis_conn.c */
extern CounterDbSlot *CounterRedisStatusSlot(void);
extern bool CounterRedisCheckConfig(void);
extern int	CounterRedisSeedCount(void);
extern CounterRedisTarget *CounterRedisTargets(int *n);
extern bool CounterRedisConnect(CounterRedisTarget *t);
extern redisReply *CounterRedisCommand(CounterRedisTarget *t, int argc,
									   const char **argv, const size_t *lens);
extern bool CounterRedisPipeline(CounterRedisTarget *t, int ncmds, int *argcs,
								 const char ***argvs, size_t **lens,
								 redisReply **replies);
extern void CounterRedisFail(CounterRedisTarget *t, const char *what,
							 const char *detail);
extern void CounterRedisError(CounterRedisTarget *t, const char *msg);
extern void CounterRedisNoteDrain(CounterRedisTarget *t, int64 items,
								  int64 quarantined);
extern void CounterRedisNoteStream(CounterRedisTarget *t, int64 lag);
extern bool CounterRedisStopSoon(void);
extern int	CounterRedisTargetIndex(CounterRedisTarget *t);
extern const char *CounterRedisSeedLabel(CounterRedisTarget *t);
extern void CounterRedisResetSoon(void);
extern unsigned int CounterRedisSlot(const char *key, size_t len);

/* source_apply.c */
extern char *CounterRedisBytes(const char *s, size_t len);
extern char *CounterRedisSafeText(const char *s, size_t len, size_t max);
extern void CounterRedisTxnBegin(CounterScope *scope);
extern MemoryContext CounterRedisTxnContext(void);
extern void CounterRedisTxnCommit(CounterScope *scope);
extern void CounterRedisCountStats(CounterRedisItem *items, int n);
extern int64 CounterRedisMapKeys(CounterRedisItem *items, int n);
extern void CounterRedisApplyItems(CounterRedisItem *items, int n,
								   bool skip_events);
extern void CounterRedisQuarantineRows(CounterRedisTarget *t,
									   CounterRedisItem *items, int n);

/* redis_keys.c */
extern const char *counter_redis_claim_script;
extern const CounterRedisCounter *CounterRedisOwner(const CounterRedisCounter *counters,
													int ncounters,
													const char *name, size_t len);
extern bool CounterRedisRecover(CounterRedisTarget *t,
								const CounterRedisCounter *counters, int ncounters);
extern bool CounterRedisDrainKeys(CounterRedisTarget *t,
								  const CounterRedisCounter *counters,
								  int ncounters, TimestampTz deadline,
								  bool *more);
extern void CounterRedisExpireBatches(void);

/* redis_stream.c */
extern bool CounterRedisDrainStream(CounterRedisTarget *t, TimestampTz deadline,
									bool *more);

#endif							/* COUNTER_REDIS_H */
