-- Where increments land: direct counters write one row per key and minute,
-- sharded ones one row per writing backend's slot.  Switching online keeps
-- every count.

SELECT counter.create('m_direct', mode => 'direct');
SELECT counter.create('m_sharded', slots => 8);

BEGIN;
SELECT counter.incr('m_direct', 1), counter.incr('m_direct', 1), counter.incr('m_sharded', 1);
COMMIT;
\c
SELECT counter.incr('m_direct', 1), counter.incr('m_sharded', 1);

-- Direct: always slot 0, so one row.  Sharded: a slot in [0, 8).
SELECT c.name, count(*) <= 2 AS at_most_two_rows, min(t.slot) >= 0 AND max(t.slot) < c.slots AS slots_in_range,
       sum(t.value) AS total
FROM counter.tally t JOIN counter.counters c ON c.id = t.counter_id
WHERE c.name IN ('m_direct', 'm_sharded')
GROUP BY c.name, c.slots ORDER BY c.name;
SELECT DISTINCT slot FROM counter.tally t JOIN counter.counters c ON c.id = t.counter_id
WHERE c.name = 'm_direct';

-- Every row carries the minute it was counted in.
SELECT bool_and(bucket = date_trunc('minute', bucket)) AS minute_aligned
FROM counter.tally t JOIN counter.counters c ON c.id = t.counter_id
WHERE c.name IN ('m_direct', 'm_sharded');

-- Switching modes and slot counts online loses nothing.
SELECT counter.alter('m_sharded', mode => 'direct');
SELECT counter.incr('m_sharded', 1, 10);
SELECT counter.alter('m_sharded', mode => 'sharded', slots => 3);
SELECT counter.incr('m_sharded', 1, 100);
SELECT counter.get('m_sharded', 1) AS one_hundred_twelve;
SELECT name, mode, slots FROM counter.counters WHERE name = 'm_sharded';

-- alter with no arguments changes nothing.
SELECT counter.alter('m_sharded');
SELECT name, mode, slots FROM counter.counters WHERE name = 'm_sharded';
