/*
 * define.c
 *		counter.create, counter.alter and counter.drop: the checks of what a
 *		user declares, and the rows of counter.definition they write.
 *
 * Each runs its statements in the private scope of scope.c, as the tables'
 * owner, after checking that the caller owns the counter (alter, drop) and
 * every argument; an invalid argument raises before anything is written.
 * The statement trigger on counter.definition invalidates every backend's
 * cache of it (catalog.c).
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

PG_FUNCTION_INFO_V1(counter_create);
PG_FUNCTION_INFO_V1(counter_alter);
PG_FUNCTION_INFO_V1(counter_drop);

/* Parse a mode name, with a clear error for anything else. */
static CounterMode
CounterParseMode(const char *s)
{
	if (strcmp(s, "direct") == 0)
		return COUNTER_MODE_DIRECT;
	if (strcmp(s, "sharded") == 0)
		return COUNTER_MODE_SHARDED;
	if (strcmp(s, "buffered") == 0)
	{
		CounterRequireBufferingHere();
		return COUNTER_MODE_BUFFERED;
	}
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid counter mode \"%s\"", s),
			 errhint("Valid modes are 'direct', 'sharded' and 'buffered'.")));
	return COUNTER_MODE_SHARDED;	/* keep compiler quiet */
}

/* Run one prepared-on-the-fly statement in the private scope. */
static int
CounterExec(const char *sql, int nargs, Oid *argtypes, Datum *values,
			const char *nulls)
{
	int			rc = SPI_execute_with_args(sql, nargs, argtypes, values, nulls,
										   false, 0);

	if (rc < 0)
		elog(ERROR, "counter catalog statement failed: %s",
			 SPI_result_code_string(rc));
	return rc;
}

/* Check a slot count given by a user. */
static int32
CounterCheckSlots(int32 slots)
{
	if (slots < 1 || slots > COUNTER_MAX_SLOTS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("slots must be between 1 and %d, not %d",
						COUNTER_MAX_SLOTS, slots)));
	return slots;
}

/*
 * counter.create(name, mode, slots, key_type): declare a counter owned by the
 * calling role and return its handle.
 */
Datum
counter_create(PG_FUNCTION_ARGS)
{
	char	   *name;
	CounterMode mode = COUNTER_MODE_SHARDED;
	int32		slots = counter_default_slots;
	const char *key_type = "bigint";
	CounterScope scope;
	CounterDef	existing;
	Oid			argtypes[5] = {TEXTOID, TEXTOID, INT4OID, TEXTOID, OIDOID};
	Datum		values[5];
	int32		id;
	bool		isnull;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("counter name must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	CounterCheckName(name);
	if (!PG_ARGISNULL(1))
		mode = CounterParseMode(text_to_cstring(PG_GETARG_TEXT_PP(1)));
	if (!PG_ARGISNULL(2))
		slots = CounterCheckSlots(PG_GETARG_INT32(2));
	if (!PG_ARGISNULL(3))
	{
		key_type = text_to_cstring(PG_GETARG_TEXT_PP(3));
		if (strcmp(key_type, "bigint") != 0 && strcmp(key_type, "text") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid key_type \"%s\"", key_type),
					 errhint("Valid key types are 'bigint' and 'text'.")));
	}
	if (CounterLookupByName(name, &existing))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("counter \"%s\" already exists", name)));

	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(CounterModeName(mode));
	values[2] = Int32GetDatum(slots);
	values[3] = CStringGetTextDatum(key_type);
	values[4] = ObjectIdGetDatum(GetUserId());

	CounterEnter(&scope);
	CounterExec("INSERT INTO counter.definition (name, mode, slots, key_type, owner)"
				" VALUES ($1, $2, $3, $4, $5::pg_catalog.regrole)"
				" ON CONFLICT (name) DO NOTHING RETURNING id",
				5, argtypes, values, NULL);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("counter \"%s\" already exists", name)));
	id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull));
	CounterLeave(&scope);
	CounterStatsForget(id);
	CounterBufForget(id);
	CommandCounterIncrement();
	PG_RETURN_INT32(id);
}

