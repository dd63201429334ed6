# The ranking equals the exact values after every refresh: random
# increments, backfills, rollups and retention, refreshed incrementally at
# simulated times; then every key's ranked total, trend and decayed score
# are compared with get(), trend_score() and decayed_score() at that time
# (the decayed score up to float rounding: a compaction that merges slot
# rows changes the order of the sum, not its value).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;

# The maintenance process follows the changed keys (rank_interval > 0) but
# refreshes only once, at its start; the refreshes below are the test's.
my $node = counter_node('rankexact', "shared_preload_libraries = 'counter'",
	"counter.rank_interval = '1h'", "counter.compact_interval = 0",
	"counter.flush_interval = '100ms'");
$node->safe_psql('postgres', q{
	SELECT counter.create('ex');
	SELECT counter.alter('ex', minute_retention => '1 hour', hour_retention => '1 day',
		day_retention => '3 days', half_life => '6 hours');
	SELECT counter.create('exb', mode => 'buffered');
	CREATE TABLE clock AS SELECT now() AS t0;
});
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM counter.worker_status() WHERE role = 'maintenance' AND rounds > 0"),
	'the maintenance process runs');

srand(20261202);
my $all_ok = 1;
my $incremental = 0;
for my $step (1 .. 14)
{
	# increments now and backfills up to ten days back, on 300 keys
	my @inc;
	for (1 .. 40)
	{
		my $key = 1 + int(rand(300));
		my $delta = int(rand(20)) - 4;
		my $back = rand() < 0.4 ? int(rand(14400)) : 0;
		push @inc, "($key, $delta, $back)";
	}
	my $values = join(', ', @inc);
	$node->safe_psql('postgres', qq{
		SELECT counter.incr(c::counter.counter, k, d, at => now() - make_interval(mins => b))
		FROM (VALUES $values) AS v(k, d, b), (VALUES ('ex'), ('exb')) AS c(c);
		SELECT counter.flush();
	});
	my $t = "(SELECT t0 FROM clock) + interval '$step hours' * 0.13";
	$node->safe_psql('postgres', "SELECT counter.compact(now => $t)") if $step % 4 == 0;
	for my $c (qw(ex exb))
	{
		my $state = $node->safe_psql('postgres',
			"SELECT count(*) FROM counter.ranking_state WHERE counter_id = counter.id('$c') AND epoch IS NOT NULL");
		$incremental++ if $state eq '1';
		$node->safe_psql('postgres', "SELECT counter.refresh_ranking('$c', now => $t)");
		my $bad = $node->safe_psql('postgres', qq{
			SELECT count(*) FROM counter.ranking r
			WHERE r.counter_id = counter.id('$c') AND (
			   r.total <> counter.get('$c', r.key)
			OR r.trend <> counter.trend_score('$c', r.key, now => $t)
			OR abs(counter.decayed_value(r.dsign, r.dlog, '6 hours', $t)
			       - counter.decayed_score('$c', r.key, now => $t))
			   > 1e-12 * greatest(1, abs(counter.decayed_score('$c', r.key, now => $t))))
			   AND '$c' = 'ex'
			OR r.counter_id = counter.id('$c') AND '$c' = 'exb' AND (
			   r.total <> counter.get('$c', r.key)
			OR r.trend <> counter.trend_score('$c', r.key, now => $t))});
		my $missing = $node->safe_psql('postgres', qq{
			SELECT count(*) FROM (SELECT DISTINCT key FROM counter.tally WHERE counter_id = counter.id('$c')) k
			WHERE NOT EXISTS (SELECT FROM counter.ranking r WHERE r.counter_id = counter.id('$c') AND r.key = k.key)});
		if ($bad ne '0' || $missing ne '0')
		{
			$all_ok = 0;
			diag("step $step, counter $c: $bad keys differ, $missing keys missing");
		}
	}
}
ok($all_ok, 'after every refresh every ranked key equals get(), trend_score() and decayed_score()');
cmp_ok($incremental, '>=', 20, "the refreshes were incremental ($incremental of 28 followed the changed keys)");
cmp_ok($node->safe_psql('postgres',
	"SELECT count(*) FROM counter.tally WHERE counter_id = counter.id('ex') AND slot IN (-2, -3)"),
	'>', 0, 'rollups into hours and days happened on the way');

# The ranked order is the exact order.
for my $by (qw(total trend decayed))
{
	my $t = "(SELECT t0 FROM clock) + interval '14 hours' * 0.13";
	is($node->safe_psql('postgres',
		"SELECT string_agg(key::text, ',' ORDER BY rank, key) FROM counter.top('ex', 20, '$by', now => $t)"),
		$node->safe_psql('postgres',
		"SELECT string_agg(key::text, ',' ORDER BY rank, key) FROM counter.top('ex', 20, '$by')"),
		"top 20 by $by: the maintained ranking and the exact path agree");
}

# A restart loses the changed keys: the next refresh rebuilds in full.
$node->restart;
$node->safe_psql('postgres', "SELECT counter.incr('ex', 1, 1000)");
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 2 FROM counter.worker_status() WHERE database = 'postgres' AND pid IS NOT NULL"),
	'processes back after the restart');
$node->safe_psql('postgres', "SELECT counter.refresh_ranking('ex', now => now() + interval '3 hours')");
is($node->safe_psql('postgres',
	"SELECT total = counter.get('ex', 1) FROM counter.ranking WHERE counter_id = counter.id('ex') AND key = 1"),
	't', 'an increment made after the restart is ranked');

$node->stop;
done_testing();
