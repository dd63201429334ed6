# Crash safety of the durable modes: kill -9 of a backend under load and an
# immediate shutdown lose no committed increment and count none twice.  Each
# transaction also inserts into a ledger table, so after recovery the
# counter must equal the ledger exactly, and be at least what pgbench saw
# acknowledged.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;

my $node = counter_node('crash', 'restart_after_crash = on', 'fsync = on',
	'synchronous_commit = on');
$node->safe_psql('postgres', q{
	CREATE TABLE ledger (mode text, n int);
	SELECT counter.create('crash_direct', mode => 'direct');
	SELECT counter.create('crash_sharded');
});

# Committed transactions as pgbench reports them (it may abort clients).
sub acked
{
	my ($out) = @_;
	return $out =~ /number of transactions actually processed: (\d+)/ ? $1 : 0;
}

# Load both counters, wait a moment, then run $crash; check afterwards.
sub crash_under_load
{
	my ($label, $crash) = @_;
	my %acked;
	my @runs;
	my %before = map { $_ => query_int($node, "SELECT counter.get('crash_$_', 1)") }
	  qw(direct sharded);
	for my $mode (qw(direct sharded))
	{
		push @runs, [ $mode, pgbench_start($node,
			"BEGIN;\nSELECT counter.incr('crash_$mode', 1);\n"
			  . "INSERT INTO ledger VALUES ('$mode', 1);\nCOMMIT;\n",
			'-c', 8, '-j', 1, '-T', 30) ];
	}
	# let load build up: wait until both counters moved
	$node->poll_query_until('postgres',
		"SELECT counter.get('crash_direct', 1) > $before{direct} + 200"
		  . " AND counter.get('crash_sharded', 1) > $before{sharded} + 200")
	  or die "load did not start";
	$crash->();
	for my $r (@runs)
	{
		my ($mode, $run) = @$r;
		my ($ok, $out, $err) = pgbench_finish($run);
		$acked{$mode} = acked($out);
		cmp_ok($acked{$mode}, '>', 200, "$label, $mode: load was running when it struck");
		$acked{$mode} += $before{$mode};
	}
	wait_ready($node) or die 'node did not recover';
	for my $mode (qw(direct sharded))
	{
		my $total = query_int($node, "SELECT counter.get('crash_$mode', 1)");
		my $ledger = query_int($node, "SELECT count(*) FROM ledger WHERE mode = '$mode'");
		is($total, $ledger, "$label, $mode: counter equals the ledger ($ledger)");
		cmp_ok($total, '>=', $acked{$mode},
			"$label, $mode: every acknowledged increment survived ($acked{$mode})");
	}
}

crash_under_load('kill -9 of a backend', sub {
	my $pid = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
		  . " AND pid <> pg_backend_pid() AND query LIKE '%crash_%' LIMIT 1");
	ok($pid =~ /^\d+$/, 'found a pgbench backend to kill');
	kill 'KILL', $pid;
});

crash_under_load('immediate stop', sub {
	$node->stop('immediate');
	$node->start;
});

$node->stop;
done_testing();
