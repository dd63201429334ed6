/*
 * shmem.c
 *		Shared memory: the extension's shared state (the launcher, one slot
 *		per database with its processes' status, fold requests and Redis
 *		status), the partition locks the buffer uses, and per-counter
 *		statistics.  The buffer itself is buffer.c's.
 *
 * Locking: counter_shared->mutex (a spinlock, held for a few instructions,
 * never across a call that can fail) guards the launcher's fields and each
 * slot's state and status; a slot's fold counters are atomics.  A slot
 * belongs to one database while its state is not FREE; a backend that
 * caches a slot pointer re-checks its dbid.  Statistics live in a small
 * shared hash keyed by (database, counter id) under stats_lock; the numbers
 * are plain atomics.
 */
#include "counter.h"

#include "access/transam.h"
#include "access/xlog.h"
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
		for (i = 0; i < COUNTER_ENTRY_COUNTS; i++)
			pg_atomic_init_u32(&counter_shared->counter_entries[i], 0);
		for (i = 0; i < COUNTER_MAX_DATABASES; i++)
		{
			CounterDbSlot *slot = &counter_shared->dbs[i];

			pg_atomic_init_u64(&slot->fold_requested, 0);
			pg_atomic_init_u64(&slot->fold_done, 0);
			pg_atomic_init_u64(&slot->changed_epoch, 0);
			pg_atomic_init_u64(&slot->changed_generation, 0);
			pg_atomic_init_u32(&slot->changed_consumers, 0);
			ConditionVariableInit(&slot->fold_cv);
		}
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

/* The name of a database state, for status lines. */
const char *
CounterDbStateName(CounterDbState state)
{
	switch (state)
	{
		case COUNTER_DB_FREE:
			return "free";
		case COUNTER_DB_WANTED:
			return "waiting for the launcher";
		case COUNTER_DB_STARTING:
			return "starting";
		case COUNTER_DB_SERVED:
			return "served";
		case COUNTER_DB_IDLE:
			return "idle";
		case COUNTER_DB_UNSERVED:
			return "not served";
		case COUNTER_DB_PAUSED:
			return "paused";
	}
	return "?";
}

/* Set the launcher's latch: a database wants it, or a state changed. */
void
CounterWakeLauncher(void)
{
	Latch	   *latch;

	SpinLockAcquire(&counter_shared->mutex);
	latch = counter_shared->launcher_latch;
	SpinLockRelease(&counter_shared->mutex);
	if (latch)
		SetLatch(latch);
}

/* The slot of a database, or NULL if it has none. */
CounterDbSlot *
CounterSlotFor(Oid dbid)
{
	CounterDbSlot *found = NULL;
	int			i;

	if (!CounterShmemReady() || !OidIsValid(dbid))
		return NULL;
	SpinLockAcquire(&counter_shared->mutex);
	for (i = 0; i < COUNTER_MAX_DATABASES; i++)
		if (counter_shared->dbs[i].state != COUNTER_DB_FREE &&
			counter_shared->dbs[i].dbid == dbid)
		{
			found = &counter_shared->dbs[i];
			break;
		}
	SpinLockRelease(&counter_shared->mutex);
	return found;
}

/*
 * The slot of a database, made (WANTED, with the launcher woken) if it has
 * none; NULL when every slot is taken.  A database that was found idle
 * (no extension) is wanted again: someone just used the extension there.
 */
