/*
 * catalog.c
 *		Declared counters: the table counter.definition and a backend-local
 *		cache of it (counter.create / alter / drop are in define.c).
 *
 * The cache maps ids and names to CounterDef copies.  A statement trigger on
 * counter.definition sends a relcache invalidation for that table whenever it
 * changes (SQL functions, COPY from a restore, or a hand edit), and our
 * relcache callback then drops the whole cache; entries are reloaded lazily.
 * Callers always receive a copy, because an invalidation may arrive while
 * they run SPI.  Statements run in the private scope of scope.c.
 */
#include "counter.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/array.h"
#include <math.h>
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(counter_definition_changed);

typedef struct NameEntry
{
	char		name[COUNTER_NAME_MAXLEN + 1];
	CounterDef	def;
} NameEntry;

typedef struct IdEntry
{
	int32		id;
	CounterDef	def;
} IdEntry;

static HTAB *by_id = NULL;
static HTAB *by_name = NULL;

/*
 * The columns CounterDefFromTuple reads, in its order.  clickhouse_table is
 * read through the row's jsonb, because the upgrade script looks up
 * counters before the step that adds that column.
 */
#define COUNTER_DEF_SELECT \
	"SELECT id, name, mode, slots, key_type, owner::oid," \
	" dedup_window, max_per_actor, rate_window, max_delta," \
	" half_life, trend_spans, trend_weights," \
	" (pg_catalog.to_jsonb(d) OPERATOR(pg_catalog.->>) 'clickhouse_table') IS NOT NULL" \
	" FROM counter.definition d"

static SPIPlanPtr plan_by_id = NULL;
static SPIPlanPtr plan_by_name = NULL;

/* Advances whenever cached definitions are forgotten (CounterDefGeneration). */
static uint64 def_generation = 0;

/* Forget every cached definition when counter.definition may have changed. */
static void
CounterRelcacheCallback(Datum arg, Oid relid)
{
	Oid			definition_relid = CounterDefinitionRelid();

	if (relid != InvalidOid && relid != definition_relid &&
		definition_relid != InvalidOid)
		return;
	if (by_id)
		hash_destroy(by_id);
	if (by_name)
		hash_destroy(by_name);
	by_id = NULL;
	by_name = NULL;
	def_generation++;
	CounterScopeReset();
}

/*
 * A number that changes whenever counter.definition may have changed, as
 * seen by this backend (after the invalidations a transaction start reads),
 * so that copies of definitions kept elsewhere know to reload.
 */
uint64
CounterDefGeneration(void)
{
	return def_generation;
}

/* Register the invalidation callback once per backend. */
void
CounterCatalogInit(void)
{
	CacheRegisterRelcacheCallback(CounterRelcacheCallback, (Datum) 0);
}

/* Text form of a mode, as stored in counter.definition. */
const char *
CounterModeName(CounterMode mode)
{
	switch (mode)
	{
		case COUNTER_MODE_DIRECT:
			return "direct";
		case COUNTER_MODE_SHARDED:
			return "sharded";
		case COUNTER_MODE_BUFFERED:
			return "buffered";
	}
	return "?";
}


/*
 * Enforce the name rules: 1 to 63 characters, a letter first, then letters,
 * digits, '_', '.' or '-'.  Names become Redis key prefixes and psql output,
 * so they stay plain.
 */
void
CounterCheckName(const char *name)
{
	size_t		len = strlen(name);
	const char *p;

	if (len == 0 || len > COUNTER_NAME_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("invalid counter name \"%s\"", name),
				 errdetail("A counter name has between 1 and %d characters.",
						   COUNTER_NAME_MAXLEN)));
	for (p = name; *p; p++)
	{
		char		c = *p;
		bool		ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');

		if (p != name)
			ok = ok || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
		if (!ok)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_NAME),
					 errmsg("invalid counter name \"%s\"", name),
					 errdetail("A counter name starts with a letter and holds only letters, digits, \"_\", \".\" and \"-\".")));
	}
}

/*
 * An interval setting as microseconds (a month taken as 30 days), capped at
 * COUNTER_MAX_INTERVAL_US so that no arithmetic on it can overflow, even
 * for a value counter.alter would refuse today (one kept from 0.1).
 */
