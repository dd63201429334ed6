/*
 * scope.c
 *		Entering the extension's private scope, the SPI plan cache, guarded
 *		execution and the overflow errors.
 *
 * The extension's tables are private to their owner.  Code that touches them
 * first checks the caller's rights, then runs between CounterEnter and
 * CounterLeave, which switch to the tables' owner and pin search_path to
 * pg_catalog alone (no pg_temp), so neither a hostile search_path nor a
 * caller's temporary objects can reach our queries.  Errors unwind both
 * through transaction abort.
 */
#include "counter.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

/* counter.definition and its owner, found once per backend (see CounterScopeReset). */
static Oid	definition_relid = InvalidOid;
static Oid	tables_owner = InvalidOid;

/* Forget the located tables, when counter.definition may have changed. */
void
CounterScopeReset(void)
{
	definition_relid = InvalidOid;
	tables_owner = InvalidOid;
}

/* The oid of counter.definition, for the catalog's invalidation callback. */
Oid
CounterDefinitionRelid(void)
{
	return definition_relid;
}

/*
 * The version of counter installed in this database (palloc'd), or NULL
 * when it is not installed.  Needs a transaction.
 */
char *
CounterInstalledVersion(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	char	   *version = NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("counter"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = text_to_cstring(DatumGetTextPP(d));
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

/*
 * Find counter.definition and its owner, or say the extension is missing,
 * or installed at another version than this library's (the SQL objects of
 * an older version do not match what the library expects: between a new
 * build and ALTER EXTENSION counter UPDATE nothing runs half-way).
 */
void
CounterLocateTables(void)
{
	Oid			nsp;
	HeapTuple	tup;
	char	   *version;

	if (OidIsValid(definition_relid))
		return;
	version = CounterInstalledVersion();
	if (version != NULL && strcmp(version, COUNTER_VERSION) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"counter\" is installed at version %s, but its library is version %s",
						version, COUNTER_VERSION),
				 errhint("Run ALTER EXTENSION counter UPDATE.")));
	nsp = get_namespace_oid(COUNTER_SCHEMA, true);
	if (OidIsValid(nsp))
		definition_relid = get_relname_relid("definition", nsp);
	if (!OidIsValid(definition_relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"counter\" is not installed in this database"),
				 errhint("Run CREATE EXTENSION counter.")));
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(definition_relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", definition_relid);
	tables_owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	/* a database that uses the extension asks to be served */
	(void) CounterMySlot();
}

/*
 * Enter the extension's private scope: run as the owner of its tables with
 * search_path reduced to pg_catalog.  Errors unwind both through transaction
 * abort, so no PG_TRY is needed.
 */
void
CounterEnter(CounterScope *scope)
{
	OverrideSearchPath path = {0};

	CounterLocateTables();
	GetUserIdAndSecContext(&scope->save_userid, &scope->save_sec_context);
	SetUserIdAndSecContext(tables_owner,
						   scope->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	path.schemas = NIL;
	path.addCatalog = true;
	path.addTemp = false;
	PushOverrideSearchPath(&path);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

/* Leave the scope entered by CounterEnter. */
void
CounterLeave(CounterScope *scope)
{
	SPI_finish();
	PopOverrideSearchPath();
	SetUserIdAndSecContext(scope->save_userid, scope->save_sec_context);
}

/* Prepare a query once per backend and keep it; plancache revalidates it. */
SPIPlanPtr
CounterPlan(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan;

	if (*cache)
		return *cache;
	/*
	 * Generic: every statement here looks rows up by index, and planning
	 * each call would cost more than running it.
	 */
	plan = SPI_prepare_cursor(sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	*cache = plan;
	return plan;
}

/*
 * Raise 22003 for a key whose total would leave (or, when reading, has left)
 * the range of bigint.  key NULL means "some key of a batch".
 */
void
CounterOverflow(const CounterDef *def, const int64 *key, bool reading)
{
	if (def == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("a counter total would leave the range of bigint"),
				 errdetail("Nothing was counted.")));
	if (reading)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("total of counter \"%s\" is out of range for bigint",
						def->name)));
	if (key == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("counter \"%s\" would overflow", def->name),
				 errdetail("A key's total would leave the range of bigint; nothing was counted.")));
	ereport(ERROR,
			(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
			 errmsg("counter \"%s\" would overflow for key " INT64_FORMAT,
					def->name, *key),
			 errdetail("The total would leave the range of bigint; nothing was counted.")));
}

/*
 * Run a plan inside the scope; an int8 overflow inside it is reported as the
 * counter's overflow instead of a bare "bigint out of range" with our SQL as
 * context.  The transaction is aborting anyway, so re-throwing is safe.
 */
int
CounterExecGuarded(const CounterDef *def, const int64 *key, bool reading,
				   SPIPlanPtr plan, Datum *values)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	int			rc = 0;

	PG_TRY();
	{
		rc = SPI_execute_plan(plan, values, NULL, reading, 0);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE)
			PG_RE_THROW();
		FlushErrorState();
		CounterOverflow(def, key, reading);
	}
	PG_END_TRY();
	return rc;
}

/*
 * Maintenance that rewrites every counter's rows is for the extension's
 * owner (the owner of its tables), its members and superusers.
 */
void
CounterRequireExtensionOwner(const char *what)
{
	CounterLocateTables();
	if (!has_privs_of_role(GetUserId(), tables_owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for %s", what),
				 errdetail("It rewrites the rows of every counter."),
				 errhint("Run it as the owner of the counter extension, a member of that role, or a superuser.")));
}
