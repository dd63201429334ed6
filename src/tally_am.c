/*
 * tally_am.c
 *		The hot paths' access to counter.tally through the table and index
 *		access methods: the rows of a key (summed, or visited in a range of
 *		buckets) and the increment of a slot row that already exists.
 *
 * These do what the SQL statements of tally.c and read.c do, without SPI,
 * the planner or the executor: a scan of the primary key (counter_id, key,
 * bucket, slot), whose order is the (bucket, slot) order those statements
 * read in.  Reads run in the caller's active snapshot, as a read-only SPI
 * statement does, so a session sees its own uncommitted increments and
 * nothing committed after its snapshot was taken.  The increment runs as a
 * read-write SPI statement would: CommandCounterIncrement, then a fresh
 * snapshot (the transaction's under REPEATABLE READ), then
 * table_tuple_update of the row it finds.  Whatever is unusual returns
 * false before anything is written, and the caller takes the SQL path,
 * which handles it: no row yet, the key's big-key marker, a sum past
 * bigint, a concurrent update or delete of the row, triggers or row
 * security on the table.
 *
 * No privilege is checked here.  The callers are the SQL entry points,
 * whose EXECUTE privilege is the check; their SQL path runs as the tables'
 * owner (scope.c), who may do all this.  counter.tally's oid is found once
 * per backend and forgotten by a relcache callback.
 */
#include "counter.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_am_d.h"
#include "common/int.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "storage/bufmgr.h"
#include "storage/itemptr.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"

/* Column numbers of counter.tally, also those of its primary key. */
#define TALLY_ATT_COUNTER 1
#define TALLY_ATT_KEY 2
#define TALLY_ATT_BUCKET 3
#define TALLY_ATT_SLOT 4
#define TALLY_ATT_VALUE 5
#define TALLY_NATTS 5

static Oid	tally_relid = InvalidOid;

/* Forget counter.tally's oid when it may have changed. */
static void
CounterTallyInval(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == tally_relid)
		tally_relid = InvalidOid;
}

/* Register the invalidation callback once per backend. */
void
CounterTallyAmInit(void)
{
	CacheRegisterRelcacheCallback(CounterTallyInval, (Datum) 0);
}

/* counter.tally's oid, found by name once and kept until invalidated. */
static Oid
CounterTallyRelid(void)
{
	if (!OidIsValid(tally_relid))
	{
		Oid			nsp;
		Oid			relid = InvalidOid;

		CounterLocateTables();
		nsp = get_namespace_oid(COUNTER_SCHEMA, true);
		if (OidIsValid(nsp))
			relid = get_relname_relid("tally", nsp);
		if (!OidIsValid(relid))
			elog(ERROR, "table counter.tally not found");
		tally_relid = relid;
	}
	return tally_relid;
}

/*
 * Reads take the row pointers the primary key gives, a batch at a time, and
 * fetch them in pointer order, so that the rows of one heap page cost one
 * buffer lookup (the table AM keeps a page pinned from one fetch to the
 * next of the same block), where index order would look a page up again
 * for nearly every row: a hot key's slot rows lie on as many pages as there
 * were writers.  The rows are then handed out in index order.
 */
#define TALLY_BATCH 256

/*
 * get_many walks one range of the primary key over all its keys.  After
 * this many index entries of keys it was not asked for in a row, it
 * descends again at the next key it wants instead of stepping on.
 */
#define TALLY_MAX_PASSED 32

/* A row pointer the index gave: its place in index order, and whose it is. */
typedef struct TallyHit
{
	ItemPointerData tid;
	int32		seq;
	int32		owner;			/* get_many: the place of its key */
} TallyHit;

/* What the fetch of one hit found. */
typedef struct TallyRow
{
	bool		found;			/* a version the snapshot sees */
	int32		owner;
	TimestampTz bucket;
	int64		value;
} TallyRow;

/* get_many's walk over the keys it wants, distinct and ascending. */
typedef struct TallyWant
{
	int32		counter_id;
	const int64 *keys;
	int			nkeys;
	int			next;			/* the first wanted key not passed yet */
	int			passed;			/* entries of other keys stepped over in a row */
} TallyWant;

