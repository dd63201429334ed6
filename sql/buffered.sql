-- Buffered counters (the suite runs with counter preloaded): increments go
-- to shared memory at commit and the worker folds them into the tables.

SELECT counter.create('b', mode => 'buffered');
SELECT counter.create('b_text', mode => 'buffered', key_type => 'text');

-- Committed increments are read at once, from the buffer.
SELECT counter.incr('b', 1), counter.incr('b', 1, 4), counter.incr('b', 2, -3);
SELECT counter.get('b', 1) AS five, counter.get('b', 2) AS minus_three;
SELECT * FROM counter.get_many('b', ARRAY[2, 1, 3]::bigint[]);
SELECT counter.window('b', 1, '2 minutes') AS five_lately;

-- Transactions: own writes seen, rollback and savepoints honoured.
BEGIN;
SELECT counter.incr('b', 1, 100);
SELECT counter.get('b', 1) AS own_105;
SAVEPOINT s;
SELECT counter.incr('b', 1, 1000);
SELECT counter.incr('b', 9, 1000);
SELECT counter.get('b', 1) AS own_1105;
ROLLBACK TO SAVEPOINT s;
SELECT counter.get('b', 1) AS back_to_105, counter.get('b', 9) AS nine_gone;
SAVEPOINT t;
SELECT counter.incr('b', 1, 10);
RELEASE SAVEPOINT t;
COMMIT;
SELECT counter.get('b', 1) AS one_hundred_fifteen;
BEGIN;
SELECT counter.incr('b', 1, 7);
ROLLBACK;
SELECT counter.get('b', 1) AS still_115;

-- Text keys.
SELECT counter.incr('b_text', 'x', 2), counter.incr('b_text', 'x', 3);
SELECT counter.get('b_text', 'x') AS five;

-- Backfills are buffered too, in their own minute.
SELECT counter.incr('b', 3, 8, at => '2026-01-01 10:00:30+00');
SELECT counter.window('b', 3, '1 hour', now => '2026-01-01 10:30+00') AS eight;

-- flush() folds everything committed into the tables; reads do not change.
SELECT counter.flush();
SELECT counter.get('b', 1) AS still_115_after_flush,
       counter.get('b', 3) AS eight,
       counter.get('b_text', 'x') AS five;
SELECT t.key, t.slot, sum(t.value) AS folded
FROM counter.tally t JOIN counter.counters c ON c.id = t.counter_id
WHERE c.name = 'b' GROUP BY t.key, t.slot ORDER BY t.key;
SELECT name, increments, buffered, fallback, folded >= 1 AS folded, pending
FROM counter.stats WHERE name IN ('b', 'b_text') ORDER BY name;

-- Switching a buffered counter to sharded and back keeps every count.
SELECT counter.incr('b', 1, 1);
SELECT counter.alter('b', mode => 'sharded');
SELECT counter.incr('b', 1, 1);
SELECT counter.alter('b', mode => 'buffered');
SELECT counter.incr('b', 1, 1);
SELECT counter.get('b', 1) AS one_hundred_eighteen;

-- Deltas too large to buffer take the durable path, checked for overflow.
SELECT counter.incr('b', 4, 9223372036854775000);
SELECT counter.incr('b', 4, 800);
SELECT counter.get('b', 4) = 9223372036854775800 AS big_ok;
SELECT counter.incr('b', 4, 8);
SELECT counter.get('b', 4) = 9223372036854775800 AS unchanged;
SELECT fallback >= 2 AS took_durable_path FROM counter.stats WHERE name = 'b';

-- PREPARE TRANSACTION cannot carry buffered increments.
BEGIN;
SELECT counter.incr('b', 1);
PREPARE TRANSACTION 'p1';
SELECT counter.get('b', 1) AS still_118;

-- get(max_age): a cached total no older than max_age may be returned.
SELECT counter.get('b', 1, max_age => '1 hour') AS cached_118;
SELECT counter.incr('b', 1, 2);
SELECT counter.get('b', 1, max_age => '1 hour') AS stale_118,
       counter.get('b', 1) AS exact_120;
SELECT cache_hits >= 1 AS cache_used FROM counter.stats WHERE name = 'b';
SELECT counter.get('b', 1, max_age => '-1 second');
SELECT counter.get('b', 1, max_age => '1 month');

-- The worker reports itself.
-- The processes report themselves: this database's ingest process (which
-- folded) and maintenance process, and the launcher.
SELECT role, pid IS NOT NULL AS running, rounds > 0 AS has_rounds,
       (role <> 'ingest' OR items >= 1) AS folded, errors
FROM counter.worker_status()
WHERE database = current_database() OR role = 'launcher'
ORDER BY role;
SELECT entries >= 1 AND entries <= max_entries AS bounded FROM counter.buffer_usage();
SELECT backend_type, count(*) AS processes FROM pg_stat_activity
WHERE backend_type LIKE 'counter %' AND (datname = current_database() OR datname IS NULL)
GROUP BY 1 ORDER BY 1;

SELECT counter.drop('b');
SELECT counter.drop('b_text');
