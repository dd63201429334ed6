/*
 * changed.c
 *		The keys whose rows changed: noted by every write of a tally row,
 *		published at commit into a shared set per database, and taken by
 *		the maintenance steps that must follow them (the ranking refresh),
 *		so their cost is proportional to what changed, never to the size of
 *		a counter.
 *
 * The shared set is a hash of (database, counter, key) entries, each with
 * a bit per consumer still to take it; it is partitioned like the buffer,
 * with one LWLock per part.  A writer adds its keys once per transaction,
 * at commit, after the commit is visible: a consumer that takes a key and
 * then takes its snapshot sees every increment that marked it.  A backend
 * remembers what it published and skips a key it published since the last
 * take (each take advances the database's generation).
 *
 * The set is bounded (counter.changed_keys).  When it is full, or when the
 * server started afresh, what a consumer would have taken is unknown: the
 * database's epoch changes, and each consumer rebuilds in full whatever it
 * built under another epoch.
 */
#include "counter.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

typedef struct ChangedKey
{
	Oid			dbid;
	int32		counter_id;
	int64		key;
} ChangedKey;

typedef struct ChangedEntry
{
	ChangedKey	k;
	uint32		consumers;		/* bits of COUNTER_CONSUMER_* still to take it */
} ChangedEntry;

/* A key this backend published, and the generation it did so in. */
typedef struct PublishedKey
{
	int32		counter_id;
	int64		key;
	uint64		generation;
} PublishedKey;

#define COUNTER_PUBLISHED_CACHE 256

static HTAB *changed_hash = NULL;
static LWLockPadded *changed_locks = NULL;
static HTAB *local_changed = NULL;
static PublishedKey published[COUNTER_PUBLISHED_CACHE];

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* shmem_request_hook: room for counter.changed_keys entries and their locks. */
static void
CounterChangedShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(hash_estimate_size(counter_changed_keys,
											  sizeof(ChangedEntry)));
	RequestNamedLWLockTranche("counter changed", COUNTER_PARTITIONS);
}

/* shmem_startup_hook: create or attach to the shared set. */
static void
CounterChangedShmemStartup(void)
{
	HASHCTL		info;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(ChangedKey);
	info.entrysize = sizeof(ChangedEntry);
	info.num_partitions = COUNTER_PARTITIONS;
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	changed_hash = ShmemInitHash("counter changed keys",
								 counter_changed_keys, counter_changed_keys,
								 &info, HASH_ELEM | HASH_BLOBS | HASH_PARTITION);
	changed_locks = GetNamedLWLockTranche("counter changed");
	LWLockRelease(AddinShmemInitLock);
}

/* Publish this transaction's changed keys at commit; forget them otherwise. */
static void
CounterChangedXact(XactEvent event, void *arg)
{
	if (local_changed == NULL)
		return;
	/* never fails: what cannot be published changes the epoch instead */
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT)
		CounterChangedPublish();
	/* the table lives in TopTransactionContext, which goes now */
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
		local_changed = NULL;
}

/* Install the hooks (preload only) and the commit callback. */
void
CounterChangedInit(void)
{
	RegisterXactCallback(CounterChangedXact, NULL);
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = CounterChangedShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = CounterChangedShmemStartup;
}

/* Whether the shared set exists (the library was preloaded). */
static bool
CounterChangedReady(void)
{
	return changed_hash != NULL && CounterShmemReady();
}