/* The open table and its primary key, with the lock mode they were taken in. */
typedef struct TallyScan
{
	Relation	rel;
	Relation	pkey;
	LOCKMODE	lockmode;
	Snapshot	snapshot;
	IndexScanDesc scan;			/* begun for nkeys keys, or NULL */
	int			nkeys;
	TupleTableSlot *slot;
	ScanKeyData keys[4];
	/* reads only: the batch, and where the rows of the last one stand */
	IndexFetchTableData *fetch;
	TallyWant  *want;			/* get_many's walk, or NULL */
	int32		owner;			/* without a walk: the owner of every row */
	bool		ended;			/* the index scan has given its last entry */
	int			nhits;
	int			nrows;
	int			nextrow;
	TallyHit	hits[TALLY_BATCH];
	TallyRow	rows[TALLY_BATCH];
} TallyScan;

/* Sort hits by row pointer. */
#define ST_SORT tally_hit_sort
#define ST_ELEMENT_TYPE TallyHit
#define ST_COMPARE(a, b) ItemPointerCompare(&(a)->tid, &(b)->tid)
#define ST_SCOPE static
#define ST_DEFINE
#include "lib/sort_template.h"

/* Open counter.tally and its primary key for a scan under snapshot. */
static void
CounterTallyOpen(TallyScan *ts, LOCKMODE lockmode, Snapshot snapshot)
{
	Oid			pkey;

	ts->lockmode = lockmode;
	ts->rel = table_open(CounterTallyRelid(), lockmode);
	if (RelationGetDescr(ts->rel)->natts != TALLY_NATTS)
		elog(ERROR, "counter.tally has %d columns, expected %d",
			 RelationGetDescr(ts->rel)->natts, TALLY_NATTS);
	pkey = RelationGetPrimaryKeyIndex(ts->rel);
	if (!OidIsValid(pkey))
		elog(ERROR, "counter.tally has no primary key");
	ts->pkey = index_open(pkey, lockmode);
	ts->snapshot = snapshot;
	ts->scan = NULL;
	ts->nkeys = 0;
	ts->slot = table_slot_create(ts->rel, NULL);
	ts->fetch = NULL;
	ts->want = NULL;
	ts->owner = 0;
	ts->ended = false;
	ts->nhits = ts->nrows = ts->nextrow = 0;
}

/* (Re)start the scan with the first n of ts->keys. */
static void
CounterTallyStart(TallyScan *ts, int n)
{
	/* an index scan keeps the number of keys it was begun with */
	if (ts->scan != NULL && ts->nkeys != n)
	{
		index_endscan(ts->scan);
		ts->scan = NULL;
	}
	if (ts->scan == NULL)
	{
		ts->scan = index_beginscan(ts->rel, ts->pkey, ts->snapshot, n, 0);
		ts->nkeys = n;
	}
	index_rescan(ts->scan, ts->keys, n, NULL, 0);
}

/* Close what CounterTallyOpen opened. */
static void
CounterTallyClose(TallyScan *ts)
{
	if (ts->scan != NULL)
		index_endscan(ts->scan);
	if (ts->fetch != NULL)
		table_index_fetch_end(ts->fetch);
	ExecDropSingleTupleTableSlot(ts->slot);
	index_close(ts->pkey, ts->lockmode);
	table_close(ts->rel, ts->lockmode);
}

/*
 * (Re)start the scan at the rows of (counter_id, key); with bounded, only
 * those with a bucket in [from, to).
 */
static void
CounterTallyRescan(TallyScan *ts, int32 counter_id, int64 key, bool bounded,
				   TimestampTz from, TimestampTz to)
{
	int			n = 2;

	ScanKeyInit(&ts->keys[0], TALLY_ATT_COUNTER, BTEqualStrategyNumber,
				F_INT4EQ, Int32GetDatum(counter_id));
	ScanKeyInit(&ts->keys[1], TALLY_ATT_KEY, BTEqualStrategyNumber,
				F_INT8EQ, Int64GetDatum(key));
	if (bounded)
	{
		ScanKeyInit(&ts->keys[n++], TALLY_ATT_BUCKET, BTGreaterEqualStrategyNumber,
					F_TIMESTAMP_GE, TimestampTzGetDatum(from));
		ScanKeyInit(&ts->keys[n++], TALLY_ATT_BUCKET, BTLessStrategyNumber,
					F_TIMESTAMP_LT, TimestampTzGetDatum(to));
	}
	CounterTallyStart(ts, n);
}

