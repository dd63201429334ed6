/*
 * shmem.c
 *		Shared memory: the extension's shared state (worker status, fold
 *		requests, Redis status), the partition locks the buffer uses, and
 *		per-counter statistics.  The buffer itself is buffer.c's.
 *
 * Statistics live in a small shared hash keyed by (database, counter id)
 * under stats_lock; the numbers are plain atomics.  The status fields are
 * guarded by counter_shared->mutex.
 */
#include "counter.h"

#include "access/transam.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "utils/snapmgr.h"

CounterShared *counter_shared = NULL;
static HTAB *stats_hash = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

#define COUNTER_STATS_MAX 1024

/* Bytes of shared memory the extension needs. */
static Size
CounterShmemSize(void)
{
	Size		size = MAXALIGN(sizeof(CounterShared));

	size = add_size(size, hash_estimate_size(COUNTER_STATS_MAX,
											 sizeof(CounterStatsEntry)));
	return size;
}

/* shmem_request_hook: reserve memory and the partition locks. */
static void
CounterShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(CounterShmemSize());
	RequestNamedLWLockTranche("counter", COUNTER_PARTITIONS + 1);
}

/* shmem_startup_hook: create or attach to the shared structures. */
static void
CounterShmemStartup(void)
{
	bool		found;
	HASHCTL		info;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	counter_shared = ShmemInitStruct("counter", sizeof(CounterShared), &found);
	if (!found)
	{
		LWLockPadded *locks = GetNamedLWLockTranche("counter");
		int			i;

		memset(counter_shared, 0, sizeof(CounterShared));
		for (i = 0; i < COUNTER_PARTITIONS; i++)
			counter_shared->partition_locks[i] = &locks[i].lock;
		counter_shared->stats_lock = &locks[COUNTER_PARTITIONS].lock;
		SpinLockInit(&counter_shared->mutex);
		pg_atomic_init_u32(&counter_shared->nentries, 0);
		pg_atomic_init_u64(&counter_shared->fold_requested, 0);
		pg_atomic_init_u64(&counter_shared->fold_done, 0);
		ConditionVariableInit(&counter_shared->fold_cv);
		counter_shared->worker_pid = 0;
		counter_shared->started_at = GetCurrentTimestamp();
	}

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(CounterStatsKey);
	info.entrysize = sizeof(CounterStatsEntry);
	stats_hash = ShmemInitHash("counter stats",
							   COUNTER_STATS_MAX, COUNTER_STATS_MAX,
							   &info, HASH_ELEM | HASH_BLOBS);
	LWLockRelease(AddinShmemInitLock);
}

/* Install the hooks; only meaningful while shared_preload_libraries loads us. */
void
CounterShmemInit(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = CounterShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = CounterShmemStartup;
}

/* Whether shared memory is there (the library was preloaded). */
bool
CounterShmemReady(void)
{
	return counter_shared != NULL;
}

/*
 * Whether this database is the one the worker folds (counter.database):
 * only there can increments wait in the shared buffer.
 */
bool
CounterBufferingHere(void)
{
	static Oid	checked_db = InvalidOid;
	static bool here = false;

	if (!CounterShmemReady())
		return false;
	if (checked_db != MyDatabaseId)
	{
		char	   *name = get_database_name(MyDatabaseId);

		here = name != NULL && counter_database != NULL &&
			strcmp(name, counter_database) == 0;
		checked_db = MyDatabaseId;
	}
	return here;
}

/* Refuse buffered mode where no worker would fold it. */
void
CounterRequireBufferingHere(void)
{
	CounterRequireShmem("buffered mode");
	if (!CounterBufferingHere())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("buffered counters can only be used in database \"%s\"",
						counter_database),
				 errdetail("The counter worker folds the shared buffer into the database named by counter.database."),
				 errhint("Use mode 'sharded' here, or set counter.database and restart the server.")));
}

/* Refuse, with a hint, a feature that needs shared_preload_libraries. */
void
CounterRequireShmem(const char *what)
{
	if (!CounterShmemReady())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s needs counter to be loaded at server start", what),
				 errhint("Add counter to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* The statistics entry of a counter, made on first use; NULL if full. */
CounterStatsEntry *
CounterStatsFor(int32 counter_id)
{
	CounterStatsEntry *e;
	CounterStatsKey k;
	bool		found;

	if (!CounterShmemReady())
		return NULL;
	memset(&k, 0, sizeof(k));
	k.dbid = MyDatabaseId;
	k.counter_id = counter_id;
	LWLockAcquire(counter_shared->stats_lock, LW_SHARED);
	e = hash_search(stats_hash, &k, HASH_FIND, NULL);
	LWLockRelease(counter_shared->stats_lock);
	if (e)
		return e;
	LWLockAcquire(counter_shared->stats_lock, LW_EXCLUSIVE);
	e = hash_search(stats_hash, &k, HASH_ENTER_NULL, &found);
	if (e && !found)
	{
		int			i;

		for (i = 0; i < COUNTER_STAT_COUNT; i++)
			pg_atomic_init_u64(&e->n[i], 0);
		pg_atomic_init_u64(&e->last_fold, 0);
	}
	LWLockRelease(counter_shared->stats_lock);
	return e;
}

/* The ids of every counter with a statistics entry, into a growing array. */
void
CounterStatsIds(int32 **ids, int *n, int *cap)
{
	HASH_SEQ_STATUS status;
	CounterStatsEntry *e;

	LWLockAcquire(counter_shared->stats_lock, LW_SHARED);
	hash_seq_init(&status, stats_hash);
	while ((e = hash_seq_search(&status)) != NULL)
	{
		if (e->key.dbid != MyDatabaseId)
			continue;
		if (*n == *cap)
		{
			*cap *= 2;
			*ids = repalloc(*ids, sizeof(int32) * *cap);
		}
		(*ids)[(*n)++] = e->key.counter_id;
	}
	LWLockRelease(counter_shared->stats_lock);
}


/*
 * Forget the statistics of a counter id in this database (a new counter
 * takes an id only after the extension was dropped and created again).
 */
void
CounterStatsForget(int32 counter_id)
{
	CounterStatsKey k;

	if (!CounterShmemReady())
		return;
	memset(&k, 0, sizeof(k));
	k.dbid = MyDatabaseId;
	k.counter_id = counter_id;
	LWLockAcquire(counter_shared->stats_lock, LW_EXCLUSIVE);
	hash_search(stats_hash, &k, HASH_REMOVE, NULL);
	LWLockRelease(counter_shared->stats_lock);
}
