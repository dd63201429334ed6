# Helpers shared by counter's TAP tests: a node with the extension, and
# pgbench runs in the background so a test can act while load is on.
package CounterTest;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

our @EXPORT = qw(counter_node pgbench_start pgbench_finish query_int run_checks wait_ready);

# A started node with counter installed in database postgres.
sub counter_node
{
	my ($name, @conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf',
		join("\n", 'max_connections = 100', @conf) . "\n");
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION counter');
	return $node;
}

# Start pgbench on $node running $sql as its only script; returns a handle.
sub pgbench_start
{
	my ($node, $sql, @opts) = @_;
	my $script = $node->basedir . '/bench_' . int(rand(1e9)) . '.sql';
	PostgreSQL::Test::Utils::append_to_file($script, $sql);
	my ($out, $err) = ('', '');
	local $ENV{PGHOST} = $node->host;
	local $ENV{PGPORT} = $node->port;
	my $h = IPC::Run::start(
		[ 'pgbench', '-n', '-f', $script, @opts, 'postgres' ],
		'>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err };
}

# Wait for a pgbench started by pgbench_start; returns (exit ok, stdout, stderr).
sub pgbench_finish
{
	my ($run) = @_;
	my $ok = eval { $run->{h}->finish; 1 } && $run->{h}->result == 0;
	return ($ok, ${ $run->{out} }, ${ $run->{err} });
}

# Run a program that prints one line per check ("ok - name" or
# "not ok - name # why", as test/drivers/ do) and make each line a test; the
# program must exit 0 and check something.  %env is added to its
# environment.  Returns the number of checks it printed.
sub run_checks
{
	my ($cmd, %env) = @_;
	my ($out, $err) = ('', '');
	local @ENV{ keys %env } = values %env;
	my $ran = IPC::Run::run($cmd, '>', \$out, '2>', \$err);
	my $n = 0;
	for my $line (split /\n/, $out)
	{
		if ($line =~ /^(not )?ok - (.*?)(?: # (.*))?$/)
		{
			$n++;
			ok(!defined $1, $2) or diag($3 // '');
		}
		else
		{
			note($line);
		}
	}
	ok($ran && $n > 0, "@$cmd: exit 0 after $n checks") or diag($err);
	return $n;
}

# Wait until $node answers again after a crash restart (up to 3 minutes).
# poll_query_until can die while the postmaster resets: its psql may exit
# before reading the query, and the write to it fails; this retries that.
sub wait_ready
{
	my ($node) = @_;
	for (1 .. 1800)
	{
		my $ok = eval {
			my ($rc, $out) = $node->psql('postgres', 'SELECT 1');
			$rc == 0 && $out eq '1';
		};
		return 1 if $ok;
		Time::HiRes::usleep(100_000);
	}
	return 0;
}

# One integer from a query.
sub query_int
{
	my ($node, $sql) = @_;
	return 0 + $node->safe_psql('postgres', $sql);
}

1;
