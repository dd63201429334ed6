# Hostile bytes from Redis: values and keys with NUL bytes, a 64 MiB value,
# a stream field with a NUL.  Each is quarantined with its bytes intact in
# Redis, recorded and logged; the worker never crashes, so the postmaster
# never restarts the cluster, and good keys beside them still drain.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use RedisTest;

my $r = redis_start();
my $node = redis_node('hostile', "redis://127.0.0.1:$r->{port}/0",
	'restart_after_crash = on');
$node->safe_psql('postgres', q{
	SELECT counter.create('r1');
	SELECT counter.alter('r1', redis_prefix => 'r1:', redis_stream => 'ev');
});
my $started = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
ok($node->poll_query_until('postgres', 'SELECT count(*) > 0 FROM counter.redis_status() WHERE connected'),
	'the worker is connected');
my $pid = worker_pid($node);

my $big = "1\0" . ('x' x (64 * 1024 * 1024));
is(rraw($r, 'SET', 'r1:19', $big), '+OK', 'a 64 MiB value with a NUL after a digit');
is(rraw($r, 'SET', "r1:1\0abc", '5'), '+OK', 'a key with a NUL byte');
is(rraw($r, 'SET', 'r1:20', "1\0 2"), '+OK', 'a short value with a NUL');
is(rraw($r, 'SET', 'r1:21', '7'), '+OK', 'a good key beside them');
like(rraw($r, 'XADD', 'ev', '*', 'counter', 'r1', 'key', '22', 'delta', "1\0 2"), qr/^\$/,
	'a stream entry whose delta has a NUL');
rcli($r, 'XADD', 'ev', '*', 'counter', 'r1', 'key', '23', 'delta', '3');

ok($node->poll_query_until('postgres',
	"SELECT counter.get('r1', 21) = 7 AND counter.get('r1', 23) = 3"), 'the good key and entry are counted');
ok($node->poll_query_until('postgres', 'SELECT count(*) = 4 FROM counter.redis_quarantine'),
	'the four bad items are quarantined');
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started,
	'the postmaster never restarted the cluster');
is(worker_pid($node), $pid, 'the worker never died');
is($node->safe_psql('postgres', q{
	SELECT string_agg(redis_key || ' ' || reason, '; ' ORDER BY redis_key) FROM counter.redis_quarantine
	WHERE redis_key NOT LIKE 'ev/%'}),
	'\x72313a3100616263 key part is not valid text; r1:19 value is not an integer; r1:20 value is not an integer',
	'keys with NUL bytes are recorded as hex, whole');
is($node->safe_psql('postgres', "SELECT value FROM counter.redis_quarantine WHERE redis_key = 'r1:20'"),
	'\x31002032', 'a short value keeps every byte (hex)');
like($node->safe_psql('postgres', "SELECT value FROM counter.redis_quarantine WHERE redis_key = 'r1:19'"),
	qr/^\\x3100(78){1022}$/, 'a huge value is recorded by its first kilobyte');
is($node->safe_psql('postgres', "SELECT reason FROM counter.redis_quarantine WHERE redis_key LIKE 'ev/%'"),
	'entry has a field with a NUL byte', 'the stream entry is quarantined, not parsed as 1');
is(rcli($r, 'HSTRLEN', 'counter:quarantine:{0}', 'r1:19'), length($big),
	'the huge value is kept whole in the Redis quarantine hash');
is(rcli($r, 'HGET', 'counter:quarantine:{0}', 'r1:20'), "1\0 2", 'with its bytes intact');
is(rraw($r, 'HEXISTS', 'counter:quarantine:{0}', "r1:1\0abc"), ':1', 'the NUL key is kept under its own name');
is(rcli($r, 'KEYS', 'r1:*'), '', 'no counter key is left in Redis');
is($node->safe_psql('postgres', 'SELECT counter.get(\'r1\', 19) + counter.get(\'r1\', 20) + counter.get(\'r1\', 22)'),
	'0', 'nothing of them was counted');

