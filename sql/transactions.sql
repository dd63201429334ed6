-- Increments are transactional: rolled back means not counted, and a
-- session sees its own uncommitted increments.

SELECT counter.create('tx');
SELECT counter.create('tx_direct', mode => 'direct');
SELECT counter.create('tx_text', key_type => 'text');

BEGIN;
SELECT counter.incr('tx', 1, 10);
SELECT counter.get('tx', 1) AS own_write_seen;
ROLLBACK;
SELECT counter.get('tx', 1) AS rolled_back;

BEGIN;
SELECT counter.incr('tx', 1, 1);
SAVEPOINT s1;
SELECT counter.incr('tx', 1, 100);
SELECT counter.incr('tx_direct', 1, 100);
SELECT counter.get('tx', 1) AS before_rollback_to;
ROLLBACK TO SAVEPOINT s1;
SELECT counter.get('tx', 1) AS after_rollback_to;
SELECT counter.incr('tx', 1, 2);
SAVEPOINT s2;
SELECT counter.incr('tx_direct', 1, 5);
RELEASE SAVEPOINT s2;
COMMIT;
SELECT counter.get('tx', 1) AS three, counter.get('tx_direct', 1) AS five;

-- An error inside a subtransaction undoes only that subtransaction.
DO $$
BEGIN
	PERFORM counter.incr('tx', 2, 7);
	BEGIN
		PERFORM counter.incr('tx', 2, 1000);
		PERFORM counter.incr('tx', 2, 9223372036854775807);
	EXCEPTION WHEN numeric_value_out_of_range THEN
		RAISE NOTICE 'caught %', SQLSTATE;
	END;
END $$;
SELECT counter.get('tx', 2) AS seven;

-- A text key created in a rolled-back transaction is gone with it.
BEGIN;
SELECT counter.incr('tx_text', 'ghost');
SELECT counter.key_id('tx_text', 'ghost') IS NOT NULL AS mapped_inside;
ROLLBACK;
SELECT counter.key_id('tx_text', 'ghost') IS NULL AS unmapped_after,
       counter.get('tx_text', 'ghost') AS zero;

-- A counter created and dropped inside transactions.
BEGIN;
SELECT counter.create('tx_new');
SELECT counter.incr('tx_new', 1);
ROLLBACK;
SELECT count(*) AS not_created FROM counter.counters WHERE name = 'tx_new';
BEGIN;
SELECT counter.drop('tx');
ROLLBACK;
SELECT counter.get('tx', 1) AS survived_drop_rollback;
