# A bounded sqlsmith run against a database with counters of every mode:
# random queries over the whole catalog, the extension's functions among
# them, from an unprivileged role.  The server must never crash, and no
# counter function may fail with an internal error (XX000).  One run uses
# a fixed seed, one a random seed, which is printed so a failure can be
# replayed with COUNTER_FUZZ_SEED.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;

my $seconds = $ENV{COUNTER_FUZZ_SECONDS} // 30;
my $node = counter_node('fuzzsql', "shared_preload_libraries = 'counter'",
	"log_line_prefix = '%m [%p] %e '", "log_statement = 'none'", "counter.flush_interval = '200ms'",
	"counter.rank_interval = '1s'", "counter.compact_interval = '1s'");
$node->safe_psql('postgres', q{
	SELECT counter.create('fz_direct', mode => 'direct');
	SELECT counter.create('fz_sharded');
	SELECT counter.create('fz_buffered', mode => 'buffered');
	SELECT counter.create('fz_text', key_type => 'text');
	SELECT counter.alter('fz_sharded', max_per_actor => 5, dedup_window => '1 hour', max_delta => 1000);
	SELECT counter.incr(c::counter.counter, k, k, at => now() - make_interval(mins => k * 7))
	FROM unnest(ARRAY['fz_direct', 'fz_sharded', 'fz_buffered']) AS c, generate_series(1, 50) AS k;
	SELECT counter.incr('fz_text', 'k' || k, k) FROM generate_series(1, 50) AS k;
	CREATE ROLE fuzzer LOGIN;
	ALTER ROLE fuzzer SET statement_timeout = '2s';
	GRANT USAGE ON SCHEMA counter TO fuzzer;
	GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA counter TO fuzzer;
	GRANT SELECT ON counter.stats TO fuzzer;
});
my $started = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
my $target = 'host=' . $node->host . ' port=' . $node->port . ' dbname=postgres user=fuzzer';

my $random = $ENV{COUNTER_FUZZ_SEED} // int(rand(1_000_000_000));
note("sqlsmith seeds: 20261202 and $random (replay: COUNTER_FUZZ_SEED=$random)");
for my $seed (20261202, $random)
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'timeout', $seconds, 'sqlsmith', "--target=$target", "--seed=$seed",
		'--max-queries=100000' ], '>', \$out, '2>', \$err);
	my ($queries) = ($err =~ /queries: (\d+)/);
	note("seed $seed: sqlsmith ran" . (defined $queries ? " $queries queries" : ''));
	ok($node->poll_query_until('postgres', 'SELECT true'), "seed $seed: the server answers");
}
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started,
	'the server never crashed (no restart)');
my $log = slurp_file($node->logfile);
my @internal = grep { /\bXX000\b/ && /counter/ } split /\n/, $log;
is(scalar(@internal), 0, 'no counter function failed with an internal error (XX000)')
  or diag(join("\n", @internal[0 .. ($#internal < 9 ? $#internal : 9)]));
unlike($log, qr/terminated by signal|PANIC/, 'no process died of a signal');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM counter.worker_status() WHERE database = 'postgres' AND pid IS NOT NULL"),
	'2', 'the ingest and maintenance processes still run');
is($node->safe_psql('postgres', "SELECT counter.get('fz_direct', 50)"), '50', 'the counts are intact');

$node->stop;
done_testing();
