# An upgrade from the last release as a user makes it: counter 0.1 (built
# from the repository's history by test/run into a copy of PostgreSQL, see
# counter_old_release) runs with counters of every mode, text keys, event
# ids, actor limits, backfills, rollups, a ranking and a Redis drain; then
# the 0.2 build replaces its files, the server restarts, and ALTER
# EXTENSION counter UPDATE runs under load.  Before the UPDATE the new
# library refuses to work on the old objects with a clear error and its
# processes wait; after it, every total, window, score, setting, remembered
# event id and actor count equals what 0.1 showed, nothing committed during
# the switch is lost, and 0.2's behaviour is there.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use File::Copy qw(copy);
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;
use RedisTest;

my $old = $ENV{COUNTER_OLD_ROOT} or BAIL_OUT('COUNTER_OLD_ROOT is not set (test/run builds the old release)');
my $pgdir = "$old/usr/lib/postgresql/15";
my $r = redis_start();
my $node = PostgreSQL::Test::Cluster->new('upgrade', install_path => $pgdir);
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'counter'
counter.database = 'postgres'
counter.flush_interval = '100ms'
counter.redis_url = 'redis://127.0.0.1:$r->{port}/0'
counter.redis_poll_interval = '100ms'
counter.rank_interval = 0
});
$node->start;
my $sql = sub { $node->safe_psql('postgres', $_[0]) };

$sql->(q{CREATE EXTENSION counter});
is($sql->(q{SELECT extversion FROM pg_extension WHERE extname = 'counter'}), '0.1', 'the old release is installed');

# Every mode and feature of 0.1, with history two days back so that compaction
# rolls minutes into hours and days.
$sql->(q{
	SELECT counter.create('u_direct', mode => 'direct');
	SELECT counter.create('u_sharded', mode => 'sharded', slots => 8);
	SELECT counter.create('u_buf', mode => 'buffered');
	SELECT counter.create('u_text', key_type => 'text');
	SELECT counter.create('u_rk');
	SELECT counter.alter('u_sharded', max_delta => 1000, dedup_window => '2 days',
		max_per_actor => 3, rate_window => '1 day',
		trend_spans => '{1 hour, 1 day}', trend_weights => '{1, 0.25}');
	SELECT counter.alter('u_direct', minute_retention => '2 hours', hour_retention => '1 day');
	SELECT counter.incr(c::counter.counter, k, k, now() - interval '1 minute' * (k * 37 % 3000))
	  FROM unnest(ARRAY['u_direct', 'u_sharded', 'u_buf']) AS c, generate_series(1, 300) AS k;
	SELECT counter.incr_many('u_direct', ARRAY[1, 2, 3], ARRAY[10, 20, 30]);
	SELECT counter.incr('u_text', 'alpha', 5), counter.incr('u_text', 'beta', 7, now() - interval '30 hours');
	SELECT counter.incr('u_sharded', 1, 1, event => 'ev-' || g) FROM generate_series(1, 5) AS g;
	SELECT counter.incr('u_sharded', 2, 1, actor => 'alice') FROM generate_series(1, 3);
});
is($sql->(q{SELECT counter.incr('u_sharded', 2, 1, actor => 'alice')}), 'f', '0.1: the actor limit holds');
is($sql->(q{SELECT counter.incr('u_sharded', 1, 1, event => 'ev-3')}), 'f', '0.1: a repeated event id is refused');
rcli($r, 'SET', 'u_rk:5', '11');
redis_wait_empty([$r], 'u_rk:*');
$sql->(q{SELECT counter.flush(); SELECT counter.compact(); SELECT counter.refresh_ranking('u_sharded')});