/*
 * Check an interval setting: no months, not negative (or, with positive,
 * above zero), and at most 100 years, so that no arithmetic on it can
 * overflow later.
 */
static Datum
CounterCheckInterval(Datum d, const char *what, bool positive)
{
	Interval   *iv = DatumGetIntervalP(d);
	int128		us = (int128) iv->time + (int128) iv->day * USECS_PER_DAY;

	if (iv->month != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be given in months or years", what),
				 errhint("Give it in days, e.g. '30 days'.")));
	if (us < 0 || (positive && us == 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be %s", what, positive ? "positive" : "zero or positive")));
	if (us > COUNTER_MAX_INTERVAL_US)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be at most 36525 days (100 years)", what)));
	return d;
}

/* Unpack a one-dimensional array setting without nulls; returns its length. */
static int
CounterSettingArray(ArrayType *arr, Oid elemtype, int elemlen, bool byval, char align,
					const char *what, Datum **elems)
{
	bool	   *isnull;
	int			n;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array", what)));
	if (array_contains_nulls(arr))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not contain nulls", what)));
	deconstruct_array(arr, elemtype, elemlen, byval, align, elems, &isnull, &n);
	return n;
}

/*
 * Check new trend spans and/or weights: one weight per span (a side not
 * given keeps its stored length), 1 to COUNTER_MAX_SPANS spans, each
 * positive and at most 100 years, weights finite and at most 1e15.
 */
static void
CounterCheckTrend(ArrayType *spans, ArrayType *weights, const CounterDef *def)
{
	int			nspans = def->nspans;
	int			nweights = def->nspans;
	Datum	   *elems;
	int			i;

	if (spans)
	{
		nspans = CounterSettingArray(spans, INTERVALOID, sizeof(Interval), false,
									 TYPALIGN_DOUBLE, "trend_spans", &elems);
		if (nspans == 0 || nspans > COUNTER_MAX_SPANS)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("trend_spans must have between 1 and %d spans", COUNTER_MAX_SPANS)));
		for (i = 0; i < nspans; i++)
			CounterCheckInterval(elems[i], "each trend span", true);
	}
	if (weights)
	{
		nweights = CounterSettingArray(weights, FLOAT8OID, 8, FLOAT8PASSBYVAL,
									   TYPALIGN_DOUBLE, "trend_weights", &elems);
		for (i = 0; i < nweights; i++)
		{
			double		w = DatumGetFloat8(elems[i]);

			if (isnan(w) || isinf(w) || fabs(w) > 1e15)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("each trend weight must be a finite number of at most 1e15 in size")));
		}
	}
	if (nspans != nweights)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("trend_spans and trend_weights must have the same length"),
				 errdetail("There would be %d spans and %d weights.", nspans, nweights),
				 errhint("Give both, e.g. trend_spans => '{1 hour, 1 day}', trend_weights => '{1, 0.5}'.")));
}