# One bad entry of a stream batch is quarantined alone; the rest is applied
# and the position never passes an entry that was not dealt with.
$node->safe_psql('postgres', q{
	SELECT counter.create('sx');
	SELECT counter.alter('sx', max_delta => 10, redis_stream => 'sxs');
	SELECT counter.create('tx', key_type => 'text');
	SELECT counter.alter('tx', redis_prefix => 'tx:');
});
my $multi = join('', "MULTI\n",
	"XADD sxs * key 1 delta 1\n", "XADD sxs * key 2 delta 100 event e1\n",
	"XADD sxs * key 3 delta 1\n", "EXEC\n");
IPC::Run::run([ 'redis-cli', '-p', $r->{port} ], '<', \$multi, '>', \my $mout);
rcli($r, 'XADD', 'sxs', '*', 'key', '4');
ok($node->poll_query_until('postgres',
	"SELECT counter.get('sx', 1) = 1 AND counter.get('sx', 3) = 1 AND counter.get('sx', 4) = 1"),
	'the good entries around a bad one are counted');
is($node->safe_psql('postgres', "SELECT counter.get('sx', 2)"), '0', 'the bad one is not');
is($node->safe_psql('postgres',
	"SELECT reason FROM counter.quarantine WHERE source = 'redis stream' AND item LIKE 'sxs/%' AND value LIKE '%key=2%'"),
	'delta 100 exceeds max_delta 10', 'it is quarantined with the reason');
is(rcli($r, 'XPENDING', 'sxs', 'counter'), "0\n\n\n", 'every entry is acknowledged');
# 21 entries and one with a delta of -2^63, whose key then cannot take more
my $many = "MULTI\n" . join('', map { "XADD sxs * key 7 delta 1\n" } 1 .. 10)
  . "XADD sxs * key 8 delta -9223372036854775808\n"
  . join('', map { "XADD sxs * key 8 delta -1\n" } 1 .. 1)
  . join('', map { "XADD sxs * key 9 delta 1\n" } 1 .. 10) . "EXEC\n";
$node->safe_psql('postgres', "SELECT counter.alter('sx', max_delta => 0)");
IPC::Run::run([ 'redis-cli', '-p', $r->{port} ], '<', \$many, '>', \$mout);
ok($node->poll_query_until('postgres',
	"SELECT counter.get('sx', 7) = 10 AND counter.get('sx', 9) = 10"),
	'a 22-entry batch with an entry that overflows: the others are counted');
is($node->safe_psql('postgres', "SELECT counter.get('sx', 8)"), '-9223372036854775808',
	'-2^63 itself is a valid delta');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM counter.quarantine WHERE item LIKE 'sxs/%' AND reason LIKE '%range of bigint%'"),
	'1', 'the entry that would overflow is quarantined');

# A key holding -2^63 drains; a text key too long for an index is quarantined.
rcli($r, 'SET', 'r1:15', '-9223372036854775808');
rraw($r, 'SET', 'tx:' . ('k' x 3000), '1');
rcli($r, 'SET', 'tx:short', '2');
ok($node->poll_query_until('postgres',
	"SELECT counter.get('r1', 15) = -9223372036854775808 AND counter.get('tx', 'short') = 2"),
	'a value of -2^63 drains, and so does the key beside a too long one');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM counter.quarantine WHERE reason = 'key part is longer than a text key may be'"),
	'the too long text key is quarantined');
is($node->safe_psql('postgres',
	"SELECT counter.incr_many('r1', ARRAY[77], ARRAY[-9223372036854775808]::bigint[])"),
	'1', 'incr_many takes -2^63 as incr does');

unlike(slurp_file($node->logfile), qr/terminated by signal|server process .* was terminated/,
	'no process was terminated by a signal');
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started,
	'and the cluster never restarted');

$node->stop;
done_testing();
