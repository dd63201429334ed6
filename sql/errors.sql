-- Every refusal carries a clear message and the right SQLSTATE, and changes
-- nothing.

CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

SELECT counter.create('errs');
SELECT counter.incr('errs', 1, 100);

-- Unknown counters: 42704, with a hint naming counter.create.
SELECT counter.get('post_vews', 1);
SELECT pg_temp.err($$SELECT counter.incr('nope', 1)$$);
SELECT pg_temp.err($$SELECT '999999'::counter.counter$$);

-- Names: 42602 for bad ones, 42710 for a duplicate.
SELECT pg_temp.err($$SELECT counter.create('')$$);
SELECT pg_temp.err($$SELECT counter.create('1abc')$$);
SELECT pg_temp.err($$SELECT counter.create('has space')$$);
SELECT pg_temp.err($$SELECT counter.create('semi;colon')$$);
SELECT pg_temp.err($$SELECT counter.create(repeat('x', 64))$$);
SELECT pg_temp.err($$SELECT counter.create(repeat('x', 63))$$);
SELECT counter.drop(repeat('x', 63)::counter.counter);
SELECT pg_temp.err($$SELECT counter.create('errs')$$);
SELECT pg_temp.err($$SELECT counter.create(NULL)$$);

-- Settings: 22023 for bad values.
SELECT pg_temp.err($$SELECT counter.create('e2', mode => 'fast')$$);
SELECT pg_temp.err($$SELECT counter.create('e2', mode => 'Sharded')$$);
SELECT pg_temp.err($$SELECT counter.create('e2', slots => 0)$$);
SELECT pg_temp.err($$SELECT counter.create('e2', slots => 1025)$$);
SELECT pg_temp.err($$SELECT counter.create('e2', key_type => 'uuid')$$);
SELECT pg_temp.err($$SELECT counter.alter('errs', mode => 'fast')$$);
SELECT pg_temp.err($$SELECT counter.alter('errs', slots => -1)$$);
SELECT count(*) AS no_e2 FROM counter.counters WHERE name = 'e2';
SELECT mode, slots FROM counter.counters WHERE name = 'errs';

-- Nulls: 22004.
SELECT pg_temp.err($$SELECT counter.incr('errs', NULL::bigint)$$);
SELECT pg_temp.err($$SELECT counter.incr('errs', 1, NULL)$$);
SELECT pg_temp.err($$SELECT counter.incr(NULL::counter.counter, 1)$$);
SELECT pg_temp.err($$SELECT counter.incr_many('errs', ARRAY[1, NULL])$$);
SELECT pg_temp.err($$SELECT counter.incr_many('errs', ARRAY[1, 2], ARRAY[1, NULL])$$);
SELECT pg_temp.err($$SELECT counter.incr_many('errs', NULL)$$);
SELECT pg_temp.err($$SELECT counter.get('errs', NULL::bigint)$$);

-- Batches: mismatched lengths (22023) and multi-dimensional arrays (2202E).
SELECT pg_temp.err($$SELECT counter.incr_many('errs', ARRAY[1, 2], ARRAY[1])$$);
SELECT pg_temp.err($$SELECT counter.incr_many('errs', ARRAY[[1, 2], [3, 4]])$$);

-- Key types: 22P02 for a bigint counter given a non-number, 42804 for a
-- text counter given a bigint.
SELECT pg_temp.err($$SELECT counter.incr('errs', 'abc')$$);
SELECT pg_temp.err($$SELECT counter.incr('errs', '')$$);
SELECT pg_temp.err($$SELECT counter.incr('errs', '99999999999999999999')$$);
SELECT counter.create('errs_text', key_type => 'text');
SELECT pg_temp.err($$SELECT counter.incr('errs_text', 1)$$);
SELECT pg_temp.err($$SELECT counter.get('errs_text', 1)$$);
SELECT pg_temp.err($$SELECT counter.incr_many('errs_text', ARRAY[1])$$);
SELECT pg_temp.err($$SELECT * FROM counter.get_many('errs_text', ARRAY[1]::bigint[])$$);
SELECT pg_temp.err($$SELECT * FROM counter.get_many('errs', ARRAY['a'])$$);
SELECT pg_temp.err($$SELECT counter.key_id('errs', 'a')$$);

-- Overflow: 22003, never wraps, and nothing is counted.
SELECT pg_temp.err($$SELECT counter.incr('errs', 1, 9223372036854775807)$$);
SELECT counter.incr('errs', 2, 9223372036854775800);
SELECT pg_temp.err($$SELECT counter.incr('errs', 2, 8)$$);
SELECT counter.incr('errs', 2, 7);
SELECT counter.get('errs', 2) = 9223372036854775807 AS at_max;
SELECT pg_temp.err($$SELECT counter.incr('errs', 2)$$);
SELECT pg_temp.err($$SELECT counter.incr_many('errs', ARRAY[3, 2], ARRAY[1, 1])$$);
SELECT counter.get('errs', 3) AS batch_left_nothing;
SELECT counter.incr('errs', 2, -9223372036854775807);
SELECT counter.incr('errs', 2, -9223372036854775807);
SELECT pg_temp.err($$SELECT counter.incr('errs', 2, -2)$$);
SELECT counter.incr('errs', 2, -1);
SELECT counter.get('errs', 2) = -9223372036854775807 - 1 AS at_min;
SELECT pg_temp.err($$SELECT counter.incr('errs', 2, -1)$$);
SELECT counter.get('errs', 2) = -9223372036854775807 - 1 AS still_at_min;

-- A small increment to another row (here: another minute) is checked too,
-- once a key is big.
SELECT counter.create('errs_rows');
SELECT counter.incr('errs_rows', 1, 9223372036854775000, at => '2026-01-01 10:00+00');
SELECT pg_temp.err($$SELECT counter.incr('errs_rows', 1, 808)$$);
SELECT counter.incr('errs_rows', 1, 807);
SELECT counter.get('errs_rows', 1) = 9223372036854775807 AS at_max;

-- Windows: 22023 for a negative span, 22004 for a null one.
SELECT pg_temp.err($$SELECT counter.window('errs', 1, '-1 minute')$$);
SELECT pg_temp.err($$SELECT counter.window('errs', 1, NULL)$$);
SELECT pg_temp.err($$SELECT counter.window('errs', 1, '1 hour', 'infinity')$$);

-- Times: 22023 for the future or infinity.
SELECT pg_temp.err($$SELECT counter.incr('errs', 1, 1, at => now() + interval '1 hour')$$);
SELECT pg_temp.err($$SELECT counter.incr('errs', 1, 1, at => 'infinity')$$);

-- After all that, key 1 still holds its 100.
SELECT counter.get('errs', 1) AS hundred;
