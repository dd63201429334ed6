-- Windows, trend and decayed scores against a reference computed here from
-- the raw events; rollups keep totals and aligned windows exact; top-N
-- ordering, ties, and retention.

SELECT counter.create('tr');
SELECT counter.alter('tr', half_life => '6 hours');

-- 600 events over ten days before 2026-01-11 00:00 UTC, on 5 keys.
CREATE TEMP TABLE ev AS
SELECT i, 1 + i % 5 AS k, 1 + i % 3 AS delta,
       timestamptz '2026-01-01 00:00+00' + make_interval(mins => (i * 7919) % 14400) AS t
FROM generate_series(1, 600) AS i;
SELECT count(*) FILTER (WHERE counter.incr('tr', k, delta, at => t)) AS counted FROM ev;

CREATE TEMP TABLE probe (now timestamptz, span interval);
INSERT INTO probe
SELECT n, s FROM unnest(ARRAY['2026-01-11 00:00+00', '2026-01-10 12:34:56+00',
                              '2026-01-05 00:00+00']::timestamptz[]) AS n,
                 unnest(ARRAY['1 minute', '7 minutes', '1 hour', '90 minutes', '1 day',
                              '3 days', '7 days', '30 days']::interval[]) AS s;

-- Reference: an event counts in a window when its minute starts in it.
CREATE FUNCTION pg_temp.ref_window(key int, span interval, now timestamptz) RETURNS bigint
LANGUAGE sql AS $$
	SELECT coalesce(sum(delta), 0) FROM ev
	WHERE k = key AND date_trunc('minute', t) >= now - span AND date_trunc('minute', t) < now
$$;

SELECT count(*) AS windows_checked,
       count(*) FILTER (WHERE counter.window('tr', k, p.span, now => p.now)
                              = pg_temp.ref_window(k, p.span, p.now)) AS windows_equal
FROM probe p, generate_series(1, 5) AS k;

-- trend_score = 1.0 x 1 hour + 0.5 x 1 day + 0.1 x 7 days of the reference.
SELECT count(*) FILTER (WHERE abs(counter.trend_score('tr', k, now => n)
           - (pg_temp.ref_window(k, '1 hour', n) + 0.5 * pg_temp.ref_window(k, '1 day', n)
              + 0.1 * pg_temp.ref_window(k, '7 days', n))) < 1e-9) AS trend_equal
FROM generate_series(1, 5) AS k, (SELECT DISTINCT now AS n FROM probe) p;

-- decayed_score = sum of delta x 0.5 ^ (age of its minute / 6 hours).
SELECT count(*) FILTER (WHERE abs(counter.decayed_score('tr', k, now => n) - r.ref) < 1e-9 * greatest(r.ref, 1))
       AS decayed_equal
FROM generate_series(1, 5) AS k, (SELECT DISTINCT now AS n FROM probe) p,
     LATERAL (SELECT coalesce(sum(e.delta * power(0.5, extract(epoch FROM n - date_trunc('minute', e.t)) / 21600)), 0) AS ref
              FROM ev e WHERE e.k = k.k AND date_trunc('minute', e.t) <= n) r;

-- Custom trend weights.
SELECT counter.alter('tr', trend_spans => '{10 minutes, 2 hours}', trend_weights => '{2, 1}');
SELECT counter.trend_score('tr', 1, now => '2026-01-10 12:00+00')
       = 2 * pg_temp.ref_window(1, '10 minutes', '2026-01-10 12:00+00')
         + pg_temp.ref_window(1, '2 hours', '2026-01-10 12:00+00') AS custom_trend;
SELECT counter.alter('tr', trend_spans => '{1 hour, 1 day, 7 days}', trend_weights => '{1.0, 0.5, 0.1}');

-- series and sparkline agree with windows.
SELECT count(*) AS points, bool_and(value = pg_temp.ref_window(3, '1 hour', bucket + '1 hour')) AS series_equal
FROM counter.series('tr', 3, '2026-01-09 00:00+00', '2026-01-10 00:00+00', '1 hour');
SELECT counter.sparkline('tr', 3, '1 day', now => '2026-01-10 00:00+00');
SELECT length(counter.sparkline('tr', 3, '1 day', now => '2026-01-10 00:00+00', points => 48)) AS chars;