/* (Re)start the scan at the one row (counter_id, key, bucket, slot). */
static void
CounterTallyRescanRow(TallyScan *ts, int32 counter_id, int64 key,
					  TimestampTz bucket, int16 slotno)
{
	ScanKeyInit(&ts->keys[0], TALLY_ATT_COUNTER, BTEqualStrategyNumber,
				F_INT4EQ, Int32GetDatum(counter_id));
	ScanKeyInit(&ts->keys[1], TALLY_ATT_KEY, BTEqualStrategyNumber,
				F_INT8EQ, Int64GetDatum(key));
	ScanKeyInit(&ts->keys[2], TALLY_ATT_BUCKET, BTEqualStrategyNumber,
				F_TIMESTAMP_EQ, TimestampTzGetDatum(bucket));
	ScanKeyInit(&ts->keys[3], TALLY_ATT_SLOT, BTEqualStrategyNumber,
				F_INT2EQ, Int16GetDatum(slotno));
	CounterTallyStart(ts, 4);
}

/* The snapshot a read runs in: the caller's, as a read-only SPI statement's. */
static Snapshot
CounterReadSnapshot(void)
{
	return ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot();
}

/*
 * (Re)start the scan at the rows of the wanted keys from the next one not
 * passed yet up to the last.  The scan hands back index tuples, whose key
 * tells which wanted key (if any) a row is of.
 */
static void
CounterTallyRescanWant(TallyScan *ts)
{
	TallyWant  *w = ts->want;
	bool		first = (ts->scan == NULL);

	ScanKeyInit(&ts->keys[0], TALLY_ATT_COUNTER, BTEqualStrategyNumber,
				F_INT4EQ, Int32GetDatum(w->counter_id));
	/* no upper bound: CounterTallyWanted ends the walk past the last key */
	ScanKeyInit(&ts->keys[1], TALLY_ATT_KEY, BTGreaterEqualStrategyNumber,
				F_INT8GE, Int64GetDatum(w->keys[w->next]));
	if (first)
	{
		ts->scan = index_beginscan(ts->rel, ts->pkey, ts->snapshot, 2, 0);
		ts->nkeys = 2;
		/* set before the first rescan, which makes room for the tuples */
		ts->scan->xs_want_itup = true;
	}
	index_rescan(ts->scan, ts->keys, 2, NULL, 0);
	w->passed = 0;
}

/*
 * Whether the index entry the scan is on is a row of a wanted key, setting
 * *owner to that key's place; passes the wanted keys that lie before it,
 * and descends again when it has stepped over too many unwanted entries.
 * Sets ts->ended when no wanted key is left.
 */
static bool
CounterTallyWanted(TallyScan *ts, int32 *owner)
{
	TallyWant  *w = ts->want;
	bool		isnull;
	int64		key = DatumGetInt64(index_getattr(ts->scan->xs_itup, TALLY_ATT_KEY,
												  ts->scan->xs_itupdesc, &isnull));

	while (w->next < w->nkeys && w->keys[w->next] < key)
		w->next++;
	if (w->next == w->nkeys)
	{
		ts->ended = true;
		return false;
	}
	if (w->keys[w->next] != key)
	{
		if (++w->passed >= TALLY_MAX_PASSED)
			CounterTallyRescanWant(ts);
		return false;
	}
	w->passed = 0;
	*owner = w->next;
	return true;
}

/*
 * Fetch the hits of one heap page, from hits[i] on, under one share lock of
 * the page: what a heap index fetch does for each row (prune the page when
 * first reading it, then follow each hit's HOT chain to the version the
 * snapshot sees), without storing each row in a slot.  Returns the first
 * hit of the next page.
 */
