# The ClickHouse export against a real clickhouse-server (the private one
# test/run starts; see ClickHouseTest.pm).  Load with backfills into three
# counters (sharded, buffered, text keys), every increment also written to
# a ledger in the same transaction; meanwhile ClickHouse is killed and
# started again, then the maintenance process is killed with SIGKILL in
# the middle of a backlog.  Afterwards the sums per (counter, key, minute)
# in ClickHouse equal the ledger's exactly, with one row per bucket after
# FINAL.  Also: a server down or stopped shows in counter.exports and
# worker_status() while the lag grows, and SIGTERM still stops the process
# at once; a missing table and a wrong password are retried with backoff,
# never a crash loop, and the password never shows; rollups wait for
# minutes not yet exported; privileges and bad arguments; and the README's
# ClickHouse SQL, run as printed, gives counter.trend_score's numbers.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;
use ClickHouseTest;

my $port = ch_port();
my $password = $ENV{CLICKHOUSE_PASSWORD};
my $suffix = $$;
my $tbl = "t050_$suffix";

my $node = counter_node('clickhouse', "shared_preload_libraries = 'counter'", 'restart_after_crash = on',
	"counter.flush_interval = '100ms'", "counter.compact_interval = '1s'",
	'counter.rank_interval = 0', "counter.clickhouse_url = 'http://127.0.0.1:$port'",
	"counter.clickhouse_user = 'counter'", "counter.clickhouse_password = '$password'",
	"counter.clickhouse_interval = '300ms'", "counter.clickhouse_timeout = '2s'",
	'counter.clickhouse_batch_size = 3000');
my $sql = sub { $node->safe_psql('postgres', $_[0]) };

# Poll until $cond (a SQL boolean) holds, up to $secs; returns whether it did.
sub wait_for
{
	my ($cond, $secs) = @_;
	my $until = time() + ($secs // 60);
	while (time() < $until)
	{
		my ($rc, $out) = $node->psql('postgres', "SELECT ($cond)::int");
		return 1 if $rc == 0 && $out eq '1';
		usleep(200_000);
	}
	return 0;
}

sub maintenance_pid
{
	return $sql->(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'counter maintenance'});
}

my $create = sub {
	my ($name) = @_;
	ch_query("CREATE TABLE $name (counter String, key String, minute DateTime('UTC'),"
		  . " value Int64, version UInt64) ENGINE = ReplacingMergeTree(version)"
		  . " PARTITION BY toYYYYMM(minute) ORDER BY (counter, key, minute)");
};
$create->($tbl);

# --- bad arguments and privileges, before any export runs ---
$sql->(q{
	SELECT counter.create('views');
	SELECT counter.create('hits', mode => 'buffered');
	SELECT counter.create('tags', key_type => 'text');
	CREATE TABLE ledger (counter text, key text, minute timestamptz, delta bigint);
	GRANT INSERT ON ledger TO PUBLIC;
	CREATE ROLE app LOGIN;
	GRANT USAGE ON SCHEMA counter TO app;
	GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA counter TO app;
});
for my $bad ('x;DROP TABLE t', 'a.b.c', '1abc', 'db.', "t\xc3\xa9", 'a' x 64)
{
	my ($rc, $out, $err) = $node->psql('postgres',
		"SELECT counter.alter('views', clickhouse_table => '$bad')", extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, qr/42602: invalid clickhouse_table/, "clickhouse_table '$bad' is refused with 42602");
}
is($sql->(q{SELECT count(*) FROM counter.definition WHERE clickhouse_table IS NOT NULL}), '0',
	'a refused alter changed nothing');
$sql->("SELECT counter.alter('views', clickhouse_table => 'default.$tbl')");
my ($rc, $out, $err) = $node->psql('postgres',
	"SET ROLE app; SELECT counter.create('mine'); SELECT counter.alter('mine', clickhouse_table => 'default.$tbl')");
like($err, qr/clickhouse_table "default.$tbl" is exported to by counter "views" of another owner/,
	'a table another owner exports to is refused');
