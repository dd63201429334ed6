# The crash proof of the exactly-once drain: under a continuous INCR load
# (plain keys and one hot sharded key), kill -9 the worker 20 times at random
# moments and stop Postgres with -m immediate 5 times; afterwards the totals
# in Postgres equal the increments Redis acknowledged, exactly.  The same
# harness run against the naive GETDEL-then-UPDATE loop shows it detects loss.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep time);
use FindBin;
use lib $FindBin::RealBin;
use RedisTest;

my $r = redis_start();
my $port = $r->{port};
my $node = redis_node('rcrash', "redis://127.0.0.1:$port/0",
	'counter.redis_batch_size = 200', 'counter.redis_poll_interval = 20ms',
	'restart_after_crash = on');
$node->safe_psql('postgres', "SELECT counter.create('views'); SELECT counter.alter('views', redis_prefix => 'views:'); SELECT counter.create('ctl')");

my $N1 = 400_000;    # INCR views:<random key of 5000>
my $N2 = 200_000;    # INCR views:900042:s<random shard of 16>
my $bench = sub {
	my ($n, @cmd) = @_;
	my ($out, $err) = ('', '');
	return IPC::Run::start([ 'redis-benchmark', '-p', $port, '-q', '-n', $n, '-c', 4, @cmd ],
		'>', \$out, '2>', \$err);
};
my $t0 = time;
my $b1 = $bench->($N1, '-r', 5000, 'INCR', 'views:__rand_int__');
my $b2 = $bench->($N2, '-r', 16, 'INCR', 'views:900042:s__rand_int__');

# Wait until the worker runs (again) and has drained something since.
my $wait_worker = sub {
	for (1 .. 300)
	{
		my $pid = worker_pid($node);
		return $pid if $pid;
		usleep(100_000);
	}
	return '';
};

my $kills = 0;
for my $i (1 .. 20)
{
	usleep(int(100_000 + rand(400_000)));
	my $pid = $wait_worker->();
	last unless $pid;
	$kills++ if kill 'KILL', $pid;
}
is($kills, 20, 'killed the worker 20 times during the load');
my $stops = 0;
for my $i (1 .. 5)
{
	$wait_worker->();
	usleep(int(100_000 + rand(500_000)));
	$node->stop('immediate');
	$node->start;
	$stops++;
}
is($stops, 5, 'stopped Postgres with -m immediate 5 times during the load');
$b1->finish;
$b2->finish;
note sprintf('load and crashes took %.1f s', time - $t0);
my $incrs = rcli($r, 'INFO', 'commandstats');
my ($calls) = $incrs =~ /cmdstat_incr:calls=(\d+)/;
is($calls, $N1 + $N2, 'Redis acknowledged every INCR of the load');

ok(redis_wait_empty([$r], 'views:*', 'counter:inflight:*'), 'everything drained');
is($node->safe_psql('postgres',
	"SELECT sum(value) FROM counter.tally t JOIN counter.counters c ON c.id = t.counter_id WHERE c.name = 'views'"),
	$N1 + $N2, 'Postgres totals equal the Redis increments exactly');
is($node->safe_psql('postgres', "SELECT counter.get('views', 900042)"), $N2,
	'the hot sharded key is exact too');
my @recovered = (slurp_file($node->logfile) =~ /(?:applied|discarded) in-flight Redis batch/g);
note scalar(@recovered) . ' in-flight batches were left by the crashes and finished by recovery';

# Recovery, deterministically: one in-flight record whose batch id is
# recorded (applied, crash before the delete) and one whose id is not
# (crash before the commit).
$node->safe_psql('postgres',
	"INSERT INTO counter.redis_batch (batch_id, master, items) VALUES ('feed-1', 'test', 1)");
$node->stop;
my $ms = int(time * 1000);
rcli($r, 'HSET', 'counter:inflight:{0}:feed-1', '+views:700001', 5, '#t', $ms);
rcli($r, 'HSET', 'counter:inflight:{0}:feed-2', '+views:700002', 7, '#t', $ms);
$node->start;
ok(redis_wait_empty([$r], 'counter:inflight:*'), 'recovery removes both in-flight records');
is($node->safe_psql('postgres',
	"SELECT counter.get('views', 700001) || ' ' || counter.get('views', 700002)"),
	'0 7', 'the recorded batch is not applied again, the unrecorded one is applied once');

# Control: the naive loop (GETDEL, then a separate UPDATE), killed the same way.
my $psql = join(' ', 'psql', '-X', '-q', '-h', $node->host, '-p', $node->port, 'postgres');
my $script = $node->basedir . '/naive.sh';
my $mark = $node->basedir . '/naive.taken';
# Between GETDEL and the UPDATE the loop "does its work" for 200 ms and
# leaves a mark, so a kill during that time is sure to lose what it took.
PostgreSQL::Test::Utils::append_to_file($script, <<"EOS");
while true; do
  for k in \$(redis-cli -p $port --scan --pattern 'naive:*'); do
    v=\$(redis-cli -p $port GETDEL "\$k")
    if [ -n "\$v" ]; then
      touch $mark; sleep 0.2
      $psql -c "SELECT counter.incr('ctl', 1, \$v)" >/dev/null
      rm -f $mark
    fi
  done
done
EOS
my $NC = 30_000;
my $bc = $bench->($NC, '-r', 10, 'INCR', 'naive:__rand_int__');
my $losing_kills = 0;
for my $i (1 .. 20)
{
	unlink $mark;
	my $h = IPC::Run::start([ 'setsid', 'bash', $script ]);
	# kill while it holds a value it took, if it gets one within 5 s
	my $t0 = time;
	usleep(20_000) until -e $mark || time - $t0 > 5;
	$losing_kills++ if -e $mark;
	my $pid = $h->{KIDS}[0]{PID};
	kill 'KILL', -$pid;
	eval { $h->finish };
}
cmp_ok($losing_kills, '>', 0, "kills landed between GETDEL and UPDATE ($losing_kills of 20)");
$bc->finish;
my $h = IPC::Run::start([ 'bash', $script ]);
ok(redis_wait_empty([$r], 'naive:*'), 'the naive loop drained everything in the end');
$h->kill_kill;
my $naive = $node->safe_psql('postgres', "SELECT counter.get('ctl', 1)");
note "naive loop: $naive of $NC increments arrived";
cmp_ok($naive, '<', $NC, 'the harness detects the loss of the naive GETDEL loop');
$node->stop;
done_testing();
