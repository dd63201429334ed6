/*
 * counter.h
 *		Declarations shared by the counter extension's source files.
 *
 * Each .c file holds one concern and calls only the files below it.  From the
 * bottom up: settings (guc.c); the private scope, plan cache and overflow
 * errors (scope.c); shared memory (shmem.c) and the shared buffer
 * (buffer.c); the row protocol of counter.tally (tally.c) and its hot
 * paths through the access methods (tally_am.c); declared
 * counters (catalog.c) and the handle type (type.c); the SQL paths
 * (write.c, buffered.c, limits.c, read.c, stats.c); compaction (compact.c);
 * the sources (redis_*.c, source_apply.c, see counter_redis.h); the
 * ClickHouse export (export_note.c beside tally.c, export.c and its
 * transport clickhouse.c, see counter_clickhouse.h); and the background
 * worker (worker.c).  module.c only carries the module magic and
 * delegates _PG_init to them.
 */
#ifndef COUNTER_H
#define COUNTER_H

#include "postgres.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "port/atomics.h"
#include <signal.h>
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/snapshot.h"
#include "utils/timestamp.h"

#define COUNTER_NAME_MAXLEN 63
#define COUNTER_MAX_SPANS 16
/* Bytes a text key may have (its index entry must fit a btree page). */
#define COUNTER_TEXT_KEY_MAXLEN 1000
/* The longest interval a setting may be: 100 years (36,525 days). */
#define COUNTER_MAX_INTERVAL_US (INT64CONST(36525) * USECS_PER_DAY)
#define COUNTER_MAX_SLOTS 1024
#define COUNTER_SCHEMA "counter"
#define COUNTER_VERSION "0.2"		/* the extension version this library serves */
#define COUNTER_WHY_LEN 128

#define COUNTER_PARTITIONS 16	/* power of two */
#define COUNTER_BUF_SLOTS 2
#define COUNTER_ENTRY_COUNTS 1024	/* buckets of counter_entries */

/*
 * Slot numbers in counter.tally: writers use 0..slots-1; rows made by the
 * worker use the negative ones below, which also tell a row's resolution.
 * The marker of a big key is (bucket -infinity, slot 0).
 */
#define COUNTER_SLOT_MINUTE (-1)	/* compacted minute row */
#define COUNTER_SLOT_HOUR (-2)		/* hour row */
#define COUNTER_SLOT_DAY (-3)		/* day row */
#define COUNTER_SLOT_FOLD (-4)		/* minute row folded from the buffer */

/* Increments at or beyond this magnitude make a key "big" (see write.c). */
#define COUNTER_CHECK_THRESHOLD (INT64CONST(1) << 40)

typedef enum CounterMode
{
	COUNTER_MODE_DIRECT,
	COUNTER_MODE_SHARDED,
	COUNTER_MODE_BUFFERED
} CounterMode;

typedef enum CounterKeyType
{
	COUNTER_KEY_BIGINT,
	COUNTER_KEY_TEXT
} CounterKeyType;

/* A declared counter, as cached in each backend (a copy is handed out). */
typedef struct CounterDef
{
	int32		id;
	char		name[COUNTER_NAME_MAXLEN + 1];
	CounterMode mode;
	int32		slots;
	CounterKeyType key_type;
	Oid			owner;
	int64		dedup_window_us;	/* how long an event id is remembered */
	int32		max_per_actor;	/* increments per actor and key; 0: no limit */
	int64		rate_window_us;
	int64		max_delta;		/* largest |delta| accepted; 0: no limit */
	int64		half_life_us;	/* of the decayed score */
	int32		nspans;			/* trend spans and their weights */
	int64		span_us[COUNTER_MAX_SPANS];
	double		weight[COUNTER_MAX_SPANS];
	bool		exports;		/* has a clickhouse_table (export_note.c) */
} CounterDef;