($rc, $out, $err) = $node->psql('postgres', "SET ROLE app; SELECT counter.alter('views', clickhouse_table => '')");
like($err, qr/must be owner|permission denied|owner/, 'only the owner may change the export');
for my $guc ('counter.clickhouse_password', 'counter.clickhouse_url', 'counter.clickhouse_user')
{
	($rc, $out, $err) = $node->psql('postgres', "SET ROLE app; SHOW $guc");
	like($err, qr/permission denied|must be superuser/, "a plain role cannot read $guc");
}
($rc, $out, $err) = $node->psql('postgres', "SET ROLE app; SELECT current_setting('counter.clickhouse_password')");
isnt($out, $password, 'nor through current_setting');
$sql->("SELECT counter.alter('hits', clickhouse_table => 'default.$tbl'),"
	  . " counter.alter('tags', clickhouse_table => 'default.$tbl')");
ok(wait_for(q{(SELECT count(*) FROM counter.exports WHERE frontier IS NOT NULL) = 3}, 30),
	'the three exports started');

# --- load with backfills; ClickHouse killed and started again meanwhile ---
my $script = q{
\set k random(1, 300)
\set m random(0, 50)
BEGIN;
SELECT counter.incr('views', :k, 1, at => now() - make_interval(mins => :m));
INSERT INTO ledger VALUES ('views', :k, date_trunc('minute', now() - make_interval(mins => :m)), 1);
SELECT counter.incr('hits', :k % 50, 2);
INSERT INTO ledger VALUES ('hits', :k % 50, date_trunc('minute', now()), 2);
SELECT counter.incr('tags', 'tag ' || (:k % 7) || E'\t!', 3, at => now() - make_interval(mins => :m % 5));
INSERT INTO ledger VALUES ('tags', 'tag ' || (:k % 7) || E'\t!', date_trunc('minute', now() - make_interval(mins => :m % 5)), 3);
COMMIT;
};
my $load = pgbench_start($node, $script, '-c', '6', '-T', '12');
sleep 3;
ch_kill();
ok(wait_for(q{EXISTS (SELECT FROM counter.exports WHERE state = 'retrying' AND last_error LIKE 'ClickHouse: %')}, 20),
	'ClickHouse down shows in counter.exports');
like($sql->(q{SELECT string_agg(last_error, ',') FROM counter.worker_status() WHERE role = 'maintenance'}),
	qr/ClickHouse/, 'and in worker_status()');
my $frontier_down = $sql->(q{SELECT max(frontier) FROM counter.exports});
sleep 3;
is($sql->(q{SELECT max(frontier) FROM counter.exports}), $frontier_down, 'the frontier waits while ClickHouse is down');
ch_start();
my ($lok, $lout, $lerr) = pgbench_finish($load);
ok($lok, 'the load ran through the outage') or diag($lerr);
like($lout, qr/number of failed transactions: 0/, 'no increment failed while ClickHouse was down');

# --- a backlog, then SIGKILL of the maintenance process in the middle of it ---
$sql->('SELECT counter.flush()');
ch_kill();
$sql->(q{
	INSERT INTO ledger SELECT 'views', k, date_trunc('minute', now() - make_interval(mins => m)), 1
	FROM generate_series(1000, 5999) k, generate_series(1, 3) m;
	SELECT count(counter.incr('views', k, 1, at => now() - make_interval(mins => m)))
	FROM generate_series(1000, 5999) k, generate_series(1, 3) m;
});
ch_start();
my $before = $sql->(q{SELECT buckets FROM counter.exports WHERE counter = 'views'});
ok(wait_for("(SELECT buckets FROM counter.exports WHERE counter = 'views') > $before", 30),
	'the backlog is being exported');
my $pid = maintenance_pid();
kill 'KILL', $pid;
ok(wait_ready($node), 'the server is back after SIGKILL of the maintenance process');
ok(wait_for(q{EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'counter maintenance')}, 60),
	'a new maintenance process runs');