/* Check a limit setting: zero (no limit) or positive. */
static void
CounterCheckLimit(int64 v, const char *what)
{
	if (v < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be zero (no limit) or positive", what)));
}

/*
 * Check a Redis prefix or stream name or a Kafka topic for def: of a
 * legal length and spelling, not in the worker's own Redis namespace, and
 * clear of every other owner's: a prefix may neither start with nor be the
 * start of another owner's prefix, and a stream or topic may not be
 * another owner's, so that nobody's keys, entries or messages can be drawn
 * into someone else's counter.  Inside the private scope.
 */
static void
CounterCheckSourceName(const CounterDef *def, const char *column, const char *value)
{
	Oid			argtypes[3] = {INT4OID, TEXTOID, OIDOID};
	Datum		values[3];
	bool		kafka = strcmp(column, "kafka_topic") == 0;
	bool		prefix = strcmp(column, "redis_prefix") == 0;
	const char *what;
	int			rc;

	if (kafka)
	{
		/* Kafka's own rule for topic names */
		if (strlen(value) > 249 || strspn(value, "abcdefghijklmnopqrstuvwxyz"
										  "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != strlen(value) ||
			strcmp(value, ".") == 0 || strcmp(value, "..") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("kafka_topic \"%s\" is not a valid Kafka topic name", value),
					 errdetail("A topic name has 1 to 249 of the characters a-z, A-Z, 0-9, \".\", \"_\" and \"-\"."),
					 errhint("An empty string stops the counter reading its topic.")));
	}
	else if (strlen(value) > 200)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must have between 1 and 200 characters", column),
				 errhint("An empty string stops the counter draining it.")));
	else if (strncmp(value, "counter:", 8) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_RESERVED_NAME),
				 errmsg("%s \"%s\" is in the extension's own namespace", column, value),
				 errdetail("Redis keys starting with \"counter:\" are the worker's in-flight and quarantine records.")));
	values[0] = Int32GetDatum(def->id);
	values[1] = CStringGetTextDatum(value);
	values[2] = ObjectIdGetDatum(def->owner);
	if (prefix)
		rc = SPI_execute_with_args("SELECT name, redis_prefix FROM counter.definition"
								   " WHERE id <> $1 AND owner::oid <> $3 AND redis_prefix IS NOT NULL"
								   " AND (starts_with(redis_prefix, $2) OR starts_with($2, redis_prefix))"
								   " ORDER BY id LIMIT 1",
								   3, argtypes, values, NULL, true, 1);
	else
		rc = SPI_execute_with_args(psprintf("SELECT name, %s FROM counter.definition"
											" WHERE id <> $1 AND owner::oid <> $3 AND %s = $2"
											" ORDER BY id LIMIT 1", column, column),
								   3, argtypes, values, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "checking %s failed: %s", column, SPI_result_code_string(rc));
	if (SPI_processed == 0)
		return;
	what = prefix ? "drains the keys \"%s*\"; a prefix may neither start with nor be the start of another owner's prefix." :
		kafka ? "reads the topic \"%s\"; a topic another owner's counter reads is not yours to read." :
		"reads the stream \"%s\"; a stream another owner's counter reads is not yours to read.";
	ereport(ERROR,
			(errcode(ERRCODE_DUPLICATE_OBJECT),
			 errmsg("%s \"%s\" clashes with counter \"%s\", which another role owns",
					column, value, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)),
			 errdetail("That counter %s",
					   psprintf(what, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2))),
			 errhint("Choose a %s of your own.", column)));
}

/*
 * A ClickHouse table name as the export sends it: [database.]table, each
 * part a plain identifier, so it goes into the INSERT unquoted and cannot
 * carry anything else; 42602 otherwise.
 */
static void
CounterCheckClickhouseTable(const char *name)
{
	const char *p = name;
	int			parts = 0;

	while (*p)
	{
		const char *start = p;

		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_'))
			break;
		while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			   (*p >= '0' && *p <= '9') || *p == '_')
			p++;
		if (p - start > COUNTER_NAME_MAXLEN)
			break;
		parts++;
		if (*p == '.' && parts == 1)
			p++;
		else
			break;
	}
	if (*p != '\0' || parts == 0 || p[-1] == '.')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("invalid clickhouse_table \"%s\"", name),
				 errdetail("A ClickHouse table is named table or database.table, each a letter or underscore followed by up to 62 letters, digits or underscores."),
				 errhint("An empty string stops the export.")));
}

/*
 * Refuse a ClickHouse table that a counter of another owner exports to
 * (inside the scope): an export writes the rows of its counter only, and
 * no owner may overwrite another's.
 */
static void
CounterCheckClickhouseOwner(const CounterDef *def, Datum table)
{
	Oid			argtypes[3] = {INT4OID, TEXTOID, OIDOID};
	Datum		values[3];

	values[0] = Int32GetDatum(def->id);
	values[1] = table;
	values[2] = ObjectIdGetDatum(def->owner);
	if (SPI_execute_with_args("SELECT name FROM counter.definition"
							  " WHERE id <> $1 AND owner::oid <> $3"
							  " AND lower(clickhouse_table) = lower($2) ORDER BY id LIMIT 1",
							  3, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "checking the clickhouse_table failed");
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("clickhouse_table \"%s\" is exported to by counter \"%s\" of another owner",
						TextDatumGetCString(table),
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)),
				 errhint("Choose a clickhouse_table of your own.")));
}