/* Saved state of CounterEnter, restored by CounterLeave. */
typedef struct CounterScope
{
	Oid			save_userid;
	int			save_sec_context;
} CounterScope;

/* Shared buffer: one entry per (counter, key); see shmem.c. */
typedef struct CounterBufKey
{
	Oid			dbid;
	int32		counter_id;
	int64		key;
} CounterBufKey;

typedef struct CounterBufSlot
{
	TimestampTz bucket;
	int64		pending;
	int64		inflight;
	int32		refs;
} CounterBufSlot;

typedef struct CounterBufEntry
{
	CounterBufKey key;
	slock_t		mutex;			/* serializes writers */
	pg_atomic_uint32 changecount;	/* odd while a writer changes the entry */
	bool		big;
	TransactionId fold_xid;
	TimestampTz fold_at;		/* when fold_xid took its amounts */
	CounterBufSlot slots[COUNTER_BUF_SLOTS];
	TimestampTz cached_at;
	int64		cached_value;
} CounterBufEntry;

/* Consumers of the changed keys (changed.c), one bit each. */
#define COUNTER_CONSUMER_RANK	0x1
#define COUNTER_CONSUMER_SYNC	0x2

typedef struct CounterChangedKey
{
	int32		counter_id;
	int64		key;
} CounterChangedKey;

/*
 * One item a source read (a folded amount, a Redis key or stream entry, a
 * Kafka message), on its way into the tables through source_apply.c.
 */
typedef struct CounterSourceItem
{
	char	   *item;			/* its key, entry id or offset: bytes */
	size_t		item_len;
	char	   *value;			/* its value or fields as read: bytes */
	size_t		value_len;
	int32		counter_id;		/* 0: belongs to no counter */
	char	   *keytext;		/* a text key to map to its id, or NULL */
	int64		key;
	int64		delta;
	TimestampTz bucket;
	char	   *event;			/* event id, or NULL */
	bool		accepted;		/* checked already (a buffered increment) */
	const char *reason;			/* why it is quarantined, or NULL */
	bool		deduplicated;	/* refused as a duplicate event */
} CounterSourceItem;

/* Bytes of an item or value a quarantine row and a log line keep. */
#define COUNTER_SHOW_MAX 1024

/* Per-counter statistics, counted at commit. */
typedef enum CounterStat
{
	COUNTER_STAT_DIRECT,		/* increments written by the direct path */
	COUNTER_STAT_SHARDED,		/* ... by the sharded path */
	COUNTER_STAT_BUFFERED,		/* ... into the shared buffer */
	COUNTER_STAT_FALLBACK,		/* buffered increments that took the durable path */
	COUNTER_STAT_FOLDED,		/* buffered deltas folded into the tables */
	COUNTER_STAT_CACHE_HITS,	/* get(max_age) answered from the cache */
	COUNTER_STAT_REDIS,			/* deltas drained from Redis */
	COUNTER_STAT_DEDUPED,		/* increments refused as duplicate events */
	COUNTER_STAT_LIMITED,		/* increments refused by an actor's rate limit */
	COUNTER_STAT_KAFKA,			/* deltas consumed from Kafka */
	COUNTER_STAT_COUNT
} CounterStat;

typedef struct CounterStatsKey
{
	Oid			dbid;
	int32		counter_id;
} CounterStatsKey;

typedef struct CounterStatsEntry
{
	CounterStatsKey key;
	pg_atomic_uint64 n[COUNTER_STAT_COUNT];
	pg_atomic_uint64 last_fold;	/* TimestampTz of the last fold that moved it */
} CounterStatsEntry;

/* One Redis master's drain status, for counter.redis_status() (redis.c). */
#define COUNTER_REDIS_MAX_MASTERS 16

typedef struct CounterRedisStatus
{
	char		url[128];		/* host:port/db, never a password */
	bool		connected;
	TimestampTz last_drain;
	int64		drained_deltas;
	int64		backlog_keys;	/* keys found by the last scan, -1 unknown */
	int64		stream_lag;		/* undelivered + unacked entries, -1 none */
	int64		quarantined;
	TimestampTz last_error_at;
	char		last_error[200];
} CounterRedisStatus;