# What 0.1 shows at a fixed time, to be compared after the upgrade.
my $t0 = $sql->(q{SELECT now()});
my $snapshot = qq{
	SELECT string_agg(format('%s/%s=%s w1h=%s w1d=%s', c, k, counter.get(c, k),
		counter.window(c, k, '1 hour', '$t0'), counter.window(c, k, '1 day', '$t0')), ' ' ORDER BY c::text, k)
	FROM unnest(ARRAY['u_direct', 'u_sharded', 'u_buf']::counter.counter[]) AS c, generate_series(1, 300, 7) AS k
};
my $trend = qq{
	SELECT string_agg(format('%s=%s/%s', k, counter.trend_score('u_sharded', k::text, '$t0'),
		counter.decayed_score('u_sharded', k::text, '$t0')), ' ' ORDER BY k)
	FROM generate_series(1, 300, 13) AS k
};
my $settings = q{SELECT string_agg(format('%s', (c.name, c.id, c.mode, c.slots, c.key_type, c.redis_prefix,
	c.dedup_window, c.max_per_actor, c.rate_window, c.max_delta, c.minute_retention, c.hour_retention,
	c.day_retention, c.half_life, c.trend_spans, c.trend_weights, c.owner, c.created_at)), E'\n' ORDER BY c.name)
	FROM counter.counters c};
my $texts = q{SELECT counter.get('u_text', 'alpha') || ',' || counter.get('u_text', 'beta')
	|| ',' || counter.window('u_text', 'beta', '2 days') || ',' || counter.get('u_rk', 5)};
my $top = q{SELECT string_agg(key::text, ',' ORDER BY rank) FROM (SELECT key, row_number() OVER () AS rank
	FROM counter.top('u_sharded', 10, 'total')) t};
my %before = (snapshot => $sql->($snapshot), trend => $sql->($trend), settings => $sql->($settings),
	texts => $sql->($texts), top => $sql->($top));
like($before{texts}, qr/^5,7,7,11$/, '0.1: text keys and the Redis drain counted');
ok($before{top} ne '', "0.1: the ranking has rows ($before{top})");

my $b7old = $sql->(q{SELECT counter.get('u_buf', 7)});
$sql->(q{SELECT counter.incr('u_buf', 7, 5)});

# A binary upgrade: the new build's files replace the old ones.
$node->stop('fast');
my $pkglib = `$ENV{COUNTER_PG_BIN}/pg_config --pkglibdir` || '/usr/lib/postgresql/15/lib';
chomp $pkglib;
copy("$pkglib/counter.so", "$pgdir/lib/counter.so") or die "copy counter.so: $!";
my $share = `$ENV{COUNTER_PG_BIN}/pg_config --sharedir` || '/usr/share/postgresql/15';
chomp $share;
$share .= '/extension';
for my $f (glob("$share/counter.control $share/counter--*.sql"))
{
	my ($base) = $f =~ m{([^/]+)$};
	copy($f, "$old/usr/share/postgresql/15/extension/$base") or die "copy $f: $!";
}
$node->start;

# Between the new build and ALTER EXTENSION: a clear error, processes waiting.
my ($rc, $out, $err) = $node->psql('postgres', q{SELECT counter.get('u_direct', 1)}, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/55000.*installed at version 0\.1, but its library is version 0\.2/s,
	'before the UPDATE: a clear error (55000) instead of half-working calls') or diag($err);
$node->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_stat_activity WHERE backend_type = 'counter launcher'})
  or die 'no launcher';
sleep 1;
unlike(slurp_file($node->logfile), qr/server process .* was terminated|PANIC/, 'no process crashed on the old objects');

my ($urc, $uout, $uerr) = $node->psql('postgres', 'ALTER EXTENSION counter UPDATE');
is($urc, 0, 'ALTER EXTENSION counter UPDATE succeeds') or diag($uerr);
like($uerr, qr/every counter keeps draining Redis keys/, 'the upgrade says what it did with the implicit Redis prefixes');
is($sql->(q{SELECT extversion FROM pg_extension WHERE extname = 'counter'}), '0.2', 'now at 0.2');

# buffered increments 0.1 held in memory at the stop were folded by it
is($sql->(q{SELECT counter.get('u_buf', 7)}), $b7old + 5, 'buffered increments pending at the old release\'s stop are counted');

