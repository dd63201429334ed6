-- Windows count the minute buckets that start in [now - span, now).

SELECT counter.create('w');
SELECT counter.create('w_text', key_type => 'text');

-- Increments at known times (at =>) in the past.
SELECT counter.incr('w', 1, 1, at => '2026-01-01 10:00:00+00');
SELECT counter.incr('w', 1, 2, at => '2026-01-01 10:00:59.999+00');
SELECT counter.incr('w', 1, 4, at => '2026-01-01 10:01:30+00');
SELECT counter.incr('w', 1, 8, at => '2026-01-01 10:30:00+00');
SELECT counter.incr('w', 1, 16, at => '2026-01-01 10:59:59+00');
SELECT counter.incr('w', 1, 32, at => '2026-01-01 09:00:00+00');
SELECT counter.incr('w', 2, 64, at => '2026-01-01 10:30:00+00');
SELECT counter.incr_many('w', ARRAY[1, 2], ARRAY[128, 256], at => '2026-01-01 11:00:00+00');

SELECT bucket, sum(value) FROM counter.tally t JOIN counter.counters c ON c.id = t.counter_id
WHERE c.name = 'w' AND key = 1 GROUP BY bucket ORDER BY bucket;

SELECT span, counter.window('w', 1, span, now => '2026-01-01 11:00:00+00') AS count
FROM unnest(ARRAY['0', '1 minute', '29 minutes', '30 minutes', '31 minutes',
                  '59 minutes', '1 hour', '2 hours', '1 day']::interval[]) AS span;

-- now inside a minute: the bucket that started before now counts, in full.
SELECT counter.window('w', 1, '1 minute', now => '2026-01-01 10:00:30+00') AS bucket_10_00;
SELECT counter.window('w', 1, '30 seconds', now => '2026-01-01 10:01:30+00') AS starts_at_edge;
SELECT counter.window('w', 1, '29 seconds', now => '2026-01-01 10:01:30+00') AS edge_excluded;
SELECT counter.window('w', 1, '1 day', now => '2026-01-01 11:00:01+00') AS all_of_it,
       counter.get('w', 1) AS total;
SELECT counter.window('w', 2, '1 hour', now => '2026-01-01 11:00:01+00') AS key_two;
SELECT counter.window('w', 3, '1 hour', now => '2026-01-01 11:00:01+00') AS never_counted;

-- Now-relative windows: an increment made in this transaction is in every
-- window that reaches back past the start of its minute.
BEGIN;
SELECT counter.incr('w', 5, 3);
SELECT counter.window('w', 5, '1 minute') AS this_minute,
       counter.window('w', 5, '1 hour') AS this_hour,
       counter.window('w', 5, '0') AS empty_window;
COMMIT;

-- Text keys too.
SELECT counter.incr('w_text', 'a', 5, at => '2026-01-01 10:00:00+00');
SELECT counter.window('w_text', 'a', '1 hour', now => '2026-01-01 10:30:00+00') AS five,
       counter.window('w_text', 'a', '1 hour', now => '2026-01-01 11:30:00+00') AS zero,
       counter.window('w_text', 'zz', '1 hour', now => '2026-01-01 10:30:00+00') AS unknown;
