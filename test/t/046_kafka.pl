# Kafka ingestion against librdkafka's own mock cluster (started by
# test/run as $KAFKA_BROKERS, with the topics kafka_events:4, kafka_text:2
# and kafka_other:1), produced to with kcat.
#
# The crash proof: 200,000 events over six partitions of two topics while
# the ingest process is killed with kill -9 ten times and Postgres stopped
# with -m immediate twice; afterwards every key's total equals what was
# produced, repeated event ids counted once, a malformed message
# quarantined once, and the stored offsets are at the partitions' ends.
# Then: an unreachable Kafka never holds folds back, bad settings are
# logged and survived, and privileges hold.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep time);
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;

my $brokers = $ENV{KAFKA_BROKERS} or plan skip_all => 'no Kafka mock cluster (KAFKA_BROKERS)';
srand($ENV{COUNTER_SEED} // time);

my $node = counter_node('kafka', "shared_preload_libraries = 'counter'",
	"counter.kafka_brokers = '$brokers'",
	'counter.flush_interval = 200ms', 'counter.kafka_batch_size = 2000',
	'restart_after_crash = on');
$node->safe_psql('postgres', q{
	SELECT counter.create('kv', mode => 'sharded');
	SELECT counter.alter('kv', kafka_topic => 'kafka_events', dedup_window => '1 hour');
	SELECT counter.create('kt', mode => 'buffered', key_type => 'text');
	SELECT counter.alter('kt', kafka_topic => 'kafka_text');
});

# Produce lines of "key<TAB>value" to a topic with kcat; dies if kcat fails.
my $dir = $node->basedir;
my $batch_no = 0;
sub produce
{
	my ($topic, @lines) = @_;
	my $file = "$dir/produce_" . $batch_no++;
	open(my $fh, '>', $file) or die "$file: $!";
	print $fh "$_\n" for @lines;
	close $fh;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'kcat', '-P', '-b', $brokers, '-t', $topic, '-K', "\t",
		'-X', 'log_level=3', '-l', $file ], '>', \$out, '2>', \$err)
	  or die "kcat failed: $err";
}

# What the chunks produce, and what the counters must end up with.
my (%want_kv, %want_kt);
my @dups;             # event messages sent again in a later chunk
my $sent_events = 0;
my $sent_text = 0;
my $event_no = 0;
my $chunk = sub {
	my ($i) = @_;
	my @ev;
	for (1 .. 8000)
	{
		my $k = 1 + int(rand(1000));
		my $d = 1 + int(rand(3));
		$want_kv{$k} += $d;
		if (++$event_no % 20 == 0)
		{
			my $line = "$k\t{\"key\":$k,\"delta\":$d,\"event\":\"ev-$event_no\"}";
			push @ev, $line;
			push @dups, $line;
		}
		else
		{
			# the key as the Kafka key only: the field is optional
			push @ev, "$k\t{\"delta\":$d}";
		}
	}
	# every other chunk re-sends 400 event messages of earlier chunks
	push @ev, splice(@dups, 0, 400) if $i % 2 == 0 && @dups >= 400;
	push @ev, "x\tthis is not json" if $i == 7;
	produce('kafka_events', @ev);
	$sent_events += @ev;
	my @tx;
	for (1 .. 2000)
	{
		my $k = 'u-' . int(rand(200));
		$want_kt{$k} += 1;
		push @tx, "$k\t{\"key\":\"$k\"}";
	}
	produce('kafka_text', @tx);
	$sent_text += @tx;
};

my $ingest_pid = sub {
	for (1 .. 300)
	{
		my ($rc, $out) = $node->psql('postgres',
			"SELECT pid FROM pg_stat_activity WHERE backend_type = 'counter ingest'");
		return $out if $rc == 0 && $out =~ /^\d+$/;
		usleep(100_000);
	}
	return '';
};

