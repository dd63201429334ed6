/*
 * buffer_fold.c
 *		The passes over the whole shared buffer (buffer.c): a fold taking the
 *		pending amounts and settling or returning them, eviction of idle
 *		entries, each counter's pending totals, and forgetting a counter or a
 *		database.
 *
 * Each pass takes every partition lock (CounterLockAll), as dynahash wants
 * for a scan of a partitioned table, and each entry's spinlock around its
 * numbers; the clog and procarray lookups that judge a fold's xid are made
 * outside any spinlock.  The locking rules of an entry are in buffer.c.
 */
#include "counter_buffer.h"

#include "access/transam.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/procarray.h"
#include "utils/snapmgr.h"

/*
 * The state of the fold that last took amounts from an entry, judged from
 * its xid outside any spinlock (clog and procarray lookups take locks).
 */
typedef enum CounterFoldState
{
	COUNTER_FOLD_NONE,			/* nothing in flight */
	COUNTER_FOLD_SETTLED,		/* committed and visible to every snapshot */
	COUNTER_FOLD_BUSY,			/* running, or committed but not yet seen by all */
	COUNTER_FOLD_ABORTED		/* failed: its amounts go back to pending */
} CounterFoldState;

static CounterFoldState
CounterFoldStateOf(const CounterBufEntry *entry, TransactionId horizon,
				   TimestampTz settle_before)
{
	TransactionId xid = entry->fold_xid;

	if (!TransactionIdIsValid(xid))
		return COUNTER_FOLD_NONE;
	if (TransactionIdIsInProgress(xid))
		return COUNTER_FOLD_BUSY;
	if (!TransactionIdDidCommit(xid))
		return COUNTER_FOLD_ABORTED;
	if (TransactionIdPrecedes(xid, horizon) || entry->fold_at < settle_before)
		return COUNTER_FOLD_SETTLED;
	return COUNTER_FOLD_BUSY;
}

/*
 * Worker side of a fold, step 1: move every slot's pending into inflight,
 * tagged with xid, and hand the amounts to emit().  Entries whose previous
 * fold is still visible to someone are skipped this round (their pending
 * stays, and stays readable); amounts of a previous fold that aborted are
 * given back first, so no entry stays busy after a failure, whoever missed
 * the give-back.  horizon is the oldest xid still visible to a snapshot of
 * this database; a fold that committed before settle_before is settled
 * even if some older snapshot could still miss it (see the file header).
 * emit() runs with no spinlock held.  Only the database's ingest process
 * writes fold_xid and fold_at, so it may read them without the spinlock.
 * Returns the number of amounts handed over.
 */
int
CounterBufDrain(TransactionId xid, TransactionId horizon,
				TimestampTz settle_before, CounterDrainCallback emit, void *arg)
{
	TimestampTz now = GetCurrentTimestamp();
	HASH_SEQ_STATUS status;
	CounterBufEntry *entry;
	int			n = 0;

	CounterLockAll(LW_SHARED);
	hash_seq_init(&status, counter_buffer_hash);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		CounterFoldState prev;
		TimestampTz buckets[COUNTER_BUF_SLOTS];
		int64		amounts[COUNTER_BUF_SLOTS];
		int			ntaken = 0;
		int			i;

		if (entry->key.dbid != MyDatabaseId)
			continue;
		prev = CounterFoldStateOf(entry, horizon, settle_before);
		if (prev == COUNTER_FOLD_BUSY)
			continue;
		CounterEntryLock(entry);
		for (i = 0; i < COUNTER_BUF_SLOTS; i++)
		{
			CounterBufSlot *s = &entry->slots[i];

			if (prev == COUNTER_FOLD_ABORTED)
				s->pending += s->inflight;
			s->inflight = 0;
			if (s->pending == 0)
				continue;
			s->inflight = s->pending;
			s->pending = 0;
			buckets[ntaken] = s->bucket;
			amounts[ntaken++] = s->inflight;
		}
		entry->fold_xid = ntaken > 0 ? xid : InvalidTransactionId;
		entry->fold_at = now;
		CounterEntryUnlock(entry);
		for (i = 0; i < ntaken; i++)
			emit(arg, entry->key.counter_id, entry->key.key, buckets[i], amounts[i]);
		n += ntaken;
	}
	CounterUnlockAll();
	return n;
}

/*
 * Worker side of a fold that failed: give inflight amounts tagged xid back
 * to pending, so nothing is lost and the next fold retries them.
 */
