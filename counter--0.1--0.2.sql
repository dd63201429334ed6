-- counter 0.1 -> 0.2.  CREATE EXTENSION runs counter--0.1.sql and then this
-- script, so a fresh install and an upgrade end in the same objects.
-- Every object is schema-qualified, as in the install script.

\echo Use "ALTER EXTENSION counter UPDATE TO '0.2'" to load this file. \quit

-- Quarantine ----------------------------------------------------------------
-- Whatever a background process was handed but could not count: a buffered
-- amount whose key would leave bigint, a Redis value that is not an integer,
-- a stream entry or message that names no counter.  Nothing is dropped
-- silently: each lands here with its reason, and is logged.

CREATE TABLE @extschema@.quarantine (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	source text NOT NULL,			-- buffer, redis, redis stream, kafka
	origin text NOT NULL,			-- the database, Redis master or topic it came from
	item text NOT NULL,				-- its key or entry id, printable
	value text NOT NULL,			-- its value, printable (\x hex when not UTF-8 text)
	counter_id integer,
	key bigint,
	bucket timestamptz,
	delta bigint,
	reason text NOT NULL,
	at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE @extschema@.quarantine IS
	'items a background process could not count, with the reason: kept, never applied, never dropped silently';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.quarantine', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.quarantine_id_seq', '');
REVOKE ALL ON @extschema@.quarantine FROM PUBLIC;

-- Ranking without a temporary table ------------------------------------------
-- 0.1 staged the settled rows in pg_temp.counter_settle.  The function runs
-- as the extension's owner, and a caller could create that temporary table
-- first, with a trigger of its own, which then ran as the owner.  The rows
-- now stay in local arrays, which no caller can reach.

CREATE OR REPLACE FUNCTION @extschema@.refresh_ranking_one(d @extschema@.definition, t timestamptz, full_rebuild boolean)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	st @extschema@.ranking_state;
	lo timestamptz;
	hi timestamptz := date_trunc('minute', t, 'UTC') - interval '3 minutes';
	span_max interval := (SELECT max(x) FROM unnest(d.trend_spans) AS x);
	n bigint := 0;
	c bigint;
	s_key bigint[];
	s_total bigint[];
	s_m float8[];
	s_v float8[];
BEGIN
	PERFORM pg_advisory_xact_lock(hashtext('counter.ranking'), d.id);
	SELECT * INTO st FROM @extschema@.ranking_state WHERE counter_id = d.id;
	IF full_rebuild OR st IS NULL OR st.settled_until < t - interval '50 minutes'
		OR st.settled_until > hi THEN
		DELETE FROM @extschema@.ranking WHERE counter_id = d.id;
		lo := '-infinity';
		full_rebuild := true;
	ELSE
		lo := st.settled_until;
	END IF;

	-- 1. settle rows in [lo, hi)
	SELECT coalesce(array_agg(g.key), '{}'), coalesce(array_agg(g.total), '{}'),
		coalesce(array_agg(g.m), '{}'), coalesce(array_agg(g.v), '{}')
	INTO s_key, s_total, s_m, s_v
	FROM @extschema@.ranking_mass(d, lo, hi, full_rebuild) AS g;
	UPDATE @extschema@.ranking r SET
		total_settled = r.total_settled + g.total,
		dlog_settled = @extschema@.log2_add_mass(r.dlog_settled, g.m, g.v)
	FROM unnest(s_key, s_total, s_m, s_v) AS g(key, total, m, v)
	WHERE r.counter_id = d.id AND r.key = g.key;
	INSERT INTO @extschema@.ranking
		(counter_id, key, total, trend, dlog, total_settled, dlog_settled, refreshed_at)
	SELECT d.id, g.key, g.total, 0, '-Infinity', g.total,
		@extschema@.log2_add_mass('-Infinity', g.m, g.v), t
	FROM unnest(s_key, s_total, s_m, s_v) AS g(key, total, m, v)
	WHERE NOT EXISTS (SELECT FROM @extschema@.ranking r WHERE r.counter_id = d.id AND r.key = g.key);
	GET DIAGNOSTICS c = ROW_COUNT;
	n := n + c;

	-- 2. current values of keys with rows from lo on
	INSERT INTO @extschema@.ranking
		(counter_id, key, total, trend, dlog, total_settled, dlog_settled, refreshed_at)
	SELECT DISTINCT d.id, tl.key, 0, 0, '-Infinity'::float8, 0, '-Infinity'::float8, t
	FROM @extschema@.tally tl
	WHERE tl.counter_id = d.id AND tl.bucket >= hi AND (tl.slot >= 0 OR tl.slot = -4 OR tl.slot = -1)
	  AND NOT EXISTS (SELECT FROM @extschema@.ranking r WHERE r.counter_id = d.id AND r.key = tl.key);
	UPDATE @extschema@.ranking r SET
		total = r.total_settled + coalesce(u.total, 0),
		dlog = @extschema@.log2_add_mass(r.dlog_settled, u.m, u.v),
		refreshed_at = t
	FROM (
		SELECT k.key, f.total, f.m, f.v
		FROM (SELECT unnest(s_key) AS key
			  UNION SELECT tl.key FROM @extschema@.tally tl
			  WHERE tl.counter_id = d.id AND tl.bucket >= hi
			    AND (tl.slot >= 0 OR tl.slot = -4 OR tl.slot = -1)) k
		LEFT JOIN @extschema@.ranking_mass(d, hi, 'infinity', false) f ON f.key = k.key
	) u
	WHERE r.counter_id = d.id AND r.key = u.key
	  AND (r.total, r.dlog) IS DISTINCT FROM
		  (r.total_settled + coalesce(u.total, 0), @extschema@.log2_add_mass(r.dlog_settled, u.m, u.v));
	GET DIAGNOSTICS c = ROW_COUNT;
	n := n + c;

	-- 3. trend, of the keys whose trend may have changed since the last
	-- refresh: keys with new rows (from the last horizon on), and keys with
	-- a row whose bucket a span's start has passed meanwhile
	UPDATE @extschema@.ranking r SET trend = coalesce(w.trend, 0), refreshed_at = t
	FROM (
		WITH k AS (
			SELECT r0.key FROM @extschema@.ranking r0
			WHERE full_rebuild AND r0.counter_id = d.id
			UNION
			SELECT tl.key FROM @extschema@.tally tl
			WHERE NOT full_rebuild AND tl.counter_id = d.id
			  AND tl.bucket >= lo - interval '3 minutes'
			  AND (tl.slot >= 0 OR tl.slot = -4 OR tl.slot = -1)
			UNION
			SELECT tl.key FROM unnest(d.trend_spans) AS sp(span)
			JOIN @extschema@.tally tl ON tl.counter_id = d.id
			  AND tl.bucket >= st.refreshed_at - sp.span AND tl.bucket < t - sp.span
			WHERE NOT full_rebuild
			  AND (tl.slot >= 0 OR tl.slot = -4 OR tl.slot = -1 OR tl.slot = -2 OR tl.slot = -3)
		)
		SELECT k.key, x.trend
		FROM k LEFT JOIN (
			SELECT tl.key, sum(tl.value * (
				SELECT coalesce(sum(ws.weight::numeric), 0)
				FROM unnest(d.trend_spans, d.trend_weights) AS ws(span, weight)
				WHERE tl.bucket >= t - ws.span AND tl.bucket < t))::float8 AS trend
			FROM @extschema@.tally tl JOIN k k2 ON k2.key = tl.key
			WHERE tl.counter_id = d.id AND tl.bucket >= t - span_max AND tl.bucket < t
			GROUP BY tl.key
		) x ON x.key = k.key
	) w
	WHERE r.counter_id = d.id AND r.key = w.key AND r.trend IS DISTINCT FROM coalesce(w.trend, 0);
	GET DIAGNOSTICS c = ROW_COUNT;
	n := n + c;

	INSERT INTO @extschema@.ranking_state AS s (counter_id, settled_until, full_at, refreshed_at)
	VALUES (d.id, greatest(hi, lo), CASE WHEN full_rebuild THEN t ELSE '-infinity' END, t)
	ON CONFLICT (counter_id) DO UPDATE SET settled_until = excluded.settled_until,
		full_at = CASE WHEN full_rebuild THEN t ELSE s.full_at END,
		refreshed_at = excluded.refreshed_at;
	RETURN n;
