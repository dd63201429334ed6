# Counts in the application's own table, and reconcile against a source of
# truth.  counter.sync keeps posts.view_count equal to the counter under
# 32 clients while the application updates other columns of the same rows
# (no deadlock; rows already equal are never written, seen by an update
# counter kept by a trigger); keys with no row are counted, not inserted.
# Each way a sync can break (renamed column, type change, dropped table,
# revoked privilege) pauses that sync with the error while another goes on;
# fixed and registered again, it catches up.  A role cannot sync into a
# table it may not update.  reconcile under concurrent increments: the
# counter ends equal to a ledger written in the same transactions; a dry run
# changes nothing.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;

my $node = counter_node('sync', "shared_preload_libraries = 'counter'",
	"counter.flush_interval = '100ms'", 'counter.rank_interval = 0');
my $sql = sub { $node->safe_psql('postgres', $_[0]) };

$sql->(q{
	CREATE TABLE posts (id bigint PRIMARY KEY, title text, view_count bigint NOT NULL DEFAULT 0,
		writes bigint NOT NULL DEFAULT 0);
	INSERT INTO posts (id, title) SELECT g, 'post ' || g FROM generate_series(1, 2000) g;
	-- every write of a row counts itself: a write of an unchanged total would show
	CREATE FUNCTION count_writes() RETURNS trigger LANGUAGE plpgsql AS
		$$ BEGIN NEW.writes := OLD.writes + 1; RETURN NEW; END $$;
	CREATE TRIGGER count_writes BEFORE UPDATE ON posts FOR EACH ROW EXECUTE FUNCTION count_writes();
	SELECT counter.create('views');
	SELECT counter.create('hits', mode => 'buffered');
	SELECT counter.sync('views', 'posts', 'id', 'view_count', '1 second');
	CREATE TABLE pages (path text PRIMARY KEY, hits bigint);
	INSERT INTO pages VALUES ('/a', 0), ('/b', NULL);
	SELECT counter.create('page_hits', key_type => 'text');
	SELECT counter.sync('page_hits', 'pages', 'path', 'hits', '200 milliseconds');
});
my ($rc, $out, $err) = $node->psql('postgres', q{SELECT counter.sync('views', 'posts', 'id', 'title')});
like($err, qr/column "title" is of type text, which cannot hold a total/, 'a text value column is refused at registration');
($rc, $out, $err) = $node->psql('postgres', q{SELECT counter.sync('page_hits', 'posts', 'id', 'view_count')});
like($err, qr/counter "page_hits" has text keys/, 'key types must match');

# 32 clients incrementing (one key has no row), 2 updating titles of the same rows
my $inc = pgbench_start($node, q{
\set k random(1, 2001)
SELECT counter.incr('views', :k);
SELECT counter.incr('page_hits', CASE WHEN :k % 2 = 0 THEN '/a' ELSE '/c' END);
}, '-c', '32', '-j', '4', '-T', '12');
my $app = pgbench_start($node, q{
\set k random(1, 2000)
UPDATE posts SET title = 'post ' || :k || ' edited' WHERE id = :k;
}, '-c', '2', '-T', '12');
my ($iok, $iout, $ierr) = pgbench_finish($inc);
my ($aok, $aout, $aerr) = pgbench_finish($app);
ok($iok, 'increments ran') or diag($ierr);
ok($aok, 'the application updated the same rows meanwhile') or diag($aerr);

my $equal = q{SELECT count(*) FROM posts p WHERE p.view_count <> counter.get('views', p.id)};
ok($node->poll_query_until('postgres', $equal, '0'), 'posts.view_count equals counter.get for every key');
is($sql->(q{SELECT sum(view_count) FROM posts}) + $sql->(q{SELECT counter.get('views', 2001)}),
	($iout =~ /number of transactions actually processed: (\d+)/)[0], 'every increment is in the table, or in the key without a row');
ok($node->poll_query_until('postgres', q{SELECT hits FROM pages WHERE path = '/a'} , $sql->(q{SELECT counter.get('page_hits', '/a')})),
	'a text counter syncs into a text key column');
is($sql->(q{SELECT count(*) FROM pages}), '2', 'a key with no row is not inserted');
is($sql->(q{SELECT rows_missing > 0 FROM counter.syncs WHERE counter = 'views'}), 't', 'keys without a row are counted');
unlike(slurp_file($node->logfile), qr/deadlock detected/, 'no deadlock');