# --- everything settled and exported: the exact comparison ---
ok(wait_for(q{(SELECT bool_and(frontier = date_trunc('minute', now(), 'UTC') AND backfills = 0
	AND failures = 0) FROM counter.exports)}, 90), 'every export caught up, no backfill left');
my $cut = $sql->(q{SELECT extract(epoch FROM min(frontier))::bigint FROM counter.exports});
my @pg_lines = sort split /\n/, $sql->(qq{
	SELECT string_agg(format('%s|%s|%s|%s', counter, key, extract(epoch FROM minute)::bigint, s), E'\\n')
	FROM (SELECT counter, key, minute, sum(delta) AS s FROM ledger
		WHERE minute < to_timestamp($cut) GROUP BY 1, 2, 3) l});
my @ch_lines = sort map {
	join('|', map { s/\\t/\t/gr =~ s/\\\\/\\/gr } split /\t/, $_, -1)
} split /\n/, ch_query("SELECT counter, key, toUInt32(minute), value FROM $tbl FINAL"
	  . " WHERE minute < toDateTime($cut) FORMAT TSV");
ok(@pg_lines > 15000, 'the ledger has ' . scalar(@pg_lines) . ' buckets');
my ($first_diff) = grep { ($pg_lines[$_] // '') ne ($ch_lines[$_] // '') } 0 .. $#pg_lines;
ok(@ch_lines == @pg_lines && !defined $first_diff, 'per (counter, key, minute) sums in ClickHouse equal the ledger')
  or diag('ClickHouse ' . scalar(@ch_lines) . ' rows, ledger ' . scalar(@pg_lines)
	  . (defined $first_diff ? ", first difference: ledger '$pg_lines[$first_diff]', ClickHouse '" . ($ch_lines[$first_diff] // '') . "'" : ''));
is(ch_query("SELECT count() FROM $tbl FINAL WHERE minute < toDateTime($cut)"), scalar(@pg_lines),
	'one row per bucket after FINAL');
is(ch_query("SELECT count() FROM (SELECT counter, key, minute, argMax(value, version) AS v FROM $tbl"
	  . " WHERE minute < toDateTime($cut) GROUP BY counter, key, minute) WHERE v != 0"),
	scalar(@pg_lines), 'and the same with argMax');
ok($sql->(q{SELECT sum(buckets) FROM counter.exports}) > @pg_lines
	  && $sql->(q{SELECT sum(resent) FROM counter.exports}) > 0,
	'buckets were sent more than once (backfills, resent batches), yet counted once');
is($sql->(q{SELECT sum(skipped) FROM counter.exports}), '0', 'no backfill was skipped');

# --- slow ClickHouse: timeouts, and SIGTERM does not wait for one ---
my $chpid = do { local (@ARGV, $/) = ("$ENV{COUNTER_WORK}/clickhouse/clickhouse.pid"); <> };
chomp $chpid;
$sql->(q{ALTER SYSTEM SET counter.clickhouse_timeout = '30s'; SELECT pg_reload_conf()});
kill 'STOP', $chpid;
$sql->(q{SELECT counter.incr('views', 1, 1, at => now() - interval '10 minutes')});
ok(wait_for(q{EXISTS (SELECT FROM counter.worker_status() WHERE role = 'maintenance' AND state = 'exporting')}, 10),
	'an export is waiting on the stopped server');
sleep 2;
# the next process starts with a 1 s timeout; this one is inside its 30 s request
$sql->(q{ALTER SYSTEM SET counter.clickhouse_timeout = '1s'; SELECT pg_reload_conf()});
$pid = maintenance_pid();
my $t0 = time();
$sql->("SELECT pg_terminate_backend($pid)");
my $gone = 0;
while (time() - $t0 < 10)
{
	if (!kill(0, $pid)) { $gone = 1; last; }
	usleep(50_000);
}
ok($gone && time() - $t0 < 3, sprintf('SIGTERM stopped the maintenance process in %.1f s during a 30 s request', time() - $t0));
ok(wait_for(q{EXISTS (SELECT FROM counter.exports WHERE last_error LIKE '%Timeout%')}, 30),
	'a server that does not answer times out, with the error shown');
kill 'CONT', $chpid;
ok(wait_for(q{(SELECT bool_and(failures = 0 AND backfills = 0) FROM counter.exports)}, 60),
	'a slow server that recovers is caught up with');

# --- lag grows while ClickHouse is down, then catches up ---
ch_kill();
# the lag is that of the oldest minute not yet sent: with everything sent,
# only a new increment gives the export a minute to wait on (it is over
# within a minute, and its lag passes 5 s at most 65 s from now)
$sql->(q{SELECT counter.incr('views', 2, 1)});
my $lag0 = $sql->(q{SELECT extract(epoch FROM max(lag)) FROM counter.exports});
ok(wait_for(q{(SELECT max(lag) > interval '5 seconds' FROM counter.exports)}, 90),
	"the lag grows while ClickHouse is down (from $lag0 s)");
ch_start();
ok(wait_for(q{(SELECT max(lag) < interval '2 seconds' AND bool_and(failures = 0) FROM counter.exports)}, 30),
	'and falls back once it is up');

# --- a missing table: retried with backoff, logged, no crash loop ---
$sql->(q{SELECT counter.create('orphan'); SELECT counter.alter('orphan', clickhouse_table => 'default.no_such_table')});
$pid = maintenance_pid();
$sql->(q{SELECT counter.incr('orphan', 1, 1, at => now() - interval '1 minute')});
ok(wait_for(q{(SELECT failures >= 3 AND last_error LIKE '%HTTP 404%no_such_table%' FROM counter.exports WHERE counter = 'orphan')}, 30),
	'a missing table is an HTTP error, retried');
my $f1 = $sql->(q{SELECT failures FROM counter.exports WHERE counter = 'orphan'});
sleep 2;
my $f2 = $sql->(q{SELECT failures FROM counter.exports WHERE counter = 'orphan'});
ok($f2 - $f1 <= 3, "with backoff ($f1 then $f2 failures 2 s later)");
is(maintenance_pid(), $pid, 'the maintenance process did not restart');
ok($node->log_contains(qr/counter export of "orphan" to ClickHouse table default.no_such_table failed/),
	'the failure is logged');
ok(wait_for(q{(SELECT bool_and(failures = 0 AND lag < interval '5 seconds') FROM counter.exports WHERE counter <> 'orphan')}, 20),
	'the other exports go on');
$create->('no_such_table');
ok(wait_for(q{(SELECT failures = 0 AND buckets > 0 FROM counter.exports WHERE counter = 'orphan')}, 120),
	'once the table exists it is exported');

# --- a wrong password: an error that does not show the password ---
$sql->(q{ALTER SYSTEM SET counter.clickhouse_password = 'not-the-password-42'; SELECT pg_reload_conf()});
$sql->(q{SELECT counter.incr('views', 2, 1, at => now() - interval '3 minutes')});
ok(wait_for(q{EXISTS (SELECT FROM counter.exports WHERE last_error LIKE '%HTTP 401%')}, 30),
	'a wrong password is an HTTP error');
unlike($sql->(q{SELECT string_agg(last_error, ' ') FROM counter.exports}) . $sql->(q{SELECT string_agg(last_error, ' ') FROM counter.worker_status()}),
	qr/not-the-password-42|\Q$password\E/, 'the password shows nowhere');
$sql->(q{ALTER SYSTEM RESET counter.clickhouse_password; SELECT pg_reload_conf()});
ok(wait_for(q{(SELECT bool_and(failures = 0 AND backfills = 0) FROM counter.exports)}, 120), 'and it recovers');

# --- rollups wait for minutes not yet exported ---
$sql->(qq{SELECT counter.create('held'); SELECT counter.alter('held', minute_retention => '0',
	clickhouse_table => 'default.$tbl')});
ok(wait_for(q{(SELECT frontier IS NOT NULL FROM counter.exports WHERE counter = 'held')}, 30), 'held starts');
ch_kill();
$sql->(q{SELECT counter.incr('held', 1, 5, at => date_trunc('hour', now()) - interval '3 hours')});
$sql->(q{SELECT counter.compact()});
is($sql->(q{SELECT count(*) FROM counter.tally WHERE counter_id = counter.id('held') AND slot IN (-2, -3)}),
	'0', 'a minute not yet in ClickHouse is not rolled up');
ch_start();
ok(wait_for(q{(SELECT backfills = 0 FROM counter.exports WHERE counter = 'held')}, 60), 'held exported');
$sql->(q{SELECT counter.compact()});
is($sql->(q{SELECT count(*) FROM counter.tally WHERE counter_id = counter.id('held') AND slot = -2}),
	'1', 'once exported it is');
is(ch_query("SELECT value FROM $tbl FINAL WHERE counter = 'held'"), '5', 'with its sum in ClickHouse');

# --- the README's ClickHouse SQL, as printed ---
my $readme = slurp_file(($ENV{TESTDIR} // "$FindBin::RealBin/../..") . '/README.md');
my @blocks = $readme =~ /^```clickhouse\n(.*?)^```$/msg;
ok(@blocks >= 4, 'the README has ' . scalar(@blocks) . ' ClickHouse blocks');
my ($ddl) = grep { /CREATE TABLE/ } @blocks;
my ($trend) = grep { /trend_score/ } @blocks;
my ($window) = grep { /AS last_day/ } @blocks;
my ($daily) = grep { /AS day/ } @blocks;
ch_query('DROP TABLE IF EXISTS counter_minutes');
ch_query($ddl);
$sql->(q{
	SELECT counter.create('trending');
	SELECT counter.alter('trending', clickhouse_table => 'counter_minutes');
});
ok(wait_for(q{(SELECT frontier IS NOT NULL FROM counter.exports WHERE counter = 'trending')}, 30), 'trending exports');
$sql->(q{
	SELECT count(*) FROM (
	  SELECT counter.incr('trending', 42, 1, at => t)
	  FROM generate_series(timestamptz '2026-11-29 09:00+00', '2026-11-29 11:59+00', '1 minute') t
	  UNION ALL
	  SELECT counter.incr('trending', 7, 10, at => t)
	  FROM generate_series(timestamptz '2026-11-28 12:00+00', '2026-11-29 11:00+00', '1 hour') t
	  UNION ALL
	  SELECT counter.incr('trending', 9, 500, at => '2026-11-20 12:00+00')
	) s;
});
ok(wait_for(q{(SELECT backfills = 0 AND failures = 0 FROM counter.exports WHERE counter = 'trending')}, 60),
	'the backfilled history is in ClickHouse');
my %ch_trend = map { split /\t/ } split /\n/, ch_query("$trend\nFORMAT TSV");
for my $k (42, 7, 9)
{
	my $want = $sql->("SELECT counter.trend_score('trending', $k, now => '2026-11-29 12:00+00')");
	is(0 + ($ch_trend{$k} // 0), 0 + $want, "trend_score of $k in ClickHouse SQL: $want");
}
my %ch_window = map { split /\t/ } split /\n/, ch_query("$window\nFORMAT TSV");
for my $k (42, 7)
{
	my $want = $sql->("SELECT counter.window('trending', $k, '1 day', now => '2026-11-29 12:00+00')");
	is(0 + ($ch_window{$k} // 0), 0 + $want, "the last day of $k in ClickHouse SQL: $want");
}
my $ch_daily = ch_query("$daily\nFORMAT TSV");
my $pg_daily = $sql->(q{
	SELECT string_agg(format(E'%s\t%s\t%s', k, bucket::date, value), E'\n' ORDER BY k::text, bucket)
	FROM unnest(ARRAY[7, 9]) k, counter.series('trending', k, '2026-11-01 00:00+00', '2026-12-01 00:00+00', '1 day')
	WHERE value <> 0});
is($ch_daily, $pg_daily, 'the daily series of the long tail equals counter.series');

$node->stop;
done_testing();
