-- The SQL API: declaring counters, incrementing and reading them.
-- This suite runs first and installs the extension afresh.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS counter CASCADE;
CREATE EXTENSION counter;
RESET client_min_messages;

SELECT counter.create('post_views');
SELECT counter.create('page_hits', mode => 'direct');
SELECT counter.create('narrow', slots => 4);
SELECT name, mode, slots, key_type, owner = current_user::regrole AS mine
FROM counter.counters WHERE name IN ('post_views', 'page_hits', 'narrow')
ORDER BY name;

-- The handle type: written as the name, stored as an id, compared by id.
SELECT 'post_views'::counter.counter;
SELECT 'post_views'::counter.counter::text = 'post_views' AS round_trip;
SELECT 'post_views'::counter.counter OPERATOR(counter.=) 'post_views'::counter.counter AS same,
       'post_views'::counter.counter OPERATOR(counter.<>) 'page_hits'::counter.counter AS differ;
SELECT counter.id('post_views') = (SELECT id FROM counter.counters WHERE name = 'post_views') AS id_matches;
SELECT (counter.id('post_views')::text)::counter.counter AS from_id;

-- Increments: +1 by default, any delta, negative deltas, a zero delta.
SELECT counter.incr('post_views', 42);
SELECT counter.incr('post_views', 42, 5);
SELECT counter.incr('post_views', 42, delta => -2);
SELECT counter.incr('post_views', 42, 0);
SELECT counter.get('post_views', 42) AS four;
SELECT counter.get('post_views', 7) AS never_counted;
SELECT counter.get('post_views', '42') AS bigint_key_as_text;
SELECT counter.incr('post_views', '43');
SELECT counter.get('post_views', 43);

-- Batches: one statement, repeated keys summed, deltas default to 1.
SELECT counter.incr_many('post_views', ARRAY[1, 2, 2, 3], ARRAY[10, 20, 30, 40]);
SELECT counter.incr_many('post_views', ARRAY[3, 3, 3]);
SELECT counter.incr_many('post_views', '{}');
SELECT * FROM counter.get_many('post_views', ARRAY[3, 2, 1, 99, 42]);
SELECT * FROM counter.get_many('post_views', '{}'::bigint[]);

-- Text keys map to stable ids through a table, never a hash.
SELECT counter.create('tags', key_type => 'text');
SELECT counter.incr('tags', 'postgres'), counter.incr('tags', 'redis', 3),
       counter.incr('tags', 'postgres', 2);
SELECT counter.get('tags', 'postgres') AS postgres, counter.get('tags', 'redis') AS redis,
       counter.get('tags', 'nope') AS nope;
SELECT * FROM counter.get_many('tags', ARRAY['redis', 'postgres', 'nope']);
SELECT counter.key_id('tags', 'postgres') IS NOT NULL AS has_id,
       counter.key_id('tags', 'postgres') = counter.key_id('tags', 'postgres') AS stable,
       counter.key_id('tags', 'postgres') <> counter.key_id('tags', 'redis') AS distinct_ids,
       counter.key_id('tags', 'nope') IS NULL AS unknown_is_null;
SELECT counter.window('tags', 'redis', '1 hour') AS redis_last_hour;

-- The direct and sharded counters keep the same totals.
SELECT counter.incr('page_hits', 1), counter.incr('page_hits', 1, 9);
SELECT counter.get('page_hits', 1) AS ten;

-- Drop removes the counter and its counts; the name can be reused.
SELECT counter.drop('narrow');
SELECT count(*) FROM counter.counters WHERE name = 'narrow';
SELECT counter.create('narrow');
SELECT counter.get('narrow', 1) AS fresh;
SELECT counter.drop('narrow');

-- A handle kept across a drop prints as its id and is refused with a hint.
CREATE TEMP TABLE kept AS SELECT 'page_hits'::counter.counter AS c;
SELECT counter.create('gone');
INSERT INTO kept SELECT 'gone';
SELECT counter.drop('gone');
SELECT c::text ~ '^[0-9]+$' AS prints_as_id FROM kept WHERE c::text <> 'page_hits';
