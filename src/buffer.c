/*
 * buffer.c
 *		The shared buffer of buffered counters: pending increments per
 *		(database, counter, key) and minute, and the totals cached for
 *		get(max_age).  The passes over the whole buffer (folds, eviction,
 *		totals, forgetting a counter) are in buffer_fold.c.
 *
 * The buffer is a shared hash of (counter, key) entries, partitioned into
 * COUNTER_PARTITIONS parts with one LWLock each.  Finding an entry takes its
 * partition's lock in shared mode; only creating or evicting an entry takes
 * it exclusively.  The numbers inside an entry are guarded by the entry's own
 * spinlock, so writers of different keys never touch the same lock and
 * writers of one hot key hold a spinlock for a few instructions.
 *
 * Readers do not take the spinlock: writers bump a change count around each
 * change and readers retry a copy that overlapped one (CounterEntryLock).
 *
 * Each entry has COUNTER_BUF_SLOTS minute slots.  A slot holds
 *	 pending	committed increments not yet folded into the tables;
 *	 inflight	increments a fold has taken, written by fold_xid;
 *	 refs		open transactions that will add to this slot at commit.
 * A reader adds inflight only while fold_xid is not visible to its snapshot,
 * so a read is exact before, during and after a fold.  The worker clears
 * inflight once fold_xid is visible to every snapshot of the database, or
 * once the fold is older than the settle limit the caller gives: a
 * snapshot held open longer than that (a long repeatable-read transaction)
 * may then miss one fold's amount of a key, but no snapshot can hold
 * buffered increments back from the tables.
 * An entry is evicted only when no slot has pending, inflight or refs.
 */
#include "counter_buffer.h"

#include "access/transam.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "utils/snapmgr.h"

HTAB	   *counter_buffer_hash = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* shmem_request_hook: room for counter.buffer_keys entries. */
static void
CounterBufferShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(hash_estimate_size(counter_buffer_keys,
											  sizeof(CounterBufEntry)));
}

/* shmem_startup_hook: create or attach to the buffer's hash (after shmem.c's). */
static void
CounterBufferShmemStartup(void)
{
	HASHCTL		info;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(CounterBufKey);
	info.entrysize = sizeof(CounterBufEntry);
	info.num_partitions = COUNTER_PARTITIONS;
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	counter_buffer_hash = ShmemInitHash("counter buffer",
								counter_buffer_keys, counter_buffer_keys,
								&info, HASH_ELEM | HASH_BLOBS | HASH_PARTITION);
	LWLockRelease(AddinShmemInitLock);
}

/* Install the hooks, after CounterShmemInit (preload only). */
void
CounterBufferInit(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = CounterBufferShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = CounterBufferShmemStartup;
}

/*
 * Lock every partition, in order, for a scan of the whole buffer (dynahash
 * requires all partition locks for hash_seq_search on a partitioned table).
 */
void
CounterLockAll(LWLockMode mode)
{
	int			p;

	for (p = 0; p < COUNTER_PARTITIONS; p++)
		LWLockAcquire(counter_shared->partition_locks[p], mode);
}

/* Release what CounterLockAll took. */
void
CounterUnlockAll(void)
{
	int			p;

	for (p = COUNTER_PARTITIONS - 1; p >= 0; p--)
		LWLockRelease(counter_shared->partition_locks[p]);
}

/*
 * The count of buffer entries that (database, counter) shares its bucket
 * of counter_entries with: zero means the counter has none, so a read can
 * skip looking its keys up.  An entry is counted before it can hold any
 * amount and uncounted only when it is removed.
 */
static pg_atomic_uint32 *
CounterEntriesOf(Oid dbid, int32 counter_id)
{
	uint32		h = hash_combine(murmurhash32((uint32) dbid), murmurhash32((uint32) counter_id));

	return &counter_shared->counter_entries[h % COUNTER_ENTRY_COUNTS];
}

/* Whether counter_id of this database may have entries in the buffer. */
static bool
CounterMayHaveEntries(int32 counter_id)
{
	return pg_atomic_read_u32(CounterEntriesOf(MyDatabaseId, counter_id)) != 0;
}

/* Remove an entry, under its partition lock held exclusive. */
void
CounterBufRemove(CounterBufEntry *entry)
{
	pg_atomic_uint32 *count = CounterEntriesOf(entry->key.dbid, entry->key.counter_id);

	hash_search(counter_buffer_hash, &entry->key, HASH_REMOVE, NULL);
	pg_atomic_fetch_sub_u32(&counter_shared->nentries, 1);
	pg_atomic_fetch_sub_u32(count, 1);
}