CounterDbSlot *
CounterSlotRequest(Oid dbid)
{
	CounterDbSlot *slot = NULL;
	CounterDbSlot *free_slot = NULL;
	bool		wake = false;
	int			i;

	if (!CounterShmemReady() || !OidIsValid(dbid) || RecoveryInProgress())
		return NULL;
	SpinLockAcquire(&counter_shared->mutex);
	for (i = 0; i < COUNTER_MAX_DATABASES; i++)
	{
		CounterDbSlot *s = &counter_shared->dbs[i];

		if (s->state == COUNTER_DB_FREE)
		{
			if (free_slot == NULL)
				free_slot = s;
		}
		else if (s->dbid == dbid)
		{
			slot = s;
			break;
		}
	}
	if (slot == NULL && free_slot != NULL)
	{
		slot = free_slot;
		slot->dbid = dbid;
		slot->recheck = false;
		memset(slot->proc, 0, sizeof(slot->proc));
		slot->why[0] = '\0';
		slot->last_fold = 0;
		slot->last_fold_ms = 0;
		slot->folds = slot->folded_deltas = slot->compacted_rows = 0;
		slot->redis_nmasters = 0;
		/* a new epoch: whatever was built before this slot is unknown */
		pg_atomic_write_u64(&slot->changed_epoch, (uint64) GetCurrentTimestamp());
		pg_atomic_write_u32(&slot->changed_consumers, 0);
		slot->state = COUNTER_DB_WANTED;
		slot->state_at = GetCurrentTimestamp();
		wake = true;
	}
	else if (slot != NULL && slot->state == COUNTER_DB_IDLE)
	{
		slot->state = COUNTER_DB_WANTED;
		slot->state_at = GetCurrentTimestamp();
		wake = true;
	}
	else if (slot != NULL && slot->state == COUNTER_DB_STARTING)
		slot->recheck = true;	/* its ingest process may have looked too early */
	SpinLockRelease(&counter_shared->mutex);
	if (wake)
		CounterWakeLauncher();
	return slot;
}

/* This transaction created (or updated) the extension: ask to be served at commit. */
static bool serve_at_commit = false;

void
CounterServeAtCommitSet(bool on)
{
	serve_at_commit = on;
}

bool
CounterServeAtCommitPending(void)
{
	return serve_at_commit;
}

/*
 * This database's slot, requested on first use; NULL without one.  A slot
 * found idle is requested again: it was marked so when the extension was
 * not there, and this backend uses it now.  The transaction that creates
 * the extension asks at its commit instead (until then no ingest process
 * could see it).
 */
CounterDbSlot *
CounterMySlot(void)
{
	static CounterDbSlot *cached = NULL;
	CounterDbState state;

	if (!CounterShmemReady())
		return NULL;
	if (cached != NULL)
	{
		state = CounterSlotState(cached, MyDatabaseId);
		if (state != COUNTER_DB_FREE &&
			(state != COUNTER_DB_IDLE || CounterServeAtCommitPending()))
			return cached;
	}
	cached = CounterSlotRequest(MyDatabaseId);
	return cached;
}

/* A slot's state if it (still) belongs to dbid, else FREE. */
CounterDbState
CounterSlotState(CounterDbSlot *slot, Oid dbid)
{
	CounterDbState state;

	SpinLockAcquire(&counter_shared->mutex);
	state = slot->dbid == dbid ? slot->state : COUNTER_DB_FREE;
	SpinLockRelease(&counter_shared->mutex);
	return state;
}

/*
 * Whether increments of this database may wait in the shared buffer: only
 * where an ingest process serves it (or is about to), which folds them.
 */
bool
CounterBufferingHere(void)
{
	CounterDbSlot *slot = CounterMySlot();
	CounterDbState state;

	if (slot == NULL)
		return false;
	state = CounterSlotState(slot, MyDatabaseId);
	return state == COUNTER_DB_WANTED || state == COUNTER_DB_STARTING ||
		state == COUNTER_DB_SERVED;
}

/* Refuse buffered mode where no ingest process would fold it. */
void
CounterRequireBufferingHere(void)
{
	CounterDbSlot *slot;
	char		why[128] = "";

	CounterRequireShmem("buffered mode");
	if (CounterBufferingHere())
		return;
	slot = CounterMySlot();
	if (slot)
	{
		SpinLockAcquire(&counter_shared->mutex);
		strlcpy(why, slot->why, sizeof(why));
		SpinLockRelease(&counter_shared->mutex);
	}
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("no counter ingest process serves this database"),
			 errdetail("%s", why[0] ? why : "Every database slot of the counter launcher is taken."),
			 errhint("Use mode 'sharded' here, or raise counter.max_databases (and max_worker_processes); counter.worker_status() shows what is served.")));
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

/* Forget the statistics of a database that is gone. */
void
CounterStatsForgetDatabase(Oid dbid)
{
	HASH_SEQ_STATUS status;
	CounterStatsEntry *e;

	if (!CounterShmemReady())
		return;
	LWLockAcquire(counter_shared->stats_lock, LW_EXCLUSIVE);
	hash_seq_init(&status, stats_hash);
	while ((e = hash_seq_search(&status)) != NULL)
		if (e->key.dbid == dbid)
			hash_search(stats_hash, &e->key, HASH_REMOVE, NULL);
	LWLockRelease(counter_shared->stats_lock);
}
