# Exact totals under real concurrency: 32 connections x 2,000 increments of
# one key, in each mode, and again while the mode is switched under load.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;

my $clients = 32;
my $per_client = 2000;
my $expected = $clients * $per_client;

my $node = counter_node('concurrency');

for my $mode (qw(direct sharded))
{
	$node->safe_psql('postgres', "SELECT counter.create('hot_$mode', mode => '$mode')");
	my $run = pgbench_start($node, "SELECT counter.incr('hot_$mode', 42);\n",
		'-c', $clients, '-j', 2, '-t', $per_client, '-M', 'prepared');
	my ($ok, $out, $err) = pgbench_finish($run);
	ok($ok, "$mode: pgbench ran without errors") or diag($err);
	like($out, qr{processed: $expected/$expected}, "$mode: every transaction processed");
	is(query_int($node, "SELECT counter.get('hot_$mode', 42)"),
		$expected, "$mode: total is exactly $clients x $per_client");
}

# The sharded counter spread its writers over slot rows; direct used one.
cmp_ok(query_int($node,
	"SELECT count(DISTINCT slot) FROM counter.tally t JOIN counter.counters c"
	  . " ON c.id = t.counter_id WHERE c.name = 'hot_sharded'"),
	'>=', $clients / 2, 'sharded writers used many slot rows');
is(query_int($node,
	"SELECT count(DISTINCT slot) FROM counter.tally t JOIN counter.counters c"
	  . " ON c.id = t.counter_id WHERE c.name = 'hot_direct'"),
	1, 'direct writers shared one slot row');

# Switch mode and slot count back and forth while 32 clients write.
$node->safe_psql('postgres', "SELECT counter.create('switching')");
my $run = pgbench_start($node,
	"SELECT counter.incr('switching', 7);\nSELECT counter.incr('switching', 8, 2);\n",
	'-c', $clients, '-j', 2, '-t', $per_client, '-M', 'prepared');
my @settings = ("mode => 'direct'", "mode => 'sharded'", "slots => 3",
	"mode => 'direct', slots => 1", "mode => 'sharded', slots => 64");
my $switches = 0;
while ($run->{h}->pumpable)
{
	$node->safe_psql('postgres',
		"SELECT counter.alter('switching', $settings[$switches % @settings])");
	$switches++;
	usleep(100_000);
	$run->{h}->pump_nb;
}
my ($ok, $out, $err) = pgbench_finish($run);
ok($ok, 'mode switching: pgbench ran without errors') or diag($err);
cmp_ok($switches, '>=', 5, "mode switched $switches times under load");
is(query_int($node, "SELECT counter.get('switching', 7)"),
	$expected, 'mode switching: key 7 total exact');
is(query_int($node, "SELECT counter.get('switching', 8)"),
	2 * $expected, 'mode switching: key 8 total exact');

# Batches from many clients over overlapping keys, written in key order,
# never deadlock and sum exactly.
$node->safe_psql('postgres', "SELECT counter.create('batches')");
$run = pgbench_start($node,
	"SELECT counter.incr_many('batches', ARRAY[3, 1, 2, 1]::bigint[], ARRAY[1, 1, 1, 1]::bigint[]);\n"
	  . "SELECT counter.incr_many('batches', ARRAY[2, 3]::bigint[]);\n",
	'-c', 16, '-j', 2, '-t', 500, '-M', 'prepared');
($ok, $out, $err) = pgbench_finish($run);
ok($ok, 'batches: pgbench ran without errors') or diag($err);
is($node->safe_psql('postgres',
	"SELECT string_agg(value::text, ',' ORDER BY key) FROM counter.get_many('batches', ARRAY[1, 2, 3]::bigint[])"),
	join(',', 2 * 8000, 2 * 8000, 2 * 8000), 'batches: totals exact');

$node->stop;
done_testing();
