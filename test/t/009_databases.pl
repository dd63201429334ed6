# Every database with the extension is served, up to counter.max_databases:
# buffered counters fold and rankings refresh in each; a database without
# the extension costs no process; one over the budget is refused buffered
# mode with a clear error until a place frees; DROP DATABASE, CREATE
# DATABASE ... TEMPLATE and ALTER DATABASE ... RENAME work while served.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;

my $node = PostgreSQL::Test::Cluster->new('dbs');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'counter'
max_worker_processes = 16
counter.max_databases = 2
counter.flush_interval = '100ms'
counter.rank_interval = '1s'
});
$node->start;
$node->safe_psql('postgres', "CREATE DATABASE $_") for qw(app1 app2 app3 plain);
my $procs = sub {
	my ($db) = @_;
	return $node->safe_psql('postgres',
		"SELECT string_agg(backend_type, ',' ORDER BY backend_type) FROM pg_stat_activity"
		  . " WHERE datname = '$db' AND backend_type LIKE 'counter %'");
};

for my $db (qw(app1 app2))
{
	$node->safe_psql($db, q{
		CREATE EXTENSION counter;
		SELECT counter.create('hits', mode => 'buffered');
		SELECT counter.incr('hits', k, k) FROM generate_series(1, 20) AS k;
	});
}
for my $db (qw(app1 app2))
{
	ok($node->poll_query_until($db, 'SELECT coalesce(sum(value), 0) = 210 FROM counter.tally'),
		"$db: buffered increments are folded without a flush()");
	ok($node->poll_query_until($db,
		"SELECT string_agg(key::text, ',' ORDER BY rank, key) = '20,19' FROM counter.top('hits', 2, 'total')"),
		"$db: its ranking is refreshed");
	is($procs->($db), 'counter ingest,counter maintenance', "$db: one ingest and one maintenance process");
}
usleep(1_500_000);
is($procs->('plain'), '', 'a database without the extension keeps no process');

# A third database with the extension is over counter.max_databases = 2.
$node->safe_psql('app3', 'CREATE EXTENSION counter');
ok($node->poll_query_until('app3',
	"SELECT state LIKE 'not served: counter.max_databases (2)%' FROM counter.worker_status() WHERE database = 'app3' AND role = 'ingest'"),
	'the database over the budget is shown as not served, with the reason');
my ($ret, $out, $err) = $node->psql('app3', "SELECT counter.create('b', mode => 'buffered')",
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/55000: no counter ingest process serves this database/, 'buffered mode is refused there (55000)');
is($node->safe_psql('app3', "SELECT counter.create('s'); SELECT counter.incr('s', 1, 5); SELECT counter.get('s', 1)"),
	"s\nt\n5", 'sharded counters work there');

# DROP DATABASE of a served database: its processes step aside.
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE app2');
is($ret, 0, 'DROP DATABASE of a served database succeeds') or diag($err);
ok($node->poll_query_until('app3',
	"SELECT state NOT LIKE 'not served%' FROM counter.worker_status() WHERE database = 'app3' AND role = 'ingest'"),
	'the freed place goes to the waiting database');
$node->safe_psql('app3', "SELECT counter.create('b', mode => 'buffered'); SELECT counter.incr('b', 1, 3)");
ok($node->poll_query_until('app3', "SELECT coalesce(sum(value), 0) = 3 FROM counter.tally WHERE counter_id = counter.id('b')"),
	'buffered mode works there now');

# CREATE DATABASE ... TEMPLATE a served database, and a RENAME.
($ret, $out, $err) = $node->psql('postgres', 'CREATE DATABASE copy1 TEMPLATE app1');
is($ret, 0, 'CREATE DATABASE ... TEMPLATE a served database succeeds') or diag($err);
is($node->safe_psql('copy1', "SELECT counter.get('hits', 20)"), '20', 'the copy has the counts');
($ret, $out, $err) = $node->psql('postgres', 'ALTER DATABASE app1 RENAME TO app1b');
is($ret, 0, 'ALTER DATABASE ... RENAME of a served database succeeds') or diag($err);
$node->safe_psql('app1b', "SELECT counter.incr('hits', 1, 100)");
ok($node->poll_query_until('app1b',
	"SELECT coalesce(sum(value), 0) = 310 FROM counter.tally"), 'and it is served again after the rename');

# No error loop about the dropped database.
my $log = slurp_file($node->logfile);
my $fatal = () = $log =~ /FATAL:.*database \d+ does not exist/g;
cmp_ok($fatal, '<=', 1, "at most one FATAL about the dropped database ($fatal)");
unlike($log, qr/server process .* was terminated by signal/, 'no process crashed');

$node->stop;
done_testing();