/* Note that a row of (counter, key) changed in this transaction. */
void
CounterChangedNote(int32 counter_id, int64 key)
{
	ChangedKey	k;

	if (!CounterChangedReady())
		return;
	if (local_changed == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(ChangedKey);
		ctl.entrysize = sizeof(ChangedKey);
		ctl.hcxt = TopTransactionContext;
		local_changed = hash_create("counter changed keys of this transaction", 16,
									&ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	memset(&k, 0, sizeof(k));
	k.dbid = MyDatabaseId;
	k.counter_id = counter_id;
	k.key = key;
	(void) hash_search(local_changed, &k, HASH_ENTER, NULL);
}

/* The lock of the part of the shared set a key hashes to. */
static inline LWLock *
CounterChangedLock(uint32 hashcode)
{
	return &changed_locks[hashcode % COUNTER_PARTITIONS].lock;
}

/*
 * Add one key to the shared set for every consumer; false if the set is
 * full.  Called with no lock held.
 */
static bool
CounterChangedAdd(const ChangedKey *k, uint32 consumers)
{
	uint32		hashcode = get_hash_value(changed_hash, k);
	LWLock	   *lock = CounterChangedLock(hashcode);
	ChangedEntry *e;
	bool		found;

	LWLockAcquire(lock, LW_SHARED);
	e = hash_search_with_hash_value(changed_hash, k, hashcode, HASH_FIND, NULL);
	if (e && (e->consumers & consumers) == consumers)
	{
		LWLockRelease(lock);
		return true;
	}
	LWLockRelease(lock);
	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = hash_search_with_hash_value(changed_hash, k, hashcode, HASH_ENTER_NULL, &found);
	if (e)
		e->consumers = (found ? e->consumers : 0) | consumers;
	LWLockRelease(lock);
	return e != NULL;
}

/*
 * Publish the keys noted in this transaction.  A key this backend already
 * published in the current generation is skipped: it is still in the set.
 */
void
CounterChangedPublish(void)
{
	CounterDbSlot *slot = CounterSlotFor(MyDatabaseId);
	HASH_SEQ_STATUS status;
	ChangedKey *k;
	uint64		generation;

	uint32		consumers;

	if (slot == NULL || local_changed == NULL)
		return;
	consumers = pg_atomic_read_u32(&slot->changed_consumers);
	if (consumers == 0)
		return;					/* nobody follows changes here now */
	generation = pg_atomic_read_u64(&slot->changed_generation);
	hash_seq_init(&status, local_changed);
	while ((k = hash_seq_search(&status)) != NULL)
	{
		uint32		h = (uint32) (k->counter_id * 2654435761U) ^ (uint32) (k->key * 40503U) ^
			(uint32) ((uint64) k->key >> 32);
		PublishedKey *p = &published[h % COUNTER_PUBLISHED_CACHE];

		if (p->counter_id == k->counter_id && p->key == k->key &&
			p->generation == generation)
			continue;
		if (!CounterChangedAdd(k, consumers))
		{
			pg_atomic_fetch_add_u64(&slot->changed_epoch, 1);
			continue;
		}
		p->counter_id = k->counter_id;
		p->key = k->key;
		p->generation = generation;
	}
}

/*
 * Declare which consumers follow this database's changes from now on (the
 * maintenance process, each round).  A consumer that starts following
 * missed what came before: the epoch changes, so it rebuilds in full.
 */
void
CounterChangedFollow(uint32 consumers)
{
	CounterDbSlot *slot;
	uint32		before;

	if (!CounterChangedReady() || (slot = CounterSlotFor(MyDatabaseId)) == NULL)
		return;
	before = pg_atomic_exchange_u32(&slot->changed_consumers, consumers);
	if ((consumers & ~before) != 0)
		pg_atomic_fetch_add_u64(&slot->changed_epoch, 1);
}

/*
 * The epoch of this database's changed keys for a consumer; 0 when they are
 * not followed for it (no shared memory, no slot, or nobody taking them):
 * then nothing built before can be trusted to be current.
 */
uint64
CounterChangedEpoch(uint32 consumer)
{
	CounterDbSlot *slot;

	if (!CounterChangedReady() || (slot = CounterSlotFor(MyDatabaseId)) == NULL ||
		!(pg_atomic_read_u32(&slot->changed_consumers) & consumer))
		return 0;
	return pg_atomic_read_u64(&slot->changed_epoch);
}

/* qsort: changed keys by counter, then key. */
static int
CounterChangedCmp(const void *a, const void *b)
{
	const CounterChangedKey *x = a;
	const CounterChangedKey *y = b;

	if (x->counter_id != y->counter_id)
		return x->counter_id < y->counter_id ? -1 : 1;
	if (x->key != y->key)
		return x->key < y->key ? -1 : 1;
	return 0;
}

/*
 * Take this database's changed keys for a consumer (of one counter, or of
 * all with counter_id 0), sorted by counter and key, into *out (palloc'd in
 * the current context); returns how many.  Take them before the snapshot
 * that reads their rows.
 */
int
CounterChangedTake(uint32 consumer, int32 counter_id, CounterChangedKey **out)
{
	CounterDbSlot *slot;
	HASH_SEQ_STATUS status;
	ChangedEntry *e;
	CounterChangedKey *keys;
	int			n = 0;
	int			cap = 1024;
	int			p;

	*out = NULL;
	if (!CounterChangedReady() || (slot = CounterSlotFor(MyDatabaseId)) == NULL)
		return 0;
	keys = palloc(sizeof(CounterChangedKey) * cap);
	pg_atomic_fetch_add_u64(&slot->changed_generation, 1);
	for (p = 0; p < COUNTER_PARTITIONS; p++)
		LWLockAcquire(&changed_locks[p].lock, LW_EXCLUSIVE);
	hash_seq_init(&status, changed_hash);
	while ((e = hash_seq_search(&status)) != NULL)
	{
		if (e->k.dbid != MyDatabaseId || !(e->consumers & consumer) ||
			(counter_id != 0 && e->k.counter_id != counter_id))
			continue;
		if (n == cap)
		{
			cap *= 2;
			keys = repalloc_huge(keys, sizeof(CounterChangedKey) * cap);
		}
		keys[n].counter_id = e->k.counter_id;
		keys[n].key = e->k.key;
		n++;
		e->consumers &= ~consumer;
		if (e->consumers == 0)
			hash_search(changed_hash, &e->k, HASH_REMOVE, NULL);
	}
	for (p = COUNTER_PARTITIONS - 1; p >= 0; p--)
		LWLockRelease(&changed_locks[p].lock);
	if (n > 1)
		qsort(keys, n, sizeof(CounterChangedKey), CounterChangedCmp);
	*out = keys;
	return n;
}

/*
 * Give keys back to a consumer whose work on them failed, so the next turn
 * takes them again; if the set is full the epoch changes instead.
 */
void
CounterChangedGiveBack(uint32 consumer, const CounterChangedKey *keys, int n)
{
	CounterDbSlot *slot;
	int			i;

	if (!CounterChangedReady() || (slot = CounterSlotFor(MyDatabaseId)) == NULL)
		return;
	for (i = 0; i < n; i++)
	{
		ChangedKey	k;

		memset(&k, 0, sizeof(k));
		k.dbid = MyDatabaseId;
		k.counter_id = keys[i].counter_id;
		k.key = keys[i].key;
		if (!CounterChangedAdd(&k, consumer))
		{
			pg_atomic_fetch_add_u64(&slot->changed_epoch, 1);
			return;
		}
	}
}

/* Forget every changed key of a database that is gone. */
void
CounterChangedForgetDatabase(Oid dbid)
{
	HASH_SEQ_STATUS status;
	ChangedEntry *e;
	int			p;

	if (!CounterChangedReady())
		return;
	for (p = 0; p < COUNTER_PARTITIONS; p++)
		LWLockAcquire(&changed_locks[p].lock, LW_EXCLUSIVE);
	hash_seq_init(&status, changed_hash);
	while ((e = hash_seq_search(&status)) != NULL)
		if (e->k.dbid == dbid)
			hash_search(changed_hash, &e->k, HASH_REMOVE, NULL);
	for (p = COUNTER_PARTITIONS - 1; p >= 0; p--)
		LWLockRelease(&changed_locks[p].lock);
}