# everything else as 0.1 showed it (u_buf key 7 took 5 more)
(my $want = $before{snapshot}) =~ s{u_buf/7=\d+ w1h=\d+ w1d=\d+}{u_buf/7=X};
(my $got = $sql->($snapshot)) =~ s{u_buf/7=\d+ w1h=\d+ w1d=\d+}{u_buf/7=X};
is($got, $want, 'totals and 1 h / 1 d windows of every mode unchanged');
is($sql->($texts), $before{texts}, 'text keys and the drained Redis key unchanged');
is($sql->($settings), $before{settings}, 'every setting of counter.counters unchanged');
is($sql->(q{SELECT counter.incr('u_sharded', 1, 1, event => 'ev-4')}), 'f', 'event ids remembered by 0.1 still deduplicate');
is($sql->(q{SELECT counter.incr('u_sharded', 2, 1, actor => 'alice')}), 'f', 'actor counts of 0.1 still limit');
is($sql->(q{SELECT counter.incr('u_sharded', 2, 1, actor => 'bob')}), 't', 'another actor is counted');
is($sql->(q{SELECT redis_prefix FROM counter.counters WHERE name = 'u_rk'}), 'u_rk:',
	'the implicit Redis prefix of 0.1 became explicit');

# the ranking after the upgrade: rebuilt, same order, trend and decay as exact values
$sql->(q{SELECT counter.refresh_ranking('u_sharded')});
is($sql->($top), $before{top}, 'top() by total keeps its order');
my $trend_after = $sql->($trend);
my $trend_before = $before{trend};
my @ta = split ' ', $trend_after;
my @tb = split ' ', $trend_before;
my $close = @ta == @tb;
for my $i (0 .. $#ta)
{
	my ($ka, $ta1, $da) = $ta[$i] =~ m{^(\d+)=([-\d.]+)/([-\d.e+]+)$} or ($close = 0, last);
	my ($kb, $tb1, $db) = $tb[$i] =~ m{^(\d+)=([-\d.]+)/([-\d.e+]+)$} or ($close = 0, last);
	# the same time: the trend exact, the decay to float precision (0.2
	# keeps it as a log2)
	$close &&= $ka == $kb && $ta1 == $tb1 && abs($da - $db) <= 1e-9 * abs($db);
}
ok($close, 'trend_score and decayed_score agree with 0.1') or diag("before: $trend_before\nafter:  $trend_after");

# 0.2's own behaviour on the upgraded database: load exact in both modes
my $s7 = $sql->(q{SELECT counter.get('u_sharded', 7)});
my $b7 = $sql->(q{SELECT counter.get('u_buf', 7)});
my $load = pgbench_start($node, q{SELECT counter.incr('u_sharded', 7, 1); SELECT counter.incr('u_buf', 7, 1);},
	'-c', '8', '-t', '250');
my ($lok, $lout, $lerr) = pgbench_finish($load);
ok($lok, 'pgbench load on the upgraded database') or diag($lerr);
$sql->(q{SELECT counter.flush()});
is($sql->(q{SELECT counter.get('u_sharded', 7) - } . $s7 . q{ || ',' || counter.get('u_buf', 7) - } . $b7),
	'2000,2000', 'sharded and buffered totals exact after the upgrade');

is($sql->(q{SELECT string_agg(key || '=' || value, ',') FROM counter.get_many('u_direct', '{1,2,3}')}),
	$sql->(q{SELECT string_agg(k || '=' || counter.get('u_direct', k), ',') FROM generate_series(1, 3) k}),
	'get_many with an untyped list');
is($sql->(q{PREPARE p(text, bigint) AS SELECT counter.get($1, $2); EXECUTE p('u_direct', 3)}),
	$sql->(q{SELECT counter.get('u_direct', 3)}),
	'a text counter name casts implicitly');
$sql->(q{SELECT counter.incr('u_buf', 999, 3)});
$node->poll_query_until('postgres', q{SELECT counter.get('u_buf', 999) = 3 AND
	(SELECT count(*) FROM counter.tally WHERE counter_id = counter.id('u_buf') AND key = 999) > 0})
  or die 'no fold after the upgrade';
pass('buffered increments fold after the upgrade');
rcli($r, 'SET', 'u_rk:6', '4');
redis_wait_empty([$r], 'u_rk:*');
is($sql->(q{SELECT counter.get('u_rk', 6)}), '4', 'the Redis drain goes on');
# the maintenance process's first round comes with its first compaction
ok($node->poll_query_until('postgres', q{SELECT string_agg(role || ':' || (rounds > 0), ',' ORDER BY role)
	FROM counter.worker_status() WHERE database = 'postgres'}, 'ingest:true,maintenance:true'),
	'both processes serve the upgraded database');
unlike(slurp_file($node->logfile), qr/server process .* was terminated|PANIC/, 'no process crashed');

$node->stop;
redis_stop($r);
done_testing();
