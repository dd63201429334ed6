# Through pgbouncer in transaction mode, every driver set up as the README's
# "Connection poolers" says: every public call, and 32 client connections
# over a pool of 8 server connections on sharded and buffered counters,
# with exact totals and no error.  psycopg 3's default (server-side
# prepared statements after 5 runs) is shown to fail there, which is why
# the README names the setting.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::RealBin;
use CounterTest;

my $drivers = "$FindBin::RealBin/../drivers";
my $node = counter_node('bouncer', "shared_preload_libraries = 'counter'");
my $user = scalar(getpwuid($<));
my $dir = $node->basedir . '/pgbouncer';
mkdir $dir or die "mkdir $dir: $!";
my $port = PostgreSQL::Test::Cluster::get_free_port();
my ($host, $pgport) = ($node->host, $node->port);
append_to_file("$dir/users.txt", qq{"$user" ""\n});
append_to_file("$dir/pgbouncer.ini", qq{[databases]
postgres = host=$host port=$pgport dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
admin_users = $user
default_pool_size = 8
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
});
# Its output goes to a file: a pipe nobody reads while the drivers run
# fills up and blocks pgbouncer's one thread.
my $bouncer = IPC::Run::start([ 'pgbouncer', "$dir/pgbouncer.ini" ], '>', "$dir/stdout", '2>&1');
my $up = 0;
for (1 .. 100)
{
	$up = 1, last if IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port);
	usleep(100_000);
}
ok($up, 'pgbouncer listens') or diag(slurp_file("$dir/stdout"));
my %env = (PGHOST => '127.0.0.1', PGPORT => $port, PGDATABASE => 'postgres', PGUSER => $user);

run_checks([ '/usr/bin/python3', "$drivers/drivers.py", '--pooler', qw(psycopg3 psycopg3_binary psycopg2 asyncpg) ], %env);
run_checks([ 'node', "$drivers/node_pg.js", '--pooler' ], %env, NODE_PATH => $ENV{COUNTER_NODE_PATH} // '');

# psycopg 3 as it comes: after five runs of a statement it prepares it on
# whichever server connection it has, and the next transaction lands on
# another one.
my ($pout, $perr) = ('', '');
IPC::Run::run([ '/usr/bin/python3', '-c', q{
import os, psycopg, threading
errors = []
def work():
    try:
        with psycopg.connect(host='127.0.0.1', port=int(os.environ['PGPORT']), dbname='postgres',
                             user=os.environ['PGUSER'], autocommit=True) as c:
            for i in range(50):
                c.execute("SELECT counter.incr('pool_psycopg3_cs', %s)", [i])
    except Exception as e:
        errors.append(type(e).__name__)
ts = [threading.Thread(target=work) for _ in range(16)]
[t.start() for t in ts]; [t.join() for t in ts]
print(sorted(set(errors)))
} ], '>', \$pout, '2>', \$perr, init => sub { @ENV{ keys %env } = values %env });
like($pout, qr/InvalidSqlStatementName|DuplicatePreparedStatement/,
	'psycopg 3 defaults fail through transaction pooling (so the README says prepare_threshold=None)')
  or diag("$pout $perr");

my $server_conns = $node->safe_psql('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()");
cmp_ok($server_conns, '<=', 8, "pgbouncer kept to its pool ($server_conns server connections)");
unlike(slurp_file($node->logfile), qr/PANIC|server process .* was terminated/, 'no backend crashed');

$bouncer->kill_kill;
$node->stop;
done_testing();
