# Helpers for counter's Redis TAP tests: private redis-server instances on
# free loopback ports, redis-cli, and a node that drains them.
package RedisTest;

use strict;
use warnings;

use IO::Socket::INET;
use Exporter 'import';
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

our @EXPORT = qw(redis_start redis_stop redis_restart rcli rraw redis_node
  redis_wait_empty worker_pid);

# Whether nothing listens on 127.0.0.1:$port.
sub port_free
{
	my ($port) = @_;
	my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
		Proto => 'tcp', Timeout => 1);
	return 0 if $sock;
	return 1;
}

# Start a redis-server on a free 127.0.0.1 port; %opt: aof => 1 for
# appendfsync always, cluster => 1 (which also needs port + 10000 for the
# cluster bus), port => N.  A port that turns out to be taken is replaced
# by another, up to five times.  Returns a handle.
sub redis_start
{
	my (%opt) = @_;
	for my $try (1 .. 5)
	{
		my $port = $opt{port} // PostgreSQL::Test::Cluster::get_free_port();
		next if $opt{cluster} && !port_free($port + 10000);
		my $dir = $opt{dir} // PostgreSQL::Test::Utils::tempdir("redis$port");
		make_path($dir);
		my @args = ('--port', $port, '--bind', '127.0.0.1', '--save', '',
			'--dir', $dir, '--logfile', "$dir/redis.log",
			'--pidfile', "$dir/redis.pid", '--daemonize', 'yes');
		push @args, ('--appendonly', 'yes', '--appendfsync', 'always') if $opt{aof};
		push @args, ('--appendonly', 'no') unless $opt{aof};
		push @args, ('--cluster-enabled', 'yes', '--cluster-config-file', "$dir/nodes.conf")
		  if $opt{cluster};
		my $r = { port => $port, dir => $dir, args => \@args };
		bless $r, 'RedisTest::Server';
		return $r if eval { redis_restart($r, 1); 1 };
		diag("redis-server on port $port did not start: $@");
		die $@ if defined $opt{port};
	}
	die "could not start a redis-server after five ports";
}

# (Re)start a server with its original arguments and wait for PONG.
sub redis_restart
{
	my ($r, $no_stop) = @_;
	redis_stop($r) unless $no_stop;
	system('redis-server', @{ $r->{args} }) == 0 or die "redis-server failed to start";
	for (1 .. 100)
	{
		return if (rcli($r, 'PING') // '') eq 'PONG';
		usleep(100_000);
	}
	die "redis-server on port $r->{port} does not answer";
}

# Stop a server (SHUTDOWN, which writes the AOF), waiting until it is gone.
sub redis_stop
{
	my ($r) = @_;
	my $pidfile = "$r->{dir}/redis.pid";
	my $pid = -f $pidfile ? PostgreSQL::Test::Utils::slurp_file($pidfile) : undef;
	rcli($r, 'SHUTDOWN');
	return unless $pid;
	chomp $pid;
	for (1 .. 100)
	{
		return unless kill 0, $pid;
		usleep(50_000);
	}
	kill 'KILL', $pid;
}

# Run redis-cli against a server; returns its stdout, chomped.
sub rcli
{
	my ($r, @cmd) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'redis-cli', '-p', $r->{port}, @cmd ], '>', \$out, '2>', \$err);
	chomp $out;
	return $out;
}

# Send one command with binary-safe arguments (NUL bytes, any size) over
# RESP; returns the reply's first line ("+OK", ":1", "$5", ...).
sub rraw
{
	my ($r, @args) = @_;
	my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $r->{port},
		Proto => 'tcp', Timeout => 10) or die "cannot connect to redis: $!";
	binmode $sock;
	my $cmd = '*' . scalar(@args) . "\r\n";
	$cmd .= '$' . length($_) . "\r\n" . $_ . "\r\n" for @args;
	print $sock $cmd;
	my $line = <$sock>;
	close $sock;
	$line =~ s/\r\n\z// if defined $line;
	return $line;
}

# A started node preloading counter, draining $url, with counter installed.
sub redis_node
{
	my ($name, $url, @conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', join("\n",
		"shared_preload_libraries = 'counter'",
		"counter.redis_url = '$url'",
		"counter.redis_poll_interval = '100ms'",
		"counter.flush_interval = '100ms'",
		'max_connections = 50',
		@conf) . "\n");
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION counter');
	return $node;
}

# Wait until no key matching any pattern is left in the server(s).
sub redis_wait_empty
{
	my ($servers, @patterns) = @_;
	for (1 .. 600)
	{
		my $left = 0;
		for my $r (@$servers)
		{
			for my $p (@patterns)
			{
				my $keys = rcli($r, '--scan', '--pattern', $p);
				$left++ if $keys ne '';
			}
		}
		return 1 if !$left;
		usleep(100_000);
	}
	return 0;
}

# The pid of the counter worker, or '' if none.
sub worker_pid
{
	my ($node) = @_;
	my ($ret, $out) = $node->psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'counter ingest' AND datname = current_database()");
	return $ret == 0 ? $out : '';
}

package RedisTest::Server;

# Stop the server when the handle goes away, so no test leaves one behind.
sub DESTROY
{
	my ($r) = @_;
	local ($?, $!);
	RedisTest::redis_stop($r) if -f "$r->{dir}/redis.pid";
}

1;
