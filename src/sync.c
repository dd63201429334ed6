/*
 * sync.c
 *		Counts kept in the application's own tables: counter.sync(counter,
 *		target, key_column, value_column, every) keeps target.value_column
 *		equal to the counter's total of target.key_column.
 *
 * The maintenance process runs the syncs (CounterSyncStepRun, every
 * second).  A sync writes only the keys whose rows changed since its last
 * run: it follows the changed-key set (changed.c) as its own consumer, so
 * its cost is proportional to the keys that changed, never to the counter
 * or the table.  After a restart or an overflow of that set (a new epoch)
 * it makes one complete pass over the counter's keys instead.  Keys are
 * written in batches, each in a transaction of its own, locked in key
 * order (no deadlock with the application's own updates of those rows),
 * and a row already equal is not touched.  Keys with no row in the target
 * are counted and skipped, never inserted.
 *
 * The writes run as the role that registered the sync, in a restricted
 * security context with search_path pinned to pg_catalog: a sync can write
 * only where that role could, and the process's superuser rights never
 * reach the target (its triggers and row security apply as for that role).
 * Whatever fails (a dropped table or column, a type that does not take a
 * bigint, a privilege revoked) pauses that sync with the error in
 * counter.syncs and the log; the other syncs, folds and drains go on.
 * counter.sync() again resumes it, with a complete pass.
 */
#include "counter.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(counter_sync);
PG_FUNCTION_INFO_V1(counter_unsync);

#define COUNTER_SYNC_BATCH 1000

/* One registered sync, as the step reads it. */
typedef struct SyncDef
{
	int32		id;
	int32		counter_id;
	Oid			target;
	char		key_column[NAMEDATALEN];
	char		value_column[NAMEDATALEN];
	int64		every_us;
	Oid			owner;
	uint64		epoch;
	TimestampTz last_run;
} SyncDef;

/* Whether this database had an active sync at the last step. */
static bool syncs_active = false;

bool
CounterSyncsActive(void)
{
	return syncs_active;
}

/* A column's number and type in rel, or an error naming it. */
static AttrNumber
CounterSyncColumn(Oid rel, const char *column, Oid *type)
{
	AttrNumber	att = get_attnum(rel, column);

	if (att == InvalidAttrNumber || att < 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist",
						column, get_rel_name(rel))));
	*type = get_atttype(rel, att);
	return att;
}

/* Whether the current user may do mode on the column: on the table or the column. */
static bool
CounterSyncMay(Oid rel, AttrNumber att, AclMode mode)
{
	return pg_class_aclcheck(rel, GetUserId(), mode) == ACLCHECK_OK ||
		pg_attribute_aclcheck(rel, att, GetUserId(), mode) == ACLCHECK_OK;
}

static bool
CounterSyncIntegerType(Oid type)
{
	return type == INT2OID || type == INT4OID || type == INT8OID || type == NUMERICOID;
}

/*
 * counter.sync(counter, target, key_column, value_column, every): register
 * a sync, or change and resume the counter's sync of that column.  The
 * caller must own the counter and may register only what it could do
 * itself: UPDATE of value_column, SELECT of both columns.
 */
