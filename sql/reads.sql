-- get_many reads all its keys in one walk over counter.tally's primary key,
-- fetching rows a heap page at a time; get, window and trend_score fetch a
-- key's rows the same way.  Each must give what per-key reads give,
-- whatever the keys' order, repeats, nulls and gaps.

-- what a key's rows in the table sum to, read in plain SQL
CREATE FUNCTION pg_temp.rows_of(c text, k bigint) RETURNS bigint LANGUAGE sql AS
$$SELECT coalesce(sum(value), 0)::bigint FROM counter.tally
  WHERE counter_id = counter.id(c) AND key = k$$;

SELECT counter.create('walk');
-- keys 1..3000 with rows in one to three minutes (key k in the minutes m
-- that divide it), and a sparse run of even keys 100000..103000 that most
-- walks step over or descend past
SELECT sum(counter.incr_many('walk', ARRAY(SELECT g FROM generate_series(1, 3000) g
                                           WHERE g % m = 0)::bigint[],
                             at => '2026-01-01 10:00+00'::timestamptz + m * interval '1 minute'))
FROM generate_series(1, 3) m;
SELECT counter.incr_many('walk', ARRAY(SELECT generate_series(100000, 103000, 2))::bigint[]);

-- every key, ascending: one walk, more than one batch of rows
SELECT count(*) AS keys, sum(g.value) AS total,
       sum(g.value) = (SELECT sum(value) FROM counter.tally
                       WHERE counter_id = counter.id('walk') AND key <= 3000) AS equals_rows,
       bool_and(g.value = pg_temp.rows_of('walk', g.key)) AS equals_rows_of_key
FROM counter.get_many('walk', ARRAY(SELECT generate_series(1, 3000))::bigint[]) g;

-- scrambled, with repeats, keys never counted and a null: the order given,
-- each value its key's rows' sum, 0 for the null
WITH k AS (SELECT array_append(ARRAY(SELECT ((g * 7919) % 4001)::bigint
                                     FROM generate_series(1, 5000) g), NULL) AS a)
SELECT count(*) AS rows,
       bool_and(r.key IS NOT DISTINCT FROM k.a[r.o]) AS in_order,
       bool_and(CASE WHEN r.key IS NULL THEN r.value = 0
                     ELSE r.value = pg_temp.rows_of('walk', r.key) END) AS equals_rows_of_key,
       count(*) FILTER (WHERE r.value = 0) AS zeros
FROM k, counter.get_many('walk', k.a) WITH ORDINALITY AS r(key, value, o);

-- dense keys, then a run of 500 rows of keys not asked for: the walk
-- descends again past them
SELECT count(*) AS keys, sum(g.value) AS total,
       bool_and(g.value = pg_temp.rows_of('walk', g.key)) AS equals_rows_of_key
FROM counter.get_many('walk', ARRAY(SELECT generate_series(1, 3000)
                                    UNION ALL SELECT generate_series(101000, 101200))::bigint[]) g;

-- keys far apart: a scan of each key's rows
SELECT count(*) AS keys, sum(g.value) AS total,
       bool_and(g.value = pg_temp.rows_of('walk', g.key)) AS equals_rows_of_key
FROM counter.get_many('walk', ARRAY(SELECT generate_series(1, 103000, 997))::bigint[]) g;

-- one key, and none
SELECT * FROM counter.get_many('walk', ARRAY[12]::bigint[]);
SELECT count(*) FROM counter.get_many('walk', '{}'::bigint[]);

-- a key with 400 rows, interleaved with 49 other keys' rows over many heap
-- pages: get, window and trend_score read them all
SELECT counter.create('pages');
SELECT count(*) FILTER (WHERE counter.incr('pages', k, i, at => '2026-01-01 10:00+00'::timestamptz
                                                    + i * interval '1 minute')) AS counted
FROM generate_series(1, 400) i, generate_series(1, 50) k;
SELECT counter.get('pages', 7) AS get, pg_temp.rows_of('pages', 7) AS rows_of_key,
       counter.window('pages', 7, '100 minutes', now => '2026-01-01 16:41+00') AS last_100_minutes,
       (SELECT sum(i) FROM generate_series(301, 400) i) AS expected,
       round(counter.trend_score('pages', 7, now => '2026-01-01 16:41+00')::numeric, 1) AS trend;

-- a buffered counter: amounts still in shared memory or in this
-- transaction count, looked up for all keys at once
SELECT counter.create('walkb', mode => 'buffered');
SELECT counter.incr_many('walkb', ARRAY(SELECT generate_series(1, 2000))::bigint[]);
SELECT count(*) AS keys, bool_and(value = 1) AS all_one
FROM counter.get_many('walkb', ARRAY(SELECT generate_series(1, 2000))::bigint[]);
BEGIN;
SELECT counter.incr_many('walkb', ARRAY(SELECT generate_series(1, 2000, 2))::bigint[]);
SELECT sum(value) AS with_own, count(*) FILTER (WHERE value = 2) AS twos
FROM counter.get_many('walkb', ARRAY(SELECT generate_series(1, 2000))::bigint[]);
ROLLBACK;
SELECT sum(value) AS after_rollback
FROM counter.get_many('walkb', ARRAY(SELECT generate_series(1, 2000))::bigint[]);

SELECT counter.drop('walk');
SELECT counter.drop('pages');
SELECT counter.drop('walkb');