void
CounterBufUndrain(TransactionId xid)
{

	{
		HASH_SEQ_STATUS status;
		CounterBufEntry *entry;

		CounterLockAll(LW_SHARED);
		hash_seq_init(&status, counter_buffer_hash);
		while ((entry = hash_seq_search(&status)) != NULL)
		{
			int			i;

			CounterEntryLock(entry);
			if (entry->fold_xid == xid)
			{
				for (i = 0; i < COUNTER_BUF_SLOTS; i++)
				{
					entry->slots[i].pending += entry->slots[i].inflight;
					entry->slots[i].inflight = 0;
				}
				entry->fold_xid = InvalidTransactionId;
			}
			CounterEntryUnlock(entry);
		}
		CounterUnlockAll();
	}
}

/*
 * Evict entries that hold nothing: no pending, inflight or references, and
 * no cached total younger than keep_cache_us.  Keeps the buffer bounded.
 */
int
CounterBufEvict(int64 keep_cache_us)
{
	TimestampTz now = GetCurrentTimestamp();
	int			evicted = 0;

	{
		HASH_SEQ_STATUS status;
		CounterBufEntry *entry;

		CounterLockAll(LW_EXCLUSIVE);
		hash_seq_init(&status, counter_buffer_hash);
		while ((entry = hash_seq_search(&status)) != NULL)
		{
			bool		idle = true;
			int			i;

			for (i = 0; i < COUNTER_BUF_SLOTS; i++)
				if (entry->slots[i].pending != 0 || entry->slots[i].inflight != 0 ||
					entry->slots[i].refs != 0)
					idle = false;
			if (idle && entry->cached_at != 0 && now - entry->cached_at < keep_cache_us)
				idle = false;
			if (idle && !entry->big)
			{
				CounterBufRemove(entry);
				evicted++;
			}
		}
		CounterUnlockAll();
	}
	return evicted;
}

static int
CounterInt32Cmp(const void *a, const void *b)
{
	int32		x = *(const int32 *) a;
	int32		y = *(const int32 *) b;

	return (x > y) - (x < y);
}

/*
 * Totals of what the buffer holds for each of n counters of this database
 * (for counter.stats), in one pass over the buffer: pending[i] and keys[i]
 * for ids[i].  Sorts ids.
 */
void
CounterBufCounterTotals(int32 *ids, int n, int64 *pending, int64 *keys)
{
	HASH_SEQ_STATUS status;
	CounterBufEntry *entry;

	qsort(ids, n, sizeof(int32), CounterInt32Cmp);
	memset(pending, 0, sizeof(int64) * n);
	memset(keys, 0, sizeof(int64) * n);
	if (n == 0)
		return;
	CounterLockAll(LW_SHARED);
	hash_seq_init(&status, counter_buffer_hash);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		int64		sum = 0;
		int32	   *hit;
		int			i;

		if (entry->key.dbid != MyDatabaseId)
			continue;
		hit = bsearch(&entry->key.counter_id, ids, n, sizeof(int32), CounterInt32Cmp);
		if (hit == NULL)
			continue;
		CounterEntryLock(entry);
		for (i = 0; i < COUNTER_BUF_SLOTS; i++)
			sum += entry->slots[i].pending;
		CounterEntryUnlock(entry);
		if (sum != 0)
		{
			pending[hit - ids] += sum;
			keys[hit - ids]++;
		}
	}
	CounterUnlockAll();
}

/*
 * Forget the buffered deltas and cached totals of a counter id in this
 * database (a new counter takes an id only after the extension was dropped
 * and created again).
 */
void
CounterBufForget(int32 counter_id)
{
	HASH_SEQ_STATUS status;
	CounterBufEntry *entry;
	int			i;

	if (!CounterShmemReady())
		return;
	CounterLockAll(LW_EXCLUSIVE);
	hash_seq_init(&status, counter_buffer_hash);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (entry->key.counter_id != counter_id || entry->key.dbid != MyDatabaseId)
			continue;
		CounterEntryLock(entry);
		entry->cached_at = 0;
		entry->big = false;
		for (i = 0; i < COUNTER_BUF_SLOTS; i++)
		{
			entry->slots[i].pending = 0;
			entry->slots[i].inflight = 0;
		}
		CounterEntryUnlock(entry);
	}
	CounterUnlockAll();
}

/* Forget every entry of a database that is gone (the launcher noticed). */
void
CounterBufForgetDatabase(Oid dbid)
{
	HASH_SEQ_STATUS status;
	CounterBufEntry *entry;

	if (!CounterShmemReady())
		return;
	CounterLockAll(LW_EXCLUSIVE);
	hash_seq_init(&status, counter_buffer_hash);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (entry->key.dbid != dbid)
			continue;
		CounterBufRemove(entry);
	}
	CounterUnlockAll();
}
