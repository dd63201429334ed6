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
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "common/int.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
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
} TallyScan;

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

/* Sum the rows the scan returns, in 128 bits. */
static int128
CounterTallyScanSum(TallyScan *ts)
{
	int128		sum = 0;
	bool		isnull;

	while (index_getnext_slot(ts->scan, ForwardScanDirection, ts->slot))
		sum += DatumGetInt64(slot_getattr(ts->slot, TALLY_ATT_VALUE, &isnull));
	return sum;
}

/*
 * The sums of the rows of n keys of a counter, in the caller's snapshot,
 * into sums[]; false (the rest unset) at the first sum past bigint.
 */
bool
CounterTallySums(int32 counter_id, int n, const int64 *keys, int64 *sums)
{
	TallyScan	ts;
	int			i;
	bool		ok = true;

	CounterTallyOpen(&ts, AccessShareLock, CounterReadSnapshot());
	for (i = 0; i < n && ok; i++)
	{
		int128		sum;

		CHECK_FOR_INTERRUPTS();
		CounterTallyRescan(&ts, counter_id, keys[i], false, 0, 0);
		sum = CounterTallyScanSum(&ts);
		ok = sum <= PG_INT64_MAX && sum >= PG_INT64_MIN;
		sums[i] = (int64) sum;
	}
	CounterTallyClose(&ts);
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
	bool		isnull;

	CounterTallyOpen(&ts, AccessShareLock, CounterReadSnapshot());
	CounterTallyRescan(&ts, counter_id, key, true, from, to);
	while (index_getnext_slot(ts.scan, ForwardScanDirection, ts.slot))
	{
		TimestampTz bucket = DatumGetTimestampTz(slot_getattr(ts.slot, TALLY_ATT_BUCKET, &isnull));
		int64		value = DatumGetInt64(slot_getattr(ts.slot, TALLY_ATT_VALUE, &isnull));

		visit(arg, bucket, value);
	}
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
