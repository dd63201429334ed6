/*
 * type.c
 *		The counter type: a handle to a declared counter, stored as its id and
 *		written as its name, the way regclass stands for a table.
 */
#include "counter.h"

#include "libpq/pqformat.h"
#include "common/hashfn.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(counter_in);
PG_FUNCTION_INFO_V1(counter_out);
PG_FUNCTION_INFO_V1(counter_recv);
PG_FUNCTION_INFO_V1(counter_send);
PG_FUNCTION_INFO_V1(counter_eq);
PG_FUNCTION_INFO_V1(counter_ne);
PG_FUNCTION_INFO_V1(counter_id);
PG_FUNCTION_INFO_V1(counter_cmp);
PG_FUNCTION_INFO_V1(counter_lt);
PG_FUNCTION_INFO_V1(counter_le);
PG_FUNCTION_INFO_V1(counter_gt);
PG_FUNCTION_INFO_V1(counter_ge);
PG_FUNCTION_INFO_V1(counter_hash);

/* Text input: a counter's name (or its numeric id); unknown names fail. */
Datum
counter_in(PG_FUNCTION_ARGS)
{
	char	   *s = PG_GETARG_CSTRING(0);
	CounterDef	def;

	if (*s >= '0' && *s <= '9')
	{
		int32		id = pg_strtoint32(s);

		if (!CounterLookupById(id, &def))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("counter with id %d does not exist", id)));
		PG_RETURN_INT32(id);
	}
	CounterCheckName(s);
	if (!CounterLookupByName(s, &def))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("counter \"%s\" does not exist", s),
				 errhint("Create it with counter.create('%s'); counter.counters lists the counters that exist.", s)));
	PG_RETURN_INT32(def.id);
}

/* Text output: the counter's name, or its id if it has been dropped. */
Datum
counter_out(PG_FUNCTION_ARGS)
{
	int32		id = PG_GETARG_INT32(0);
	CounterDef	def;

	if (CounterLookupById(id, &def))
		PG_RETURN_CSTRING(pstrdup(def.name));
	PG_RETURN_CSTRING(psprintf("%d", id));
}

/* Binary input: the id, checked to exist. */
Datum
counter_recv(PG_FUNCTION_ARGS)
{
	StringInfo	buf = (StringInfo) PG_GETARG_POINTER(0);
	int32		id = pq_getmsgint(buf, 4);
	CounterDef	def;

	CounterGetById(id, &def);
	PG_RETURN_INT32(id);
}

/* Binary output: the id. */
Datum
counter_send(PG_FUNCTION_ARGS)
{
	StringInfoData buf;

	pq_begintypsend(&buf);
	pq_sendint32(&buf, PG_GETARG_INT32(0));
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

/* Equality of two handles, for WHERE clauses and joins. */
Datum
counter_eq(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(PG_GETARG_INT32(0) == PG_GETARG_INT32(1));
}

/* Inequality of two handles. */
Datum
counter_ne(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(PG_GETARG_INT32(0) != PG_GETARG_INT32(1));
}

/* The numeric id behind a handle, as stored in the tally tables. */
Datum
counter_id(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(PG_GETARG_INT32(0));
}

/*
 * Ordering of handles, by id (as regclass orders by oid), so that a handle
 * can be sorted, grouped and made DISTINCT: the btree and hash operator
 * classes of the type.
 */
Datum
counter_cmp(PG_FUNCTION_ARGS)
{
	int32		a = PG_GETARG_INT32(0);
	int32		b = PG_GETARG_INT32(1);

	PG_RETURN_INT32(a < b ? -1 : a > b);
}

/* a < b, by id. */
Datum
counter_lt(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(PG_GETARG_INT32(0) < PG_GETARG_INT32(1));
}

/* a <= b, by id. */
Datum
counter_le(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(PG_GETARG_INT32(0) <= PG_GETARG_INT32(1));
}

/* a > b, by id. */
Datum
counter_gt(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(PG_GETARG_INT32(0) > PG_GETARG_INT32(1));
}

/* a >= b, by id. */
Datum
counter_ge(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(PG_GETARG_INT32(0) >= PG_GETARG_INT32(1));
}

/* The hash of a handle, for hash joins and hash aggregation. */
Datum
counter_hash(PG_FUNCTION_ARGS)
{
	return hash_uint32((uint32) PG_GETARG_INT32(0));
}