Datum
counter_sync(PG_FUNCTION_ARGS)
{
	CounterDef	def;
	CounterScope scope;
	Oid			target;
	char	   *key_column;
	char	   *value_column;
	Interval   *every;
	int64		every_us;
	Oid			key_type;
	Oid			value_type;
	AttrNumber	key_att;
	AttrNumber	value_att;
	char		relkind;
	Oid			argtypes[6] = {INT4OID, OIDOID, NAMEOID, NAMEOID, INTERVALOID, OIDOID};
	Datum		values[6];
	int			i;

	PreventCommandIfReadOnly("counter.sync()");
	for (i = 0; i < 5; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("counter, target, key_column, value_column and every must not be null")));
	CounterGetById(PG_GETARG_INT32(0), &def);
	CounterCheckOwner(&def);
	target = PG_GETARG_OID(1);
	key_column = NameStr(*PG_GETARG_NAME(2));
	value_column = NameStr(*PG_GETARG_NAME(3));
	every = PG_GETARG_INTERVAL_P(4);
	relkind = get_rel_relkind(target);
	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", get_rel_name(target)),
				 errhint("A sync writes into a table's column.")));
	if (every->month != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("every must not be given in months or years")));
	every_us = every->time + (int64) every->day * USECS_PER_DAY;
	if (every_us < 100 * 1000 || every_us > USECS_PER_DAY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("every must be between 100 milliseconds and 1 day")));
	key_att = CounterSyncColumn(target, key_column, &key_type);
	value_att = CounterSyncColumn(target, value_column, &value_type);
	if (key_att == value_att)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key_column and value_column must be different columns")));
	if (def.key_type == COUNTER_KEY_BIGINT ? !CounterSyncIntegerType(key_type) :
		!(key_type == TEXTOID || key_type == VARCHAROID))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" is of type %s, but counter \"%s\" has %s keys",
						key_column, format_type_be(key_type), def.name,
						def.key_type == COUNTER_KEY_BIGINT ? "bigint" : "text"),
				 errhint(def.key_type == COUNTER_KEY_BIGINT ?
						 "Sync a bigint counter to an integer key column." :
						 "Sync a text counter to a text or varchar key column.")));
	if (!CounterSyncIntegerType(value_type))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" is of type %s, which cannot hold a total",
						value_column, format_type_be(value_type)),
				 errhint("Use a bigint column.")));
	if (!CounterSyncMay(target, value_att, ACL_UPDATE) ||
		!CounterSyncMay(target, value_att, ACL_SELECT) ||
		!CounterSyncMay(target, key_att, ACL_SELECT))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to sync into \"%s\".\"%s\"", get_rel_name(target), value_column),
				 errdetail("A sync writes as the role that registers it, which needs UPDATE and SELECT on \"%s\" and SELECT on \"%s\".",
						   value_column, key_column)));

	values[0] = Int32GetDatum(def.id);
	values[1] = ObjectIdGetDatum(target);
	values[2] = PG_GETARG_DATUM(2);
	values[3] = PG_GETARG_DATUM(3);
	values[4] = PG_GETARG_DATUM(4);
	values[5] = ObjectIdGetDatum(GetUserId());
	CounterEnter(&scope);
	if (SPI_execute_with_args("INSERT INTO counter.sync (counter_id, target, key_column, value_column, every, owner)"
							  " VALUES ($1, $2::regclass, $3, $4, $5, $6::regrole)"
							  " ON CONFLICT (counter_id, target, value_column) DO UPDATE SET"
							  " key_column = excluded.key_column, every = excluded.every,"
							  " owner = excluded.owner, paused = false, epoch = 0,"
							  " last_error = NULL, last_error_at = NULL",
							  6, argtypes, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "registering the sync failed");
	CounterLeave(&scope);
	PG_RETURN_VOID();
}

