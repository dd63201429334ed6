# A fold that fails gives every amount back and is retried: a lock timeout
# while another session holds a folded row, and an amount that would take a
# key past bigint (quarantined alone; the other keys keep folding).  Nothing
# committed is lost, also across a restart.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;

my $node = counter_node('fold', "shared_preload_libraries = 'counter'",
	"counter.flush_interval = '100ms'", "counter.compact_interval = 0",
	"counter.rank_interval = 0");
$node->safe_psql('postgres', q{
	SELECT counter.create('fa1', mode => 'buffered');
	SELECT counter.create('fa2', mode => 'buffered');
	SELECT counter.create('ov', mode => 'buffered');
});

# All increments go to one fixed minute, so the row held below is the row
# every fold of fa1's key 1 must update.
my $at = "date_trunc('minute', now()) - interval '10 minutes'";
my $tally = sub {
	my ($c, $k) = @_;
	return $node->safe_psql('postgres',
		"SELECT coalesce(sum(value), 0) FROM counter.tally WHERE counter_id = counter.id('$c') AND key = $k");
};
$node->safe_psql('postgres', "SELECT counter.incr('fa1', 1, 1, at => $at); SELECT counter.flush()");
is($tally->('fa1', 1), '1', 'first increment folded');

# The worker runs with a short lock_timeout, so a held row makes folds fail.
$node->safe_psql('postgres', "ALTER DATABASE postgres SET lock_timeout = '300ms'");
$node->restart;

my ($out, $err) = ('', '');
my $holder = IPC::Run::start(
	[ 'psql', '-X', '-h', $node->host, '-p', $node->port, '-d', 'postgres', '-c',
	  "BEGIN; SELECT key FROM counter.tally WHERE counter_id = counter.id('fa1')"
	  . " AND slot = -4 FOR UPDATE; SELECT pg_sleep(4); COMMIT;" ],
	'>', \$out, '2>', \$err);
usleep(500_000);
$node->safe_psql('postgres', "SELECT counter.incr('fa1', 1, 1, at => $at) FROM generate_series(1, 10)");
$node->safe_psql('postgres', "SELECT counter.incr('fa2', 2, 1, at => $at) FROM generate_series(1, 21)");
$node->safe_psql('postgres', "SELECT counter.incr('fa1', 3, 30, at => $at)");
ok($node->poll_query_until('postgres',
	"SELECT last_error LIKE 'fold:%lock timeout%' FROM counter.worker_status() WHERE role = 'ingest' AND database = 'postgres'"),
	'a fold fails on the held row (lock timeout)');
is($node->safe_psql('postgres', "SELECT counter.get('fa1', 1) || '/' || counter.get('fa2', 2) || '/' || counter.get('fa1', 3)"),
	'11/21/30', 'reads stay exact while folds fail');
$holder->finish;

# Once the row is free, everything folds.
$node->safe_psql('postgres', 'SELECT counter.flush()');
is($tally->('fa1', 1) . '/' . $tally->('fa2', 2) . '/' . $tally->('fa1', 3), '11/21/30',
	'after the lock is gone every amount reaches the tally');
is($node->safe_psql('postgres', "SELECT sum(pending) FROM counter.stats WHERE name IN ('fa1', 'fa2')"),
	'0', 'nothing left pending');
$node->safe_psql('postgres', "SELECT counter.incr('fa1', 1, 1, at => $at); SELECT counter.flush()");
is($tally->('fa1', 1), '12', 'the key is not left busy: a later increment folds too');
$node->restart;
is($node->safe_psql('postgres', "SELECT counter.get('fa1', 1) || '/' || counter.get('fa2', 2) || '/' || counter.get('fa1', 3)"),
	'12/21/30', 'nothing lost across a restart');

# An amount that would take a key past bigint: an open transaction has
# buffered +5 when another session adds 2^63 - 2 through the durable path.
$node->safe_psql('postgres', "ALTER DATABASE postgres RESET lock_timeout");
$node->restart;
my $opener = IPC::Run::start(
	[ 'psql', '-X', '-h', $node->host, '-p', $node->port, '-d', 'postgres', '-c',
	  "BEGIN; SELECT counter.incr('ov', 1, 5); SELECT pg_sleep(2); COMMIT;" ],
	'>', \$out, '2>', \$err);
usleep(500_000);
$node->safe_psql('postgres', "SELECT counter.incr('ov', 1, 9223372036854775806)");
$opener->finish;
$node->safe_psql('postgres', "SELECT counter.incr('fa2', 9, 4)");
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM counter.quarantine WHERE source = 'buffer' AND counter_id = counter.id('ov') AND key = 1 AND delta = 5"),
	'the amount that would overflow is quarantined');
$node->safe_psql('postgres', 'SELECT counter.flush()');
is($tally->('fa2', 9), '4', 'other keys of the same fold are applied');
is($node->safe_psql('postgres', "SELECT counter.get('ov', 1)"), '9223372036854775806',
	'the big key keeps its total');
is($node->safe_psql('postgres', "SELECT pending FROM counter.stats WHERE name = 'ov'"),
	'0', 'and nothing of it stays pending');
like(slurp_file($node->logfile), qr/WARNING:  counter: quarantined buffer item "1" from postgres: counter "ov" would overflow for key 1\n.*DETAIL:  Value "5"/,
	'the quarantine is logged');
$node->safe_psql('postgres', "SELECT counter.incr('fa1', 7, 3); SELECT counter.flush()");
is($tally->('fa1', 7), '3', 'folds go on afterwards');

$node->stop;
done_testing();
