# Helpers for counter's ClickHouse TAP tests: the private clickhouse-server
# that test/run started (test/lib.sh counter_clickhouse_start, config and
# data under $COUNTER_WORK/clickhouse), queried over its HTTP interface,
# killed and started again with the same ports and data.
package ClickHouseTest;

use strict;
use warnings;

use Exporter 'import';
use HTTP::Tiny;
use POSIX ':sys_wait_h';
use Test::More;
use Time::HiRes qw(usleep);

our @EXPORT = qw(ch_port ch_query ch_try ch_kill ch_start ch_running);

my $dir = ($ENV{COUNTER_WORK} // '') . '/clickhouse';

# The HTTP port of the private server; dies if the runner started none.
sub ch_port
{
	die "no private ClickHouse: run this through test/run (CLICKHOUSE_HTTP_PORT unset)"
	  unless $ENV{CLICKHOUSE_HTTP_PORT} && -f "$dir/config.xml";
	return $ENV{CLICKHOUSE_HTTP_PORT};
}

# Run one statement as user default: (ok, body).
sub ch_try
{
	my ($sql) = @_;
	my $r = HTTP::Tiny->new(timeout => 30)->post('http://127.0.0.1:' . ch_port() . '/',
		{ content => $sql });
	return ($r->{success} ? 1 : 0, $r->{content} // '');
}

# Run one statement; dies on an error; returns the body without its last newline.
sub ch_query
{
	my ($sql) = @_;
	my ($ok, $body) = ch_try($sql);
	die "ClickHouse: $sql: $body" unless $ok;
	chomp $body;
	return $body;
}

sub ch_pid
{
	open(my $fh, '<', "$dir/clickhouse.pid") or return undef;
	my $pid = <$fh>;
	close $fh;
	chomp $pid if defined $pid;
	return ($pid && $pid =~ /^\d+$/ && kill(0, $pid)) ? $pid : undef;
}

# Whether the server answers /ping.
sub ch_running
{
	my $r = HTTP::Tiny->new(timeout => 2)->get('http://127.0.0.1:' . ch_port() . '/ping');
	return $r->{success} && $r->{content} =~ /^Ok/;
}

# kill -9 the server and wait until it is gone.
sub ch_kill
{
	my $pid = ch_pid() or die "the private clickhouse-server is not running";
	kill 'KILL', $pid;
	for (1 .. 100)
	{
		waitpid($pid, WNOHANG);	# reap it if this test started it
		last unless kill(0, $pid);
		usleep(100_000);
	}
	die "clickhouse-server $pid survived SIGKILL" if kill(0, $pid);
}

# Start the server again with its config and data; wait for /ping.
sub ch_start
{
	die "the private clickhouse-server is already running" if ch_pid();
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		chdir $dir;
		open(STDOUT, '>>', "$dir/log/stdout.log");
		open(STDERR, '>&', \*STDOUT);
		exec('clickhouse-server', "--config-file=$dir/config.xml") or exit 1;
	}
	open(my $fh, '>', "$dir/clickhouse.pid") or die "$dir/clickhouse.pid: $!";
	print $fh "$pid\n";
	close $fh;
	for (1 .. 600)
	{
		return 1 if ch_running();
		usleep(100_000);
	}
	die "clickhouse-server did not answer after a restart";
}

1;