/* The buffer's key of (counter, key) in this database, zero-padded for hashing. */
static void
CounterBufKeyOf(CounterBufKey *k, int32 counter_id, int64 key)
{
	memset(k, 0, sizeof(*k));
	k->dbid = MyDatabaseId;
	k->counter_id = counter_id;
	k->key = key;
}

/*
 * Find the entry of (counter, key) in this database, making it (if create)
 * when there is room under counter.buffer_keys.  Returns with the entry's
 * partition lock held, in *lock (shared, or exclusive if it had to look
 * for room); the caller releases it.  NULL when absent or when there is no
 * room.  *is_new tells that the entry was just made.
 */
static CounterBufEntry *
CounterBufLookup(int32 counter_id, int64 key, bool create, LWLock **lock,
				 bool *is_new)
{
	CounterBufKey k;
	uint32		hashcode;
	CounterBufEntry *entry;
	bool		found;

	CounterBufKeyOf(&k, counter_id, key);
	hashcode = get_hash_value(counter_buffer_hash, &k);
	*lock = CounterPartitionLock(hashcode);
	*is_new = false;

	LWLockAcquire(*lock, LW_SHARED);
	entry = hash_search_with_hash_value(counter_buffer_hash, &k, hashcode, HASH_FIND, NULL);
	if (entry || !create)
		return entry;

	LWLockRelease(*lock);
	LWLockAcquire(*lock, LW_EXCLUSIVE);
	entry = hash_search_with_hash_value(counter_buffer_hash, &k, hashcode, HASH_FIND, NULL);
	if (entry)
		return entry;
	if (pg_atomic_fetch_add_u32(&counter_shared->nentries, 1) >= (uint32) counter_buffer_keys)
	{
		pg_atomic_fetch_sub_u32(&counter_shared->nentries, 1);
		return NULL;
	}
	entry = hash_search_with_hash_value(counter_buffer_hash, &k, hashcode, HASH_ENTER_NULL, &found);
	if (entry == NULL)
	{
		pg_atomic_fetch_sub_u32(&counter_shared->nentries, 1);
		return NULL;
	}
	pg_atomic_fetch_add_u32(CounterEntriesOf(MyDatabaseId, counter_id), 1);
	SpinLockInit(&entry->mutex);
	pg_atomic_init_u32(&entry->changecount, 0);
	entry->big = false;
	entry->fold_xid = InvalidTransactionId;
	entry->fold_at = 0;
	memset(entry->slots, 0, sizeof(entry->slots));
	entry->cached_at = 0;
	entry->cached_value = 0;
	*is_new = true;
	return entry;
}

/*
 * Find (or make) the entry of (counter, key) and reserve a slot for bucket
 * in it.  Returns NULL when the buffer is full or both slots hold other
 * minutes: the caller then takes the durable path.  *is_new tells the
 * caller that the entry was just made (its `big` flag still to be set).
 */
CounterBufEntry *
CounterBufReserve(int32 counter_id, int64 key, TimestampTz bucket,
				  int *slotno, bool *is_new)
{
	LWLock	   *lock;
	CounterBufEntry *entry;
	int			i;
	int			free_slot = -1;

	entry = CounterBufLookup(counter_id, key, true, &lock, is_new);
	if (entry == NULL)
	{
		LWLockRelease(lock);
		return NULL;
	}
	CounterEntryLock(entry);
	for (i = 0; i < COUNTER_BUF_SLOTS; i++)
	{
		CounterBufSlot *s = &entry->slots[i];

		if (s->bucket == bucket && (s->refs > 0 || s->pending != 0 || s->inflight != 0))
			break;
		if (free_slot < 0 && s->refs == 0 && s->pending == 0 && s->inflight == 0)
			free_slot = i;
	}
	if (i == COUNTER_BUF_SLOTS)
		i = free_slot;
	if (i >= 0)
	{
		entry->slots[i].bucket = bucket;
		entry->slots[i].refs++;
	}
	CounterEntryUnlock(entry);
	LWLockRelease(lock);

	*slotno = i;
	return i >= 0 ? entry : NULL;
}

/*
 * Settle a reservation at the end of a transaction: add delta (0 on abort)
 * to the slot's pending and drop the reference.  The reference kept the
 * entry from eviction, so no partition lock is needed.
 */
void
CounterBufRelease(CounterBufEntry *entry, int slotno, int64 delta)
{
	CounterBufSlot *s = &entry->slots[slotno];

	CounterEntryLock(entry);
	s->pending += delta;
	s->refs--;
	CounterEntryUnlock(entry);
}

/* Mark a key as big (see write.c): its increments then take the durable path. */
void
CounterBufSetBig(CounterBufEntry *entry)
{
	CounterEntryLock(entry);
	entry->big = true;
	CounterEntryUnlock(entry);
}

