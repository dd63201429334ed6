# The background processes: the launcher, and a database's ingest process
# (folding, reload on SIGHUP, SIGTERM, restart after kill -9) and
# maintenance process (compaction); nothing runs in a database without the
# extension; buffer-full fallback; what works without
# shared_preload_libraries.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;

my $node = PostgreSQL::Test::Cluster->new('worker');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'counter'
counter.flush_interval = '200ms'
counter.compact_interval = '1s'
restart_after_crash = on
});
$node->start;

# Without the extension only the launcher runs, quietly.
my $worker_pid = sub {
	$node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'counter ingest'");
};
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'counter launcher'"),
	'the launcher runs, shown as "counter launcher" in pg_stat_activity');
usleep(2_500_000);
is($node->safe_psql('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('counter ingest', 'counter maintenance')"),
	'0', 'no process stays in a database without the extension');
unlike(slurp_file($node->logfile), qr/ERROR|FATAL/,
	'no errors while the extension is not installed');

$node->safe_psql('postgres', q{
	CREATE EXTENSION counter;
	SELECT counter.create('buf', mode => 'buffered');
});
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type IN ('counter ingest', 'counter maintenance') AND datname = 'postgres'"),
	'CREATE EXTENSION brings an ingest and a maintenance process to the database');

# Folding without being asked.
$node->safe_psql('postgres', "SELECT counter.incr('buf', 1, 7)");
ok($node->poll_query_until('postgres',
	"SELECT coalesce(sum(value), 0) = 7 FROM counter.tally"),
	'worker folds buffered increments on its own');
is($node->safe_psql('postgres', "SELECT counter.get('buf', 1)"), '7', 'read after fold is exact');

# SIGHUP: a long flush_interval stops timely folds, a short one brings them back.
$node->safe_psql('postgres', "ALTER SYSTEM SET counter.flush_interval = '1h'");
$node->reload;
usleep(500_000);
$node->safe_psql('postgres', "SELECT counter.incr('buf', 2, 5)");
usleep(1_500_000);
is($node->safe_psql('postgres', "SELECT count(*) FROM counter.tally WHERE key = 2"),
	'0', 'after reload with flush_interval = 1h nothing is folded within 1.5 s');
is($node->safe_psql('postgres', "SELECT counter.get('buf', 2)"), '5',
	'unfolded increments are still read exactly');
$node->safe_psql('postgres', "ALTER SYSTEM SET counter.flush_interval = '100ms'");
$node->reload;
$node->safe_psql('postgres', "SELECT counter.flush()");
ok($node->poll_query_until('postgres',
	"SELECT coalesce(sum(value), 0) = 5 FROM counter.tally WHERE key = 2"),
	'after reload with 100ms the worker folds again');

# SIGTERM: the ingest process folds, exits promptly and is started again.
$node->safe_psql('postgres', "SELECT counter.incr('buf', 3, 11)");
my $pid = $worker_pid->();
my $t0 = time;
kill 'TERM', $pid;
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid"), 'ingest process exits on SIGTERM');
cmp_ok(time - $t0, '<', 3, 'and does so promptly');
is($node->safe_psql('postgres', "SELECT coalesce(sum(value), 0) FROM counter.tally WHERE key = 3"),
	'11', 'it folded what was buffered on its way out');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'counter ingest' AND pid <> $pid"),
	'the launcher starts it again');

# kill -9 of the ingest process: a crash restart; direct and sharded lose nothing.
$node->safe_psql('postgres', q{
	SELECT counter.create('dur');
	SELECT counter.incr('dur', 1, 100);
});
$pid = $worker_pid->();
kill 'KILL', $pid;
wait_ready($node) or die 'no recovery';
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'counter ingest'"),
	'ingest process back after kill -9');
is($node->safe_psql('postgres', "SELECT counter.get('dur', 1)"), '100',
	'sharded count survives a kill -9 of the ingest process');
is($node->safe_psql('postgres', "SELECT counter.get('buf', 1) + counter.get('buf', 2) + counter.get('buf', 3)"),
	'23', 'folded buffered counts survive it too');

# A check for the extension that fails (here: a lock on pg_extension held
# past the processes' lock_timeout) is logged and retried; the database
# stays served by the same processes, which do not take it for a drop.
my $procs = sub {
	$node->safe_psql('postgres', "SELECT string_agg(backend_type || ':' || pid, ',' ORDER BY backend_type)"
		  . " FROM pg_stat_activity WHERE datname = 'postgres' AND backend_type LIKE 'counter %'");
};
my $before = $procs->();
like($before, qr/^counter ingest:\d+,counter maintenance:\d+$/, "both processes run ($before)");
my $log_at = -s $node->logfile;
my ($lock_out, $lock_err) = ('', '');
my $locker = IPC::Run::start(
	[ 'psql', '-X', '-q', '-d', $node->connstr('postgres'), '-c',
	  'BEGIN; LOCK TABLE pg_catalog.pg_extension IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(7); COMMIT' ],
	'>', \$lock_out, '2>', \$lock_err);
ok($locker->finish, 'pg_extension was held locked for 7 s') or diag($lock_err);
my $log_lock = substr(slurp_file($node->logfile), $log_at);
like($log_lock, qr/WARNING:  canceling statement due to lock timeout\n[^\n]*CONTEXT:  counter: checking for the extension/,
	'the failed check is logged as a WARNING');
