-- Compaction merges slot rows and rolls old minutes up to hours and days,
-- keeping every total and every window at its resolution.

SELECT counter.create('cmp', slots => 4);
-- Rows at known minutes (backfills), spread over a week and a bit.
SELECT count(*) FILTER (WHERE counted) AS counted
FROM (SELECT counter.incr('cmp', 1, 1, at => t) AS counted
      FROM generate_series(timestamptz '2026-01-01 00:00+00', '2026-01-09 00:00+00', '7 minutes') AS t) s;
SELECT counter.incr('cmp', 2, 5, at => '2026-01-08 23:59+00');

CREATE TEMP TABLE before AS
SELECT k, counter.get('cmp', k) AS total,
       counter.window('cmp', k, '30 minutes', now => '2026-01-09 00:00+00') AS last_30m,
       counter.window('cmp', k, '1 day', now => '2026-01-09 00:00+00') AS last_day,
       counter.window('cmp', k, '1 year', now => '2026-01-09 00:00+00') AS last_year
FROM generate_series(1, 2) AS k;
SELECT * FROM before ORDER BY k;

SELECT count(*) AS writer_rows FROM counter.tally t JOIN counter.counters c ON c.id = t.counter_id
WHERE c.name = 'cmp' AND slot >= 0;
SELECT counter.compact(now => '2026-01-09 00:00+00') > 0 AS moved;
SET TimeZone = 'UTC';
SELECT CASE WHEN slot >= 0 THEN 'writer' ELSE slot::text END AS kind, count(*) AS rows,
       min(bucket) AS oldest, max(bucket) AS newest
FROM counter.tally t JOIN counter.counters c ON c.id = t.counter_id
WHERE c.name = 'cmp' GROUP BY 1 ORDER BY 1;
RESET TimeZone;

-- Totals and windows that lie on bucket edges are unchanged.
SELECT k, counter.get('cmp', k) AS total,
       counter.window('cmp', k, '30 minutes', now => '2026-01-09 00:00+00') AS last_30m,
       counter.window('cmp', k, '1 day', now => '2026-01-09 00:00+00') AS last_day,
       counter.window('cmp', k, '1 year', now => '2026-01-09 00:00+00') AS last_year
FROM generate_series(1, 2) AS k
EXCEPT SELECT * FROM before;

-- Compacting again moves nothing.
SELECT counter.compact(now => '2026-01-09 00:00+00') AS moved_again;
SELECT counter.drop('cmp');