/*
 * A source argument of alter (redis_prefix, redis_stream, kafka_topic), in
 * the private scope: true if given empty (that drain stops), checked
 * otherwise; false when not given.
 */
static bool
CounterSourceArg(const CounterDef *def, const char *column, Datum value, char null)
{
	char	   *name;

	if (null != ' ')
		return false;
	name = TextDatumGetCString(value);
	if (name[0] == '\0')
		return true;
	CounterCheckSourceName(def, column, name);
	return false;
}

/*
 * counter.alter(counter, mode, slots, redis_prefix, dedup_window,
 * max_per_actor, rate_window, max_delta, minute_retention, hour_retention,
 * day_retention, half_life, trend_spans, trend_weights, redis_stream,
 * kafka_topic, clickhouse_table): change a counter's settings online;
 * arguments left null keep their value, and an empty redis_prefix,
 * redis_stream, kafka_topic or clickhouse_table stops that drain or export.
 * A new clickhouse_table starts its export afresh (counter.export); one
 * that another owner's counter exports to is refused, as a Redis prefix is.
 * Every setting is checked first, so a refused alter changes nothing.
 * Every slot and mode writes the same tally rows, so no increment in
 * flight is lost whichever setting a concurrent writer still has cached.
 */
Datum
counter_alter(PG_FUNCTION_ARGS)
{
#define COUNTER_ALTER_ARGS 17
	CounterDef	def;
	CounterScope scope;
	Oid			argtypes[COUNTER_ALTER_ARGS] = {INT4OID, TEXTOID, INT4OID, TEXTOID,
		INTERVALOID, INT4OID, INTERVALOID, INT8OID,
		INTERVALOID, INTERVALOID, INTERVALOID, INTERVALOID,
	INTERVALARRAYOID, FLOAT8ARRAYOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[COUNTER_ALTER_ARGS];
	char		nulls[COUNTER_ALTER_ARGS];
	bool		clear_prefix = false;
	bool		clear_stream = false;
	bool		clear_topic = false;
	bool		clear_table = false;
	int			i;

	PreventCommandIfReadOnly("counter.alter()");
	CounterOwnedArg(fcinfo, 0, &def);
	values[0] = Int32GetDatum(def.id);
	nulls[0] = ' ';
	for (i = 1; i < COUNTER_ALTER_ARGS; i++)
	{
		nulls[i] = 'n';
		if (PG_NARGS() <= i || PG_ARGISNULL(i))
			continue;
		nulls[i] = ' ';
		values[i] = PG_GETARG_DATUM(i);
	}
	if (nulls[1] == ' ')
		values[1] = CStringGetTextDatum(CounterModeName(CounterParseMode(TextDatumGetCString(values[1]))));
	if (nulls[2] == ' ')
		CounterCheckSlots(DatumGetInt32(values[2]));
	if (nulls[4] == ' ')
		CounterCheckInterval(values[4], "dedup_window", false);
	if (nulls[5] == ' ')
		CounterCheckLimit(DatumGetInt32(values[5]), "max_per_actor");
	if (nulls[6] == ' ')
		CounterCheckInterval(values[6], "rate_window", true);
	if (nulls[7] == ' ')
		CounterCheckLimit(DatumGetInt64(values[7]), "max_delta");
	if (nulls[8] == ' ')
		CounterCheckInterval(values[8], "minute_retention", false);
	if (nulls[9] == ' ')
		CounterCheckInterval(values[9], "hour_retention", false);
	if (nulls[10] == ' ')
		CounterCheckInterval(values[10], "day_retention", false);
	if (nulls[11] == ' ')
		CounterCheckInterval(values[11], "half_life", true);
	if (nulls[12] == ' ' || nulls[13] == ' ')
		CounterCheckTrend(nulls[12] == ' ' ? DatumGetArrayTypeP(values[12]) : NULL,
						  nulls[13] == ' ' ? DatumGetArrayTypeP(values[13]) : NULL,
						  &def);

	if (nulls[16] == ' ')
	{
		char	   *table = TextDatumGetCString(values[16]);

		clear_table = table[0] == '\0';
		if (!clear_table)
			CounterCheckClickhouseTable(table);
	}

	CounterEnter(&scope);
	if (nulls[16] == ' ' && !clear_table)
		CounterCheckClickhouseOwner(&def, values[16]);
	clear_prefix = CounterSourceArg(&def, "redis_prefix", values[3], nulls[3]);
	clear_stream = CounterSourceArg(&def, "redis_stream", values[14], nulls[14]);
	clear_topic = CounterSourceArg(&def, "kafka_topic", values[15], nulls[15]);
	CounterExec(psprintf("UPDATE counter.definition SET"
						 " mode = coalesce($2, mode),"
						 " slots = coalesce($3, slots),"
						 " redis_prefix = %s,"
						 " dedup_window = coalesce($5, dedup_window),"
						 " max_per_actor = coalesce($6, max_per_actor),"
						 " rate_window = coalesce($7, rate_window),"
						 " max_delta = coalesce($8, max_delta),"
						 " minute_retention = coalesce($9, minute_retention),"
						 " hour_retention = coalesce($10, hour_retention),"
						 " day_retention = coalesce($11, day_retention),"
						 " half_life = coalesce($12, half_life),"
						 " trend_spans = coalesce($13, trend_spans),"
						 " trend_weights = coalesce($14, trend_weights),"
						 " redis_stream = %s,"
						 " kafka_topic = %s,"
						 " clickhouse_table = %s"
						 " WHERE id = $1",
						 clear_prefix ? "NULL::text" : "coalesce($4, redis_prefix)",
						 clear_stream ? "NULL::text" : "coalesce($15, redis_stream)",
						 clear_topic ? "NULL::text" : "coalesce($16, kafka_topic)",
						 clear_table ? "NULL::text" : "coalesce($17, clickhouse_table)"),
				COUNTER_ALTER_ARGS, argtypes, values, nulls);
	if (nulls[16] == ' ')
	{
		/* a new table starts afresh; none forgets the export and its notes */
		CounterExec("DELETE FROM counter.export e USING counter.definition d"
					" WHERE e.counter_id = $1 AND d.id = $1"
					" AND d.clickhouse_table IS DISTINCT FROM e.clickhouse_table",
					1, argtypes, values, nulls);
		if (clear_table)
			CounterExec("DELETE FROM counter.export_note WHERE counter_id = $1",
						1, argtypes, values, nulls);
	}
	CounterLeave(&scope);
	CommandCounterIncrement();
	PG_RETURN_VOID();
}

/*
 * counter.drop(counter): forget a counter and everything kept for it: its
 * tallies, text keys, event ids, rate windows and ranking.
 */
Datum
counter_drop(PG_FUNCTION_ARGS)
{
	CounterDef	def;
	CounterScope scope;
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1];
	static const char *const per_counter[] = {
		"tally", "text_key", "event_seen", "actor_rate", "ranking", "ranking_state", "sync",
		"export", "export_note"
	};
	int			i;

	CounterOwnedArg(fcinfo, 0, &def);
	values[0] = Int32GetDatum(def.id);
	CounterEnter(&scope);
	CounterExec("DELETE FROM counter.definition WHERE id = $1",
				1, argtypes, values, NULL);
	for (i = 0; i < lengthof(per_counter); i++)
		CounterExec(psprintf("DELETE FROM counter.%s WHERE counter_id = $1",
							 per_counter[i]),
					1, argtypes, values, NULL);
	CounterLeave(&scope);
	CommandCounterIncrement();
	PG_RETURN_VOID();
}

