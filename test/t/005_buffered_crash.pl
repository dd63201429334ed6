# Buffered mode under crashes.  A clean restart folds everything.  A kill -9
# of a backend (a crash restart of the whole server) or an immediate stop
# loses at most what was committed since the last fold: about one
# counter.flush_interval of increments.  Each transaction also inserts into
# a ledger, so the loss is measured exactly and compared with that bound.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;

my $flush_ms = 250;
my $node = counter_node('bufcrash', "shared_preload_libraries = 'counter'",
	"counter.flush_interval = '${flush_ms}ms'", 'restart_after_crash = on',
	'synchronous_commit = on', 'fsync = on');
$node->safe_psql('postgres', q{
	CREATE TABLE ledger (n int);
	SELECT counter.create('hot', mode => 'buffered');
});

# Clean restart: nothing folded yet, everything kept.
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET counter.flush_interval = '1h';
	SELECT pg_reload_conf();
});
usleep(300_000);
$node->safe_psql('postgres', "SELECT counter.incr('hot', 1, 1) FROM generate_series(1, 1000)");
$node->restart;
is($node->safe_psql('postgres', "SELECT counter.get('hot', 1)"), '1000',
	'a clean restart folds every buffered increment');
is($node->safe_psql('postgres', "SELECT sum(value) FROM counter.tally"), '1000',
	'and they are in the tables');
$node->safe_psql('postgres', q{
	ALTER SYSTEM RESET counter.flush_interval;
	SELECT pg_reload_conf();
});
$node->safe_psql('postgres', 'TRUNCATE ledger');
$node->safe_psql('postgres', "SELECT counter.drop('hot'); SELECT counter.create('hot', mode => 'buffered')");

# Run load, crash with $crash, and compare counter, ledger and the bound.
sub crash_round
{
	my ($label, $crash) = @_;
	my $before_c = query_int($node, "SELECT counter.get('hot', 1)");
	my $before_l = query_int($node, 'SELECT count(*) FROM ledger');
	my $t0 = time;
	my $run = pgbench_start($node,
		"BEGIN;\nSELECT counter.incr('hot', 1);\nINSERT INTO ledger VALUES (1);\nCOMMIT;\n",
		'-c', 16, '-j', 2, '-T', 30);
	$node->poll_query_until('postgres',
		"SELECT count(*) > $before_l + 2000 FROM ledger") or die 'load did not start';
	usleep(1_000_000);
	$crash->();
	my $elapsed = time - $t0;
	pgbench_finish($run);
	wait_ready($node) or die 'no recovery';
	my $ledger = query_int($node, 'SELECT count(*) FROM ledger') - $before_l;
	my $counted = query_int($node, "SELECT counter.get('hot', 1)") - $before_c;
	my $rate = $ledger / $elapsed;
	my $bound = int($rate * 2 * $flush_ms / 1000) + 16;
	my $lost = $ledger - $counted;
	note(sprintf('%s: %d committed, %d counted, %d lost; bound %d (2 x %d ms at %.0f/s + 16 in flight)',
		$label, $ledger, $counted, $lost, $bound, $flush_ms, $rate));
	cmp_ok($lost, '>=', 0, "$label: nothing counted twice ($counted of $ledger)");
	cmp_ok($lost, '<=', $bound, "$label: lost $lost, within the bound of $bound");
	return $lost;
}

crash_round('kill -9 of a backend', sub {
	my $pid = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
		  . " AND pid <> pg_backend_pid() LIMIT 1");
	kill 'KILL', $pid;
});
crash_round('immediate stop', sub {
	$node->stop('immediate');
	$node->start;
});

$node->stop;
done_testing();
