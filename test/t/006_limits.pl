# Idempotency and rate limits under real concurrency: 32 sessions racing
# one event id count it once; many actors hitting their limits at once get
# exactly their allowance.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;

my $node = counter_node('limits', "shared_preload_libraries = 'counter'");
$node->safe_psql('postgres', q{
	SELECT counter.create('race');
	SELECT counter.create('race_buffered', mode => 'buffered');
	SELECT counter.create('limited');
	SELECT counter.alter('limited', max_per_actor => 10, rate_window => '1 hour');
});

# 32 sessions, each sending the same 200 event ids in a random order.
for my $c (qw(race race_buffered))
{
	my $run = pgbench_start($node,
		"\\set e random(1, 200)\nSELECT counter.incr('$c', 1, event => 'ev-' || :e);\n",
		'-c', 32, '-j', 2, '-t', 300);
	my ($ok, $out, $err) = pgbench_finish($run);
	ok($ok, "$c: pgbench ran") or diag($err);
	$node->safe_psql('postgres', 'SELECT counter.flush()') if $c eq 'race_buffered';
	my $ids = query_int($node,
		"SELECT count(*) FROM counter.event_seen e JOIN counter.counters c"
		  . " ON c.id = e.counter_id WHERE c.name = '$c'");
	cmp_ok($ids, '>', 150, "$c: most of the 200 ids were sent ($ids)");
	is(query_int($node, "SELECT counter.get('$c', 1)"), $ids,
		"$c: each event id counted exactly once over 9,600 attempts");
	is(query_int($node, "SELECT deduplicated FROM counter.stats WHERE name = '$c'"),
		9600 - $ids, "$c: the rest were reported as deduplicated");
}

# 32 sessions racing one id in a single burst.
$node->safe_psql('postgres', "SELECT counter.create('one')");
my $run = pgbench_start($node, "SELECT counter.incr('one', 1, event => 'the-one');\n",
	'-c', 32, '-j', 2, '-t', 5);
pgbench_finish($run);
is(query_int($node, "SELECT counter.get('one', 1)"), 1, '32 sessions racing one id: counted once');

# 20 actors x 5 keys, 10 allowed each in one rate window, 6,400 attempts.
$run = pgbench_start($node,
	"\\set a random(1, 20)\n\\set k random(1, 5)\n"
	  . "SELECT counter.incr('limited', :k, actor => 'a' || :a, at => '2026-01-01 10:00+00');\n",
	'-c', 32, '-j', 2, '-t', 200);
my ($ok, $out, $err) = pgbench_finish($run);
ok($ok, 'limits: pgbench ran') or diag($err);
is($node->safe_psql('postgres',
	"SELECT sum(value) FROM counter.get_many('limited', ARRAY[1, 2, 3, 4, 5]::bigint[])"),
	'1000', 'exactly 10 increments accepted for each of 100 (actor, key) pairs');
is($node->safe_psql('postgres', "SELECT rate_limited FROM counter.stats WHERE name = 'limited'"),
	'5400', 'the other 5,400 were refused and reported');
is($node->safe_psql('postgres',
	"SELECT count(*) || '/' || max(n) FROM counter.actor_rate r JOIN counter.counters c"
	  . " ON c.id = r.counter_id WHERE c.name = 'limited'"),
	'100/10', 'one rate row per pair, none above the limit');

# A thousand increments a second and more from one actor: with a limit high
# enough, nothing is refused.
$node->safe_psql('postgres', "SELECT counter.alter('limited', max_per_actor => 1000000, rate_window => '1 second')");
$run = pgbench_start($node, "SELECT counter.incr('limited', 42, actor => 'fast');\n",
	'-c', 8, '-j', 2, '-T', 3);
($ok, $out, $err) = pgbench_finish($run);
my ($tps) = $out =~ /tps = ([\d.]+)/;
my ($n) = $out =~ /actually processed: (\d+)/;
cmp_ok($tps, '>=', 1000, "one actor at $tps increments a second");
is(query_int($node, "SELECT counter.get('limited', 42)"), $n, 'all of them counted');

$node->stop;
done_testing();