static int
CounterTallyFetchPage(TallyScan *ts, int i, Buffer *buf)
{
	TupleDesc	desc = RelationGetDescr(ts->rel);
	BlockNumber block = ItemPointerGetBlockNumber(&ts->hits[i].tid);
	bool		isnull;

	*buf = ReleaseAndReadBuffer(*buf, ts->rel, block);
	heap_page_prune_opt(ts->rel, *buf);
	LockBuffer(*buf, BUFFER_LOCK_SHARE);
	for (; i < ts->nhits && ItemPointerGetBlockNumber(&ts->hits[i].tid) == block; i++)
	{
		TallyHit   *h = &ts->hits[i];
		TallyRow   *r = &ts->rows[h->seq];
		ItemPointerData tid = h->tid;
		HeapTupleData tuple;

		r->owner = h->owner;
		r->found = heap_hot_search_buffer(&tid, ts->rel, *buf, ts->snapshot, &tuple,
										  NULL, true);
		if (r->found)
		{
			r->bucket = DatumGetTimestampTz(heap_getattr(&tuple, TALLY_ATT_BUCKET, desc, &isnull));
			r->value = DatumGetInt64(heap_getattr(&tuple, TALLY_ATT_VALUE, desc, &isnull));
		}
	}
	LockBuffer(*buf, BUFFER_LOCK_UNLOCK);
	return i;
}

/*
 * Fetch the batch's hits in row-pointer order into ts->rows[seq]: a heap
 * page at a time, or through the table AM's index fetch for a table of
 * another access method.
 */
static void
CounterTallyFetch(TallyScan *ts)
{
	bool		sorted = true;
	bool		isnull;
	int			i;

	for (i = 1; i < ts->nhits && sorted; i++)
		sorted = ItemPointerCompare(&ts->hits[i - 1].tid, &ts->hits[i].tid) < 0;
	if (!sorted)
		tally_hit_sort(ts->hits, ts->nhits);
	if (ts->rel->rd_rel->relam == HEAP_TABLE_AM_OID)
	{
		Buffer		buf = InvalidBuffer;

		for (i = 0; i < ts->nhits;)
			i = CounterTallyFetchPage(ts, i, &buf);
		if (BufferIsValid(buf))
			ReleaseBuffer(buf);
	}
	else
	{
		if (ts->fetch == NULL)
			ts->fetch = table_index_fetch_begin(ts->rel);
		for (i = 0; i < ts->nhits; i++)
		{
			TallyHit   *h = &ts->hits[i];
			TallyRow   *r = &ts->rows[h->seq];
			ItemPointerData tid = h->tid;
			bool		call_again = false;
			bool		all_dead = false;

			r->owner = h->owner;
			r->found = table_index_fetch_tuple(ts->fetch, &tid, ts->snapshot, ts->slot,
											   &call_again, &all_dead);
			if (r->found)
			{
				r->bucket = DatumGetTimestampTz(slot_getattr(ts->slot, TALLY_ATT_BUCKET, &isnull));
				r->value = DatumGetInt64(slot_getattr(ts->slot, TALLY_ATT_VALUE, &isnull));
			}
		}
	}
	ts->nrows = ts->nhits;
	ts->nextrow = 0;
	ts->nhits = 0;
}

/*
 * The next row the scan's snapshot sees, in index order; NULL after the
 * last.  Takes the next batch of index entries when the last is used up.
 */
static TallyRow *
CounterTallyNext(TallyScan *ts)
{
	for (;;)
	{
		while (ts->nextrow < ts->nrows)
		{
			TallyRow   *r = &ts->rows[ts->nextrow++];

			if (r->found)
				return r;
		}
		if (ts->ended)
			return NULL;
		CHECK_FOR_INTERRUPTS();
		while (ts->nhits < TALLY_BATCH && !ts->ended)
		{
			ItemPointer tid = index_getnext_tid(ts->scan, ForwardScanDirection);
			int32		owner = ts->owner;

			if (tid == NULL)
				ts->ended = true;
			else if (ts->want == NULL || CounterTallyWanted(ts, &owner))
			{
				TallyHit   *h = &ts->hits[ts->nhits];

				h->tid = *tid;
				h->seq = ts->nhits++;
				h->owner = owner;
			}
		}
		CounterTallyFetch(ts);
	}
}

/* A key with its place among the arguments, for sorting them. */
typedef struct TallyKeyPlace
{
	int64		key;
	int			place;
} TallyKeyPlace;