my $writes = $sql->(q{SELECT sum(writes) FROM posts});
sleep 4;
is($sql->(q{SELECT sum(writes) FROM posts}), $writes, 'rows already equal are never written again');
$sql->(q{SELECT counter.incr('views', 7, 5)});
ok($node->poll_query_until('postgres', q{SELECT view_count = counter.get('views', 7) FROM posts WHERE id = 7}),
	'a new increment reaches its row');
is($sql->(q{SELECT sum(writes) FROM posts}), $writes + 1, 'and only that row was written');

# a buffered counter syncs after its folds
$sql->(q{
	CREATE TABLE items (id int PRIMARY KEY, n numeric);
	INSERT INTO items SELECT g, 0 FROM generate_series(1, 10) g;
	SELECT counter.sync('hits', 'items', 'id', 'n', '200 milliseconds');
	SELECT counter.incr('hits', g % 10 + 1) FROM generate_series(1, 1000) g;
});
ok($node->poll_query_until('postgres', q{SELECT sum(n) = 1000 AND count(*) FILTER (WHERE n <> 100) = 0 FROM items}),
	'a buffered counter syncs into a numeric column');

# each way of breaking: that sync pauses with its error, the others go on
my $breaks = [
	[ 'a renamed column', q{ALTER TABLE items RENAME COLUMN n TO m}, qr/column t.n does not exist/,
		q{ALTER TABLE items RENAME COLUMN m TO n} ],
	[ 'a column type that takes no total', q{ALTER TABLE items ALTER COLUMN n TYPE text}, qr/operator does not exist|is of type text/,
		q{ALTER TABLE items ALTER COLUMN n TYPE numeric USING n::numeric} ],
];
for my $b (@$breaks)
{
	my ($what, $break, $error, $fix) = @$b;
	$sql->($break);
	$sql->(q{SELECT counter.incr('hits', 1, 10), counter.incr('views', 8, 1)});
	ok($node->poll_query_until('postgres', q{SELECT state FROM counter.syncs WHERE counter = 'hits'}, 'paused'),
		"$what: the sync pauses");
	like($sql->(q{SELECT last_error FROM counter.syncs WHERE counter = 'hits'}), $error, "$what: with the error in counter.syncs");
	ok($node->poll_query_until('postgres', q{SELECT view_count = counter.get('views', 8) FROM posts WHERE id = 8}),
		"$what: the other sync goes on");
	$sql->($fix);
	$sql->(q{SELECT counter.sync('hits', 'items', 'id', 'n', '200 milliseconds')});
	ok($node->poll_query_until('postgres',
			q{SELECT bool_and(n::numeric = counter.get('hits', id)) FROM items}),
		"$what: fixed and registered again, it catches up");
}
like(slurp_file($node->logfile), qr/WARNING:  counter sync \d+ into table \d+ paused: column t.n does not exist/,
	'a paused sync is logged');
$sql->(q{DROP TABLE items});
$sql->(q{SELECT counter.incr('hits', 1)});
ok($node->poll_query_until('postgres', q{SELECT state = 'paused' AND last_error LIKE '%no longer exists%' FROM counter.syncs WHERE counter = 'hits'}),
	'a dropped table pauses the sync, saying so');
is($sql->(q{SELECT counter.unsync('hits')}), '1', 'unsync removes it');

# privileges: the sync writes as the role that registered it
$sql->(q{
	CREATE ROLE app LOGIN;
	GRANT USAGE ON SCHEMA counter TO app;
	GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA counter TO app;
	CREATE TABLE secret (id bigint PRIMARY KEY, n bigint DEFAULT 0);
	INSERT INTO secret VALUES (1);
	CREATE TABLE mine (id bigint PRIMARY KEY, n bigint DEFAULT 0);
	INSERT INTO mine VALUES (1);
	GRANT SELECT, UPDATE ON mine TO app;
	GRANT SELECT ON secret TO app;
});
my $as_app = sub { $node->psql('postgres', "SET ROLE app; $_[0]", extra_params => [ '-v', 'VERBOSITY=verbose' ]) };
$as_app->(q{SELECT counter.create('apps')});
($rc, $out, $err) = $as_app->(q{SELECT counter.sync('apps', 'secret', 'id', 'n')});
like($err, qr/42501: permission denied to sync into "secret"."n"/, 'no sync into a table the role may not update (42501)');
($rc, $out, $err) = $as_app->(q{SELECT counter.sync('views', 'mine', 'id', 'n')});
like($err, qr/must be owner of counter "views"/, 'no sync of a counter the role does not own');
($rc, $out, $err) = $as_app->(q{SELECT counter.sync('apps', 'mine', 'id', 'n', '200 milliseconds'); SELECT counter.incr('apps', 1, 3)});
is($rc, 0, 'a sync into its own table is registered') or diag($err);
ok($node->poll_query_until('postgres', q{SELECT n FROM mine}, '3'), 'and written');
$sql->(q{REVOKE UPDATE ON mine FROM app});
$sql->(q{SELECT counter.incr('apps', 1, 4)});
ok($node->poll_query_until('postgres', q{SELECT state FROM counter.syncs WHERE counter = 'apps'}, 'paused'),
	'a revoked privilege pauses the sync');
