# A local 3-master Redis Cluster: the worker finds the masters from one URL,
# drains each, and totals are exact with no CROSSSLOT error; the stream is
# read from the master that holds it.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::RealBin;
use RedisTest;

my @rs = map { redis_start(cluster => 1) } 1 .. 3;
my ($out, $err) = ('', '');
IPC::Run::run([ 'redis-cli', '--cluster', 'create', (map { "127.0.0.1:$_->{port}" } @rs),
	'--cluster-replicas', '0', '--cluster-yes' ], '>', \$out, '2>', \$err)
  or die "cluster create failed: $out $err";
for (1 .. 100)
{
	last if (rcli($rs[0], 'CLUSTER', 'INFO') =~ /cluster_state:ok/)
	  && (rcli($rs[2], 'CLUSTER', 'INFO') =~ /cluster_state:ok/);
	usleep(100_000);
}
like(rcli($rs[0], 'CLUSTER', 'INFO'), qr/cluster_state:ok/, 'cluster is up');

my $node = redis_node('rcluster', "redis://127.0.0.1:$rs[0]{port}/0",
	'counter.redis_batch_size = 100');

# Load through redis-cli -c (follows MOVED): plain keys over all masters,
# shards of one hot key, hash-tagged keys, stream events.
my $cmds = '';
my $expect = 0;
for my $k (1 .. 300)
{
	$cmds .= "INCRBY views:$k $k\n";
	$expect += $k;
}
for my $s (0 .. 15)
{
	$cmds .= "INCRBY views:42:s$s 10\n";
	$expect += 10;
}
$cmds .= "INCRBY views:{7}:s$_ 1\n" for 0 .. 9;
$expect += 10;
$cmds .= "XADD events * counter views key 5 delta 2\n" for 1 .. 50;
$expect += 100;
IPC::Run::run([ 'redis-cli', '-c', '-p', $rs[0]{port} ], '<', \$cmds, '>', \$out, '2>', \$err);
unlike($out, qr/ERR|MOVED/, 'load went in');
my @counts = map { 0 + rcli($_, 'DBSIZE') } @rs;
cmp_ok((grep { $_ > 0 } @counts), '==', 3, "keys on all 3 masters (@counts)");
# only now does a counter claim them: until then they are nobody's
$node->safe_psql('postgres', "SELECT counter.create('views'); SELECT counter.alter('views', redis_prefix => 'views:', redis_stream => 'events')");

ok($node->poll_query_until('postgres',
	"SELECT sum(value) = $expect FROM counter.tally"),
	'totals are exact');
is($node->safe_psql('postgres', "SELECT counter.get('views', 42)"), '202', 'hot sharded key exact (42 + 16 x 10)');
is($node->safe_psql('postgres', "SELECT counter.get('views', 5)"), '105', 'stream events counted (5 + 50 x 2)');
ok(redis_wait_empty(\@rs, 'views:*', 'counter:inflight:*'), 'every master drained, nothing in flight');
is($node->safe_psql('postgres', 'SELECT count(*) FROM counter.redis_status() WHERE connected'),
	'3', 'redis_status shows 3 connected masters');
my $log = slurp_file($node->logfile);
like($log, qr/is a cluster node; draining its 3 masters/, 'the masters were discovered');
unlike($log, qr/CROSSSLOT|MOVED|FATAL/, 'no CROSSSLOT or MOVED error, no FATAL');
$node->stop;
done_testing();