#define ST_SORT tally_key_sort
#define ST_ELEMENT_TYPE TallyKeyPlace
#define ST_COMPARE(a, b) ((a)->key < (b)->key ? -1 : (a)->key > (b)->key ? 1 : 0)
#define ST_SCOPE static
#define ST_DEFINE
#include "lib/sort_template.h"

/*
 * The sums of the rows of n keys of a counter, in the caller's snapshot,
 * into sums[]; false (sums[] partly set) at a sum past bigint.  One key is
 * one scan of its rows; more are one walk over the primary key from the
 * least to the greatest of them, which descends again past long runs of
 * keys not asked for.
 */
bool
CounterTallySums(int32 counter_id, int n, const int64 *keys, int64 *sums)
{
	TallyScan	ts;
	TallyWant	want;
	TallyKeyPlace *sorted = NULL;
	int64	   *sorted_keys = NULL;
	const int64 *distinct = keys;
	int		   *which = NULL;
	int128	   *acc;
	TallyRow   *r;
	int			m = 0;
	int			i;
	bool		ok = true;

	if (n == 0)
		return true;
	CounterTallyOpen(&ts, AccessShareLock, CounterReadSnapshot());
	if (n == 1)
	{
		int128		sum = 0;

		CounterTallyRescan(&ts, counter_id, keys[0], false, 0, 0);
		while ((r = CounterTallyNext(&ts)) != NULL)
			sum += r->value;
		CounterTallyClose(&ts);
		sums[0] = (int64) sum;
		return sum <= PG_INT64_MAX && sum >= PG_INT64_MIN;
	}

	/* the distinct keys in ascending order, and each argument's among them */
	for (i = 1; i < n && ok; i++)
		ok = keys[i] > keys[i - 1];
	if (ok)
	{
		/* given so already: each argument is its own place */
		m = n;
	}
	else
	{
		sorted = palloc(sizeof(TallyKeyPlace) * n);
		for (i = 0; i < n; i++)
		{
			sorted[i].key = keys[i];
			sorted[i].place = i;
		}
		tally_key_sort(sorted, n);
		sorted_keys = palloc(sizeof(int64) * n);
		which = palloc(sizeof(int) * n);
		for (i = 0; i < n; i++)
		{
			if (m == 0 || sorted[i].key != sorted_keys[m - 1])
				sorted_keys[m++] = sorted[i].key;
			which[sorted[i].place] = m - 1;
		}
		distinct = sorted_keys;
	}
	acc = palloc0(sizeof(int128) * m);

	if (((uint64) distinct[m - 1] - (uint64) distinct[0]) / (uint64) m > TALLY_MAX_PASSED)
	{
		/*
		 * Keys far apart (on average more than a walk steps over before it
		 * descends again): a scan of each key's rows, which ends at its last
		 * row, where a walk would read the rest of each leaf page.
		 */
		for (i = 0; i < m; i++)
		{
			CounterTallyRescan(&ts, counter_id, distinct[i], false, 0, 0);
			ts.owner = i;
			ts.ended = false;
			while ((r = CounterTallyNext(&ts)) != NULL)
				acc[r->owner] += r->value;
		}
	}
	else
	{
		want.counter_id = counter_id;
		want.keys = distinct;
		want.nkeys = m;
		want.next = 0;
		ts.want = &want;
		CounterTallyRescanWant(&ts);
		while ((r = CounterTallyNext(&ts)) != NULL)
			acc[r->owner] += r->value;
	}
	CounterTallyClose(&ts);

	ok = true;
	for (i = 0; i < n; i++)
	{
		int128		sum = acc[which != NULL ? which[i] : i];

		if (sum > PG_INT64_MAX || sum < PG_INT64_MIN)
			ok = false;
		sums[i] = (int64) sum;
	}
	if (sorted != NULL)
	{
		pfree(sorted);
		pfree(sorted_keys);
		pfree(which);
	}
	pfree(acc);
	return ok;
}

/*
 * Visit each row of (counter_id, key) with a bucket in [from, to), in
 * (bucket, slot) order, in the caller's snapshot.
 */
