-- Hostile and careless input: settings that would break maintenance or a
-- counter are refused at alter and change nothing; a counter whose settings
-- came in out of range still works and can be dropped; very old buckets
-- neither underflow nor stop maintenance; wrong calls get the right
-- SQLSTATE; the handle sorts and groups.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS counter CASCADE;
CREATE EXTENSION counter;
RESET client_min_messages;

-- The SQLSTATE and message of a statement, or 'ok'.
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

SELECT counter.create('h1');
SELECT s, pg_temp.try(s) FROM (VALUES
	($$SELECT counter.alter('h1', minute_retention => '3000000 days')$$),
	($$SELECT counter.alter('h1', hour_retention => '3000000 days')$$),
	($$SELECT counter.alter('h1', day_retention => '3000000 days')$$),
	($$SELECT counter.alter('h1', rate_window => '106751991 days')$$),
	($$SELECT counter.alter('h1', dedup_window => '2147483647 days')$$),
	($$SELECT counter.alter('h1', dedup_window => '106751991 days')$$),
	($$SELECT counter.alter('h1', half_life => '1000000 days')$$),
	($$SELECT counter.alter('h1', trend_spans => '{3000000 days}', trend_weights => '{1}')$$),
	($$SELECT counter.alter('h1', trend_weights => '{1e308, 1, 1}')$$),
	($$SELECT counter.alter('h1', trend_weights => '{NaN, 1, 1}')$$),
	($$SELECT counter.alter('h1', trend_weights => '{Infinity, 1, 1}')$$),
	($$SELECT counter.alter('h1', trend_spans => '{{1 hour}, {1 day}}', trend_weights => '{1, 2}')$$),
	($$SELECT counter.alter('h1', trend_spans => '{1 hour}')$$),
	($$SELECT counter.alter('h1', trend_spans => '{}', trend_weights => '{}')$$),
	($$SELECT counter.alter('h1', redis_prefix => 'counter:x:')$$),
	($$SELECT counter.alter('h1', minute_retention => '36525 days')$$)
) AS t(s);
-- none of the refused ones took (the last one is the longest allowed)
SELECT minute_retention, hour_retention, dedup_window, rate_window, half_life,
       trend_spans, trend_weights, redis_prefix
FROM counter.counters WHERE name = 'h1';

-- A setting out of range from before (0.1 took it, or a hand edit): the
-- counter still counts, dedups, and can be dropped.
UPDATE counter.definition SET dedup_window = '2147483647 days', rate_window = '106751991 days'
WHERE name = 'h1';
SELECT counter.incr('h1', 1, 5, event => 'e1') AS first, counter.incr('h1', 1, 5, event => 'e1') AS repeat;
SELECT counter.get('h1', 1) AS five;
SELECT counter.drop('h1');

-- Decay of a bucket 1,200 days old (half_life 1 day) neither underflows
-- nor stops compaction or ranking, for this counter or any other.
SELECT counter.create('old');
SELECT counter.create('young');
SELECT counter.incr('old', 1, 1, at => now() - interval '1200 days');
SELECT counter.incr('old', 1, 1);
SELECT counter.incr('young', 7, 3);
SELECT round(counter.decayed_score('old', 1)::numeric, 3) AS decayed_now;
SELECT round(counter.decayed_score('old', 1, now => now() - interval '1199 days')::numeric, 3) AS a_day_later;
SELECT counter.compact() >= 0 AS compacted;
SELECT counter.refresh_ranking() >= 0 AS ranked;
SELECT key FROM counter.top('old', 1, 'decayed');
SELECT key FROM counter.top('old', 1, 'decayed', now => now());
SELECT key FROM counter.top('young', 1, 'total');

-- Wrong calls: the right SQLSTATE, consistently.
SELECT s, pg_temp.try(s) FROM (VALUES
	($$SELECT counter.definition_changed()$$),
	($$SELECT counter.trend_score(NULL, 1)$$),
	($$SELECT counter.decayed_score(NULL, 1)$$),
	($$SELECT counter.decayed_score('old', NULL::bigint)$$),
	($$SELECT counter.window(NULL, 1, '1 hour')$$),
	($$SELECT * FROM counter.top(NULL)$$),
	($$SELECT * FROM counter.get_many('old', '{{1, 2}, {3, 4}}'::bigint[])$$),
	($$SELECT counter.incr('old', ' 42')$$),
	($$SELECT counter.incr('old', '42 ')$$),
	($$SELECT counter.get('old', 1, max_age => '2147483647 days 2562047788 hours')$$),
	($$SELECT counter.refresh_ranking(now => '-infinity')$$),
	($$SELECT counter.trend_score('old', 1, now => 'infinity')$$)
) AS t(s);

-- The handle sorts, groups and is DISTINCT, by id.
SELECT c, count(*) FROM (VALUES ('young'::counter.counter), ('old'), ('young')) AS v(c)
GROUP BY c ORDER BY c;
SELECT DISTINCT c FROM (VALUES ('young'::counter.counter), ('old'), ('young')) AS v(c) ORDER BY 1;
SELECT 'old'::counter.counter OPERATOR(counter.<) 'young'::counter.counter AS old_first;
