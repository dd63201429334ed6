/*
 * buffered.c
 *		The buffered write path and per-transaction bookkeeping.
 *
 * A buffered increment first lands in this backend's memory, keyed by
 * (counter, key, minute, subtransaction level), holding a reservation on a
 * slot of the shared buffer entry (shmem.c).  At commit the deltas are added
 * to the shared slots; at abort they are dropped; a subtransaction's abort
 * drops only its own.  So an aborted transaction counts nothing, and the hot
 * path takes no lock shared by all backends: it touches shared memory once
 * per key and transaction, to reserve.
 *
 * Statistics of every path are gathered the same way and added to the
 * shared counters at commit, so they count what was committed.
 */
#include "counter.h"

#include "access/xact.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

typedef struct LocalKey
{
	int32		counter_id;
	int32		level;
	int64		key;
	TimestampTz bucket;
} LocalKey;

typedef struct LocalRec
{
	LocalKey	k;
	int64		delta;
	CounterBufEntry *entry;
	int			slotno;
} LocalRec;

typedef struct LocalStatKey
{
	int32		counter_id;
	int32		level;
} LocalStatKey;

typedef struct LocalStat
{
	LocalStatKey k;
	int64		n[COUNTER_STAT_COUNT];
} LocalStat;

static HTAB *local_recs = NULL;
static HTAB *local_stats = NULL;

/* Entries in a backend-local table (none before first use). */
static inline long
CounterLocalCount(HTAB *table)
{
	return table ? hash_get_num_entries(table) : 0;
}