/* The background processes a served database has. */
typedef enum CounterRole
{
	COUNTER_ROLE_INGEST,		/* folds, drains sources, answers flush() */
	COUNTER_ROLE_MAINTENANCE,	/* compaction, rollups, purge, ranking */
	COUNTER_ROLES
} CounterRole;

/* One background process's status, written by itself under the mutex. */
typedef struct CounterProcStatus
{
	pid_t		pid;			/* 0: not running */
	Latch	   *latch;
	char		state[64];
	TimestampTz started_at;
	TimestampTz round_at;		/* end of the last round */
	double		round_ms;		/* its duration */
	int64		rounds;
	int64		items;			/* amounts folded and drained; rows compacted and keys ranked */
	int64		errors;
	TimestampTz error_at;
	char		error[256];
} CounterProcStatus;

/* Where a database stands with the launcher. */
typedef enum CounterDbState
{
	COUNTER_DB_FREE,			/* slot unused */
	COUNTER_DB_WANTED,			/* to be served: its ingest process is due */
	COUNTER_DB_STARTING,		/* ingest process started, looking for the extension */
	COUNTER_DB_SERVED,			/* the extension is there; both processes run */
	COUNTER_DB_IDLE,			/* the extension is not installed there */
	COUNTER_DB_UNSERVED,		/* no process for it: over budget or no worker slot */
	COUNTER_DB_PAUSED			/* a CREATE/ALTER/DROP DATABASE needs it alone */
} CounterDbState;

#define COUNTER_MAX_DATABASES 64

/* One database's slot: its state, processes, fold requests and Redis status. */
typedef struct CounterDbSlot
{
	Oid			dbid;
	CounterDbState state;
	TimestampTz state_at;
	TimestampTz paused_until;
	char		why[COUNTER_WHY_LEN];	/* why it is idle or unserved */
	bool		recheck;		/* asked for while starting: look again if idle */
	CounterProcStatus proc[COUNTER_ROLES];
	pg_atomic_uint64 changed_epoch; /* changes when changed keys were lost */
	pg_atomic_uint64 changed_generation;	/* advances with every take */
	pg_atomic_uint32 changed_consumers; /* who follows the changed keys */
	pg_atomic_uint64 fold_requested;	/* flush() requests, a generation */
	pg_atomic_uint64 fold_done;	/* generation the last finished fold served */
	ConditionVariable fold_cv;
	TimestampTz last_fold;		/* start of the last fold: all committed before it is folded */
	double		last_fold_ms;
	int64		folds;
	int64		folded_deltas;
	int64		compacted_rows;
	int			redis_nmasters;
	CounterRedisStatus redis[COUNTER_REDIS_MAX_MASTERS];
	char		kafka_state[64];	/* the Kafka consumer's, "" when there is none */
	TimestampTz kafka_error_at;
	char		kafka_error[200];
} CounterDbSlot;

/*
 * The extension's shared state.  mutex guards the launcher's fields and
 * every slot's fields but the atomics and the condition variable; a slot's
 * process writes its own status, the launcher its state.
 */
typedef struct CounterShared
{
	LWLock	   *partition_locks[COUNTER_PARTITIONS];
	LWLock	   *stats_lock;
	pg_atomic_uint32 nentries;
	/* buffer entries per (database, counter), summed over a hash of the pair */
	pg_atomic_uint32 counter_entries[COUNTER_ENTRY_COUNTS];
	TimestampTz started_at;

	slock_t		mutex;
	Latch	   *launcher_latch;
	CounterProcStatus launcher;
	CounterDbSlot dbs[COUNTER_MAX_DATABASES];
} CounterShared;

typedef void (*CounterDrainCallback) (void *arg, int32 counter_id, int64 key,
									  TimestampTz bucket, int64 delta);