unlike($log_lock, qr/extension was dropped/, 'the ingest process does not take it for a drop');
is($procs->(), $before, 'the same ingest and maintenance processes still run');
like($node->safe_psql('postgres', "SELECT last_error FROM counter.worker_status() WHERE database = 'postgres' AND role = 'maintenance'"),
	qr/^checking for the extension: .*lock timeout/, 'worker_status shows the failure as its last error');
$node->safe_psql('postgres', "SELECT counter.incr('buf', 4, 9)");
ok($node->poll_query_until('postgres',
	"SELECT coalesce(sum(value), 0) = 9 FROM counter.tally WHERE key = 4"),
	'and buffered increments are folded again without a flush()');

# Compaction: rows of many past minutes and slots shrink to one per minute,
# minutes over an hour old become hours; totals never change.
$node->safe_psql('postgres', q{
	SELECT counter.create('busy', slots => 8);
	SELECT counter.alter('busy', mode => 'sharded');
});
for my $i (1 .. 8)
{
	# each session writes its own slot rows, 50 past minutes each
	$node->safe_psql('postgres',
		"SELECT counter.incr('busy', 1, 1, at => now() - make_interval(mins => m)) FROM generate_series(3, 150, 3) AS m");
}
my $rows_before = $node->safe_psql('postgres',
	"SELECT count(*) FROM counter.tally t JOIN counter.counters c ON c.id = t.counter_id WHERE c.name = 'busy'");
cmp_ok($rows_before, '>=', 30, "one row per minute at least before compaction ($rows_before)");
ok($node->poll_query_until('postgres',
	"SELECT count(*) FILTER (WHERE slot >= 0) = 0 AND count(*) FILTER (WHERE slot = -2) >= 1"
	  . " FROM counter.tally t JOIN counter.counters c ON c.id = t.counter_id WHERE c.name = 'busy'"),
	'old minutes rolled up into hours');
is($node->safe_psql('postgres', "SELECT counter.get('busy', 1)"), '400', 'total unchanged by compaction');
cmp_ok($node->safe_psql('postgres', q{
	SELECT items FROM counter.worker_status() WHERE role = 'maintenance' AND database = 'postgres'}), '>', 0,
	'worker_status counts the rows the maintenance process compacted');

# A full buffer: increments of new keys take the durable path, none is lost.
$node->append_conf('postgresql.conf', "counter.buffer_keys = 64\n");
$node->restart;
# Readers cannot crowd out buffered increments: cached totals take new
# entries only while the buffer is less than half full.
$node->safe_psql('postgres',
	"SELECT counter.create('readers'); SELECT counter.incr('readers', k) FROM generate_series(1, 500) AS k");
$node->safe_psql('postgres',
	"SELECT count(counter.get('readers', g, max_age => '1 hour')) FROM generate_series(1, 500) AS g");
cmp_ok($node->safe_psql('postgres', "SELECT entries FROM counter.buffer_usage()"), '<=', 32,
	'500 cached reads take at most half of a 64-entry buffer');
$node->safe_psql('postgres',
	"SELECT counter.create('fresh', mode => 'buffered'); SELECT counter.incr('fresh', k) FROM generate_series(1, 20) AS k");
is($node->safe_psql('postgres', "SELECT buffered || '/' || fallback FROM counter.stats WHERE name = 'fresh'"),
	'20/0', 'buffered increments of new keys still find room');
$node->safe_psql('postgres', "SELECT counter.create('many', mode => 'buffered')");
$node->safe_psql('postgres', "SELECT counter.incr('many', k) FROM generate_series(1, 500) AS k");
$node->safe_psql('postgres', "SELECT counter.incr('many', k) FROM generate_series(1, 500) AS k");
is($node->safe_psql('postgres',
	"SELECT sum(value) FROM counter.get_many('many', ARRAY(SELECT generate_series(1, 500))::bigint[])"),
	'1000', 'all 1000 increments of 500 keys counted with a 64-key buffer');
cmp_ok($node->safe_psql('postgres', "SELECT fallback FROM counter.stats WHERE name = 'many'"),
	'>', 0, 'stats show the durable fallback');
cmp_ok($node->safe_psql('postgres', "SELECT entries FROM counter.buffer_usage()"),
	'<=', 64, 'buffer stays within counter.buffer_keys');
$node->stop;

# Without shared_preload_libraries: the durable modes work, the rest says how.
my $plain = counter_node('plain');
$plain->safe_psql('postgres', "SELECT counter.create('s'); SELECT counter.incr('s', 1)");
is($plain->safe_psql('postgres', "SELECT counter.get('s', 1)"), '1', 'sharded works without preload');
for my $sql ("SELECT counter.create('b', mode => 'buffered')", "SELECT counter.flush()",
	"SELECT * FROM counter.stats", "SELECT counter.get('s', 1, max_age => '1 s')")
{
	my ($ret, $out, $err) = $plain->psql('postgres', $sql, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, qr/55000.*shared_preload_libraries|55000[\s\S]*shared_preload_libraries/,
		"without preload, $sql fails with 55000 and names the setting");
}
$plain->stop;

done_testing();
