# Redis ingestion: plain, sharded, hash-tagged and text keys; prefixes;
# quarantine of bad values and bad keys; stream events with their time;
# status and stats; the password settings hidden from non-superusers; the
# deduplicated-increment script; a Redis restart mid-drain; Redis down when
# Postgres starts.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use FindBin;
use lib $FindBin::RealBin;
use RedisTest;

my $r = redis_start(aof => 1);
my $port = $r->{port};
my $node = redis_node('redis', "redis://127.0.0.1:$port/0", 'counter.redis_batch_size = 50');
$node->safe_psql('postgres', q{
	SELECT counter.create('views');
	SELECT counter.alter('views', redis_prefix => 'views:', redis_stream => 'events');
	SELECT counter.create('tags', key_type => 'text');
	SELECT counter.alter('tags', redis_prefix => 'tags:', redis_stream => 'events');
	SELECT counter.create('hits');
	SELECT counter.alter('hits', redis_prefix => 'h:');
	SELECT counter.create('quiet');
	CREATE ROLE alice LOGIN;
});

# Keys nobody assigned to a counter stay as they are: an application's own
# data beside the counters' keys, and keys named like a counter that has no
# prefix.
rcli($r, 'SET', 'cs:session-abc', '{"user": 7}');
rcli($r, 'SET', 'quiet:1', '5');
rcli($r, 'HSET', 'app:profile:7', 'name', 'ann');
rcli($r, 'XADD', 'app-events', '*', 'counter', 'views', 'key', '1');

# Plain, sharded and hash-tagged keys sum into one key; text keys map.
rcli($r, 'INCRBY', 'views:42', 5);
rcli($r, 'INCRBY', "views:42:s$_", 10) for 0 .. 3;
rcli($r, 'INCRBY', 'views:{42}:s7', 100);
rcli($r, 'INCR', 'views:7') for 1 .. 3;
rcli($r, 'INCRBY', 'views:-3', -2);
rcli($r, 'INCRBY', 'tags:red', 4);
rcli($r, 'INCRBY', 'tags:{blue}:s2', 6);
rcli($r, 'INCRBY', 'h:1', 6);
ok($node->poll_query_until('postgres', q{
	SELECT counter.get('views', 42) = 145 AND counter.get('views', 7) = 3
	   AND counter.get('views', -3) = -2 AND counter.get('tags', 'red') = 4
	   AND counter.get('tags', 'blue') = 6 AND counter.get('hits', 1) = 6}),
	'plain, sharded, hash-tagged, negative and text keys are drained and summed');
ok(redis_wait_empty([$r], 'views:*', 'tags:*', 'h:*', 'counter:inflight:*'),
	'drained keys and in-flight records are gone from Redis');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM counter.tally WHERE slot = -4 AND bucket = date_trunc('minute', bucket)"),
	$node->safe_psql('postgres', "SELECT count(*) FROM counter.tally WHERE slot = -4"),
	'drained amounts land in minute buckets');
cmp_ok($node->safe_psql('postgres', "SELECT redis FROM counter.stats WHERE name = 'views'"),
	'>=', 7, 'counter.stats counts drained deltas under redis');

# Prefixes: a longer prefix owns its keys.
$node->safe_psql('postgres', q{
	SELECT counter.create('post_views');
	SELECT counter.alter('post_views', redis_prefix => 'views:post:');
});
rcli($r, 'INCRBY', 'views:post:9', 3);
rcli($r, 'INCRBY', 'views:9', 1);
ok($node->poll_query_until('postgres',
	"SELECT counter.get('post_views', 9) = 3 AND counter.get('views', 9) = 1"),
	'the longest matching prefix decides the counter');

# Quarantine: a value that is not an integer, a key part that is not a key.
rcli($r, 'SET', 'views:5', 'hello');
rcli($r, 'SET', 'views:abc', '7');
rcli($r, 'SET', 'views:6', '99999999999999999999');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 3 FROM counter.redis_quarantine"), 'three items quarantined');
is($node->safe_psql('postgres',
	"SELECT string_agg(redis_key || '=' || value || ' ' || reason, '; ' ORDER BY redis_key) FROM counter.redis_quarantine"),
	'views:5=hello value is not an integer; views:6=99999999999999999999 value is out of range for bigint; views:abc=7 key part is not a bigint',
	'quarantine records key, value and reason');