my $t0 = time;
my ($kills, $stops) = (0, 0);
for my $i (1 .. 20)
{
	$chunk->($i);
	usleep(int(200_000 + rand(600_000)));
	if ($i == 6 || $i == 15)
	{
		$node->stop('immediate');
		$node->start;
		$stops++;
		next;
	}
	next if $kills >= 10;
	my $pid = $ingest_pid->();
	$kills++ if $pid && kill 'KILL', $pid;
	ok(wait_ready($node), "the server is back after kill $kills") if $i % 5 == 0;
}
is($kills, 10, 'killed the ingest process 10 times while it consumed');
is($stops, 2, 'stopped Postgres with -m immediate twice while it consumed');
is($sent_events + $sent_text - 1, 200_000 + 4_000,
	'produced 200,000 events, 4,000 repeated event ids and one malformed message');
ok(wait_ready($node), 'the server is up');

# Wait until every partition's stored offset reaches its end.
my $caught_up = 0;
for (1 .. 1200)
{
	my ($rc, $out) = $node->psql('postgres', q{
		SELECT coalesce(sum(next_offset) FILTER (WHERE topic = 'kafka_events'), 0) || ' ' ||
		       coalesce(sum(next_offset) FILTER (WHERE topic = 'kafka_text'), 0)
		FROM counter.kafka_offset});
	if ($rc == 0 && $out eq "$sent_events $sent_text")
	{
		$caught_up = 1;
		last;
	}
	usleep(100_000);
}
ok($caught_up, 'the stored offsets reached every message produced (no offset skipped or passed)');
note sprintf('load, crashes and catching up took %.1f s', time - $t0);
$node->safe_psql('postgres', 'SELECT counter.flush()');