END $$;

-- Background processes -------------------------------------------------------
-- One worker in counter.database became a launcher that serves every
-- database with the extension, each with an ingest process (folds, drains,
-- flush) and a maintenance process (compaction, ranking).  worker_status()
-- has one row per process.

DROP VIEW @extschema@.stats;
DROP FUNCTION @extschema@.worker_status();
DROP FUNCTION @extschema@.stats_raw();

CREATE FUNCTION @extschema@.stats_raw(
	OUT counter_id integer, OUT direct bigint, OUT sharded bigint,
	OUT buffered bigint, OUT fallback bigint, OUT folded bigint,
	OUT cache_hits bigint, OUT redis bigint, OUT deduplicated bigint,
	OUT rate_limited bigint, OUT kafka bigint, OUT pending bigint,
	OUT pending_keys bigint, OUT last_fold timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'counter_stats_raw' LANGUAGE C VOLATILE;
REVOKE EXECUTE ON FUNCTION @extschema@.stats_raw() FROM PUBLIC;

CREATE FUNCTION @extschema@.worker_status(
	OUT pid integer, OUT database name, OUT role text, OUT state text,
	OUT started_at timestamptz, OUT last_round timestamptz,
	OUT last_round_ms float8, OUT rounds bigint, OUT items bigint,
	OUT errors bigint, OUT last_error text, OUT last_error_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'counter_worker_status' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.worker_status() IS
	'one row per background process: the launcher, and the ingest and maintenance process of each database served; state, last round, work done, errors';

CREATE FUNCTION @extschema@.buffer_usage(OUT entries integer, OUT max_entries integer)
RETURNS record
AS 'MODULE_PATHNAME', 'counter_buffer_usage' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.buffer_usage() IS
	'entries of the shared buffer in use (pending increments and cached totals, all databases) and counter.buffer_keys';

CREATE VIEW @extschema@.stats AS
	SELECT d.name, d.mode,
		coalesce(s.direct + s.sharded + s.buffered + s.fallback + s.redis + s.kafka, 0) AS increments,
		coalesce(s.direct, 0) AS direct,
		coalesce(s.sharded, 0) AS sharded,
		coalesce(s.buffered, 0) AS buffered,
		coalesce(s.fallback, 0) AS fallback,
		coalesce(s.redis, 0) AS redis,
		coalesce(s.kafka, 0) AS kafka,
		coalesce(s.deduplicated, 0) AS deduplicated,
		coalesce(s.rate_limited, 0) AS rate_limited,
		coalesce(s.folded, 0) AS folded,
		coalesce(s.pending, 0) AS pending,
		coalesce(s.pending_keys, 0) AS pending_keys,
		coalesce(s.cache_hits, 0) AS cache_hits,
		s.last_fold,
		pg_catalog.now() OPERATOR(pg_catalog.-) s.last_fold AS fold_age,
		(SELECT pg_catalog.sum(w.errors) FROM @extschema@.worker_status() AS w
		 WHERE w.database OPERATOR(pg_catalog.=) pg_catalog.current_database())::bigint AS worker_errors
	FROM @extschema@.definition AS d
	LEFT JOIN @extschema@.stats_raw() AS s ON s.counter_id OPERATOR(pg_catalog.=) d.id;
COMMENT ON VIEW @extschema@.stats IS
	'per counter since server start: committed increments by path (increments = accepted), refused duplicates and rate-limited ones, buffered deltas pending and folded, cache hits, last fold';

REVOKE ALL ON @extschema@.stats FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.worker_status(), @extschema@.buffer_usage() FROM PUBLIC;

-- Ranking in C, proportional to what changed ----------------------------------
-- Per key the ranking keeps its total, its count in each trend span, its
-- trend, and its decayed mass as (dsign, dlog); a refresh recomputes only
-- the keys whose rows changed or crossed a span's edge (src/rank.c).

DROP FUNCTION @extschema@.refresh_ranking_one(@extschema@.definition, timestamptz, boolean);
DROP FUNCTION @extschema@.ranking_mass(@extschema@.definition, timestamptz, timestamptz, boolean);
DROP FUNCTION @extschema@.log2_add_mass(float8, float8, float8);
DROP FUNCTION @extschema@.log2_add(float8, float8, float8);

TRUNCATE @extschema@.ranking, @extschema@.ranking_state;
DROP INDEX @extschema@.ranking_decayed;
ALTER TABLE @extschema@.ranking
	DROP COLUMN total_settled,
	DROP COLUMN dlog_settled,
	ADD COLUMN windows bigint[] NOT NULL DEFAULT '{}',
	ADD COLUMN dsign smallint NOT NULL DEFAULT 0;
CREATE INDEX ranking_decayed ON @extschema@.ranking (counter_id, dsign DESC, dlog DESC);
COMMENT ON TABLE @extschema@.ranking IS
	'per key, as of its last refresh: total, count per trend span, trend score, and the decayed mass as (dsign, dlog); top() reads it';
ALTER TABLE @extschema@.ranking_state
	DROP COLUMN settled_until,
	DROP COLUMN full_at,
	ADD COLUMN epoch bigint,
	ADD COLUMN next_due timestamptz,
	ADD COLUMN spans interval[],
	ADD COLUMN weights float8[],
	ADD COLUMN half_life interval;
COMMENT ON TABLE @extschema@.ranking_state IS
	'per counter: when its ranking was refreshed, under which epoch of changed keys and settings, and when a row next crosses a window edge (before it, a refresh with no changed keys has nothing to do)';

CREATE OR REPLACE FUNCTION @extschema@.refresh_ranking(
	counter @extschema@.counter DEFAULT NULL,
	now timestamptz DEFAULT NULL,
	"full" boolean DEFAULT false)
RETURNS bigint
AS 'MODULE_PATHNAME', 'counter_refresh_ranking' LANGUAGE C VOLATILE;

CREATE FUNCTION @extschema@.decayed_value(dsign smallint, dlog float8, half_life interval, at timestamptz)
RETURNS float8
AS 'MODULE_PATHNAME', 'counter_decayed_value' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.decayed_value(smallint, float8, interval, timestamptz) IS
	'a ranked decayed mass as a score at a time; zero where it underflows';

CREATE FUNCTION @extschema@.rank_exact(counter @extschema@.counter, now timestamptz DEFAULT NULL,
	OUT key bigint, OUT total bigint, OUT trend float8, OUT decayed float8)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'counter_rank_exact' LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@.rank_exact(@extschema@.counter, timestamptz) IS
	'every key''s total, trend and decayed score computed from the tallies as of now';

CREATE OR REPLACE FUNCTION @extschema@.trend_score(counter @extschema@.counter, key text,
	now timestamptz DEFAULT NULL)
RETURNS float8
AS 'MODULE_PATHNAME', 'counter_trend_score' LANGUAGE C STABLE;
CREATE OR REPLACE FUNCTION @extschema@.trend_score(counter @extschema@.counter, key bigint,
	now timestamptz DEFAULT NULL)
RETURNS float8
AS 'MODULE_PATHNAME', 'counter_trend_score' LANGUAGE C STABLE;
CREATE OR REPLACE FUNCTION @extschema@.decayed_score(counter @extschema@.counter, key text,
	now timestamptz DEFAULT NULL)
RETURNS float8
AS 'MODULE_PATHNAME', 'counter_decayed_score' LANGUAGE C STABLE;
CREATE OR REPLACE FUNCTION @extschema@.decayed_score(counter @extschema@.counter, key bigint,
	now timestamptz DEFAULT NULL)
RETURNS float8
AS 'MODULE_PATHNAME', 'counter_decayed_score' LANGUAGE C STABLE;

CREATE OR REPLACE FUNCTION @extschema@.top(
	counter @extschema@.counter,
	n integer DEFAULT 10,
	by text DEFAULT 'trend',
	now timestamptz DEFAULT NULL)
RETURNS TABLE (key bigint, value float8, rank bigint, key_text text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	d @extschema@.definition;
	span interval;
	t timestamptz := coalesce(now, pg_catalog.now());
BEGIN
	IF counter IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'counter must not be null';
	END IF;
	SELECT * INTO d FROM @extschema@.definition WHERE id = @extschema@.id(counter);
	IF n IS NULL OR n < 1 OR n > 10000 THEN
		RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'n must be between 1 and 10000';
	END IF;
	IF by IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'by must not be null';
	END IF;
	IF NOT isfinite(t) THEN
		RAISE EXCEPTION USING ERRCODE = '22008', MESSAGE = 'now must be a finite timestamp';
	END IF;
	IF by NOT IN ('trend', 'decayed', 'total') THEN
		BEGIN
			span := by::interval;
		EXCEPTION WHEN others THEN
			RAISE EXCEPTION USING ERRCODE = '22023',
				MESSAGE = format('invalid ranking "%s"', by),
				HINT = 'Rank by ''trend'', ''decayed'', ''total'' or an interval such as ''1 hour''.';
		END;
		IF span <= interval '0' THEN
			RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'the ranking window must be positive';
		END IF;
	END IF;

	IF now IS NULL AND span IS NULL THEN
		-- the maintained ranking: an index scan, at most counter.rank_interval stale
		RETURN QUERY
		SELECT r.key, r.v, pg_catalog.rank() OVER (ORDER BY r.v DESC), m.name
		FROM (
			SELECT rk.key, rk.total::float8 AS v
			FROM @extschema@.ranking rk
			WHERE rk.counter_id = d.id AND by = 'total'
			ORDER BY rk.total DESC, rk.key LIMIT n
		) r
		LEFT JOIN @extschema@.text_key m ON m.counter_id = d.id AND m.id = r.key AND d.key_type = 'text'
		WHERE by = 'total'
		UNION ALL
		SELECT r.key, r.v, pg_catalog.rank() OVER (ORDER BY r.v DESC), m.name
		FROM (
			SELECT rk.key, rk.trend AS v
			FROM @extschema@.ranking rk
			WHERE rk.counter_id = d.id AND by = 'trend'
			ORDER BY rk.trend DESC, rk.key LIMIT n
		) r
		LEFT JOIN @extschema@.text_key m ON m.counter_id = d.id AND m.id = r.key AND d.key_type = 'text'
		WHERE by = 'trend'
		UNION ALL
		SELECT r.key, @extschema@.decayed_value(r.dsign, r.dlog, d.half_life, t),
			pg_catalog.rank() OVER (ORDER BY r.dsign DESC, r.dlog DESC), m.name
		FROM (
			SELECT rk.key, rk.dsign, rk.dlog
			FROM @extschema@.ranking rk
			WHERE rk.counter_id = d.id AND by = 'decayed'
			ORDER BY rk.dsign DESC, rk.dlog DESC, rk.key LIMIT n
		) r
		LEFT JOIN @extschema@.text_key m ON m.counter_id = d.id AND m.id = r.key AND d.key_type = 'text'
		WHERE by = 'decayed'
		ORDER BY 3, 1;
		RETURN;
	END IF;

	IF span IS NOT NULL THEN
		-- the count in [now - span, now), from the tallies (a day is 24 hours)
		RETURN QUERY
		SELECT r.key, r.v, pg_catalog.rank() OVER (ORDER BY r.v DESC), m.name
		FROM (
			SELECT tl.key, sum(tl.value)::float8 AS v
			FROM @extschema@.tally tl
			WHERE tl.counter_id = d.id
			  AND tl.bucket >= t - extract(epoch FROM span) * interval '1 second' AND tl.bucket < t
			GROUP BY tl.key
		) r
		LEFT JOIN @extschema@.text_key m ON m.counter_id = d.id AND m.id = r.key AND d.key_type = 'text'
		WHERE r.v <> 0
		ORDER BY r.v DESC, r.key
		LIMIT n;
		RETURN;
	END IF;

	-- exact, from every row of the counter as of now
	RETURN QUERY
	SELECT r.key, r.v, pg_catalog.rank() OVER (ORDER BY r.v DESC), m.name
	FROM (
		SELECT e.key, CASE by WHEN 'total' THEN e.total::float8 WHEN 'trend' THEN e.trend
			ELSE e.decayed END AS v
		FROM @extschema@.rank_exact(counter, t) e
	) r
	LEFT JOIN @extschema@.text_key m ON m.counter_id = d.id AND m.id = r.key AND d.key_type = 'text'
	ORDER BY r.v DESC, r.key
	LIMIT n;
END $$;

REVOKE EXECUTE ON FUNCTION @extschema@.rank_exact(@extschema@.counter, timestamptz) FROM PUBLIC;

-- Build every ranking now, under the new rules.
SELECT @extschema@.refresh_ranking("full" => true) >= 0 AS rebuilt;

-- Redis ingestion is opt-in per counter ----------------------------------------
-- Only counters with a redis_prefix have their keys drained, and only
-- counters with a redis_stream read a stream: nothing else in a Redis the
-- worker is pointed at is touched.  A prefix or stream may not reach into
-- another owner's (counter.alter checks).  What a drain cannot count goes
-- to counter.quarantine with every other source's.

ALTER TABLE @extschema@.definition
	ADD COLUMN redis_stream text CHECK (redis_stream <> ''),
	ADD COLUMN kafka_topic text CHECK (kafka_topic <> '');

-- 0.1 drained '<name>:' for every counter once counter.redis_url was set:
-- where it is set, those prefixes (and the one stream) become explicit, so
-- an upgrade keeps draining what it drained.
DO $$
BEGIN
	IF coalesce(current_setting('counter.redis_url', true), '') <> '' THEN
		UPDATE @extschema@.definition SET redis_prefix = name || ':' WHERE redis_prefix IS NULL;
		-- a WARNING: CREATE/ALTER EXTENSION hide a script's NOTICEs
		IF FOUND THEN
			RAISE WARNING 'counter: counter.redis_url is set, so every counter keeps draining Redis keys "<name>:*"; clear a prefix with counter.alter(c, redis_prefix => '''')';
		END IF;
		IF coalesce(current_setting('counter.redis_stream', true), '') <> '' THEN
			UPDATE @extschema@.definition SET redis_stream = current_setting('counter.redis_stream')
			WHERE redis_stream IS NULL;
		END IF;
	END IF;
END $$;

CREATE OR REPLACE VIEW @extschema@.counters AS
	SELECT d.name, d.id, d.mode, d.slots, d.key_type, d.redis_prefix,
		d.dedup_window, d.max_per_actor, d.rate_window, d.max_delta,
		d.minute_retention, d.hour_retention, d.day_retention,
		d.half_life, d.trend_spans, d.trend_weights,
		d.owner, d.created_at, d.redis_stream, d.kafka_topic
	FROM @extschema@.definition AS d;

-- counter.alter() gains redis_stream, kafka_topic and clickhouse_table:
-- see the ClickHouse export section below.

INSERT INTO @extschema@.quarantine (source, origin, item, value, reason, at)
	SELECT CASE WHEN q.redis_key LIKE '%/%-%' THEN 'redis stream' ELSE 'redis' END,
		q.master, q.redis_key, q.value, q.reason, q.at
	FROM @extschema@.redis_quarantine q ORDER BY q.id;
ALTER EXTENSION counter DROP TABLE @extschema@.redis_quarantine;
ALTER EXTENSION counter DROP SEQUENCE @extschema@.redis_quarantine_id_seq;
DROP TABLE @extschema@.redis_quarantine;
CREATE VIEW @extschema@.redis_quarantine AS
	SELECT q.id, q.origin AS master, q.item AS redis_key, q.value, q.reason, q.at
	FROM @extschema@.quarantine q
	WHERE q.source IN ('redis', 'redis stream');
COMMENT ON VIEW @extschema@.redis_quarantine IS
	'the Redis items of counter.quarantine, as 0.1 named them';
REVOKE ALL ON @extschema@.redis_quarantine FROM PUBLIC;

-- The handle sorts, groups and hashes -------------------------------------------
-- By id, as regclass does by oid: ORDER BY, GROUP BY and DISTINCT on a
-- counter.counter column work.

CREATE FUNCTION @extschema@.counter_cmp(@extschema@.counter, @extschema@.counter)
RETURNS integer AS 'MODULE_PATHNAME', 'counter_cmp' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE LEAKPROOF;
CREATE FUNCTION @extschema@.counter_lt(@extschema@.counter, @extschema@.counter)
RETURNS boolean AS 'MODULE_PATHNAME', 'counter_lt' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE LEAKPROOF;
CREATE FUNCTION @extschema@.counter_le(@extschema@.counter, @extschema@.counter)
RETURNS boolean AS 'MODULE_PATHNAME', 'counter_le' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE LEAKPROOF;
CREATE FUNCTION @extschema@.counter_gt(@extschema@.counter, @extschema@.counter)
RETURNS boolean AS 'MODULE_PATHNAME', 'counter_gt' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE LEAKPROOF;
CREATE FUNCTION @extschema@.counter_ge(@extschema@.counter, @extschema@.counter)
RETURNS boolean AS 'MODULE_PATHNAME', 'counter_ge' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE LEAKPROOF;
CREATE FUNCTION @extschema@.counter_hash(@extschema@.counter)
RETURNS integer AS 'MODULE_PATHNAME', 'counter_hash' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE LEAKPROOF;

CREATE OPERATOR @extschema@.< (
	LEFTARG = @extschema@.counter, RIGHTARG = @extschema@.counter,
	FUNCTION = @extschema@.counter_lt,
	COMMUTATOR = OPERATOR(@extschema@.>), NEGATOR = OPERATOR(@extschema@.>=),
	RESTRICT = pg_catalog.scalarltsel, JOIN = pg_catalog.scalarltjoinsel);
CREATE OPERATOR @extschema@.<= (
	LEFTARG = @extschema@.counter, RIGHTARG = @extschema@.counter,
	FUNCTION = @extschema@.counter_le,
	COMMUTATOR = OPERATOR(@extschema@.>=), NEGATOR = OPERATOR(@extschema@.>),
	RESTRICT = pg_catalog.scalarlesel, JOIN = pg_catalog.scalarlejoinsel);
CREATE OPERATOR @extschema@.> (
	LEFTARG = @extschema@.counter, RIGHTARG = @extschema@.counter,
	FUNCTION = @extschema@.counter_gt,
	COMMUTATOR = OPERATOR(@extschema@.<), NEGATOR = OPERATOR(@extschema@.<=),
	RESTRICT = pg_catalog.scalargtsel, JOIN = pg_catalog.scalargtjoinsel);
CREATE OPERATOR @extschema@.>= (
	LEFTARG = @extschema@.counter, RIGHTARG = @extschema@.counter,
	FUNCTION = @extschema@.counter_ge,
	COMMUTATOR = OPERATOR(@extschema@.<=), NEGATOR = OPERATOR(@extschema@.<),
	RESTRICT = pg_catalog.scalargesel, JOIN = pg_catalog.scalargejoinsel);

CREATE OPERATOR CLASS @extschema@.counter_ops
	DEFAULT FOR TYPE @extschema@.counter USING btree AS
		OPERATOR 1 @extschema@.<,
		OPERATOR 2 @extschema@.<=,
		OPERATOR 3 @extschema@.=,
		OPERATOR 4 @extschema@.>=,
		OPERATOR 5 @extschema@.>,
		FUNCTION 1 @extschema@.counter_cmp(@extschema@.counter, @extschema@.counter);
CREATE OPERATOR CLASS @extschema@.counter_hash_ops
	DEFAULT FOR TYPE @extschema@.counter USING hash AS
		OPERATOR 1 @extschema@.=,
		FUNCTION 1 @extschema@.counter_hash(@extschema@.counter);

-- From every driver ------------------------------------------------------------
-- A counter's name as text or varchar (a bound parameter, a PL/pgSQL
-- variable, a column of counter.counters) converts implicitly, as text does
-- to regclass.  An untyped list (what node-pg sends, and psycopg for a list
-- of strings) arrives as an array literal: get_many(counter, text) reads it
-- in the counter's key type, where the two typed versions would be
-- ambiguous.
CREATE CAST (text AS @extschema@.counter) WITH INOUT AS IMPLICIT;
CREATE CAST (varchar AS @extschema@.counter) WITH INOUT AS IMPLICIT;

CREATE FUNCTION @extschema@.get_many(counter @extschema@.counter, keys text)
RETURNS TABLE(key text, value bigint)
AS 'MODULE_PATHNAME', 'counter_get_many' LANGUAGE C STABLE ROWS 10;
COMMENT ON FUNCTION @extschema@.get_many(@extschema@.counter, text) IS
	'totals of the keys in an array literal such as ''{1,2,3}'', read in the counter''s key type; keys come back as text';
REVOKE EXECUTE ON FUNCTION @extschema@.get_many(@extschema@.counter, text) FROM PUBLIC;

-- Into the application's own tables ---------------------------------------------
-- counter.sync keeps a column of the application's table equal to a
-- counter's totals: the maintenance process writes the keys that changed
-- since their last sync, as the role that registered it.  Syncs are part of
-- the counter: counter.drop removes them.
CREATE TABLE @extschema@.sync (
	id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	counter_id integer NOT NULL,
	target regclass NOT NULL,
	key_column name NOT NULL,
	value_column name NOT NULL,
	every interval NOT NULL,
	owner regrole NOT NULL,
	paused boolean NOT NULL DEFAULT false,
	epoch bigint NOT NULL DEFAULT 0,	-- changed-key epoch of the last complete pass (0: none)
	last_run timestamptz,
	rows_written bigint NOT NULL DEFAULT 0,
	rows_missing bigint NOT NULL DEFAULT 0,
	last_error text,
	last_error_at timestamptz,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	UNIQUE (counter_id, target, value_column)
);
COMMENT ON TABLE @extschema@.sync IS
	'columns of application tables kept equal to a counter''s totals (counter.sync)';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.sync', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.sync_id_seq', '');
REVOKE ALL ON @extschema@.sync FROM PUBLIC;

CREATE FUNCTION @extschema@.sync(
	counter @extschema@.counter,
	target regclass,
	key_column name,
	value_column name,
	every interval DEFAULT '5 seconds')
RETURNS void
AS 'MODULE_PATHNAME', 'counter_sync' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.sync(@extschema@.counter, regclass, name, name, interval) IS
	'keep target.value_column equal to the counter''s total of target.key_column, within every; written as the calling role; calling it again resumes a paused sync';

CREATE FUNCTION @extschema@.unsync(
	counter @extschema@.counter,
	target regclass DEFAULT NULL,
	value_column name DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME', 'counter_unsync' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.unsync(@extschema@.counter, regclass, name) IS
	'remove the counter''s syncs (to one table, or one column of it); returns how many';

CREATE VIEW @extschema@.syncs AS
	SELECT d.name AS counter, s.target, s.key_column, s.value_column, s.every,
		s.owner,
		CASE WHEN s.paused THEN 'paused' ELSE 'active' END AS state,
		s.last_run,
		pg_catalog.now() OPERATOR(pg_catalog.-) s.last_run AS lag,
		s.rows_written, s.rows_missing, s.last_error, s.last_error_at
	FROM @extschema@.sync AS s
	JOIN @extschema@.definition AS d ON d.id OPERATOR(pg_catalog.=) s.counter_id;
COMMENT ON VIEW @extschema@.syncs IS
	'every sync: its state, when it last ran, what it wrote, rows it found missing, its last error';
GRANT SELECT ON @extschema@.syncs TO PUBLIC;

-- Reconcile: the source runs as the caller (this function is not SECURITY
-- DEFINER, and its own names are schema-qualified); the counter's totals
-- come from get_many and the keys it holds from key_list, both under their
-- own grants; corrections go through correct(), which is incr_many without
-- max_delta, at the current minute.
CREATE FUNCTION @extschema@.key_list(counter @extschema@.counter)
RETURNS TABLE (key text)
AS 'MODULE_PATHNAME', 'counter_key_list' LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@.key_list(@extschema@.counter) IS
	'every key the counter has rows for, as text (folded and durable rows; not keys only in the shared buffer)';
REVOKE EXECUTE ON FUNCTION @extschema@.key_list(@extschema@.counter) FROM PUBLIC;

CREATE FUNCTION @extschema@.correct(counter @extschema@.counter, keys text[], deltas bigint[])
RETURNS bigint
AS 'MODULE_PATHNAME', 'counter_correct' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.correct(@extschema@.counter, text[], bigint[]) IS
	'add deltas[i] to keys[i] at the current minute, bypassing max_delta (what reconcile applies)';
REVOKE EXECUTE ON FUNCTION @extschema@.correct(@extschema@.counter, text[], bigint[]) FROM PUBLIC;

CREATE FUNCTION @extschema@.reconcile_run(counter @extschema@.counter, query text, apply boolean)
RETURNS TABLE (key text, counted bigint, expected bigint, diff bigint)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
	c ALIAS FOR $1;
	q ALIAS FOR $2;
	do_apply ALIAS FOR $3;
	fixes record;
BEGIN
	IF c IS NULL OR q IS NULL OR do_apply IS NULL THEN
		RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'counter, source and apply must not be null';
	END IF;
	-- one pass: the source summed per key, every key either side holds, the
	-- counter's exact totals of those keys; then only the keys that differ
	CREATE TEMP TABLE IF NOT EXISTS pg_temp.counter_reconcile_result
		(key text, counted bigint, source bigint, diff bigint) ON COMMIT DROP;
	TRUNCATE pg_temp.counter_reconcile_result;
	EXECUTE pg_catalog.format($q$
		INSERT INTO pg_temp.counter_reconcile_result
		WITH src AS (
			SELECT s.k::text AS key, pg_catalog.sum(s.v)::bigint AS value
			FROM (%s) AS s(k, v) GROUP BY 1),
		keys AS (
			SELECT src.key FROM src UNION SELECT l.k FROM @extschema@.key_list($1) AS l(k)),
		cur AS (
			SELECT g.key, g.value FROM @extschema@.get_many($1,
				coalesce((SELECT pg_catalog.array_agg(keys.key)::text FROM keys), '{}')) AS g)
		SELECT cur.key, cur.value, coalesce(src.value, 0),
			coalesce(src.value, 0) OPERATOR(pg_catalog.-) cur.value
		FROM cur LEFT JOIN src ON src.key OPERATOR(pg_catalog.=) cur.key
		WHERE cur.value OPERATOR(pg_catalog.<>) coalesce(src.value, 0)
		$q$, q) USING c;
	IF do_apply THEN
		SELECT pg_catalog.array_agg(r.key ORDER BY r.key) AS keys,
			pg_catalog.array_agg(r.diff ORDER BY r.key) AS diffs
		INTO fixes FROM pg_temp.counter_reconcile_result AS r;
		IF fixes.keys IS NOT NULL THEN
			PERFORM @extschema@.correct(c, fixes.keys, fixes.diffs);
		END IF;
	END IF;
	RETURN QUERY SELECT r.key, r.counted, r.source, r.diff FROM pg_temp.counter_reconcile_result AS r ORDER BY r.key;
END
$$;
COMMENT ON FUNCTION @extschema@.reconcile_run(@extschema@.counter, text, boolean) IS
	'the body of reconcile (whose output column "source" a PL/pgSQL function could not also take as its argument)';
REVOKE EXECUTE ON FUNCTION @extschema@.reconcile_run(@extschema@.counter, text, boolean) FROM PUBLIC;

CREATE FUNCTION @extschema@.reconcile(counter @extschema@.counter, source text, apply boolean DEFAULT false)
RETURNS TABLE (key text, counted bigint, source bigint, diff bigint)
LANGUAGE sql VOLATILE
AS 'SELECT * FROM @extschema@.reconcile_run($1, $2, $3)';
COMMENT ON FUNCTION @extschema@.reconcile(@extschema@.counter, text, boolean) IS
	'compare the counter with a query returning (key, value); with apply, add the differences at the current minute so that each key equals the source as of this statement';
REVOKE EXECUTE ON FUNCTION @extschema@.reconcile(@extschema@.counter, text, boolean) FROM PUBLIC;

-- Kafka ingestion --------------------------------------------------------------
-- Counters with a kafka_topic read it through each database's consumer
-- (src/kafka.c).  The offset each partition is read up to is kept here, in
-- the transaction that applies the messages before it: a restart or a
-- rebalance resumes from these rows, never from the group's offsets in
-- Kafka, so every message counts once.

CREATE TABLE @extschema@.kafka_offset (
	grp text NOT NULL,
	topic text NOT NULL,
	partition integer NOT NULL,
	next_offset bigint NOT NULL,		-- the first offset not applied yet
	high_watermark bigint,				-- the partition's end, as last seen
	updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
	PRIMARY KEY (grp, topic, partition)
);
COMMENT ON TABLE @extschema@.kafka_offset IS
	'per consumer group and partition, the first Kafka offset not yet applied, stored with each batch';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.kafka_offset', '');
REVOKE ALL ON @extschema@.kafka_offset FROM PUBLIC;

CREATE FUNCTION @extschema@.kafka_status(
	OUT topic text, OUT partition integer, OUT next_offset bigint,
	OUT high_watermark bigint, OUT lag bigint, OUT updated_at timestamptz,
	OUT consumer text, OUT last_error text, OUT last_error_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'counter_kafka_status' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.kafka_status() IS
	'this database''s Kafka consumer: per partition the next offset to apply, the end last seen and the lag; its state and last error';
REVOKE EXECUTE ON FUNCTION @extschema@.kafka_status() FROM PUBLIC;

-- ClickHouse export ---------------------------------------------------------------
-- A counter with a clickhouse_table has its settled minute buckets exported
-- by the maintenance process into that ClickHouse table (src/export.c):
-- counter.export holds each counter's frontier (every minute before it has
-- been sent and acknowledged) and status; counter.export_note the buckets
-- behind the frontier that a backfill changed since, to be sent again with
-- their new sums.  Rollups of an exporting counter wait for both.
ALTER TABLE @extschema@.definition
	ADD COLUMN clickhouse_table text CHECK (clickhouse_table <> '');

CREATE TABLE @extschema@.export (
	counter_id integer PRIMARY KEY,
	clickhouse_table text NOT NULL,
	since timestamptz,			-- the first minute exported; NULL: not started
	frontier timestamptz,		-- every minute before it (and of it, up to frontier_key) is exported
	frontier_key bigint,
	settled timestamptz,		-- minutes before this were settled at the last run
	version bigint NOT NULL DEFAULT 0,	-- of the last acknowledged batch
	batches bigint NOT NULL DEFAULT 0,
	buckets bigint NOT NULL DEFAULT 0,
	resent bigint NOT NULL DEFAULT 0,	-- buckets sent again after a backfill
	skipped bigint NOT NULL DEFAULT 0,	-- backfilled buckets Postgres had already rolled up
	last_export timestamptz,
	failures integer NOT NULL DEFAULT 0,	-- in a row, for the backoff
	retry_at timestamptz,
	last_error text,
	last_error_at timestamptz
);
COMMENT ON TABLE @extschema@.export IS
	'per exporting counter: how far its minutes are in ClickHouse, and its last error';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.export', '');
REVOKE ALL ON @extschema@.export FROM PUBLIC;

CREATE TABLE @extschema@.export_note (
	counter_id integer NOT NULL,
	key bigint NOT NULL,
	minute timestamptz NOT NULL,
	slot smallint NOT NULL,
	xid bigint NOT NULL,		-- the last transaction that noted it
	PRIMARY KEY (counter_id, key, minute, slot)
);
CREATE INDEX export_note_minute ON @extschema@.export_note (counter_id, minute);
COMMENT ON TABLE @extschema@.export_note IS
	'minute buckets of exporting counters that a write reached after their minute had passed (a backfill)';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.export_note', '');
REVOKE ALL ON @extschema@.export_note FROM PUBLIC;

CREATE OR REPLACE VIEW @extschema@.counters AS
	SELECT d.name, d.id, d.mode, d.slots, d.key_type, d.redis_prefix,
		d.dedup_window, d.max_per_actor, d.rate_window, d.max_delta,
		d.minute_retention, d.hour_retention, d.day_retention,
		d.half_life, d.trend_spans, d.trend_weights,
		d.owner, d.created_at, d.redis_stream, d.kafka_topic, d.clickhouse_table
	FROM @extschema@.definition AS d;

DROP FUNCTION @extschema@.alter(@extschema@.counter, text, integer, text, interval, integer, interval, bigint, interval, interval, interval, interval, interval[], float8[]);
CREATE FUNCTION @extschema@.alter(
	counter @extschema@.counter,
	mode text DEFAULT NULL,
	slots integer DEFAULT NULL,
	redis_prefix text DEFAULT NULL,
	dedup_window interval DEFAULT NULL,
	max_per_actor integer DEFAULT NULL,
	rate_window interval DEFAULT NULL,
	max_delta bigint DEFAULT NULL,
	minute_retention interval DEFAULT NULL,
	hour_retention interval DEFAULT NULL,
	day_retention interval DEFAULT NULL,
	half_life interval DEFAULT NULL,
	trend_spans interval[] DEFAULT NULL,
	trend_weights float8[] DEFAULT NULL,
	redis_stream text DEFAULT NULL,
	kafka_topic text DEFAULT NULL,
	clickhouse_table text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'counter_alter' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.alter(@extschema@.counter, text, integer, text, interval, integer, interval, bigint, interval, interval, interval, interval, interval[], float8[], text, text, text) IS
	'change a counter''s settings online; arguments left null keep their value; an empty redis_prefix, redis_stream, kafka_topic or clickhouse_table stops that drain or export';
REVOKE EXECUTE ON FUNCTION @extschema@.alter(@extschema@.counter, text, integer, text, interval, integer, interval, bigint, interval, interval, interval, interval, interval[], float8[], text, text, text) FROM PUBLIC;

CREATE VIEW @extschema@.exports AS
	SELECT d.name AS counter, e.clickhouse_table,
		CASE WHEN e.last_error IS NOT NULL AND e.failures > 0 THEN 'retrying'
			WHEN e.frontier IS NULL THEN 'starting' ELSE 'exporting' END AS state,
		e.since, e.frontier, e.settled,
		GREATEST(interval '0', pg_catalog.now() OPERATOR(pg_catalog.-)
			coalesce(e.frontier, e.since, d.created_at) OPERATOR(pg_catalog.-) interval '1 minute') AS lag,
		(SELECT pg_catalog.count(*) FROM @extschema@.export_note n
		 WHERE n.counter_id OPERATOR(pg_catalog.=) e.counter_id) AS backfills,
		e.batches, e.buckets, e.resent, e.skipped, e.last_export,
		e.failures, e.retry_at, e.last_error, e.last_error_at
	FROM @extschema@.export AS e
	JOIN @extschema@.definition AS d ON d.id OPERATOR(pg_catalog.=) e.counter_id
		AND d.clickhouse_table OPERATOR(pg_catalog.=) e.clickhouse_table;
COMMENT ON VIEW @extschema@.exports IS
	'every ClickHouse export: how far it is (frontier, lag: how long the oldest minute not yet in ClickHouse has been over), backfilled buckets to resend, its last error';
GRANT SELECT ON @extschema@.exports TO PUBLIC;
