# Ingest never waits on maintenance, whatever the size of a counter: a
# counter of 200,000 keys under continuous maintenance (full ranking builds
# and compactions in a loop, plus the maintenance process's own), while a
# buffered counter and a Redis key take steady load.  Fold age and Redis
# backlog stay bounded throughout; a stopped maintenance process does not
# stop folding; kill -9 of the ingest process loses at most the buffered
# bound.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(usleep time);
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;
use RedisTest;

my $flush_ms = 500;
my $poll_ms = 500;
my $r = redis_start();
my $node = redis_node('scale', "redis://127.0.0.1:$r->{port}/0",
	"counter.flush_interval = '${flush_ms}ms'", "counter.redis_poll_interval = '${poll_ms}ms'",
	"counter.rank_interval = '1s'", "counter.compact_interval = '1s'",
	'max_worker_processes = 16', 'restart_after_crash = on');
$node->safe_psql('postgres', q{
	CREATE TABLE ledger (n int);
	SELECT counter.create('big');
	SELECT counter.create('hot', mode => 'buffered');
	SELECT counter.create('r');
	SELECT counter.alter('r', redis_prefix => 'r:');
});
$node->safe_psql('postgres',
	"SELECT counter.incr_many('big', ARRAY(SELECT generate_series(b * 100000 + 1, (b + 1) * 100000))::bigint[])"
	  . " FROM generate_series(0, 1) AS b");
is($node->safe_psql('postgres', "SELECT count(DISTINCT key) FROM counter.tally WHERE counter_id = counter.id('big')"),
	'200000', 'a counter with 200,000 keys');

# Steady Redis load: 200 INCRs a second on one key, from a child process.
my $redis_rate = 200;
my $redis_pid = fork();
die "fork: $!" unless defined $redis_pid;
# the loader never outlives the test, even one that dies
END { kill 'KILL', $redis_pid if $redis_pid; }
if ($redis_pid == 0)
{
	my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $r->{port}, Proto => 'tcp')
	  or exit 1;
	my $t0 = time;
	my $sent = 0;
	while (1)
	{
		print $sock "*2\r\n\$4\r\nINCR\r\n\$3\r\nr:1\r\n";
		<$sock>;
		$sent++;
		my $due = $t0 + $sent / $redis_rate;
		my $wait = $due - time;
		usleep($wait * 1e6) if $wait > 0;
	}
}

# Steady buffered load with a ledger, and continuous maintenance from a
# session: full ranking builds of the big counter and compactions.
my $load = pgbench_start($node,
	"BEGIN;\nSELECT counter.incr('hot', 1);\nINSERT INTO ledger VALUES (1);\nCOMMIT;\n",
	'-c', 4, '-j', 2, '-R', 400, '-T', 40);
my $maint = pgbench_start($node,
	"SELECT counter.refresh_ranking('big', \"full\" => true);\nSELECT counter.compact();\n",
	'-c', 1, '-T', 40);

# Sample fold age and Redis backlog every 200 ms for 15 s.
sub sample
{
	my ($seconds, $label) = @_;
	my ($max_age, $max_backlog, $n) = (0, 0, 0);
	my $end = time + $seconds;
	while (time < $end)
	{
		my $age = $node->safe_psql('postgres',
			"SELECT coalesce(extract(epoch FROM clock_timestamp() - last_fold) * 1000, 0)::int FROM counter.stats WHERE name = 'hot'");
		my $backlog = rcli($r, 'GET', 'r:1') || 0;
		$max_age = $age if $age > $max_age;
		$max_backlog = $backlog if $backlog > $max_backlog;
		$n++;
		usleep(200_000);
	}
	note("$label: $n samples, max fold age $max_age ms, max Redis backlog $max_backlog");
	return ($max_age, $max_backlog);
}
usleep(2_000_000);
my ($age, $backlog) = sample(15, 'under maintenance');
cmp_ok($age, '<=', 3 * $flush_ms, "fold age stays within 3 x flush_interval under maintenance ($age ms)");
cmp_ok($backlog, '<=', 3 * $redis_rate * $poll_ms / 1000,
	"Redis backlog stays within 3 poll intervals of load ($backlog INCRs)");
cmp_ok($node->safe_psql('postgres',
	"SELECT count(*) FROM counter.ranking WHERE counter_id = counter.id('big')"), '>=', 200000,
	'the ranking of the big counter was built meanwhile');

# The maintenance process stopped (and restarted by the launcher): folds go on.
ok($node->poll_query_until('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'counter maintenance'", '1'),
	'the maintenance process runs');
my $mpid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'counter maintenance'");
kill 'TERM', $mpid if $mpid =~ /^\d+$/;
($age, $backlog) = sample(3, 'maintenance process stopped');
cmp_ok($age, '<=', 3 * $flush_ms, "folds go on while the maintenance process is away ($age ms)");

# kill -9 of the ingest process: a crash restart; the loss is within the bound.
my $before = time;
my $ipid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'counter ingest'");
kill 'KILL', $ipid;
pgbench_finish($load);
pgbench_finish($maint);
wait_ready($node) or die 'no recovery';
my $ledger = query_int($node, 'SELECT count(*) FROM ledger');
my $counted = query_int($node, "SELECT counter.get('hot', 1)");
my $bound = int(400 * 2 * $flush_ms / 1000) + 16;
cmp_ok($ledger - $counted, '>=', 0, 'nothing counted twice');
cmp_ok($ledger - $counted, '<=', $bound,
	sprintf('kill -9 of the ingest process lost %d of %d, within the bound of %d', $ledger - $counted, $ledger, $bound));

kill 'KILL', $redis_pid;
waitpid($redis_pid, 0);
$node->stop;
done_testing();