/* Mark (counter, key) big if the buffer has an entry for it. */
void
CounterBufMarkBig(int32 counter_id, int64 key)
{
	LWLock	   *lock;
	bool		is_new;
	CounterBufEntry *entry;

	if (!CounterShmemReady())
		return;
	entry = CounterBufLookup(counter_id, key, false, &lock, &is_new);
	if (entry)
		CounterBufSetBig(entry);
	LWLockRelease(lock);
}

/* Whether an inflight amount written by xid is missing from snapshot's view. */
static bool
CounterInflightUnseen(TransactionId xid, Snapshot snapshot)
{
	if (!TransactionIdIsValid(xid))
		return true;
	if (snapshot == NULL || XidInMVCCSnapshot(xid, snapshot))
		return true;
	return !TransactionIdDidCommit(xid);
}

/* Copy an entry's minute slots and fold xid, as one consistent read. */
static void
CounterEntryCopy(CounterBufEntry *entry, TimestampTz *b, int64 *pending,
				 int64 *inflight, TransactionId *xid)
{
	uint32		before;
	int			i;

	do
	{
		before = CounterEntryReadBegin(entry);
		for (i = 0; i < COUNTER_BUF_SLOTS; i++)
		{
			volatile CounterBufSlot *s = &entry->slots[i];

			b[i] = s->bucket;
			pending[i] = s->pending;
			inflight[i] = s->inflight;
		}
		*xid = entry->fold_xid;
	} while (!CounterEntryReadEnd(entry, before));
}

/*
 * What the buffer holds for (counter, key), per minute slot, as seen from
 * snapshot: pending, plus inflight that the snapshot cannot see in the
 * tables yet.  Fills up to COUNTER_BUF_SLOTS (bucket, amount) pairs with a
 * nonzero amount and returns how many.
 */
int
CounterBufPendingSlots(int32 counter_id, int64 key, Snapshot snapshot,
					   TimestampTz *buckets, int64 *amounts)
{
	LWLock	   *lock;
	bool		is_new;
	CounterBufEntry *entry;
	TimestampTz b[COUNTER_BUF_SLOTS];
	int64		pending[COUNTER_BUF_SLOTS];
	int64		inflight[COUNTER_BUF_SLOTS];
	TransactionId xid = InvalidTransactionId;
	bool		unseen;
	int			n = 0;
	int			i;

	if (!CounterShmemReady() || !CounterMayHaveEntries(counter_id))
		return 0;
	entry = CounterBufLookup(counter_id, key, false, &lock, &is_new);
	if (entry == NULL)
	{
		LWLockRelease(lock);
		return 0;
	}
	CounterEntryCopy(entry, b, pending, inflight, &xid);
	LWLockRelease(lock);

	unseen = CounterInflightUnseen(xid, snapshot);
	for (i = 0; i < COUNTER_BUF_SLOTS; i++)
	{
		int64		amount = pending[i] + (unseen ? inflight[i] : 0);

		if (amount == 0)
			continue;
		buckets[n] = b[i];
		amounts[n++] = amount;
	}
	return n;
}

/*
 * Add what the buffer holds for each of n keys of a counter, in every
 * bucket, as seen from snapshot, to totals[] (skipping keys whose skip[]
 * is set); false, with totals[] partly added, at a total past bigint.
 * Each partition's lock is taken once for all the keys that hash to it.
 */