is(rcli($r, 'HGET', 'counter:quarantine:{0}', 'views:6'), '99999999999999999999',
	'a value out of bigint is moved aside in Redis too');
is(rcli($r, 'HGET', 'counter:quarantine:{0}', 'views:5'), 'hello',
	'a bad value is moved aside in Redis, not dropped');
is(rcli($r, 'EXISTS', 'views:5'), '0', 'and no longer blocks the drain');
is($node->safe_psql('postgres', "SELECT counter.get('views', 5)"), '0', 'nothing counted for it');
like(slurp_file($node->logfile), qr/quarantined redis item "views:abc"/, 'quarantine is logged with the key');
is($node->safe_psql('postgres',
	"SELECT pid IS NOT NULL FROM counter.worker_status() WHERE role = 'ingest' AND database = 'postgres'"), 't', 'the worker survived bad input');

# Stream events: delta, default delta, event time, a bad entry.
rcli($r, 'XADD', 'events', '*', 'counter', 'views', 'key', '100', 'delta', '3');
rcli($r, 'XADD', 'events', '*', 'counter', 'views', 'key', '100');
rcli($r, 'XADD', 'events', '*', 'counter', 'views', 'key', '100', 'time', '2020-01-01T00:00:30Z');
rcli($r, 'XADD', 'events', '*', 'counter', 'tags', 'key', 'green', 'time', '1577836800000');
rcli($r, 'XADD', 'events', '*', 'counter', 'nosuch', 'key', '1');
ok($node->poll_query_until('postgres',
	"SELECT counter.get('views', 100) = 5 AND counter.get('tags', 'green') = 1"),
	'stream events are counted, delta defaulting to 1');
is($node->safe_psql('postgres',
	"SELECT sum(value) FROM counter.tally t JOIN counter.counters c ON c.id = t.counter_id"
	  . " WHERE c.name IN ('views', 'tags') AND bucket = '2020-01-01 00:00:00+00'"),
	'2', 'the event time (ISO or Unix ms) picks the minute bucket');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM counter.redis_quarantine WHERE reason = 'the counter it names does not read this stream' AND value LIKE '%nosuch%'"),
	'an entry naming a counter that does not read the stream is quarantined');
is(rcli($r, 'XPENDING', 'events', 'counter'), "0\n\n\n", 'every entry acknowledged');
is($node->safe_psql('postgres', "SELECT count(*) FROM counter.redis_stream_pos WHERE stream = 'events'"),
	'1', 'the stream position is recorded');

# Events carrying an event id are counted once per dedup_window.
rcli($r, 'XADD', 'events', '*', 'counter', 'views', 'key', '101', 'event', 'click-1');
rcli($r, 'XADD', 'events', '*', 'counter', 'views', 'key', '101', 'event', 'click-1');
rcli($r, 'XADD', 'events', '*', 'counter', 'views', 'key', '101', 'event', 'click-2', 'delta', '10');
ok($node->poll_query_until('postgres',
	"SELECT counter.get('views', 101) = 11 AND (SELECT deduplicated FROM counter.stats WHERE name = 'views') >= 1"),
	'a repeated stream event id is counted once');
is(rcli($r, 'XPENDING', 'events', 'counter'), "0\n\n\n", 'the duplicate is acknowledged too');

# Whatever lies beside the counters' keys was never touched.
is(rcli($r, 'GET', 'cs:session-abc'), '{"user": 7}', 'an application key is left where it was');
is(rcli($r, 'GET', 'quiet:1'), '5', 'so is a key named like a counter without a prefix');
is(rcli($r, 'HGET', 'app:profile:7', 'name'), 'ann', 'and a hash of the application');
is(rcli($r, 'XLEN', 'app-events'), '1', 'a stream no counter reads is not read');
is(rcli($r, 'EXISTS', 'app-events'), '1', 'nor given a consumer group');
like(rcli($r, 'XINFO', 'GROUPS', 'app-events'), qr/^$/, 'no group on it');
is($node->safe_psql('postgres', "SELECT counter.get('quiet', 1)"), '0', 'nothing counted for them');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM counter.redis_quarantine WHERE redis_key LIKE 'cs:%' OR redis_key LIKE 'quiet:%' OR redis_key LIKE 'app%'"),
	'0', 'nor quarantined');