-- Rollups as of 2026-01-11 00:00: minutes before 23:00 become hours, hours
-- before 2026-01-04 become days.  Totals stay exact, and so do windows
-- whose start is a whole hour (a whole day for days).
SELECT counter.compact(now => '2026-01-11 00:00+00') > 0 AS rolled_up;
SET TimeZone = 'UTC';
SELECT CASE slot WHEN -1 THEN 'minute' WHEN -2 THEN 'hour' WHEN -3 THEN 'day' ELSE 'live' END AS kind,
       count(*) AS rows, min(bucket), max(bucket)
FROM counter.tally t JOIN counter.counters c ON c.id = t.counter_id
WHERE c.name = 'tr' GROUP BY 1 ORDER BY 2 DESC;
RESET TimeZone;
SELECT count(*) FILTER (WHERE counter.get('tr', k) = (SELECT sum(e.delta) FROM ev e WHERE e.k = k.k)) AS totals_equal
FROM generate_series(1, 5) AS k;
SELECT count(*) AS aligned_checked,
       count(*) FILTER (WHERE counter.window('tr', k, s, now => '2026-01-11 00:00+00')
                              = pg_temp.ref_window(k, s, '2026-01-11 00:00+00')) AS aligned_equal
FROM generate_series(1, 5) AS k,
     unnest(ARRAY['30 minutes', '1 hour', '5 hours', '1 day', '3 days', '7 days', '9 days', '30 days']::interval[]) AS s;
-- A window edge inside a coarse bucket counts the bucket if it starts inside.
SELECT counter.window('tr', 1, '90 minutes', now => '2026-01-10 12:30+00')
       = pg_temp.ref_window(1, '60 minutes', '2026-01-10 12:00+00')
         + pg_temp.ref_window(1, '30 minutes', '2026-01-10 12:30+00') AS hour_edge_rule;

-- top: ordering, ties (equal values share a rank), and each ranking kind.
SELECT counter.create('tops');
SELECT count(*) FILTER (WHERE counter.incr('tops', k, v, at => '2026-01-10 23:30+00')) AS counted
FROM (VALUES (1, 5), (2, 9), (3, 9), (4, 1), (5, 7)) AS x(k, v);
SELECT counter.incr('tops', 4, 100, at => '2026-01-01 00:00+00');
SELECT * FROM counter.top('tops', 10, 'total', now => '2026-01-11 00:00+00');
SELECT * FROM counter.top('tops', 3, 'trend', now => '2026-01-11 00:00+00');
SELECT key, round(value::numeric, 6) AS value, rank FROM counter.top('tops', 3, 'decayed', now => '2026-01-11 00:00+00');
SELECT * FROM counter.top('tops', 10, '1 hour', now => '2026-01-11 00:00+00');
-- The ranking the worker keeps gives the same order.
SELECT counter.refresh_ranking('tops', now => '2026-01-11 00:00+00') > 0 AS ranked;
SELECT key, value, rank FROM counter.top('tops', 10, 'total');
SELECT key, value, rank FROM counter.top('tops', 3, 'trend');
SELECT key, rank FROM counter.top('tops', 3, 'decayed');
-- New increments show after a refresh, and so does a backfill (here no
-- process follows the changed keys, so every refresh is a full one).
SELECT counter.incr('tops', 2, 300, at => '2026-01-10 23:58+00');
SELECT key, value FROM counter.top('tops', 1, 'total') AS stale_until_refresh;
SELECT counter.refresh_ranking('tops', now => '2026-01-11 00:00+00') > 0 AS ranked;
SELECT key, value FROM counter.top('tops', 1, 'total') AS refreshed;
SELECT counter.incr('tops', 1, 500, at => '2026-01-10 23:40+00');
SELECT counter.refresh_ranking('tops', now => '2026-01-11 00:00+00') >= 0 AS ranked;
SELECT key, value FROM counter.top('tops', 1, 'total') AS backfill_ranked;
SELECT counter.refresh_ranking('tops', now => '2026-01-11 00:00+00', "full" => true) AS rebuilt_rows_changed;
SELECT key, value FROM counter.top('tops', 1, 'total') AS after_rebuild;
SELECT key, round(value::numeric, 6) AS value FROM counter.top('tops', 3, 'decayed', now => '2026-01-11 00:00+00') AS exact;
SELECT key, round(value::numeric, 6) AS value FROM counter.top('tops', 3, 'decayed') AS maintained_order;
-- The maintained decayed mass, read at the same now, equals the exact score.
SELECT count(*) AS keys,
       count(*) FILTER (WHERE counter.decayed_value(r.dsign, r.dlog, '1 day', '2026-01-11 00:00+00')
                              = counter.decayed_score('tops', r.key, now => '2026-01-11 00:00+00')) AS decayed_equal
