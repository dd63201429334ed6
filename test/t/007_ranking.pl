# The worker keeps the ranking top() reads: fresh within counter.rank_interval,
# following new increments, decay and retention, without anyone calling
# refresh_ranking().
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;

my $node = counter_node('ranking', "shared_preload_libraries = 'counter'",
	"counter.rank_interval = '1s'", "counter.flush_interval = '100ms'");
$node->safe_psql('postgres', q{
	SELECT counter.create('posts');
	SELECT counter.create('hits', mode => 'buffered');
	SELECT counter.incr('posts', k, k) FROM generate_series(1, 50) AS k;
	SELECT counter.incr('hits', k, 100 - k) FROM generate_series(1, 50) AS k;
});

ok($node->poll_query_until('postgres',
	"SELECT string_agg(key::text, ',' ORDER BY rank, key) = '50,49,48' FROM counter.top('posts', 3, 'total')"),
	'worker ranked the counter without being asked');
ok($node->poll_query_until('postgres',
	"SELECT string_agg(key::text, ',' ORDER BY rank, key) = '1,2,3' FROM counter.top('hits', 3, 'trend')"),
	'buffered increments reach the ranking once folded');

# A new hot key rises to the top within the interval.
$node->safe_psql('postgres', "SELECT counter.incr('posts', 7, 1000)");
my $t0 = time;
ok($node->poll_query_until('postgres',
	"SELECT key = 7 FROM counter.top('posts', 1, 'trend')"), 'new hot key reaches the top');
my $lag = time - $t0;
cmp_ok($lag, '<', 5, sprintf('within %.1f s (rank_interval 1 s)', $lag));
is($node->safe_psql('postgres', "SELECT key FROM counter.top('posts', 1, 'decayed')"), '7',
	'the decayed ranking follows too');

# The exact path (with now) agrees with the maintained ranking.
is($node->safe_psql('postgres',
	"SELECT string_agg(key::text, ',' ORDER BY rank, key) FROM counter.top('posts', 5, 'total', now => now() + interval '1 minute')"),
	$node->safe_psql('postgres',
	"SELECT string_agg(key::text, ',' ORDER BY rank, key) FROM counter.top('posts', 5, 'total')"),
	'exact and maintained top-5 by total agree');

# Dropped counters leave no ranking behind; worker logged no error.
$node->safe_psql('postgres', "SELECT counter.drop('hits')");
usleep(1_500_000);
is($node->safe_psql('postgres', "SELECT sum(errors) FROM counter.worker_status() WHERE database = 'postgres'"), '0',
	'no worker errors');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM counter.ranking WHERE counter_id NOT IN (SELECT id FROM counter.counters)"),
	'0', 'ranking rows of a dropped counter are gone');

$node->stop;
done_testing();
