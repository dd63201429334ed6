# A streaming hot standby: every read works there and equals the primary
# (folded buffered counts included), every write is refused with 25006
# (read-only transaction) and a clear message, the counter processes wait
# without errors while in recovery, and after promotion the standby serves
# increments of every mode.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'counter'
counter.flush_interval = '100ms'
counter.rank_interval = 0
});
$primary->start;
$primary->safe_psql('postgres', q{
	CREATE EXTENSION counter;
	SELECT counter.create('s_direct', mode => 'direct');
	SELECT counter.create('s_sharded');
	SELECT counter.create('s_buf', mode => 'buffered');
	SELECT counter.create('s_text', key_type => 'text');
	SELECT counter.incr(c, k, k) FROM unnest(ARRAY['s_direct', 's_sharded', 's_buf']) AS c,
		generate_series(1, 50) AS k;
	SELECT counter.incr('s_text', 'home', 3), counter.incr('s_text', 'about', 4, now() - interval '3 hours');
	SELECT counter.flush();
	SELECT counter.refresh_ranking('s_sharded');
});
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;

# more after the backup: streamed, including a fold of buffered increments
$primary->safe_psql('postgres', q{
	SELECT counter.incr('s_buf', 1, 100), counter.incr('s_sharded', 1, 100);
	SELECT counter.flush();
	SELECT counter.refresh_ranking('s_sharded');
});
$primary->wait_for_catchup($standby);

my $reads = q{
	SELECT concat_ws(' ',
		counter.get('s_direct', 7), counter.get('s_sharded', 1), counter.get('s_buf', 1),
		counter.get('s_buf', 50, max_age => '1 minute'),
		counter.get('s_text', 'home'), counter.window('s_text', 'about', '1 day'),
		(SELECT string_agg(key || '=' || value, ',') FROM counter.get_many('s_sharded', '{1,2,3}')),
		(SELECT string_agg(key::text, ',') FROM counter.top('s_sharded', 3, 'total')),
		counter.trend_score('s_sharded', 50) > 0, counter.decayed_score('s_sharded', 50) > 0,
		(SELECT count(*) FROM counter.series('s_text', 'about', now() - interval '4 hours', now(), '1 hour')),
		length(counter.sparkline('s_sharded', 5, '1 hour')) > 0,
		(SELECT count(*) FROM counter.counters))
};
my $want = $primary->safe_psql('postgres', $reads);
is($standby->safe_psql('postgres', $reads), $want, "every read on the standby equals the primary ($want)");
like($want, qr/^7 101 101 50 3 4 1=101,2=2,3=3 1,50,49 t t /, 'the reads give what was written');

for my $write (
	[ 'incr', q{SELECT counter.incr('s_sharded', 1)} ],
	[ 'incr buffered', q{SELECT counter.incr('s_buf', 1)} ],
	[ 'incr text', q{SELECT counter.incr('s_text', 'home')} ],
	[ 'incr_many', q{SELECT counter.incr_many('s_direct', '{1,2}')} ],
	[ 'create', q{SELECT counter.create('s_new')} ],
	[ 'alter', q{SELECT counter.alter('s_direct', max_delta => 5)} ],
	[ 'drop', q{SELECT counter.drop('s_direct')} ],
	[ 'compact', q{SELECT counter.compact()} ],
	[ 'refresh_ranking', q{SELECT counter.refresh_ranking('s_sharded')} ],
	[ 'flush', q{SELECT counter.flush()} ])
{
	my ($rc, $out, $err) = $standby->psql('postgres', $write->[1], extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, qr/ERROR:  25006: .*(read-only|recovery|hot standby)/i, "$write->[0] on the standby: 25006")
	  or diag("rc $rc: $err");
}

is($standby->safe_psql('postgres', $reads), $want, 'nothing changed on the standby');
is($standby->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'counter %' AND backend_type <> 'counter launcher'}),
	'0', 'no ingest or maintenance process runs in recovery');
my $log = slurp_file($standby->logfile);
unlike($log, qr/server process .* was terminated|PANIC/, 'no crash on the standby');
# lines of background processes carry no application name
unlike($log, qr/\] (WARNING|ERROR|FATAL):/, 'the background processes logged no warning or error in recovery');

# promoted: it serves writes of every mode
$standby->promote;
$standby->poll_query_until('postgres', q{SELECT NOT pg_is_in_recovery()}) or die 'no promotion';
my $load = pgbench_start($standby, q{SELECT counter.incr('s_sharded', 9, 1); SELECT counter.incr('s_buf', 9, 1);},
	'-c', '8', '-t', '200');
my ($ok, $out, $err) = pgbench_finish($load);
ok($ok, 'increments on the promoted standby') or diag($err);
$standby->safe_psql('postgres', q{SELECT counter.flush()});
is($standby->safe_psql('postgres', q{SELECT counter.get('s_sharded', 9) || ',' || counter.get('s_buf', 9)}),
	'1609,1609', 'exact totals on the promoted standby, buffered folded by its own processes');
is($standby->safe_psql('postgres',
		q{SELECT count(*) FROM counter.tally WHERE counter_id = counter.id('s_buf') AND key = 9 AND slot = -4}) > 0 ? 1 : 0,
	1, 'buffered increments reached the table');

$standby->stop;
$primary->stop;
done_testing();