FROM counter.ranking r JOIN counter.counters c ON c.id = r.counter_id WHERE c.name = 'tops';
-- Text keys come back by name.
SELECT counter.create('tops_text', key_type => 'text');
SELECT counter.incr('tops_text', 'postgres', 3), counter.incr('tops_text', 'redis', 2);
SELECT key_text, value, rank FROM counter.top('tops_text', 5, 'total', now => now() + interval '1 minute');
-- Text literals work as keys everywhere.
SELECT counter.trend_score('tops_text', 'postgres') AS trend,
       counter.decayed_score('tops_text', 'postgres') > 2.9 AS decayed,
       length(counter.sparkline('tops_text', 'postgres', '1 hour', points => 6)) AS spark,
       (SELECT sum(value) FROM counter.series('tops_text', 'redis', now() - interval '1 hour', now() + interval '1 hour', '2 hours')) AS series;
-- Bad arguments.
SELECT * FROM counter.top('tops', 0);
SELECT * FROM counter.top('tops', 3, 'loudest');
SELECT * FROM counter.top('tops', 3, '-1 hour');
SELECT * FROM counter.series('tr', 1, '2026-01-02', '2026-01-01', '1 hour');
SELECT * FROM counter.series('tr', 1, '2026-01-01', '2026-01-02', '1 second');
SELECT counter.alter('tr', trend_spans => '{1 hour}', trend_weights => '{1, 2}');
SELECT counter.alter('tr', half_life => '0');

-- Retention: day buckets older than day_retention fold into the base row;
-- the total never changes, windows see nothing beyond the oldest bucket
-- kept (here the hours of the last 7 days).
SELECT counter.alter('tr', day_retention => '5 days');
SELECT counter.compact(now => '2026-01-11 00:00+00') > 0 AS folded;
SELECT count(*) FILTER (WHERE bucket = '-infinity') AS base_rows,
       count(*) FILTER (WHERE slot = -3 AND bucket > '-infinity' AND bucket < '2026-01-06 00:00+00') AS old_days_left
FROM counter.tally t JOIN counter.counters c ON c.id = t.counter_id WHERE c.name = 'tr';
SELECT count(*) FILTER (WHERE counter.get('tr', k) = (SELECT sum(e.delta) FROM ev e WHERE e.k = k.k)) AS totals_still_equal
FROM generate_series(1, 5) AS k;
SELECT count(*) FILTER (WHERE counter.window('tr', k, '5 days', now => '2026-01-11 00:00+00')
                              = pg_temp.ref_window(k, '5 days', '2026-01-11 00:00+00')) AS recent_windows_equal
FROM generate_series(1, 5) AS k;
SELECT counter.window('tr', 1, '30 days', now => '2026-01-11 00:00+00')
       = pg_temp.ref_window(1, '7 days', '2026-01-11 00:00+00') AS nothing_beyond_kept_buckets;

SELECT counter.drop('tr');
SELECT counter.drop('tops');
SELECT counter.drop('tops_text');