# Under a counter's prefix, what cannot count is moved aside and recorded:
# a hash, an empty key part, a delta beyond max_delta.
$node->safe_psql('postgres', "SELECT counter.alter('hits', max_delta => 1000)");
rcli($r, 'HSET', 'h:9', 'f', 'v');
rcli($r, 'SET', 'h:', '7');
rcli($r, 'SET', 'h:55', '5000');
rcli($r, 'SET', 'h:56', '500');
ok($node->poll_query_until('postgres', "SELECT counter.get('hits', 56) = 500"), 'the good key drains');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 3 FROM counter.redis_quarantine WHERE redis_key IN ('h:9', 'h:', 'h:55')"),
	'the bad ones are quarantined');
is($node->safe_psql('postgres',
	"SELECT string_agg(redis_key || ': ' || reason, '; ' ORDER BY redis_key) FROM counter.redis_quarantine WHERE redis_key IN ('h:9', 'h:', 'h:55')"),
	'h:: key part is empty; h:55: delta 5000 exceeds max_delta 1000; h:9: key is a hash, not a string; moved to counter:quarantine:{...}:hash:<key>',
	'each with its reason');
is(rcli($r, 'HGET', 'counter:quarantine:{0}:hash:h:9', 'f'), 'v', 'the hash is kept whole under its new name');
is(rcli($r, 'EXISTS', 'h:9'), '0', 'and no longer blocks the prefix');
is($node->safe_psql('postgres', "SELECT counter.get('hits', 55) + counter.get('hits', 9)"), '0',
	'nothing counted for them');
$node->safe_psql('postgres', "SELECT counter.alter('hits', max_delta => 0)");

# Status.
my $status = $node->safe_psql('postgres',
	"SELECT url, connected, drained_deltas > 0, quarantined, stream_lag, last_drain IS NOT NULL FROM counter.redis_status()");
is($status, "127.0.0.1:$port/0|t|t|7|0|t", 'redis_status shows the master');

# The password: a superuser-only setting, used for AUTH.
rcli($r, 'CONFIG', 'SET', 'requirepass', 's3cret');
$node->safe_psql('postgres', "ALTER SYSTEM SET counter.redis_password = 's3cret'");
$node->reload;
rcli($r, '-a', 's3cret', '--no-auth-warning', 'INCRBY', 'views:11', 4);
ok($node->poll_query_until('postgres', "SELECT counter.get('views', 11) = 4"),
	'drains with AUTH after a reload');
my ($ret, $out, $err) = $node->psql('postgres', 'SHOW counter.redis_password',
	extra_params => [ '-U', 'alice' ]);
like($err, qr/must be superuser|permission denied|pg_read_all_settings/,
	'a non-superuser cannot SHOW the password');
is($node->safe_psql('postgres',
	"SET ROLE alice; SELECT count(*) FROM pg_settings WHERE name LIKE 'counter.redis_password%' OR setting LIKE '%s3cret%'"),
	'0', 'nor find it in pg_settings');
unlike($node->safe_psql('postgres', 'SELECT string_agg(url, \',\') FROM counter.redis_status()'),
	qr/s3cret/, 'redis_status never shows it');
rcli($r, '-a', 's3cret', '--no-auth-warning', 'CONFIG', 'SET', 'requirepass', '');
$node->safe_psql('postgres', "ALTER SYSTEM RESET counter.redis_password");
$node->reload;

# The deduplicated increment script: a second call with the same dedup key
# does not count.
my $script = $node->safe_psql('postgres', 'SELECT counter.redis_incr_script()');
is(rcli($r, 'EVAL', $script, 2, 'viewed:{77}:u7:2026-11-30', 'views:{77}', 86400, 1), '1',
	'the script increments once');
is(rcli($r, 'EVAL', $script, 2, 'viewed:{77}:u7:2026-11-30', 'views:{77}', 86400, 1), '',
	'and refuses the duplicate');
ok($node->poll_query_until('postgres', "SELECT counter.get('views', 77) = 1"),
	'the deduplicated increment is drained once');

