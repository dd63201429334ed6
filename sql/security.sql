-- Privileges follow ordinary GRANTs, counters belong to their creator, and a
-- hostile search_path cannot reach the extension's own queries.

SELECT counter.create('sec');
SELECT counter.incr('sec', 1, 5);

CREATE ROLE counter_app;
CREATE ROLE counter_reader;
CREATE ROLE counter_admin;
CREATE ROLE counter_nobody;

GRANT USAGE ON SCHEMA counter TO counter_app, counter_reader, counter_admin, counter_nobody;
GRANT EXECUTE ON FUNCTION counter.incr(counter.counter, bigint, bigint, timestamptz, text, text),
                          counter.get(counter.counter, bigint, interval) TO counter_app;
GRANT EXECUTE ON FUNCTION counter.get(counter.counter, bigint, interval) TO counter_reader;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA counter TO counter_admin;

-- Nobody: may list counters, nothing else; the tables are private.
SET ROLE counter_nobody;
SELECT name FROM counter.counters WHERE name = 'sec';
SELECT counter.get('sec', 1);
SELECT counter.incr('sec', 1);
SELECT count(*) FROM counter.tally;
SELECT counter.create('mine');
RESET ROLE;

-- The reader reads, and may not write.
SET ROLE counter_reader;
SELECT counter.get('sec', 1) AS five;
SELECT counter.incr('sec', 1);
RESET ROLE;

-- The app writes and reads, and may not change the counter.
SET ROLE counter_app;
SELECT counter.incr('sec', 1);
SELECT counter.get('sec', 1) AS six;
SELECT counter.alter('sec', mode => 'direct');
SELECT counter.drop('sec');
RESET ROLE;

-- The admin creates counters it owns; others' counters stay out of reach.
SET ROLE counter_admin;
SELECT counter.create('admins');
SELECT owner FROM counter.counters WHERE name = 'admins';
SELECT counter.alter('admins', slots => 2);
\set VERBOSITY terse
SELECT counter.alter('sec', slots => 2);
SELECT counter.drop('sec');
\set VERBOSITY default
RESET ROLE;

-- SECURITY DEFINER code never touches objects a caller can create.  In 0.1
-- refresh_ranking() staged rows in pg_temp.counter_settle: a caller's own
-- temporary table of that name, with a trigger, ran as the extension owner.
SET ROLE counter_admin;
CREATE TEMP TABLE counter_settle (key bigint, total bigint, m float8, v float8);
CREATE FUNCTION pg_temp.escalate() RETURNS trigger LANGUAGE plpgsql
	AS $$ BEGIN ALTER ROLE counter_admin SUPERUSER; RETURN NULL; END $$;
CREATE TRIGGER escalate AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON pg_temp.counter_settle FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.escalate();
SELECT counter.refresh_ranking('sec') >= 0 AS refreshed;
SELECT counter.refresh_ranking('sec', "full" => true) >= 0 AS rebuilt;
SELECT count(*) AS untouched FROM pg_temp.counter_settle;
DROP TABLE pg_temp.counter_settle;
DROP FUNCTION pg_temp.escalate();
RESET ROLE;
SELECT rolsuper AS admin_became_superuser FROM pg_roles WHERE rolname = 'counter_admin';
-- The audit behind it: every SECURITY DEFINER function of the extension pins
-- its search_path, and none names pg_temp in its body.
SELECT p.oid::regprocedure AS unpinned_or_temp
FROM pg_proc p JOIN pg_depend dep ON dep.objid = p.oid AND dep.classid = 'pg_proc'::regclass
JOIN pg_extension e ON e.oid = dep.refobjid AND e.extname = 'counter'
WHERE p.prosecdef
  AND (p.proconfig IS NULL OR NOT 'search_path=pg_catalog, pg_temp' = ANY (p.proconfig)
       OR p.prosrc ~ 'pg_temp\.')
ORDER BY 1;

-- A Redis prefix or stream cannot reach into another owner's counter: in
-- 0.1 a prefix 'sec:1' took the keys sec:15... from under 'sec'.
SELECT counter.alter('sec', redis_prefix => 'sec:', redis_stream => 'sec-events');
SET ROLE counter_admin;
SELECT counter.create('evil');
SELECT counter.alter('evil', redis_prefix => 'sec:1');
SELECT counter.alter('evil', redis_prefix => 'se');
SELECT counter.alter('evil', redis_stream => 'sec-events');
SELECT counter.alter('evil', redis_prefix => 'evil:', redis_stream => 'evil-events');
SELECT name, redis_prefix, redis_stream FROM counter.counters WHERE name IN ('sec', 'evil') ORDER BY name;
SELECT counter.drop('evil');
RESET ROLE;
-- The same owner may nest prefixes: the longest match takes a key.
SELECT counter.create('sec_posts');
SELECT counter.alter('sec_posts', redis_prefix => 'sec:post:');
SELECT counter.drop('sec_posts');
SELECT counter.alter('sec', redis_prefix => '', redis_stream => '');
SELECT redis_prefix IS NULL AND redis_stream IS NULL AS cleared FROM counter.counters WHERE name = 'sec';

-- Members of the owning role may manage its counters.
GRANT counter_admin TO counter_app;
SET ROLE counter_app;
SELECT counter.alter('admins', mode => 'direct');
RESET ROLE;
SELECT name, mode, slots FROM counter.counters WHERE name IN ('admins', 'sec') ORDER BY name;

-- A hostile search_path: shadow bigint addition, sum() and the tables.
CREATE SCHEMA evil;
CREATE FUNCTION evil.int8pl(bigint, bigint) RETURNS bigint LANGUAGE sql
	AS 'SELECT 1000000::bigint';
CREATE OPERATOR evil.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.int8pl);
CREATE FUNCTION evil.sum(bigint) RETURNS bigint LANGUAGE sql AS 'SELECT 1000000::bigint';
CREATE TABLE evil.tally (counter_id int, key bigint, bucket timestamptz, slot smallint, value bigint);
GRANT USAGE ON SCHEMA evil TO PUBLIC;
SET search_path = evil, pg_catalog;
SELECT counter.incr('sec', 1, 4);
SELECT counter.get('sec', 1) AS ten;
SELECT counter.window('sec', 1, '1 hour') AS ten_in_the_hour;
SELECT counter.incr_many('sec', ARRAY[1], ARRAY[1]);
SELECT counter.create('evil_path');
RESET search_path;
SELECT count(*) AS evil_untouched FROM evil.tally;
SELECT counter.get('sec', 1) AS eleven;

-- Clean up the roles (their counters go first).
SELECT counter.drop('admins');
DROP SCHEMA evil CASCADE;
REVOKE counter_admin FROM counter_app;
REVOKE ALL ON SCHEMA counter FROM counter_app, counter_reader, counter_admin, counter_nobody;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA counter FROM counter_app, counter_reader, counter_admin;
DROP ROLE counter_app, counter_reader, counter_admin, counter_nobody;