bool
CounterBufPendingMany(int32 counter_id, int n, const int64 *keys,
					  const bool *skip, Snapshot snapshot, int64 *totals)
{
	uint32	   *hashes;
	int		   *order;
	int128	   *pending;
	int128	   *inflight;
	TransactionId *xids;
	int			starts[COUNTER_PARTITIONS + 1] = {0};
	int			fill[COUNTER_PARTITIONS];
	int			p;
	int			i;
	bool		ok = true;

	if (!CounterShmemReady() || n == 0 || !CounterMayHaveEntries(counter_id))
		return true;
	hashes = palloc(sizeof(uint32) * n);
	order = palloc(sizeof(int) * n);
	pending = inflight = NULL;
	xids = NULL;
	/* the keys' places, grouped by partition (a counting sort) */
	for (i = 0; i < n; i++)
	{
		CounterBufKey k;

		CounterBufKeyOf(&k, counter_id, keys[i]);
		hashes[i] = get_hash_value(counter_buffer_hash, &k);
		starts[hashes[i] % COUNTER_PARTITIONS + 1]++;
	}
	for (p = 0; p < COUNTER_PARTITIONS; p++)
		starts[p + 1] += starts[p];
	memcpy(fill, starts, sizeof(fill));
	for (i = 0; i < n; i++)
		order[fill[hashes[i] % COUNTER_PARTITIONS]++] = i;

	/* each partition's keys under one hold of its lock */
	for (p = 0; p < COUNTER_PARTITIONS; p++)
	{
		int			j;

		if (starts[p] == starts[p + 1])
			continue;
		LWLockAcquire(counter_shared->partition_locks[p], LW_SHARED);
		for (j = starts[p]; j < starts[p + 1]; j++)
		{
			CounterBufKey k;
			CounterBufEntry *entry;
			TimestampTz b[COUNTER_BUF_SLOTS];
			int64		pend[COUNTER_BUF_SLOTS];
			int64		infl[COUNTER_BUF_SLOTS];
			int			s;

			i = order[j];
			if (skip != NULL && skip[i])
				continue;
			CounterBufKeyOf(&k, counter_id, keys[i]);
			entry = hash_search_with_hash_value(counter_buffer_hash, &k, hashes[i], HASH_FIND, NULL);
			if (entry == NULL)
				continue;
			if (pending == NULL)
			{
				pending = palloc0(sizeof(int128) * n);
				inflight = palloc0(sizeof(int128) * n);
				xids = palloc0(sizeof(TransactionId) * n);
			}
			CounterEntryCopy(entry, b, pend, infl, &xids[i]);
			for (s = 0; s < COUNTER_BUF_SLOTS; s++)
			{
				pending[i] += pend[s];
				inflight[i] += infl[s];
			}
		}
		LWLockRelease(counter_shared->partition_locks[p]);
	}

	/* what the snapshot cannot see yet, with no lock held */
	for (i = 0; i < n && ok && pending != NULL; i++)
	{
		int128		t = (int128) totals[i] + pending[i];

		if (inflight[i] != 0 && CounterInflightUnseen(xids[i], snapshot))
			t += inflight[i];
		ok = t <= PG_INT64_MAX && t >= PG_INT64_MIN;
		totals[i] = (int64) t;
	}
	pfree(hashes);
	pfree(order);
	if (pending != NULL)
	{
		pfree(pending);
		pfree(inflight);
		pfree(xids);
	}
	return ok;
}

/*
 * Sum what the buffer holds for (counter, key) in buckets [from, to), as
 * seen from snapshot (see CounterBufPendingSlots).
 */
int64
CounterBufPending(int32 counter_id, int64 key, TimestampTz from,
				  TimestampTz to, Snapshot snapshot)
{
	TimestampTz buckets[COUNTER_BUF_SLOTS];
	int64		amounts[COUNTER_BUF_SLOTS];
	int64		sum = 0;
	int			n = CounterBufPendingSlots(counter_id, key, snapshot, buckets, amounts);
	int			i;

	for (i = 0; i < n; i++)
		if (buckets[i] >= from && buckets[i] < to)
			sum += amounts[i];
	return sum;
}

/* Read a cached total of (counter, key) if it is no older than max_age_us. */
bool
CounterCacheGet(int32 counter_id, int64 key, int64 max_age_us, int64 *value)
{
	LWLock	   *lock;
	bool		is_new;
	CounterBufEntry *entry;
	bool		hit = false;
	TimestampTz now = GetCurrentTimestamp();

	entry = CounterBufLookup(counter_id, key, false, &lock, &is_new);
	if (entry)
	{
		uint32		before;
		TimestampTz at;
		int64		v;

		do
		{
			before = CounterEntryReadBegin(entry);
			at = entry->cached_at;
			v = entry->cached_value;
		} while (!CounterEntryReadEnd(entry, before));
		if (at != 0 && now - at <= max_age_us)
		{
			*value = v;
			hit = true;
		}
	}
	LWLockRelease(lock);
	return hit;
}

/*
 * Remember an exact total computed at `at`, for later max_age reads.  Makes
 * an entry if the buffer is less than half full; otherwise only keys that
 * have an entry are cached.
 */
void
CounterCachePut(int32 counter_id, int64 key, int64 value, TimestampTz at)
{
	LWLock	   *lock;
	bool		is_new;
	CounterBufEntry *entry;

	/*
	 * A cached total may take a new entry only while the buffer is less
	 * than half full: readers can never crowd out the pending increments
	 * of buffered counters, which always keep the other half.
	 */
	entry = CounterBufLookup(counter_id, key,
							 pg_atomic_read_u32(&counter_shared->nentries) < (uint32) counter_buffer_keys / 2,
							 &lock, &is_new);
	if (entry)
	{
		CounterEntryLock(entry);
		if (at >= entry->cached_at)
		{
			entry->cached_at = at;
			entry->cached_value = value;
		}
		CounterEntryUnlock(entry);
	}
	LWLockRelease(lock);
}