/* counter.unsync(counter, target, value_column): remove syncs; how many. */
Datum
counter_unsync(PG_FUNCTION_ARGS)
{
	CounterDef	def;
	CounterScope scope;
	Oid			argtypes[3] = {INT4OID, OIDOID, NAMEOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	uint64		n;

	PreventCommandIfReadOnly("counter.unsync()");
	CounterOwnedArg(fcinfo, 0, &def);
	values[0] = Int32GetDatum(def.id);
	values[1] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	nulls[1] = PG_ARGISNULL(1) ? 'n' : ' ';
	values[2] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	nulls[2] = PG_ARGISNULL(2) ? 'n' : ' ';
	CounterEnter(&scope);
	if (SPI_execute_with_args("DELETE FROM counter.sync WHERE counter_id = $1"
							  " AND ($2::oid IS NULL OR target = $2::oid::regclass)"
							  " AND ($3::name IS NULL OR value_column = $3)",
							  3, argtypes, values, nulls, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "removing syncs failed");
	n = SPI_processed;
	CounterLeave(&scope);
	PG_RETURN_INT32((int32) n);
}

/* The active syncs of this database, by counter (a transaction of its own). */
static int
CounterSyncList(SyncDef **out, MemoryContext cxt)
{
	CounterScope scope;
	SyncDef    *syncs = NULL;
	int			n = 0;
	uint64		i;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	CounterEnter(&scope);
	if (SPI_execute("SELECT s.id, s.counter_id, s.target::oid, s.key_column, s.value_column,"
					" (extract(epoch FROM s.every) * 1000000)::bigint, s.owner::oid, s.epoch,"
					" coalesce(s.last_run, '-infinity')"
					" FROM counter.sync s JOIN counter.definition d ON d.id = s.counter_id"
					" WHERE NOT s.paused ORDER BY s.counter_id, s.id", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "listing the syncs failed");
	syncs = MemoryContextAlloc(cxt, sizeof(SyncDef) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		SyncDef    *s = &syncs[n++];
		bool		isnull;

		s->id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		s->counter_id = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		s->target = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
		strlcpy(s->key_column, NameStr(*DatumGetName(SPI_getbinval(tup, desc, 4, &isnull))), NAMEDATALEN);
		strlcpy(s->value_column, NameStr(*DatumGetName(SPI_getbinval(tup, desc, 5, &isnull))), NAMEDATALEN);
		s->every_us = DatumGetInt64(SPI_getbinval(tup, desc, 6, &isnull));
		s->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 7, &isnull));
		s->epoch = (uint64) DatumGetInt64(SPI_getbinval(tup, desc, 8, &isnull));
		s->last_run = DatumGetTimestampTz(SPI_getbinval(tup, desc, 9, &isnull));
	}
	CounterLeave(&scope);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	*out = syncs;
	return n;
}

/*
 * Every key the counter has rows for, in key order (a complete pass), in
 * cxt; inside a transaction.
 */
static int
CounterSyncAllKeys(int32 counter_id, int64 **out, MemoryContext cxt)
{
	CounterScope scope;
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1];
	int64	   *keys;
	uint64		i;
	int			n;

	values[0] = Int32GetDatum(counter_id);
	CounterEnter(&scope);
	if (SPI_execute_with_args("SELECT DISTINCT key FROM counter.tally WHERE counter_id = $1 ORDER BY key",
							  1, argtypes, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "listing the keys of counter %d failed", counter_id);
	keys = MemoryContextAllocHuge(cxt, sizeof(int64) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		keys[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	}
	n = (int) SPI_processed;
	CounterLeave(&scope);
	*out = keys;
	return n;
}

/* An int8[] (or, with texts, text[]) datum of n values. */
static Datum
CounterSyncArray(Datum *elems, int n, bool texts)
{
	return PointerGetDatum(texts ?
						   construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT) :
						   construct_array(elems, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * Write one batch of keys (ids, sorted) of sync s, in the current
 * transaction: read their exact totals as the extension, then update the
 * rows that differ as the sync's owner.  Adds to *written and *missing.
 */
static void
CounterSyncBatch(const SyncDef *s, const CounterDef *def, const int64 *ids, int n,
				 int64 *written, int64 *missing)
{
	CounterScope scope;
	bool		texts = def->key_type == COUNTER_KEY_TEXT;
	Datum	   *keys = palloc(sizeof(Datum) * n);
	Datum	   *totals = palloc(sizeof(Datum) * n);
	int			m = 0;
	uint64		i;
	char	   *nsp;
	char	   *rel;
	const char *kc;
	const char *vc;
	char	   *sql;
	Oid			argtypes[3] = {TEXTOID, INT8ARRAYOID, INT4OID};
	Datum		values[3];
	Oid			save_userid;
	int			save_sec;
	OverrideSearchPath path = {0};

	/* the totals, read as the extension */
	for (i = 0; i < (uint64) n; i++)
		keys[i] = Int64GetDatum(ids[i]);
	values[0] = CStringGetTextDatum(def->name);
	values[1] = CounterSyncArray(keys, n, false);
	values[2] = Int32GetDatum(def->id);
	CounterEnter(&scope);
	if (SPI_execute_with_args(texts ?
							  "SELECT g.key, g.value FROM counter.get_many($1::counter.counter,"
							  " ARRAY(SELECT t.name FROM counter.text_key t"
							  " WHERE t.counter_id = $3 AND t.id = ANY ($2) ORDER BY t.name)) g ORDER BY g.key" :
							  "SELECT g.key, g.value FROM counter.get_many($1::counter.counter, $2) g"
							  " WHERE $3 IS NOT NULL ORDER BY g.key",
							  3, argtypes, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the totals of counter \"%s\" failed", def->name);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Datum		k = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);

		keys[m] = texts ? PointerGetDatum(DatumGetTextPCopy(k)) : k;
		totals[m++] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);
	}
	CounterLeave(&scope);
	if (m == 0)
		return;

	/* the target, as it is named now; gone or renamed columns fail below */
	rel = get_rel_name(s->target);
	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the target table of the sync (oid %u) no longer exists", s->target)));
	nsp = get_namespace_name(get_rel_namespace(s->target));
	kc = quote_identifier(s->key_column);
	vc = quote_identifier(s->value_column);
	/*
	 * l locks the rows to change in key order (so no deadlock with the
	 * application's own updates); the update then finds them by key, which
	 * still matches when a concurrent update made a newer version of a row.
	 */
	sql = psprintf("WITH v(k, total) AS MATERIALIZED (SELECT * FROM ROWS FROM"
				   " (pg_catalog.unnest($1::%s[]), pg_catalog.unnest($2::pg_catalog.int8[]))),"
				   " l AS MATERIALIZED (SELECT t.%s AS k FROM %s.%s t JOIN v ON t.%s = v.k"
				   " WHERE t.%s IS DISTINCT FROM v.total ORDER BY t.%s FOR UPDATE OF t),"
				   " u AS (UPDATE %s.%s t SET %s = v.total FROM v"
				   " WHERE t.%s = v.k AND t.%s IN (SELECT l.k FROM l) AND t.%s IS DISTINCT FROM v.total"
				   " RETURNING 1)"
				   " SELECT (SELECT pg_catalog.count(*) FROM u),"
				   " (SELECT pg_catalog.count(*) FROM v WHERE NOT EXISTS"
				   " (SELECT FROM %s.%s t WHERE t.%s = v.k))",
				   texts ? "pg_catalog.text" : "pg_catalog.int8",
				   kc, quote_identifier(nsp), quote_identifier(rel), kc, vc, kc,
				   quote_identifier(nsp), quote_identifier(rel), vc, kc, kc, vc,
				   quote_identifier(nsp), quote_identifier(rel), kc);
	argtypes[0] = texts ? TEXTARRAYOID : INT8ARRAYOID;
	argtypes[1] = INT8ARRAYOID;
	values[0] = CounterSyncArray(keys, m, texts);
	values[1] = CounterSyncArray(totals, m, false);

	/* the writes, as the sync's owner, restricted, search_path pg_catalog */
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(s->owner, save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	path.addCatalog = true;	/* pg_catalog alone: no pg_temp, nothing of the owner's */
	PushOverrideSearchPath(&path);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(sql, 2, argtypes, values, NULL, false, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "writing the sync failed");
	{
		bool		isnull;

		*written += DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		*missing += DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	}
	SPI_finish();
	PopOverrideSearchPath();
	SetUserIdAndSecContext(save_userid, save_sec);
}

/* Record a sync's run (or, with error, pause it), in a transaction of its own. */
static void
CounterSyncRecord(const SyncDef *s, TimestampTz at, uint64 epoch, int64 written,
				  int64 missing, const char *error)
{
	CounterScope scope;
	Oid			argtypes[6] = {INT4OID, TIMESTAMPTZOID, INT8OID, INT8OID, INT8OID, TEXTOID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = Int32GetDatum(s->id);
	values[1] = TimestampTzGetDatum(at);
	values[2] = Int64GetDatum((int64) epoch);
	values[3] = Int64GetDatum(written);
	values[4] = Int64GetDatum(missing);
	values[5] = error ? CStringGetTextDatum(error) : (Datum) 0;
	nulls[5] = error ? ' ' : 'n';
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	CounterEnter(&scope);
	if (SPI_execute_with_args(error ?
							  "UPDATE counter.sync SET paused = true, epoch = 0, last_error = $6,"
							  " last_error_at = $2 WHERE id = $1" :
							  "UPDATE counter.sync SET last_run = $2, epoch = $3,"
							  " rows_written = rows_written + $4, rows_missing = rows_missing + $5"
							  " WHERE id = $1",
							  6, argtypes, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "recording the sync failed");
	CounterLeave(&scope);
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * Run sync s over keys (sorted ids; all of the counter's on a complete
 * pass), in batches of a transaction each.  Returns false, having paused
 * the sync, when something failed.
 */
static bool
CounterSyncRun(const SyncDef *s, const int64 *changed, int nchanged, uint64 epoch,
			   MemoryContext cxt)
{
	volatile int64 written = 0;
	volatile int64 missing = 0;
	TimestampTz start = GetCurrentTimestamp();
	volatile bool complete = (s->epoch != epoch);
	volatile bool ok = true;

	PG_TRY();
	{
		int64	   *keys = (int64 *) changed;
		int			nkeys = nchanged;
		int			done;
		CounterDef	def;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		CounterGetById(s->counter_id, &def);
		if (complete)
			nkeys = CounterSyncAllKeys(s->counter_id, &keys, cxt);
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(cxt);
		for (done = 0; done < nkeys && !counter_shutdown_requested; done += COUNTER_SYNC_BATCH)
		{
			int64		w = 0;
			int64		mi = 0;

			SetCurrentStatementStartTimestamp();
			StartTransactionCommand();
			PushActiveSnapshot(GetTransactionSnapshot());
			CounterSyncBatch(s, &def, keys + done, Min(COUNTER_SYNC_BATCH, nkeys - done), &w, &mi);
			PopActiveSnapshot();
			CommitTransactionCommand();
			MemoryContextSwitchTo(cxt);
			written += w;
			missing += mi;
		}
		if (counter_shutdown_requested)
			complete = false;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		if (counter_shutdown_requested)
			PG_RE_THROW();
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(cxt);
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("counter sync %d into table %u paused: %s", s->id, s->target, edata->message),
				 errhint("Fix the cause, then call counter.sync() again to resume it.")));
		CounterProcError("sync", edata->message);
		CounterSyncRecord(s, start, 0, 0, 0, edata->message);
		ok = false;
	}
	PG_END_TRY();
	if (ok)
		CounterSyncRecord(s, start, complete ? epoch : s->epoch, written, missing, NULL);
	return ok;
}

/*
 * The sync step: take the changed keys, run every sync that is due over
 * its counter's keys, give the keys of counters whose syncs are not all
 * due back for later, drop those of counters without a sync.
 */
void
CounterSyncStepRun(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	CounterChangedKey *changed;
	int			nchanged;
	SyncDef    *syncs;
	int			nsyncs;
	uint64		epoch;
	TimestampTz now;
	int			i = 0;
	int			c = 0;

	nchanged = CounterChangedTake(COUNTER_CONSUMER_SYNC, 0, &changed);
	epoch = CounterChangedEpoch(COUNTER_CONSUMER_SYNC);
	nsyncs = CounterSyncList(&syncs, cxt);
	syncs_active = nsyncs > 0;
	/* not followed yet: the next round follows, then each sync starts with a complete pass */
	if (epoch == 0)
		return;
	now = GetCurrentTimestamp();
	while (i < nsyncs && !counter_shutdown_requested)
	{
		int32		id = syncs[i].counter_id;
		int			first;
		int			j;
		int64	   *keys;
		int			nkeys;
		bool		all_due = true;

		while (c < nchanged && changed[c].counter_id < id)
			c++;
		first = c;
		while (c < nchanged && changed[c].counter_id == id)
			c++;
		nkeys = c - first;
		keys = palloc(sizeof(int64) * Max(nkeys, 1));
		for (j = 0; j < nkeys; j++)
			keys[j] = changed[first + j].key;
		for (j = i; j < nsyncs && syncs[j].counter_id == id; j++)
		{
			bool		due = now >= syncs[j].last_run + syncs[j].every_us;
			bool		complete = (syncs[j].epoch != epoch);

			if (!due)
			{
				all_due = false;
				continue;
			}
			if (nkeys == 0 && !complete)
				continue;
			CounterProcState("syncing");
			(void) CounterSyncRun(&syncs[j], keys, nkeys, epoch, cxt);
		}
		if (!all_due && nkeys > 0)
			CounterChangedGiveBack(COUNTER_CONSUMER_SYNC, &changed[first], nkeys);
		pfree(keys);
		i = j;
	}
}
