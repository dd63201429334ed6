# Random bytes from Redis: keys, values and types under the counters'
# prefixes, and stream entries with random fields.  Invariant: every item
# is counted exactly once or quarantined, nothing is left in the way, the
# ingest process stays alive and the cluster never restarts.  The seed is
# printed; COUNTER_FUZZ_SEED replays one.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use RedisTest;

my $seed = $ENV{COUNTER_FUZZ_SEED} // int(rand(1_000_000_000));
srand($seed);
note("Redis fuzz seed $seed (replay: COUNTER_FUZZ_SEED=$seed)");

my $r = redis_start();
my $node = redis_node('rfuzz', "redis://127.0.0.1:$r->{port}/0", 'counter.redis_batch_size = 37');
$node->safe_psql('postgres', q{
	SELECT counter.create('fz');
	SELECT counter.alter('fz', redis_prefix => 'fz:', redis_stream => 'fzs');
	SELECT counter.create('ft', key_type => 'text');
	SELECT counter.alter('ft', redis_prefix => 'ft:');
});
my $started = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
my $pid = worker_pid($node);

sub rbytes
{
	my ($n) = @_;
	return join('', map { chr(int(rand(256))) } 1 .. $n);
}

# Each item: a key that is valid or not, a value valid or not, a type.
my (%expect_fz, %expect_ft);
my ($good, $bad) = (0, 0);
my %used;
for my $i (1 .. 400)
{
	my $text = rand() < 0.4;
	my $prefix = $text ? 'ft:' : 'fz:';
	my ($keypart, $keyok, $id);
	my $roll = rand();
	if ($roll < 0.7)
	{
		$id = $text ? 'k' . int(rand(1e9)) : int(rand(1e12)) - 5e11;
		$keypart = $id;
		$keyok = 1;
	}
	elsif ($roll < 0.8) { $keypart = ''; $keyok = 0; }
	elsif ($roll < 0.9) { $keypart = "x\0" . rbytes(3); $keyok = 0; }
	else { $keypart = rbytes(int(rand(40))) . "\xff"; $keyok = 0; }    # never valid UTF-8
	next if $used{ $prefix . $keypart }++;
	my $type = rand() < 0.9 ? 'string' : (qw(hash list set))[ int(rand(3)) ];
	my ($value, $valok);
	my $v = rand();
	if ($v < 0.6) { $value = int(rand(2000)) - 1000; $valok = 1; }
	elsif ($v < 0.65) { $value = $used{' min'}++ ? int(rand(100)) : '-9223372036854775808'; $valok = 1; }
	elsif ($v < 0.75) { $value = '9' x 20; $valok = 0; }
	elsif ($v < 0.85) { $value = rbytes(int(rand(3000))); $valok = 0; }
	else { $value = 'text' . rand(); $valok = 0; }
	my $key = $prefix . $keypart;
	if ($type eq 'string') { rraw($r, 'SET', $key, $value) }
	elsif ($type eq 'hash') { rraw($r, 'HSET', $key, 'f', $value) }
	elsif ($type eq 'list') { rraw($r, 'RPUSH', $key, $value) }
	else { rraw($r, 'SADD', $key, $value) }
	if ($type eq 'string' && $keyok && $valok)
	{
		if ($text) { $expect_ft{$id} += $value } else { $expect_fz{$id} += $value }
		$good++;
	}
	else
	{
		$bad++;
		my $why = $type ne 'string' ? "type $type" : !$keyok ? 'key' : 'value';
		$main::cat{$why}++;
	}
}

# Stream entries with random fields.
my $stream_good = 0;
my %expect_stream;
for my $i (1 .. 150)
{
	my @f;
	my $roll = rand();
	if ($roll < 0.6)
	{
		my $k = 1_000_000 + int(rand(100));
		my $d = int(rand(20)) - 5;
		@f = ('key', $k, 'delta', $d);
		$expect_stream{$k} += $d;
		$stream_good++;
	}
	elsif ($roll < 0.7) { @f = ('key', 'notakey', 'delta', 1) }
	elsif ($roll < 0.8) { @f = ('key', 5, 'delta', rbytes(5) . "\0") }
	elsif ($roll < 0.9) { @f = (rbytes(3), rbytes(8)) }
	else { @f = ('key', 7, 'time', rbytes(10)) }
	rraw($r, 'XADD', 'fzs', '*', @f);
}

ok(redis_wait_empty([$r], 'fz:*', 'ft:*', 'counter:inflight:*'), 'every key under the prefixes is claimed');
sleep(3);
is($node->safe_psql('postgres', "SELECT count(*) FROM counter.quarantine WHERE source = 'redis'"),
	$bad, 'and only they') or diag(join(', ', map { "$_: $main::cat{$_}" } sort keys %main::cat) . "\n" .
	$node->safe_psql('postgres', "SELECT reason, count(*) FROM counter.quarantine WHERE source = 'redis' GROUP BY 1 ORDER BY 1"));
# Compared key by key in SQL: a sum in Perl would overflow on -2^63.
my @fz = sort keys %expect_fz;
is($node->safe_psql('postgres',
	"SELECT count(*) FROM (VALUES " . join(',', map { "($_, '$expect_fz{$_}'::bigint)" } @fz) . ") e(k, v)"
	  . " WHERE counter.get('fz', e.k::bigint) IS DISTINCT FROM e.v"),
	0, 'the good bigint keys are counted exactly once (' . scalar(@fz) . ' keys)');
my $bad_keys = 0;
for my $id (keys %expect_ft)
{
	$bad_keys++ if $node->safe_psql('postgres', "SELECT counter.get('ft', '$id')") != $expect_ft{$id};
}
is($bad_keys, 0, 'every good text key holds its value (' . scalar(keys %expect_ft) . ' keys)');

ok($node->poll_query_until('postgres',
	"SELECT count(*) = " . (150 - $stream_good) . " FROM counter.quarantine WHERE source = 'redis stream'"),
	'the malformed stream entries are quarantined, the others counted') or
  diag($node->safe_psql('postgres', "SELECT reason, count(*) FROM counter.quarantine WHERE source = 'redis stream' GROUP BY 1"));
my $stream_sum = 0;
$stream_sum += $_ for values %expect_stream;
is($node->safe_psql('postgres',
	"SELECT coalesce(sum(value), 0) FROM counter.get_many('fz', ARRAY(SELECT generate_series(1000000, 1000099))::bigint[])"),
	$stream_sum, 'the stream entries are counted exactly once');
is(rcli($r, 'XPENDING', 'fzs', 'counter'), "0\n\n\n", 'every entry acknowledged');

is(worker_pid($node), $pid, 'the ingest process never died');
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started, 'the cluster never restarted');
$node->stop;
done_testing();