# A Redis restart in the middle of a drain (small batches, many in flight).
my $sum_sql = "SELECT sum(value) FROM counter.get_many('views', ARRAY(SELECT generate_series(0, 1999))::bigint[])";
my $before = $node->safe_psql('postgres', $sum_sql);
system('redis-benchmark', '-p', $port, '-q', '-n', 20000, '-c', 4, '-r', 2000,
	'INCR', 'views:__rand_int__') == 0 or die;
usleep(150_000);
redis_restart($r);
system('redis-benchmark', '-p', $port, '-q', '-n', 20000, '-c', 4, '-r', 2000,
	'INCR', 'views:__rand_int__') == 0 or die;
ok(redis_wait_empty([$r], 'views:*', 'counter:inflight:*'), 'drained after the restart');
is($node->safe_psql('postgres', $sum_sql) - $before, 40000, 'a Redis restart mid-drain loses nothing and counts nothing twice');
unlike(slurp_file($node->logfile), qr/FATAL|PANIC|server process .* was terminated/,
	'no crash of the worker');
$node->stop;

# Redis down when Postgres starts: the worker keeps running, says so once,
# and drains once Redis is there.
my $port2 = PostgreSQL::Test::Cluster::get_free_port();
my $node2 = redis_node('redisdown', "redis://127.0.0.1:$port2/0");
$node2->safe_psql('postgres', "SELECT counter.create('views'); SELECT counter.alter('views', redis_prefix => 'views:')");
my $pid = worker_pid($node2);
ok($pid, 'worker runs without Redis');
usleep(3_000_000);
is(worker_pid($node2), $pid, 'same worker pid 3 s later (no crash loop)');
my $log = slurp_file($node2->logfile);
my @down = ($log =~ /Redis 127\.0\.0\.1:$port2\/0 unavailable/g);
is(scalar(@down), 1, 'the outage is logged once, not every round');
unlike($log, qr/FATAL|PANIC/, 'no FATAL');
is($node2->safe_psql('postgres', 'SELECT connected FROM counter.redis_status()'), 'f',
	'status says disconnected');
like($node2->safe_psql('postgres', 'SELECT last_error FROM counter.redis_status()'),
	qr/connect/, 'with the error');
my $r2 = redis_start(port => $port2);
rcli($r2, 'INCRBY', 'views:1', 9);
ok($node2->poll_query_until('postgres', "SELECT counter.get('views', 1) = 9"),
	'drains once Redis is up (within the 30 s backoff cap)');
like(slurp_file($node2->logfile), qr/Redis 127\.0\.0\.1:$port2\/0 is back/, 'the recovery is logged');

# A keyspace mostly of other applications' keys: 510,000 of them beside 22
# counters' prefixes.  A drain round has a deadline and one SCAN cursor per
# Redis, so flush() never waits for a pass over the keyspace, and a new
# counter key is still found within a pass.
rcli($r2, 'EVAL', "for i = 1, 510000 do redis.call('SET', 'junk:' .. i, i) end return 1", 0);
$node2->safe_psql('postgres', q{
	SELECT counter.create('many' || g) FROM generate_series(1, 22) g;
	SELECT counter.alter(('many' || g)::counter.counter, redis_prefix => 'many' || g || ':')
	FROM generate_series(1, 22) g;
	SELECT counter.create('busy', mode => 'buffered');
});
my $slowest = 0;
for my $i (1 .. 10)
{
	my $t = [ Time::HiRes::gettimeofday() ];
	$node2->safe_psql('postgres', "SELECT counter.incr('busy', $i); SELECT counter.flush()");
	my $s = Time::HiRes::tv_interval($t);
	$slowest = $s if $s > $slowest;
}
cmp_ok($slowest, '<', 1.5, "flush() beside 510,000 other keys stays within a round (slowest ${slowest}s)");
rcli($r2, 'INCRBY', 'many17:4', 5);
my $t1 = [ Time::HiRes::gettimeofday() ];
ok($node2->poll_query_until('postgres', "SELECT counter.get('many17', 4) = 5"),
	'a new counter key is found among them');
my $found = Time::HiRes::tv_interval($t1);
cmp_ok($found, '<', 20, "within a few seconds (${found}s)");
is(rcli($r2, 'DBSIZE'), '510000', 'the other keys are untouched');
my $t0 = time;
$node2->stop;
cmp_ok(time - $t0, '<', 5, 'stops promptly');

done_testing();
