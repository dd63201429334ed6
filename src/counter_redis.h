/*
 * counter_redis.h
 *		Declarations shared by the Redis ingestion files, from the bottom up:
 *		redis_conn.c (connections, topology, backoff, status), redis_keys.c
 *		(exactly-once drain of INCR keys), redis_stream.c (stream events) and
 *		redis.c (the round, the SQL status functions).  What every source
 *		shares to apply what it read is source_apply.c's (counter.h).
 *
 * Everything here runs in a database's ingest process only, single-threaded;
 * the one piece of shared state is the status array in the database's slot,
 * written by it and read by counter.redis_status(), both under
 * counter_shared->mutex.  No redisReply is ever alive while Postgres code
 * that can raise an ERROR runs: replies are copied into palloc'd items and
 * freed first.  Bytes from Redis are binary: every copy keeps its length
 * (CounterBytes), and nothing parses them as C strings unchecked.
 */
#ifndef COUNTER_REDIS_H
#define COUNTER_REDIS_H

#include "counter.h"

#include <hiredis/hiredis.h>

/* Names of the worker's own keys in Redis; never drained as counter keys. */
#define COUNTER_REDIS_OWN "counter:"
#define COUNTER_REDIS_INFLIGHT "counter:inflight:"
#define COUNTER_REDIS_QUARANTINE "counter:quarantine:"

/* Hash slots of a Redis Cluster. */
#define COUNTER_REDIS_SLOTS 16384
#define COUNTER_REDIS_MAX_RANGES 64
#define COUNTER_REDIS_MAX_STREAMS 64

typedef enum CounterRedisKind
{
	COUNTER_REDIS_SEED,			/* a configured URL, not yet asked CLUSTER SLOTS */
	COUNTER_REDIS_PLAIN,		/* a standalone master */
	COUNTER_REDIS_CLUSTER		/* a master of a Redis Cluster */
} CounterRedisKind;

/* A master's state of one stream it holds. */
typedef struct CounterRedisStreamState
{
	char		name[256];
	bool		ready;			/* consumer group made */
	bool		pending;		/* re-read our own unacked entries first */
} CounterRedisStreamState;

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
	int			nranges;		/* cluster slots it serves (a cluster master) */
	uint16		range_lo[COUNTER_REDIS_MAX_RANGES];
	uint16		range_hi[COUNTER_REDIS_MAX_RANGES];
	char		scan_cursor[32];	/* where the key scan goes on */
	int64		scan_found;		/* counters' keys found in this pass */
	int			nstreams;
	CounterRedisStreamState streams[COUNTER_REDIS_MAX_STREAMS];
	char		sha[41];		/* SHA1 of the claim script on this server */
	int64		backlog;		/* counters' keys found by the last full pass */
} CounterRedisTarget;

/* A counter as the drain sees it: id, name, key type, Redis prefix and stream. */
typedef struct CounterRedisCounter
{
	int32		id;
	char		name[COUNTER_NAME_MAXLEN + 1];
	CounterKeyType key_type;
	char	   *prefix;			/* NULL: its keys are not drained */
	int			prefix_len;
	char	   *stream;			/* NULL: it reads no stream */
} CounterRedisCounter;

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
extern bool CounterRedisHolds(CounterRedisTarget *t, const char *key);

/* redis_batch.c */
extern const CounterRedisCounter *CounterRedisOwner(const CounterRedisCounter *counters,
													int ncounters,
													const char *name, size_t len);
extern const char *CounterRedisParseKey(const CounterRedisCounter *c, const char *name,
										size_t len, char **keytext, int64 *key);
extern void CounterRedisItemFrom(const CounterRedisCounter *counters, int ncounters,
								 const char *field, size_t flen, const char *value,
								 size_t vlen, TimestampTz bucket, CounterSourceItem *it);
extern void CounterRedisNoteItems(CounterRedisTarget *t, CounterSourceItem *items, int n);
extern bool CounterRedisApply(CounterRedisTarget *t, const char *batch_id,
							  CounterSourceItem *items, int n, bool check);
extern void CounterRedisDone(const char *batch_id);
extern bool CounterRedisForget(CounterRedisTarget *t, char **names, int n);
extern bool CounterRedisScanReply(CounterRedisTarget *t, redisReply *r);
extern bool CounterRedisRecover(CounterRedisTarget *t,
								const CounterRedisCounter *counters, int ncounters);
extern void CounterRedisExpireBatches(void);

/* redis_keys.c */
extern const char *counter_redis_claim_script;
extern bool CounterRedisDrainKeys(CounterRedisTarget *t,
								  const CounterRedisCounter *counters,
								  int ncounters, TimestampTz deadline,
								  bool *more);

/* redis_stream.c */
extern bool CounterRedisDrainStreams(CounterRedisTarget *t,
									 const CounterRedisCounter *counters,
									 int ncounters, TimestampTz deadline,
									 bool *more);

#endif							/* COUNTER_REDIS_H */
