# Every public call through real client libraries with bound parameters:
# psycopg 3 (text and binary parameters), psycopg2, asyncpg and node-pg,
# each also with 32 concurrent connections and an exact total.  The calls
# and their expected results are in test/drivers/calls.json.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;

my $drivers = "$FindBin::RealBin/../drivers";
my $node = counter_node('drivers', "shared_preload_libraries = 'counter'", 'max_connections = 120');
my %env = (PGHOST => $node->host, PGPORT => $node->port, PGDATABASE => 'postgres',
	PGUSER => scalar(getpwuid($<)));

run_checks([ '/usr/bin/python3', "$drivers/drivers.py", qw(psycopg3 psycopg3_binary psycopg2 asyncpg) ], %env);
ok($ENV{COUNTER_NODE_PATH}, 'node-pg is installed (COUNTER_NODE_PATH)');
run_checks([ 'node', "$drivers/node_pg.js" ], %env, NODE_PATH => $ENV{COUNTER_NODE_PATH} // '');

is($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"),
	'1', 'every driver connection was closed');
$node->stop;
done_testing();