/* guc.c */
extern int	counter_default_slots;
extern int	counter_buffer_keys;
extern int	counter_flush_interval;
extern int	counter_compact_interval;
extern int	counter_rank_interval;
extern char *counter_database;
extern int	counter_max_databases;
extern int	counter_changed_keys;
extern char *counter_redis_url;
extern char *counter_redis_password;
extern char *counter_redis_password_file;
extern int	counter_redis_poll_interval;
extern int	counter_redis_batch_size;
extern char *counter_redis_stream;
extern char *counter_redis_stream_group;
extern char *counter_kafka_brokers;
extern char *counter_kafka_group;
extern char *counter_kafka_options;
extern int	counter_kafka_batch_size;
extern int	counter_redis_connect_timeout;
extern int	counter_redis_command_timeout;
extern char *counter_clickhouse_url;
extern char *counter_clickhouse_user;
extern char *counter_clickhouse_password;
extern int	counter_clickhouse_interval;
extern int	counter_clickhouse_timeout;
extern int	counter_clickhouse_batch_size;
extern void CounterGucInit(void);

/* scope.c */
extern void CounterLocateTables(void);
extern char *CounterInstalledVersion(void);
extern void CounterScopeReset(void);
extern Oid	CounterDefinitionRelid(void);
extern void CounterEnter(CounterScope *scope);
extern void CounterLeave(CounterScope *scope);
extern SPIPlanPtr CounterPlan(SPIPlanPtr *cache, const char *sql,
							  int nargs, Oid *argtypes);
extern void CounterOverflow(const CounterDef *def, const int64 *key,
							bool reading) pg_attribute_noreturn();
extern int	CounterExecGuarded(const CounterDef *def, const int64 *key,
							   bool reading, SPIPlanPtr plan, Datum *values);
extern void CounterRequireExtensionOwner(const char *what);

/* shmem.c */
extern CounterShared *counter_shared;
extern void CounterShmemInit(void);
extern bool CounterShmemReady(void);
extern void CounterRequireShmem(const char *what);
extern bool CounterBufferingHere(void);
extern void CounterRequireBufferingHere(void);
extern CounterDbSlot *CounterSlotFor(Oid dbid);
extern CounterDbSlot *CounterSlotRequest(Oid dbid);
extern CounterDbSlot *CounterMySlot(void);
extern void CounterServeAtCommitSet(bool on);
extern bool CounterServeAtCommitPending(void);
extern CounterDbState CounterSlotState(CounterDbSlot *slot, Oid dbid);
extern void CounterWakeLauncher(void);
extern const char *CounterDbStateName(CounterDbState state);
extern CounterStatsEntry *CounterStatsFor(int32 counter_id);
extern void CounterStatsIds(int32 **ids, int *n, int *cap);
extern void CounterStatsForget(int32 counter_id);
extern void CounterStatsForgetDatabase(Oid dbid);

/* buffer.c */
extern void CounterBufferInit(void);
extern CounterBufEntry *CounterBufReserve(int32 counter_id, int64 key,
										  TimestampTz bucket, int *slotno,
										  bool *is_new);
extern void CounterBufRelease(CounterBufEntry *entry, int slotno, int64 delta);
extern void CounterBufSetBig(CounterBufEntry *entry);
extern void CounterBufMarkBig(int32 counter_id, int64 key);
extern int	CounterBufPendingSlots(int32 counter_id, int64 key, Snapshot snapshot,
								   TimestampTz *buckets, int64 *amounts);
extern int64 CounterBufPending(int32 counter_id, int64 key, TimestampTz from,
							   TimestampTz to, Snapshot snapshot);
extern bool CounterBufPendingMany(int32 counter_id, int n, const int64 *keys,
								  const bool *skip, Snapshot snapshot,
								  int64 *totals);
extern bool CounterCacheGet(int32 counter_id, int64 key, int64 max_age_us,
							int64 *value);