void
CounterTallyVisit(int32 counter_id, int64 key, TimestampTz from, TimestampTz to,
				  CounterRowVisitor visit, void *arg)
{
	TallyScan	ts;
	TallyRow   *r;

	CounterTallyOpen(&ts, AccessShareLock, CounterReadSnapshot());
	CounterTallyRescan(&ts, counter_id, key, true, from, to);
	while ((r = CounterTallyNext(&ts)) != NULL)
		visit(arg, r->bucket, r->value);
	CounterTallyClose(&ts);
}

/*
 * Index entries for a row version that table_tuple_update could not keep
 * on its heap-only chain, through the executor's own index maintenance
 * (partial indexes included).
 */
static void
CounterTallyIndexRow(Relation rel, TupleTableSlot *slot)
{
	EState	   *estate = CreateExecutorState();
	ResultRelInfo *rri = makeNode(ResultRelInfo);

	InitResultRelInfo(rri, rel, 0, NULL, 0);
	ExecOpenIndices(rri, false);
	(void) ExecInsertIndexTuples(rri, slot, estate, false, false, NULL, NIL);
	ExecCloseIndices(rri);
	FreeExecutorState(estate);
}

/*
 * Update the row the scan found to value; false, with nothing written, if
 * a concurrent transaction updated or deleted it first (or anything but a
 * plain update happened).
 */
static bool
CounterTallyRewrite(TallyScan *ts, Snapshot snapshot, int64 value)
{
	TupleTableSlot *newslot;
	ItemPointerData tid = ts->slot->tts_tid;
	TM_FailureData tmfd;
	LockTupleMode lockmode;
	bool		update_indexes = false;
	TM_Result	result;

	slot_getallattrs(ts->slot);
	newslot = MakeSingleTupleTableSlot(RelationGetDescr(ts->rel), &TTSOpsVirtual);
	ExecClearTuple(newslot);
	memcpy(newslot->tts_values, ts->slot->tts_values, sizeof(Datum) * TALLY_NATTS);
	memcpy(newslot->tts_isnull, ts->slot->tts_isnull, sizeof(bool) * TALLY_NATTS);
	newslot->tts_values[TALLY_ATT_VALUE - 1] = Int64GetDatum(value);
	ExecStoreVirtualTuple(newslot);
	result = table_tuple_update(ts->rel, &tid, newslot, GetCurrentCommandId(true),
								snapshot, InvalidSnapshot, true, &tmfd,
								&lockmode, &update_indexes);
	if (result == TM_Ok && update_indexes)
		CounterTallyIndexRow(ts->rel, newslot);
	ExecDropSingleTupleTableSlot(newslot);
	return result == TM_Ok;
}

/*
 * Add delta to the existing row (counter_id, key, bucket, slot) of a key
 * without a big-key marker, setting *row to its new value.  Returns false,
 * with nothing written, whenever the SQL path must do it instead.
 */
bool
CounterTallyAdd(int32 counter_id, int64 key, TimestampTz bucket, int16 slotno,
				int64 delta, int64 *row)
{
	TallyScan	ts;
	Snapshot	snapshot;
	bool		done = false;
	bool		isnull;

	/* as a read-write SPI statement: see what this transaction did so far */
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	UpdateActiveSnapshotCommandId();
	snapshot = GetActiveSnapshot();
	CounterTallyOpen(&ts, RowExclusiveLock, snapshot);
	if (ts.rel->trigdesc == NULL && !ts.rel->rd_rel->relrowsecurity)
	{
		/* the marker (bucket -infinity, slot 0) sends big keys to the SQL path */
		CounterTallyRescanRow(&ts, counter_id, key, DT_NOBEGIN, 0);
		if (!index_getnext_slot(ts.scan, ForwardScanDirection, ts.slot))
		{
			CounterTallyRescanRow(&ts, counter_id, key, bucket, slotno);
			if (index_getnext_slot(ts.scan, ForwardScanDirection, ts.slot) &&
				!pg_add_s64_overflow(DatumGetInt64(slot_getattr(ts.slot, TALLY_ATT_VALUE,
																&isnull)),
									 delta, row))
				done = CounterTallyRewrite(&ts, snapshot, *row);
		}
	}
	CounterTallyClose(&ts);
	PopActiveSnapshot();
	return done;
}