/* Create the backend-local tables on first use. */
static void
CounterLocalEnsure(void)
{
	HASHCTL		ctl;

	if (local_recs)
		return;
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(LocalKey);
	ctl.entrysize = sizeof(LocalRec);
	ctl.hcxt = TopMemoryContext;
	local_recs = hash_create("counter pending increments", 64, &ctl,
							 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ctl.keysize = sizeof(LocalStatKey);
	ctl.entrysize = sizeof(LocalStat);
	local_stats = hash_create("counter pending statistics", 16, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/* Count n events of one kind for a counter, published at commit. */
void
CounterCountStat(int32 counter_id, CounterStat stat, int64 n)
{
	LocalStatKey k;
	LocalStat  *s;
	bool		found;

	if (!CounterShmemReady())
		return;
	CounterLocalEnsure();
	k.counter_id = counter_id;
	k.level = GetCurrentTransactionNestLevel();
	s = hash_search(local_stats, &k, HASH_ENTER, &found);
	if (!found)
		memset(s->n, 0, sizeof(s->n));
	s->n[stat] += n;
}

/*
 * Try the buffered path for one increment.  Returns false when the caller
 * must take the durable path instead: no shared memory or not the worker's
 * database (e.g. a restored copy), a delta too large to buffer, a big key,
 * or a full buffer.
 */
bool
CounterBufferedIncr(const CounterDef *def, int64 key, int64 delta,
					TimestampTz bucket)
{
	LocalKey	k;
	LocalRec   *rec;
	bool		found;
	bool		is_new;
	int			slotno;
	CounterBufEntry *entry;

	if (!CounterBufferingHere() || delta >= COUNTER_CHECK_THRESHOLD ||
		delta <= -COUNTER_CHECK_THRESHOLD)
		return false;
	CounterLocalEnsure();
	memset(&k, 0, sizeof(k));
	k.counter_id = def->id;
	k.level = GetCurrentTransactionNestLevel();
	k.key = key;
	k.bucket = bucket;
	rec = hash_search(local_recs, &k, HASH_FIND, NULL);
	if (rec)
	{
		int64		sum;

		if (pg_add_s64_overflow(rec->delta, delta, &sum) ||
			sum >= COUNTER_CHECK_THRESHOLD || sum <= -COUNTER_CHECK_THRESHOLD)
			return false;
		rec->delta = sum;
		return true;
	}

	entry = CounterBufReserve(def->id, key, bucket, &slotno, &is_new);
	if (entry == NULL)
		return false;
	rec = hash_search(local_recs, &k, HASH_ENTER, &found);
	rec->delta = 0;
	rec->entry = entry;
	rec->slotno = slotno;

	/* a new entry learns from the tables whether its key is big */
	if (is_new && CounterKeyIsBig(def, key))
		CounterBufSetBig(entry);
	if (entry->big)
	{
		CounterBufRelease(entry, slotno, 0);
		hash_search(local_recs, &k, HASH_REMOVE, NULL);
		return false;
	}
	rec->delta = delta;
	return true;
}

/* Add an amount at bucket to (buckets, amounts) if it lies in [from, to). */
static int
CounterPendingAdd(TimestampTz *buckets, int64 *amounts, int n, int max,
				  TimestampTz bucket, int64 amount, TimestampTz from, TimestampTz to)
{
	int			i;

	if (amount == 0 || bucket < from || bucket >= to)
		return n;
	for (i = 0; i < n; i++)
		if (buckets[i] == bucket)
		{
			amounts[i] += amount;
			return n;
		}
	if (n == max)
		elog(ERROR, "more pending buckets of one key than expected");
	buckets[n] = bucket;
	amounts[n] = amount;
	return n + 1;
}

/*
 * This transaction's own buffered, uncommitted increments of (counter, key)
 * in buckets [from, to), so a session reads its own writes.
 */
int64
CounterLocalPending(int32 counter_id, int64 key, TimestampTz from, TimestampTz to)
{
	HASH_SEQ_STATUS status;
	LocalRec   *rec;
	int64		sum = 0;

	if (CounterLocalCount(local_recs) == 0)
		return 0;
	hash_seq_init(&status, local_recs);
	while ((rec = hash_seq_search(&status)) != NULL)
		if (rec->k.counter_id == counter_id && rec->k.key == key &&
			rec->k.bucket >= from && rec->k.bucket < to)
			sum += rec->delta;
	return sum;
}

/*
 * Everything not in the tables yet for (counter, key) in buckets [from,
 * to), per bucket: the shared buffer's amounts as this statement's
 * snapshot sees them, and this transaction's own buffered increments.
 * Fills at most max (bucket, amount) pairs, amounts of one bucket summed;
 * returns how many.  (A key holds at most COUNTER_BUF_SLOTS buckets in the
 * buffer, and a transaction reserves no others.)
 */
int
CounterPendingBuckets(int32 counter_id, int64 key, TimestampTz from, TimestampTz to,
					  TimestampTz *buckets, int64 *amounts, int max)
{
	TimestampTz sb[COUNTER_BUF_SLOTS];
	int64		sa[COUNTER_BUF_SLOTS];
	int			ns = CounterBufPendingSlots(counter_id, key, GetActiveSnapshot(), sb, sa);
	int			n = 0;
	int			i;

	for (i = 0; i < ns; i++)
		n = CounterPendingAdd(buckets, amounts, n, max, sb[i], sa[i], from, to);
	if (CounterLocalCount(local_recs) > 0)
	{
		HASH_SEQ_STATUS status;
		LocalRec   *rec;

		hash_seq_init(&status, local_recs);
		while ((rec = hash_seq_search(&status)) != NULL)
			if (rec->k.counter_id == counter_id && rec->k.key == key)
				n = CounterPendingAdd(buckets, amounts, n, max, rec->k.bucket,
									  rec->delta, from, to);
	}
	return n;
}

/* Whether this transaction has written any increment yet. */
bool
CounterLocalWrites(void)
{
	return CounterLocalCount(local_recs) > 0 || TransactionIdIsValid(GetTopTransactionIdIfAny());
}

/* Publish (commit) or drop (abort) every pending record and statistic. */
static void
CounterLocalSettle(bool commit)
{
	HASH_SEQ_STATUS status;

	if (CounterLocalCount(local_recs) > 0)
	{
		LocalRec   *rec;

		hash_seq_init(&status, local_recs);
		while ((rec = hash_seq_search(&status)) != NULL)
		{
			CounterBufRelease(rec->entry, rec->slotno, commit ? rec->delta : 0);
			hash_search(local_recs, &rec->k, HASH_REMOVE, NULL);
		}
	}
	if (CounterLocalCount(local_stats) > 0)
	{
		LocalStat  *st;

		hash_seq_init(&status, local_stats);
		while ((st = hash_seq_search(&status)) != NULL)
		{
			if (commit)
			{
				CounterStatsEntry *e = CounterStatsFor(st->k.counter_id);
				int			i;

				for (i = 0; e && i < COUNTER_STAT_COUNT; i++)
					if (st->n[i] != 0)
						pg_atomic_fetch_add_u64(&e->n[i], st->n[i]);
			}
			hash_search(local_stats, &st->k, HASH_REMOVE, NULL);
		}
	}
}

/*
 * End of a subtransaction at nesting level `level`: on abort drop its
 * records; on commit hand them to the parent level, merging duplicates.
 */
static void
CounterLocalSubEnd(int level, bool commit)
{
	HASH_SEQ_STATUS status;
	LocalRec   *rec;
	LocalStat  *st;
	List	   *moved = NIL;
	ListCell   *lc;

	if (CounterLocalCount(local_recs) > 0)
	{
		hash_seq_init(&status, local_recs);
		while ((rec = hash_seq_search(&status)) != NULL)
		{
			if (rec->k.level < level)
				continue;
			if (commit)
			{
				LocalRec   *copy = palloc(sizeof(LocalRec));

				*copy = *rec;
				moved = lappend(moved, copy);
			}
			else
				CounterBufRelease(rec->entry, rec->slotno, 0);
			hash_search(local_recs, &rec->k, HASH_REMOVE, NULL);
		}
		foreach(lc, moved)
		{
			LocalRec   *copy = lfirst(lc);
			bool		found;

			copy->k.level = level - 1;
			rec = hash_search(local_recs, &copy->k, HASH_ENTER, &found);
			if (found)
			{
				/* same key, minute and slot: one reservation is enough */
				rec->delta += copy->delta;
				CounterBufRelease(copy->entry, copy->slotno, 0);
			}
			else
				*rec = *copy;
		}
		list_free_deep(moved);
		moved = NIL;
	}
	if (CounterLocalCount(local_stats) > 0)
	{
		hash_seq_init(&status, local_stats);
		while ((st = hash_seq_search(&status)) != NULL)
		{
			if (st->k.level < level)
				continue;
			if (commit)
			{
				LocalStat  *copy = palloc(sizeof(LocalStat));

				*copy = *st;
				moved = lappend(moved, copy);
			}
			hash_search(local_stats, &st->k, HASH_REMOVE, NULL);
		}
		foreach(lc, moved)
		{
			LocalStat  *copy = lfirst(lc);
			bool		found;
			int			i;

			copy->k.level = level - 1;
			st = hash_search(local_stats, &copy->k, HASH_ENTER, &found);
			if (!found)
				memset(st->n, 0, sizeof(st->n));
			for (i = 0; i < COUNTER_STAT_COUNT; i++)
				st->n[i] += copy->n[i];
		}
		list_free_deep(moved);
	}
}

/* Transaction end: settle; refuse PREPARE while increments are buffered. */
static void
CounterXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (CounterLocalCount(local_recs) > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot prepare a transaction that incremented a buffered counter"),
						 errhint("Use a direct or sharded counter in two-phase transactions.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			CounterLocalSettle(true);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			CounterLocalSettle(false);
			break;
		default:
			break;
	}
}

/* Subtransaction end: keep or drop that level's records. */
static void
CounterSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	if (CounterLocalCount(local_recs) == 0 && CounterLocalCount(local_stats) == 0)
		return;
	if (event == SUBXACT_EVENT_COMMIT_SUB)
		CounterLocalSubEnd(GetCurrentTransactionNestLevel(), true);
	else if (event == SUBXACT_EVENT_ABORT_SUB)
		CounterLocalSubEnd(GetCurrentTransactionNestLevel(), false);
}

/* Register the transaction callbacks once per backend. */
void
CounterBufferedInit(void)
{
	RegisterXactCallback(CounterXactCallback, NULL);
	RegisterSubXactCallback(CounterSubXactCallback, NULL);
}