int64
CounterIntervalUs(const Interval *iv)
{
	int128		us = (int128) iv->time + (int128) iv->day * USECS_PER_DAY +
		(int128) iv->month * 30 * USECS_PER_DAY;

	if (us > COUNTER_MAX_INTERVAL_US)
		return COUNTER_MAX_INTERVAL_US;
	if (us < -COUNTER_MAX_INTERVAL_US)
		return -COUNTER_MAX_INTERVAL_US;
	return (int64) us;
}

/* Build a CounterDef from the current SPI result row. */
static void
CounterDefFromTuple(CounterDef *def)
{
	HeapTuple	tup = SPI_tuptable->vals[0];
	TupleDesc	desc = SPI_tuptable->tupdesc;
	bool		isnull;
	char	   *s;

	memset(def, 0, sizeof(*def));
	def->id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	s = SPI_getvalue(tup, desc, 2);
	strlcpy(def->name, s, sizeof(def->name));
	s = SPI_getvalue(tup, desc, 3);
	def->mode = strcmp(s, "direct") == 0 ? COUNTER_MODE_DIRECT :
		strcmp(s, "buffered") == 0 ? COUNTER_MODE_BUFFERED : COUNTER_MODE_SHARDED;
	def->slots = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
	s = SPI_getvalue(tup, desc, 5);
	def->key_type = strcmp(s, "text") == 0 ? COUNTER_KEY_TEXT : COUNTER_KEY_BIGINT;
	def->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 6, &isnull));
	def->dedup_window_us = CounterIntervalUs(DatumGetIntervalP(SPI_getbinval(tup, desc, 7, &isnull)));
	def->max_per_actor = DatumGetInt32(SPI_getbinval(tup, desc, 8, &isnull));
	def->rate_window_us = CounterIntervalUs(DatumGetIntervalP(SPI_getbinval(tup, desc, 9, &isnull)));
	def->max_delta = DatumGetInt64(SPI_getbinval(tup, desc, 10, &isnull));
	def->half_life_us = CounterIntervalUs(DatumGetIntervalP(SPI_getbinval(tup, desc, 11, &isnull)));
	{
		ArrayType  *spans = DatumGetArrayTypeP(SPI_getbinval(tup, desc, 12, &isnull));
		ArrayType  *weights = DatumGetArrayTypeP(SPI_getbinval(tup, desc, 13, &isnull));
		Datum	   *se;
		Datum	   *we;
		bool	   *sn;
		bool	   *wn;
		int			ns;
		int			nw;
		int			i;

		deconstruct_array(spans, INTERVALOID, sizeof(Interval), false, TYPALIGN_DOUBLE,
						  &se, &sn, &ns);
		deconstruct_array(weights, FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
						  &we, &wn, &nw);
		def->nspans = Min(Min(ns, nw), COUNTER_MAX_SPANS);
		for (i = 0; i < def->nspans; i++)
		{
			def->span_us[i] = sn[i] ? 0 : CounterIntervalUs(DatumGetIntervalP(se[i]));
			def->weight[i] = wn[i] ? 0 : DatumGetFloat8(we[i]);
		}
	}
	def->exports = DatumGetBool(SPI_getbinval(tup, desc, 14, &isnull));
	/* never a zero divisor, whatever a hand edit left in the table */
	if (def->rate_window_us <= 0)
		def->rate_window_us = USECS_PER_MINUTE;
	if (def->half_life_us <= 0)
		def->half_life_us = USECS_PER_DAY;
}

