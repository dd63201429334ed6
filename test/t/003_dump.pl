# pg_dump keeps counters: definitions, counts, text keys and their ids come
# back after a restore into a fresh database, and \dx lists the extension.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;

my $node = counter_node('dump');
$node->safe_psql('postgres', q{
	SELECT counter.create('views');
	SELECT counter.create('likes', mode => 'direct', slots => 1);
	SELECT counter.create('tags', key_type => 'text');
	SELECT counter.incr('views', 1, 5), counter.incr('views', 2, 7, at => '2026-01-01 10:00+00');
	SELECT counter.incr('likes', 1, 3);
	SELECT counter.incr('tags', 'postgres', 11);
});

like($node->safe_psql('postgres', '\dx counter'), qr/counter/, '\dx lists counter');

my $dump = $node->basedir . '/dump.sql';
$node->command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $dump ],
	'pg_dump ran');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok(
	[ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-q', '-d', $node->connstr('restored'), '-f', $dump ],
	'restore ran');

my $query = q{
	SELECT string_agg(format('%s/%s/%s/%s', name, mode, slots, key_type), ' ' ORDER BY name)
	FROM counter.counters};
is($node->safe_psql('restored', $query), $node->safe_psql('postgres', $query),
	'counter definitions restored');
is($node->safe_psql('restored',
	"SELECT counter.get('views', 1) || ',' || counter.get('views', 2) || ',' || counter.get('likes', 1)"
	  . " || ',' || counter.get('tags', 'postgres')"),
	'5,7,3,11', 'counts restored');
is($node->safe_psql('restored',
	"SELECT counter.window('views', 2, '1 hour', now => '2026-01-01 10:30+00')"),
	'7', 'minute buckets restored');
is($node->safe_psql('restored', "SELECT counter.key_id('tags', 'postgres')"),
	$node->safe_psql('postgres', "SELECT counter.key_id('tags', 'postgres')"),
	'text key ids restored');

# New counters and keys after a restore do not collide with restored ones.
$node->safe_psql('restored', q{
	SELECT counter.create('after');
	SELECT counter.incr('tags', 'redis');
});
is($node->safe_psql('restored',
	"SELECT count(DISTINCT id) = count(*) FROM counter.counters"), 't',
	'counter ids stay unique after restore');
is($node->safe_psql('restored',
	"SELECT counter.key_id('tags', 'redis') <> counter.key_id('tags', 'postgres')"), 't',
	'text key ids stay unique after restore');
is($node->safe_psql('restored', "SELECT counter.get('views', 1)"), '5',
	'restored counter readable after new ones were made');

$node->stop;
done_testing();