extern void CounterCachePut(int32 counter_id, int64 key, int64 value,
							TimestampTz at);
extern int	CounterBufDrain(TransactionId xid, TransactionId horizon,
							TimestampTz settle_before,
							CounterDrainCallback emit, void *arg);
extern void CounterBufUndrain(TransactionId xid);
extern int	CounterBufEvict(int64 keep_cache_us);
extern void CounterBufCounterTotals(int32 *ids, int n, int64 *pending, int64 *keys);
extern void CounterBufForget(int32 counter_id);
extern void CounterBufForgetDatabase(Oid dbid);

/* changed.c */
/* sync.c */
#define COUNTER_SYNC_STEP_MS 1000	/* how often the maintenance process looks for due syncs */
extern bool CounterSyncsActive(void);
extern void CounterSyncStepRun(void);

extern void CounterChangedInit(void);
extern void CounterChangedNote(int32 counter_id, int64 key);
extern void CounterChangedPublish(void);
extern void CounterChangedFollow(uint32 consumers);
extern uint64 CounterChangedEpoch(uint32 consumer);
extern int	CounterChangedTake(uint32 consumer, int32 counter_id, CounterChangedKey **out);
extern void CounterChangedGiveBack(uint32 consumer, const CounterChangedKey *keys, int n);
extern void CounterChangedForgetDatabase(Oid dbid);

/* tally_am.c */
typedef void (*CounterRowVisitor) (void *arg, TimestampTz bucket, int64 value);
extern void CounterTallyAmInit(void);
extern bool CounterTallySums(int32 counter_id, int n, const int64 *keys,
							 int64 *sums);
extern void CounterTallyVisit(int32 counter_id, int64 key, TimestampTz from,
							  TimestampTz to, CounterRowVisitor visit, void *arg);
extern bool CounterTallyAdd(int32 counter_id, int64 key, TimestampTz bucket,
							int16 slotno, int64 delta, int64 *row);

/* tally.c */
extern int16 CounterSlot(const CounterDef *def);
extern void CounterApply(const CounterDef *def, int64 key, int64 delta,
						 TimestampTz bucket);
extern void CounterIncrement(const CounterDef *def, int64 key, int64 delta,
							 TimestampTz bucket);
extern int64 CounterTextKeyId(const CounterDef *def, text *key, bool create);
extern int64 CounterKeyText(const CounterDef *def, text *key, bool create);
extern int64 CounterKeyArg(FunctionCallInfo fcinfo, int argno,
						   const CounterDef *def, bool create, bool *known);
extern bool CounterKeyIsBig(const CounterDef *def, int64 key);
extern uint64 CounterApplyBatch(const CounterDef *def, int n, Datum *counter_ids,
								Datum *keys, Datum *buckets, Datum *deltas,
								int16 slot);

/* buffered.c */
extern void CounterBufferedInit(void);
extern bool CounterBufferedIncr(const CounterDef *def, int64 key, int64 delta,
								TimestampTz bucket);
extern int64 CounterLocalPending(int32 counter_id, int64 key, TimestampTz from,
								 TimestampTz to);
extern bool CounterLocalWrites(void);
extern int	CounterPendingBuckets(int32 counter_id, int64 key, TimestampTz from,
								  TimestampTz to, TimestampTz *buckets, int64 *amounts,
								  int max);
extern void CounterCountStat(int32 counter_id, CounterStat stat, int64 n);

/* limits.c */
extern bool CounterEventSeen(const CounterDef *def, text *event, TimestampTz when);
extern bool CounterEventRecord(const CounterDef *def, text *event, TimestampTz when);
extern bool CounterActorAllow(const CounterDef *def, text *actor, int64 key,
							  TimestampTz when);
extern int64 CounterPurgeLimits(TimestampTz now, int limit);

