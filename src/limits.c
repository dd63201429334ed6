/*
 * limits.c
 *		Idempotency and rate limits on the increment: event ids counted once
 *		per dedup_window (counter.event_seen), and at most max_per_actor
 *		increments per (actor, key) per rate_window (counter.actor_rate).
 *
 * Both are rows written in the incrementing transaction, so a rolled-back
 * increment frees its event id and gives back its rate budget.  Two
 * sessions racing one event id meet on the primary key: the second waits
 * for the first and counts only if the first rolled back.  Rate windows are
 * fixed, aligned to multiples of rate_window since 2000-01-01 UTC; a row
 * is one (counter, actor, key) and holds the current window's count, so a
 * raised limit applies at once.  The worker purges expired rows.
 */
#include "counter.h"

#include "catalog/pg_type.h"
#include "utils/builtins.h"

static SPIPlanPtr plan_event_probe = NULL;
static SPIPlanPtr plan_event_record = NULL;
static SPIPlanPtr plan_actor = NULL;

/* Run a plan that returns a row when the increment may go ahead. */
static bool
CounterLimitPasses(SPIPlanPtr plan, Datum *values, int expect)
{
	int			rc = SPI_execute_plan(plan, values, NULL, false, 1);

	if (rc != expect)
		elog(ERROR, "counter limit check failed: %s", SPI_result_code_string(rc));
	return SPI_processed > 0;
}

/*
 * Whether event was already counted for def within its window, as of
 * `when`, looking only (inside the scope).  Used before spending an actor's
 * budget on what would be a duplicate.
 */
bool
CounterEventSeen(const CounterDef *def, text *event, TimestampTz when)
{
	Oid			argtypes[3] = {INT4OID, TEXTOID, TIMESTAMPTZOID};
	Datum		values[3] = {Int32GetDatum(def->id), PointerGetDatum(event),
	TimestampTzGetDatum(when)};

	return CounterLimitPasses(CounterPlan(&plan_event_probe,
										  "SELECT FROM counter.event_seen"
										  " WHERE counter_id = $1 AND event = $2"
										  " AND expires_at > $3",
										  3, argtypes),
							  values, SPI_OK_SELECT);
}

/*
 * Remember event for def until when + dedup_window (inside the scope).
 * Returns false if it is a duplicate: remembered and not yet expired, or
 * being recorded by a concurrent transaction that then commits.
 */
bool
CounterEventRecord(const CounterDef *def, text *event, TimestampTz when)
{
	Oid			argtypes[4] = {INT4OID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum		values[4] = {Int32GetDatum(def->id), PointerGetDatum(event),
		TimestampTzGetDatum(when + def->dedup_window_us),
	TimestampTzGetDatum(when)};

	return CounterLimitPasses(CounterPlan(&plan_event_record,
										  "INSERT INTO counter.event_seen AS e"
										  " (counter_id, event, expires_at) VALUES ($1, $2, $3)"
										  " ON CONFLICT (counter_id, event)"
										  " DO UPDATE SET expires_at = excluded.expires_at"
										  " WHERE e.expires_at <= $4"
										  " RETURNING true",
										  4, argtypes),
							  values, SPI_OK_INSERT_RETURNING);
}

/*
 * Spend one unit of actor's budget on key in the window holding `when`
 * (inside the scope).  Returns false when the budget is used up.
 */
bool
CounterActorAllow(const CounterDef *def, text *actor, int64 key, TimestampTz when)
{
	Oid			argtypes[5] = {INT4OID, TEXTOID, INT8OID, TIMESTAMPTZOID, INT4OID};
	Datum		values[5];
	TimestampTz start = when - when % def->rate_window_us;

	if (when % def->rate_window_us < 0)
		start -= def->rate_window_us;
	values[0] = Int32GetDatum(def->id);
	values[1] = PointerGetDatum(actor);
	values[2] = Int64GetDatum(key);
	values[3] = TimestampTzGetDatum(start);
	values[4] = Int32GetDatum(def->max_per_actor);
	return CounterLimitPasses(CounterPlan(&plan_actor,
										  "INSERT INTO counter.actor_rate AS r"
										  " (counter_id, actor, key, window_start, n)"
										  " VALUES ($1, $2, $3, $4, 1)"
										  " ON CONFLICT (counter_id, actor, key) DO UPDATE SET"
										  "  n = CASE WHEN excluded.window_start > r.window_start"
										  "       THEN 1 ELSE r.n + 1 END,"
										  "  window_start = greatest(r.window_start, excluded.window_start)"
										  " WHERE excluded.window_start > r.window_start OR r.n < $5"
										  " RETURNING true",
										  5, argtypes),
							  values, SPI_OK_INSERT_RETURNING);
}

/*
 * Delete up to `limit` expired event ids and stale rate rows as of now
 * (inside the scope).  Returns the rows deleted.
 */
int64
CounterPurgeLimits(TimestampTz now, int limit)
{
	Oid			argtypes[2] = {TIMESTAMPTZOID, INT4OID};
	Datum		values[2] = {TimestampTzGetDatum(now), Int32GetDatum(limit)};
	int64		n = 0;
	int			rc;

	rc = SPI_execute_with_args("DELETE FROM counter.event_seen WHERE ctid = ANY (ARRAY("
							   " SELECT ctid FROM counter.event_seen"
							   " WHERE expires_at <= $1 LIMIT $2))",
							   2, argtypes, values, NULL, false, 0);
	if (rc != SPI_OK_DELETE)
		elog(ERROR, "purging event ids failed: %s", SPI_result_code_string(rc));
	n += SPI_processed;
	rc = SPI_execute_with_args("DELETE FROM counter.actor_rate WHERE ctid = ANY (ARRAY("
							   " SELECT r.ctid FROM counter.actor_rate r"
							   " JOIN counter.definition d ON d.id = r.counter_id"
							   " WHERE r.window_start + d.rate_window <= $1 LIMIT $2))",
							   2, argtypes, values, NULL, false, 0);
	if (rc != SPI_OK_DELETE)
		elog(ERROR, "purging rate windows failed: %s", SPI_result_code_string(rc));
	n += SPI_processed;
	return n;
}