like($sql->(q{SELECT last_error FROM counter.syncs WHERE counter = 'apps'}), qr/permission denied for table mine/,
	'with the permission error, as the role would get it');
is($sql->(q{SELECT n FROM mine}), '3', 'and nothing was written with the extension\'s rights');

# reconcile: drift against a ledger, repaired under concurrent increments
$sql->(q{
	CREATE TABLE ledger (key bigint NOT NULL);
	SELECT counter.create('rc');
	INSERT INTO ledger SELECT g % 100 + 1 FROM generate_series(1, 5000) g;
	SELECT counter.incr_many('rc', array_agg(key)) FROM ledger;
	-- drift: increments the ledger never saw, ledger rows never counted, a stray key
	SELECT counter.incr('rc', k, 3) FROM generate_series(1, 100, 3) k;
	INSERT INTO ledger SELECT g % 50 + 1 FROM generate_series(1, 700) g;
	SELECT counter.incr('rc', 555, 9);
});
my $totals = q{SELECT string_agg(k || '=' || counter.get('rc', k), ',' ORDER BY k) FROM generate_series(1, 555) k};
my $before = $sql->($totals);
my $dry = $sql->(q{SELECT count(*) || ' ' || sum(diff) FROM counter.reconcile('rc', 'SELECT key, count(*) FROM ledger GROUP BY 1')});
is($sql->($totals), $before, 'a dry run changes nothing');
my $drift = $sql->(q{SELECT sum(c) FROM (SELECT count(*) AS c FROM ledger) l}) - $sql->(q{SELECT sum(value) FROM counter.get_many('rc', ARRAY(SELECT generate_series(1, 555)::bigint))});
like($dry, qr/^\d+ $drift$/, "a dry run lists the keys that differ, by the drift ($dry)");
my $load = pgbench_start($node, q{
\set k random(1, 100)
BEGIN;
INSERT INTO ledger VALUES (:k);
SELECT counter.incr('rc', :k);
COMMIT;
}, '-c', '16', '-T', '6');
sleep 2;
my ($rrc, $rout, $rerr) = $node->psql('postgres',
	q{SELECT count(*) FROM counter.reconcile('rc', 'SELECT key, count(*) FROM ledger GROUP BY 1', apply => true)});
is($rrc, 0, 'reconcile with apply under load') or diag($rerr);
my ($lok, $lout, $lerr) = pgbench_finish($load);
ok($lok, 'the load committed') or diag($lerr);
is($sql->(q{SELECT count(*) FROM (SELECT key, count(*) AS n FROM ledger GROUP BY 1) l
	WHERE counter.get('rc', l.key) <> l.n}) . ' ' . $sql->(q{SELECT counter.get('rc', 555)}),
	'0 0', 'every key equals the ledger: no concurrent increment lost or doubled, the stray key zeroed');
is($sql->(q{SELECT count(*) FROM counter.reconcile('rc', 'SELECT key, count(*) FROM ledger GROUP BY 1')}), '0',
	'nothing left to reconcile');
($rc, $out, $err) = $node->psql('postgres', q{SELECT * FROM counter.reconcile('rc', 'SELECT 1, 1/0')});
like($err, qr/division by zero/, 'an error in the source query is the caller\'s error');
($rc, $out, $err) = $as_app->(q{SELECT * FROM counter.reconcile('apps', 'SELECT id, n FROM secret')});
is($rc, 0, 'the source runs with the caller\'s rights (app may read secret)') or diag($err);
$sql->(q{REVOKE SELECT ON secret FROM app});
($rc, $out, $err) = $as_app->(q{SELECT * FROM counter.reconcile('apps', 'SELECT id, n FROM secret')});
like($err, qr/permission denied for table secret/, 'never with the extension\'s');

unlike(slurp_file($node->logfile), qr/server process .* was terminated|PANIC/, 'no crash');
$node->stop;
done_testing();