/* export_note.c: backfills of exporting counters, noted with the write */
extern bool CounterExportNoteNeeded(const CounterDef *def, TimestampTz bucket);
extern void CounterExportNote(const CounterDef *def, int64 key, TimestampTz bucket, int16 slot);
extern void CounterExportNoteBatch(int n, Datum *counter_ids, Datum *keys,
								   Datum *buckets, int16 slot);

/* export.c, clickhouse.c: the export step of the maintenance process */
extern bool CounterExportActive(void);
extern void CounterExportStepRun(void);

/* rank.c */
extern int64 CounterRankRefresh(const CounterDef *def, TimestampTz t, bool full,
								const int64 *changed, int nchanged, bool wait);

/* compact.c */
extern void (*counter_compact_yield_hook) (void);
extern int64 CounterCompactAll(TimestampTz now, int limit, int max_rounds,
							   void (*on_error) (const char *what, MemoryContext cxt));

/* source_apply.c: what every source shares */
extern void (*counter_source_yield_hook) (void);
extern void CounterSourceYield(void);
extern char *CounterBytes(const char *s, size_t len);
extern char *CounterSafeText(const char *s, size_t len, size_t max);
extern void CounterSourceFields(CounterSourceItem *it, CounterKeyType key_type,
								const char *key, const char *delta, const char *time,
								const char *event, TimestampTz now);
extern void CounterSourceBegin(void);
extern void CounterSourceCommit(void);
extern MemoryContext CounterSourceContext(void);
extern void CounterSourceApply(const char *source, const char *origin,
							   CounterSourceItem *items, int n, int16 slot);
extern int64 CounterSourceCountStats(CounterSourceItem *items, int n, CounterStat stat);

/* kafka.c */
extern void CounterKafkaRound(void);
extern long CounterKafkaWaitMs(long wait_ms);
extern pgsocket CounterKafkaWaitFd(void);
extern void CounterKafkaShutdown(void);

/* worker.c: what every background process shares */
extern volatile sig_atomic_t counter_shutdown_requested;
extern void CounterWorkerSignals(void);
extern bool CounterProcAttach(CounterDbSlot *slot, CounterRole role);
extern void CounterProcState(const char *state);
extern void CounterProcRound(TimestampTz start, int64 items);
extern void CounterProcError(const char *what, const char *message);
extern void CounterReportFailure(const char *what, MemoryContext cxt);
extern bool CounterInstalledHere(void);
typedef enum CounterCheck
{
	COUNTER_CHECK_NO,
	COUNTER_CHECK_YES,
	COUNTER_CHECK_FAILED
} CounterCheck;
extern CounterCheck CounterInstalledNow(void);
extern void CounterReloadIfAsked(void);
extern bool CounterGuardedStep(const char *what, void (*step) (void));
extern void CounterMarkIdle(CounterDbSlot *slot);

/* launcher.c */
extern void CounterLauncherInit(void);

/* redis.c, redis_conn.c: the Redis source as the worker sees it */
extern void CounterRedisRound(void);
extern void CounterRedisShutdown(void);
extern long CounterRedisWaitMs(long fold_ms);

/* catalog.c */
extern uint64 CounterDefGeneration(void);
extern void CounterCatalogInit(void);
extern bool CounterLookupById(int32 id, CounterDef *def);
extern bool CounterLookupByName(const char *name, CounterDef *def);
extern void CounterGetById(int32 id, CounterDef *def);
extern void CounterCheckOwner(const CounterDef *def);
extern void CounterOwnedArg(FunctionCallInfo fcinfo, int argno, CounterDef *def);
extern const char *CounterModeName(CounterMode mode);
extern void CounterCheckName(const char *name);
extern int64 CounterIntervalUs(const Interval *iv);

/* Attribute time: the start of the minute holding ts. */
static inline TimestampTz
CounterMinute(TimestampTz ts)
{
	TimestampTz r = ts % USECS_PER_MINUTE;

	return ts - r - (r < 0 ? USECS_PER_MINUTE : 0);
}

#endif							/* COUNTER_H */