my $want = join(',', map { "$_=" . ($want_kv{$_} // 0) } 1 .. 1000);
is($node->safe_psql('postgres',
	"SELECT string_agg(g || '=' || counter.get('kv', g), ',' ORDER BY g) FROM generate_series(1, 1000) g"),
	$want, 'every key of the bigint counter equals what was produced, repeated events once');
my @tk = sort keys %want_kt;
is($node->safe_psql('postgres',
	"SELECT string_agg(k || '=' || counter.get('kt', k), ',' ORDER BY k) FROM unnest(ARRAY['"
	  . join("','", @tk) . "']) k"),
	join(',', map { "$_=$want_kt{$_}" } @tk), 'every key of the text counter equals what was produced');
is($node->safe_psql('postgres',
	"SELECT count(*) || ' ' || min(reason) FROM counter.quarantine WHERE source = 'kafka'"),
	'1 message is not valid JSON', 'the malformed message is quarantined, once');
is($node->safe_psql('postgres', 'SELECT count(*) FROM counter.kafka_status() WHERE lag <> 0'),
	'0', 'kafka_status() shows no lag');

# Times: a message's time field picks its minute.
my $ago = int(time * 1000) - 2 * 3600 * 1000;
produce('kafka_text', map { "old\t{\"key\":\"old\",\"time\":$ago}" } 1 .. 100);
$node->poll_query_until('postgres', "SELECT counter.get('kt', 'old') = 100")
  or diag('the backfill did not arrive');
is($node->safe_psql('postgres',
	"SELECT counter.window('kt', 'old', '1 hour') || ' ' || counter.window('kt', 'old', '3 hours')"),
	'0 100', 'events with an old time count in their own minute');

# An unreachable Kafka never holds the folds back.
$node->safe_psql('postgres',
	"ALTER SYSTEM SET counter.kafka_brokers = '127.0.0.1:9'; SELECT pg_reload_conf()");
usleep(1_500_000);
my $t1 = time;
$node->safe_psql('postgres', "SELECT counter.incr('kt', 'fold-me', 5)");
$node->safe_psql('postgres', 'SELECT counter.flush()');
cmp_ok(time - $t1, '<', 3, sprintf('a flush() with Kafka unreachable took %.2f s', time - $t1));
$node->poll_query_until('postgres',
	"SELECT last_error IS NOT NULL FROM counter.kafka_status() LIMIT 1")
  or diag('no Kafka error shown');
like($node->safe_psql('postgres', 'SELECT last_error FROM counter.kafka_status() LIMIT 1'),
	qr/\S/, 'kafka_status() shows the unreachable brokers\' error');

# Bad settings: logged, shown, survived; fixed, consuming resumes.
my $pid = $ingest_pid->();
$node->safe_psql('postgres',
	"ALTER SYSTEM SET counter.kafka_brokers = '$brokers'; ALTER SYSTEM SET counter.kafka_options = 'no.such.setting=1'; SELECT pg_reload_conf()");
$node->poll_query_until('postgres',
	"SELECT last_error LIKE '%no.such.setting%' FROM counter.kafka_status() LIMIT 1")
  or diag('the bad setting was not reported');
like($node->safe_psql('postgres', 'SELECT last_error FROM counter.kafka_status() LIMIT 1'),
	qr/setting no\.such\.setting/, 'a bad counter.kafka_options setting is shown');
is($ingest_pid->(), $pid, 'the ingest process survives bad Kafka settings');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET counter.kafka_options; SELECT pg_reload_conf()');
produce('kafka_events', "5\t{\"key\":5,\"delta\":1000}");
ok($node->poll_query_until('postgres', "SELECT counter.get('kv', 5) = " . ($want_kv{5} + 1000)),
	'with the settings fixed, new messages count');

# Privileges and bad arguments.
$node->safe_psql('postgres', q{
	CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN;
	GRANT USAGE ON SCHEMA counter TO alice, bob;
	GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA counter TO alice, bob;
	REVOKE EXECUTE ON FUNCTION counter.kafka_status() FROM alice, bob;
	SET ROLE alice; SELECT counter.create('a_views');
	SELECT counter.alter('a_views', kafka_topic => 'kafka_other'); RESET ROLE;
	SET ROLE bob; SELECT counter.create('b_views'); RESET ROLE;
});
my $err = sub {
	my ($sql) = @_;
	my ($rc, $out, $stderr) = $node->psql('postgres', $sql, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	return $rc == 0 ? 'no error' : $stderr;
};
like($err->("SET ROLE bob; SELECT counter.alter('b_views', kafka_topic => 'kafka_other')"),
	qr/42710.*clashes with counter "a_views", which another role owns/s,
	'a topic another owner\'s counter reads is refused (42710)');
like($err->("SET ROLE bob; SELECT counter.alter('a_views', kafka_topic => '')"),
	qr/42501/, 'only the owner changes a counter\'s topic (42501)');
like($err->("SET ROLE bob; SELECT counter.alter('b_views', kafka_topic => 'bad topic!')"),
	qr/22023.*not a valid Kafka topic name/s, 'a bad topic name is refused (22023)');
like($err->('SET ROLE bob; SHOW counter.kafka_options'), qr/42501/,
	'counter.kafka_options is for superusers only');
like($err->('SET ROLE bob; SELECT * FROM counter.kafka_offset'), qr/42501/,
	'the stored offsets are private');
like($err->('SET ROLE bob; SELECT * FROM counter.kafka_status()'), qr/42501/,
	'kafka_status() is not granted to PUBLIC');
is($node->safe_psql('postgres', "SELECT kafka_topic FROM counter.counters WHERE name = 'b_views'"),
	'', 'a refused alter changes nothing');
produce('kafka_other', "1\t{\"key\":1,\"delta\":3}");
ok($node->poll_query_until('postgres', "SELECT counter.get('a_views', 1) = 3"),
	'the owner\'s counter reads its topic');
$node->safe_psql('postgres', "SELECT counter.alter('a_views', kafka_topic => '')");
produce('kafka_other', "1\t{\"key\":1,\"delta\":3}");
usleep(2_000_000);
is($node->safe_psql('postgres', "SELECT counter.get('a_views', 1)"), '3',
	'an empty kafka_topic stops the counter reading it');
$node->safe_psql('postgres', "SELECT counter.alter('a_views', kafka_topic => 'kafka_other')");
ok($node->poll_query_until('postgres', "SELECT counter.get('a_views', 1) = 6"),
	'reading the topic again resumes where it stopped: the message sent meanwhile counts');

$node->stop;
done_testing();