/* Create the two hash tables if an invalidation dropped them. */
static void
CounterCacheEnsure(void)
{
	HASHCTL		ctl;

	if (by_id && by_name)
		return;
	if (by_id)
		hash_destroy(by_id);
	if (by_name)
		hash_destroy(by_name);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(int32);
	ctl.entrysize = sizeof(IdEntry);
	ctl.hcxt = CacheMemoryContext;
	by_id = hash_create("counter definitions by id", 64, &ctl,
						HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ctl.keysize = COUNTER_NAME_MAXLEN + 1;
	ctl.entrysize = sizeof(NameEntry);
	by_name = hash_create("counter definitions by name", 64, &ctl,
						  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
}

/* Remember a freshly loaded definition under both keys. */
static void
CounterCacheStore(const CounterDef *def)
{
	IdEntry    *ie;
	NameEntry  *ne;
	bool		found;

	CounterCacheEnsure();
	ie = hash_search(by_id, &def->id, HASH_ENTER, &found);
	ie->def = *def;
	ne = hash_search(by_name, def->name, HASH_ENTER, &found);
	ne->def = *def;
}

/*
 * Load one definition by id or by name through SPI; false if absent.  It
 * runs under a fresh snapshot so a counter created earlier in the same
 * statement (counter.create's own result) is found.
 */
static bool
CounterLoad(int32 id, const char *name, CounterDef *def)
{
	CounterScope scope;
	bool		found;
	int			rc;

	CounterEnter(&scope);
	if (name == NULL)
	{
		Oid			argtypes[1] = {INT4OID};
		Datum		values[1] = {Int32GetDatum(id)};

		rc = SPI_execute_plan(CounterPlan(&plan_by_id,
										  COUNTER_DEF_SELECT " WHERE id = $1",
										  1, argtypes),
							  values, NULL, false, 1);
	}
	else
	{
		Oid			argtypes[1] = {TEXTOID};
		Datum		values[1] = {CStringGetTextDatum(name)};

		rc = SPI_execute_plan(CounterPlan(&plan_by_name,
										  COUNTER_DEF_SELECT " WHERE name = $1",
										  1, argtypes),
							  values, NULL, false, 1);
	}
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "loading counter definition failed: %s",
			 SPI_result_code_string(rc));
	found = SPI_processed > 0;
	if (found)
		CounterDefFromTuple(def);
	CounterLeave(&scope);
	if (found)
		CounterCacheStore(def);
	return found;
}

/* Copy out the definition with this id; false if there is none. */
bool
CounterLookupById(int32 id, CounterDef *def)
{
	IdEntry    *ie;

	CounterLocateTables();
	if (by_id && (ie = hash_search(by_id, &id, HASH_FIND, NULL)) != NULL)
	{
		*def = ie->def;
		return true;
	}
	return CounterLoad(id, NULL, def);
}

/* Copy out the definition with this name; false if there is none. */
bool
CounterLookupByName(const char *name, CounterDef *def)
{
	NameEntry  *ne;
	char		key[COUNTER_NAME_MAXLEN + 1];

	if (strlen(name) > COUNTER_NAME_MAXLEN)
		return false;
	CounterLocateTables();
	memset(key, 0, sizeof(key));
	strlcpy(key, name, sizeof(key));
	if (by_name && (ne = hash_search(by_name, key, HASH_FIND, NULL)) != NULL)
	{
		*def = ne->def;
		return true;
	}
	return CounterLoad(0, name, def);
}

/* Like CounterLookupById, but a dropped counter is an error. */
void
CounterGetById(int32 id, CounterDef *def)
{
	if (!CounterLookupById(id, def))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("counter with id %d does not exist", id),
				 errdetail("The counter was dropped after this value was formed."),
				 errhint("Create it again with counter.create(), or name the counter afresh.")));
}

/* Only the counter's owner (or a member of it, or a superuser) may change it. */
void
CounterCheckOwner(const CounterDef *def)
{
	if (!has_privs_of_role(GetUserId(), def->owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of counter \"%s\"", def->name),
				 errhint("Ask its owner or a superuser, or be granted membership in role \"%s\".",
						 GetUserNameFromId(def->owner, false))));
}

/*
 * The counter in argument argno of a function that changes it: not null,
 * existing, and the caller's to change.
 */
void
CounterOwnedArg(FunctionCallInfo fcinfo, int argno, CounterDef *def)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("counter must not be null")));
	CounterGetById(PG_GETARG_INT32(argno), def);
	CounterCheckOwner(def);
}

/* Statement trigger on counter.definition: tell every backend to reload. */
Datum
counter_definition_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("counter.definition_changed() can only be called as a trigger")));
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	return PointerGetDatum(NULL);
}
