# shellcheck shell=bash
# test/lib.sh: shared shell plumbing for the test runner, the demo and the
# benchmarks.  Source it from a bash script running with `set -euo pipefail`.
#
# It installs what the project needs, builds and installs the extension, and
# runs a private PostgreSQL 15 cluster (and, on request, a private Redis) in a
# throwaway directory, as an unprivileged user: Postgres refuses to run as
# root, and the repository may sit where that user cannot read (CI clones as
# root into /root/...), so whatever the server or pg_regress must read is
# copied under $COUNTER_WORK first.
#
# All state lives in exported variables and in files under $COUNTER_WORK, so
# the stop and cleanup functions are idempotent and safe to call from traps.
#
#   counter_deps                  install missing packages (apt-get, as root)
#   counter_build                 make && make install the extension
#   counter_pg_copy ROOT          a copy of PostgreSQL 15 under ROOT
#   counter_pg_user               the OS user that runs the servers
#   counter_as_pg CMD...          run CMD as that user, PG* etc. passed along
#   counter_workdir               create $COUNTER_WORK once
#   counter_stage                 copy the test inputs to $COUNTER_SRC
#   counter_free_port             a free TCP port on 127.0.0.1
#   counter_pg_start [LINE...]    initdb + start the private cluster
#   counter_pg_restart            restart it (settings read at start-up)
#   counter_pg_stop               stop it, if running
#   counter_redis_start / _stop   a private redis-server, as $REDIS_PORT
#   counter_clickhouse_start / _stop  a private clickhouse-server, as $CLICKHOUSE_HTTP_PORT
#   counter_node_pg               node-postgres from npm, as $COUNTER_NODE_PATH
#   counter_old_release           the last release in a copy of PostgreSQL, as $COUNTER_OLD_ROOT
#   counter_kafka_start / _stop   a Kafka mock cluster (librdkafka's), as $KAFKA_BROKERS
#   counter_cleanup               stop everything started
#   counter_psql ARGS...          psql against the private cluster
#   counter_now_ms                wall clock in milliseconds, for timings

# Paths for this library and its callers.  COUNTER_PG_ROOT, if set, names a
# private copy of PostgreSQL 15 (made on first use) that the extension is
# installed into and the servers run from, so that two checkouts can be
# tested side by side; the build always uses the system's headers and PGXS.
# shellcheck disable=SC2034
COUNTER_PG_ROOT=${COUNTER_PG_ROOT:-}
COUNTER_PG_BIN=$COUNTER_PG_ROOT/usr/lib/postgresql/15/bin
COUNTER_PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
COUNTER_PGXS_DIR=$COUNTER_PG_ROOT/usr/lib/postgresql/15/lib/pgxs
export COUNTER_PG_ROOT COUNTER_PG_BIN
# The repository root: this file lives in <root>/test.
COUNTER_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Packages the build, the tests and the demo need (Debian 12 names).
COUNTER_PACKAGES=(build-essential postgresql-15 postgresql-server-dev-15
	postgresql-contrib libhiredis-dev redis-server libipc-run-perl sqlsmith
	python3-psycopg python3-psycopg2 python3-asyncpg pgbouncer
	librdkafka-dev kcat libcurl4-openssl-dev clickhouse-server clickhouse-client curl)

# Print a progress message.
counter_say() {
	printf '%s\n' "-- $*"
}

# Print an error and leave the script (or the subshell it was called from).
counter_die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# Milliseconds since the epoch; bash's own clock, so no process is spawned.
counter_now_ms() {
	local us=${EPOCHREALTIME//[.,]/}
	echo $((us / 1000))
}

# Install whatever is missing of COUNTER_PACKAGES, refreshing apt's lists
# only when something is.  Needs root only when there is work to do.
counter_deps() {
	local pkg missing=()

	command -v dpkg-query >/dev/null ||
		counter_die "dpkg-query not found: install ${COUNTER_PACKAGES[*]} (or their equivalents) by hand"
	for pkg in "${COUNTER_PACKAGES[@]}"; do
		[[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true) == "install ok installed" ]] ||
			missing+=("$pkg")
	done
	# pgbench's package has moved between releases; what matters is the file.
	if [[ ! -x /usr/lib/postgresql/15/bin/pgbench && " ${missing[*]} " != *" postgresql-contrib "* ]]; then
		missing+=(postgresql-contrib)
	fi
	# node and npm, for the node-pg tests and the demo, unless already there
	command -v node >/dev/null || missing+=(nodejs)
	command -v npm >/dev/null || missing+=(npm)
	((${#missing[@]} == 0)) && return 0

	((EUID == 0)) ||
		counter_die "missing packages: ${missing[*]}; run as root, or: sudo apt-get install ${missing[*]}"
	counter_say "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	[[ -x /usr/lib/postgresql/15/bin/pgbench ]] || counter_die "pgbench still missing at /usr/lib/postgresql/15/bin/pgbench"
}

# Build the extension in the repository and install it into PostgreSQL 15
# (or into the copy at COUNTER_PG_ROOT).  Compiler warnings stay visible;
# any error stops the caller.
counter_build() {
	local sudo=() dest=()

	counter_say "building and installing the extension${COUNTER_PG_ROOT:+ into $COUNTER_PG_ROOT}"
	if [[ -n $COUNTER_PG_ROOT ]]; then
		[[ -x $COUNTER_PG_BIN/postgres ]] || counter_pg_copy "$COUNTER_PG_ROOT"
		dest=(DESTDIR="$COUNTER_PG_ROOT")
	# A developer without root installs through sudo; CI runs as root.
	elif ((EUID != 0)) && [[ ! -w $("$COUNTER_PG_CONFIG" --pkglibdir) ]]; then
		sudo=(sudo)
	fi
	(
		cd "$COUNTER_ROOT"
		make -s PG_CONFIG="$COUNTER_PG_CONFIG"
		"${sudo[@]}" make -s install PG_CONFIG="$COUNTER_PG_CONFIG" "${dest[@]}"
	) || counter_die "build failed"
}

# Copy the system's PostgreSQL 15 under $1, without counter: it finds its
# libraries and share files relative to its binaries, so the copy runs as is.
counter_pg_copy() {
	local root=$1 share=$1/usr/share/postgresql/15/extension

	rm -rf "$root"
	mkdir -p "$root/usr/lib/postgresql" "$root/usr/share/postgresql"
	cp -a /usr/lib/postgresql/15 "$root/usr/lib/postgresql/"
	cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql/"
	rm -f "$share"/counter.control "$share"/counter--*.sql "$root"/usr/lib/postgresql/15/lib/counter.so
	if ((EUID == 0)); then
		chown -R "$(counter_pg_user):" "$root"
	fi
}

# The unprivileged OS user that runs the servers and the test tools.
counter_pg_user() {
	if ((EUID == 0)); then
		echo postgres
	else
		id -un
	fi
}

# Run CMD as counter_pg_user, with the PostgreSQL 15 binaries first on PATH
# and our PG*, REDIS_*, KAFKA_* and COUNTER_* variables passed along explicitly.  As
# root, a working directory outside $COUNTER_WORK is swapped for
# $COUNTER_WORK (or /), because the repository may be unreadable to that user.
counter_as_pg() {
	local name dir=$PWD
	local -a vars=("PATH=$COUNTER_PG_BIN:$PATH")

	for name in $(compgen -e); do
		case $name in
		PG* | REDIS_* | KAFKA_* | CLICKHOUSE_* | COUNTER_*) vars+=("$name=${!name}") ;;
		esac
	done
	if ((EUID != 0)); then
		env "${vars[@]}" "$@"
		return
	fi
	case $dir/ in
	"${COUNTER_WORK:-/nonexistent}"/*) ;;
	*) dir=${COUNTER_WORK:-/} ;;
	esac
	(cd "$dir" && exec runuser -u postgres -- env "${vars[@]}" "$@")
}

# Create the private work directory once, owned by the pg user, and export
# its path as COUNTER_WORK.
counter_workdir() {
	[[ -n ${COUNTER_WORK:-} && -d $COUNTER_WORK ]] && return 0
	COUNTER_WORK=$(mktemp -d /tmp/counter.XXXXXX)
	export COUNTER_WORK
	if ((EUID == 0)); then
		chown "$(counter_pg_user):" "$COUNTER_WORK"
	fi
}

# Copy what pg_regress, the isolation tester and the TAP tests read into
# $COUNTER_WORK/src (exported as COUNTER_SRC), owned by the pg user.
counter_stage() {
	local item
	local -a items=()

	counter_workdir
	export COUNTER_SRC=$COUNTER_WORK/src
	rm -rf "$COUNTER_SRC"
	mkdir -p "$COUNTER_SRC"
	for item in Makefile counter.control counter--*.sql sql expected specs \
		input output data test README.md; do
		[[ -e $COUNTER_ROOT/$item ]] && items+=("$COUNTER_ROOT/$item")
	done
	cp -R "${items[@]}" "$COUNTER_SRC/"
	if ((EUID == 0)); then
		chown -R "$(counter_pg_user):" "$COUNTER_SRC"
	fi
}

# Whether something listens on TCP port $1 (any address).
counter_port_busy() {
	if command -v ss >/dev/null; then
		[[ -n $(ss -Hltn "sport = :$1") ]]
	else
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
	fi
}

# Echo a TCP port in 20000-60000 that nothing listens on.
counter_free_port() {
	local port
	for _ in {1..200}; do
		# below Linux's ephemeral range (32768-60999), where outgoing
		# connections hold local ports that no listener check can see
		port=$((20000 + RANDOM % 12000))
		if ! counter_port_busy "$port"; then
			echo "$port"
			return 0
		fi
	done
	counter_die "no free TCP port found"
}

# Whether the private cluster is running.
counter_pg_running() {
	[[ -n ${COUNTER_WORK:-} && -f $COUNTER_WORK/pgdata/PG_VERSION ]] &&
		counter_as_pg pg_ctl status -D "$COUNTER_WORK/pgdata" >/dev/null 2>&1
}

# Create and start the private cluster in $COUNTER_WORK/pgdata; each argument
# is one more postgresql.conf line.  Exports PGHOST, PGPORT, PGUSER and
# PGDATABASE so that psql, pgbench and pg_regress reach it.
counter_pg_start() {
	local pgdata port line try

	counter_workdir
	pgdata=$COUNTER_WORK/pgdata
	counter_pg_running && counter_die "the private cluster is already running"
	port=$(counter_free_port)
	if [[ ! -f $pgdata/PG_VERSION ]]; then
		# The superuser is always "postgres", whoever runs it, so that
		# test output naming roles does not depend on the machine.
		counter_as_pg initdb -D "$pgdata" -U postgres -A trust --no-sync \
			-E UTF8 --locale=C.UTF-8 >"$COUNTER_WORK/initdb.log" 2>&1 || {
			cat "$COUNTER_WORK/initdb.log" >&2
			counter_die "initdb failed"
		}
	fi
	# Durability settings stay at their defaults: benchmarks need them real.
	{
		echo
		echo "# Added by counter's test/lib.sh"
		echo "unix_socket_directories = '$COUNTER_WORK'"
		echo "listen_addresses = '127.0.0.1'"
		echo "max_connections = 200"
		echo "shared_buffers = 256MB"
		for line in "$@"; do
			echo "$line"
		done
	} >>"$pgdata/postgresql.conf"

	# A port can be taken between the check and the bind: try another (the
	# last "port =" line in postgresql.conf wins).
	for try in 1 2 3; do
		echo "port = $port" >>"$pgdata/postgresql.conf"
		counter_say "starting PostgreSQL on port $port (data in $pgdata)"
		counter_as_pg pg_ctl start -D "$pgdata" -w -t 60 \
			-l "$COUNTER_WORK/pg.log" >/dev/null && break
		tail -n 30 "$COUNTER_WORK/pg.log" >&2 || true
		((try < 3)) && grep -q 'could not bind\|could not create any TCP/IP sockets' "$COUNTER_WORK/pg.log" ||
			counter_die "PostgreSQL did not start (log: $COUNTER_WORK/pg.log)"
		port=$(counter_free_port)
	done
	export PGHOST=$COUNTER_WORK PGPORT=$port PGUSER=postgres PGDATABASE=postgres
}

# Restart the private cluster on the same port, for settings that only take
# effect at server start.
counter_pg_restart() {
	counter_as_pg pg_ctl restart -D "$COUNTER_WORK/pgdata" -m fast -w -t 60 \
		-l "$COUNTER_WORK/pg.log" >/dev/null || {
		tail -n 30 "$COUNTER_WORK/pg.log" >&2 || true
		counter_die "PostgreSQL did not restart (log: $COUNTER_WORK/pg.log)"
	}
}

# Stop the private cluster if it runs.
counter_pg_stop() {
	counter_pg_running || return 0
	counter_as_pg pg_ctl stop -D "$COUNTER_WORK/pgdata" -m fast -w >/dev/null
}

# The pid of our private redis-server, if it runs.
counter_redis_pid() {
	local pidfile=${COUNTER_WORK:-/nonexistent}/redis/redis.pid pid
	[[ -f $pidfile ]] || return 1
	pid=$(<"$pidfile")
	[[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server* ]] || return 1
	echo "$pid"
}

# Install node-postgres (`pg`) from npm where the pg user can read it, once
# per machine, and export its node_modules as COUNTER_NODE_PATH.
COUNTER_NODE_PG_VERSION=8.23.1
counter_node_pg() {
	local dir=/var/tmp/counter-node-pg-$COUNTER_NODE_PG_VERSION

	if [[ ! -f $dir/node_modules/pg/package.json ]]; then
		counter_say "installing node-postgres $COUNTER_NODE_PG_VERSION from npm"
		rm -rf "$dir.tmp"
		mkdir -p "$dir.tmp"
		(cd "$dir.tmp" && npm install --silent --no-audit --no-fund "pg@$COUNTER_NODE_PG_VERSION" >/dev/null) ||
			counter_die "npm install pg failed"
		rm -rf "$dir"
		mv "$dir.tmp" "$dir"
		chmod -R a+rX "$dir"
	fi
	export COUNTER_NODE_PATH=$dir/node_modules
}

# The last release, for the upgrade test: PostgreSQL 15 copied under
# $COUNTER_WORK (it finds its libraries and share files relative to its
# binaries, so the copy runs as is) with counter $COUNTER_OLD_RELEASE built
# from the repository's history and installed into it.  Exports
# COUNTER_OLD_ROOT, the copy's root (what / is to the system's PostgreSQL).
COUNTER_OLD_RELEASE=0.1
COUNTER_OLD_COMMIT=8c9c94f
counter_old_release() {
	local root=$COUNTER_WORK/pg-$COUNTER_OLD_RELEASE src=$COUNTER_WORK/src-$COUNTER_OLD_RELEASE

	if [[ ! -x $root/usr/lib/postgresql/15/bin/postgres ]]; then
		git -C "$COUNTER_ROOT" cat-file -e "$COUNTER_OLD_COMMIT^{commit}" 2>/dev/null ||
			counter_die "the upgrade test builds counter $COUNTER_OLD_RELEASE from commit $COUNTER_OLD_COMMIT: clone the whole history (no --depth)"
		counter_say "building counter $COUNTER_OLD_RELEASE (commit $COUNTER_OLD_COMMIT) into a copy of PostgreSQL"
		rm -rf "$src"
		mkdir -p "$src"
		git -C "$COUNTER_ROOT" archive "$COUNTER_OLD_COMMIT" | tar -x -C "$src"
		counter_pg_copy "$root"
		(cd "$src" && make -s PG_CONFIG="$COUNTER_PG_CONFIG" &&
			make -s install PG_CONFIG="$COUNTER_PG_CONFIG" DESTDIR="$root") >"$src.log" 2>&1 ||
			{ tail -n 20 "$src.log" >&2; counter_die "building counter $COUNTER_OLD_RELEASE failed"; }
		if ((EUID == 0)); then
			chown -R "$(counter_pg_user):" "$root"
		fi
	fi
	export COUNTER_OLD_ROOT=$root
}

# Start a private redis-server on a free loopback port, with no persistence,
# as the pg user; exports REDIS_PORT.
counter_redis_start() {
	local dir port try

	counter_workdir
	dir=$COUNTER_WORK/redis
	counter_redis_pid >/dev/null && counter_die "the private redis-server is already running"
	counter_as_pg mkdir -p "$dir"
	# a port can be taken between the check and the bind: try another
	for try in 1 2 3; do
		port=$(counter_free_port)
		if counter_as_pg redis-server --port "$port" --bind 127.0.0.1 --save '' \
			--appendonly no --daemonize yes --pidfile "$dir/redis.pid" \
			--dir "$dir" --logfile "$dir/redis.log"; then
			for _ in {1..50}; do
				if [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]]; then
					export REDIS_PORT=$port
					counter_say "started redis-server on port $port"
					return 0
				fi
				sleep 0.1
			done
		fi
		tail -n 5 "$dir/redis.log" >&2 || true
		counter_say "redis-server did not start on port $port (try $try of 3)"
	done
	counter_die "redis-server did not start"
}

# Stop our private redis-server if it runs: politely, then by its pid.
counter_redis_stop() {
	local pid
	pid=$(counter_redis_pid) || return 0
	redis-cli -p "${REDIS_PORT:-0}" shutdown nosave >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
	for _ in {1..50}; do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}

# Start a Kafka cluster for the tests: librdkafka's own mock cluster of
# three brokers (test/kafka_mock.c, built here), with the topics named as
# TOPIC:PARTITIONS arguments, as the pg user; exports KAFKA_BROKERS, its
# bootstrap servers.  It keeps messages in memory only.
counter_kafka_start() {
	local dir=$COUNTER_WORK/kafka

	counter_workdir
	counter_as_pg mkdir -p "$dir"
	cc -O2 -Wall -o "$dir/kafka_mock" "$COUNTER_ROOT/test/kafka_mock.c" -lrdkafka ||
		counter_die "building test/kafka_mock.c failed (is librdkafka-dev installed?)"
	chmod a+rx "$dir/kafka_mock"
	# shellcheck disable=SC2016
	counter_as_pg bash -c 'cd "$1" && shift && { ./kafka_mock 3 "$@" >brokers 2>log & echo $! >pid; }' \
		_ "$dir" "$@"
	for _ in {1..50}; do
		if [[ -s $dir/brokers ]]; then
			KAFKA_BROKERS=$(head -n 1 "$dir/brokers")
			export KAFKA_BROKERS
			counter_say "started a Kafka mock cluster at $KAFKA_BROKERS"
			return 0
		fi
		sleep 0.1
	done
	cat "$dir/log" >&2 || true
	counter_die "the Kafka mock cluster did not start"
}

# Stop the Kafka mock cluster if it runs.
counter_kafka_stop() {
	local pidfile=${COUNTER_WORK:-/nonexistent}/kafka/pid pid
	[[ -f $pidfile ]] || return 0
	pid=$(<"$pidfile")
	[[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == kafka_mock ]] || return 0
	kill "$pid" 2>/dev/null || true
	for _ in {1..50}; do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}

# The pid of our private clickhouse-server, if it runs.
counter_clickhouse_pid() {
	local pidfile=${COUNTER_WORK:-/nonexistent}/clickhouse/clickhouse.pid pid
	[[ -f $pidfile ]] || return 1
	pid=$(cat "$pidfile")
	[[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == clickhouse* ]] || return 1
	echo "$pid"
}

# Write the config of a private clickhouse-server into $1: loopback only,
# the ports given, small caches and memory limits (the machine is shared),
# UTC, and two users: default (no password) and counter (password
# $CLICKHOUSE_PASSWORD), both from 127.0.0.1 only.
counter_clickhouse_config() {
	local dir=$1 http=$2 tcp=$3 inter=$4
	cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$dir/log/server.log</log><errorlog>$dir/log/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>$http</http_port>
  <tcp_port>$tcp</tcp_port>
  <interserver_http_port>$inter</interserver_http_port>
  <path>$dir/data/</path>
  <tmp_path>$dir/tmp/</tmp_path>
  <user_files_path>$dir/user_files/</user_files_path>
  <format_schema_path>$dir/format_schemas/</format_schema_path>
  <users_config>$dir/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>33554432</mark_cache_size>
  <uncompressed_cache_size>0</uncompressed_cache_size>
  <max_server_memory_usage>1000000000</max_server_memory_usage>
  <max_concurrent_queries>16</max_concurrent_queries>
  <mlock_executable>false</mlock_executable>
</yandex>
XML
	cat >"$dir/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>400000000</max_memory_usage><max_threads>2</max_threads></default></profiles>
  <users>
    <default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>
    <counter><password>$CLICKHOUSE_PASSWORD</password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></counter>
  </users>
  <quotas><default></default></quotas>
</yandex>
XML
}

# Start a private clickhouse-server as the pg user, on free loopback ports,
# with its config and data under $COUNTER_WORK/clickhouse (kept across a
# restart: counter_clickhouse_start again after _stop reuses the ports and
# the data).  Exports CLICKHOUSE_HTTP_PORT, CLICKHOUSE_TCP_PORT and
# CLICKHOUSE_PASSWORD (of user counter).
counter_clickhouse_start() {
	local dir pid try

	counter_workdir
	dir=$COUNTER_WORK/clickhouse
	counter_clickhouse_pid >/dev/null && counter_die "the private clickhouse-server is already running"
	export CLICKHOUSE_PASSWORD=${CLICKHOUSE_PASSWORD:-counter-test-password}
	counter_as_pg mkdir -p "$dir/log" "$dir/data" "$dir/tmp"
	for try in 1 2 3; do
		if [[ ! -f $dir/config.xml || $try -gt 1 ]]; then
			CLICKHOUSE_HTTP_PORT=$(counter_free_port)
			CLICKHOUSE_TCP_PORT=$(counter_free_port)
			CLICKHOUSE_INTER_PORT=$(counter_free_port)
			export CLICKHOUSE_HTTP_PORT CLICKHOUSE_TCP_PORT CLICKHOUSE_INTER_PORT
			counter_as_pg bash -c "$(declare -f counter_clickhouse_config); counter_clickhouse_config \"\$@\"" _ \
				"$dir" "$CLICKHOUSE_HTTP_PORT" "$CLICKHOUSE_TCP_PORT" "$CLICKHOUSE_INTER_PORT"
		fi
		counter_as_pg bash -c 'cd "$1" && exec clickhouse-server --config-file="$1/config.xml" >>"$1/log/stdout.log" 2>&1 & echo $! >"$1/clickhouse.pid"' _ "$dir"
		for _ in {1..300}; do
			if [[ $(curl -s "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping" 2>/dev/null) == Ok. ]]; then
				counter_say "started clickhouse-server on port $CLICKHOUSE_HTTP_PORT"
				return 0
			fi
			pid=$(counter_clickhouse_pid) || break
			sleep 0.1
		done
		tail -n 5 "$dir/log/error.log" >&2 2>/dev/null || true
		counter_clickhouse_stop
		counter_say "clickhouse-server did not start on port $CLICKHOUSE_HTTP_PORT (try $try of 3)"
	done
	counter_die "clickhouse-server did not start"
}

# Stop our private clickhouse-server if it runs: SIGTERM, then SIGKILL.
counter_clickhouse_stop() {
	local pid
	pid=$(counter_clickhouse_pid) || return 0
	kill "$pid" 2>/dev/null || true
	for _ in {1..150}; do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}

# Stop everything this library started; never fails, so it suits a trap.
counter_cleanup() {
	counter_kafka_stop || true
	counter_clickhouse_stop || true
	counter_redis_stop || true
	counter_pg_stop || true
}

# psql against the private cluster, stopping at the first error.
counter_psql() {
	counter_as_pg psql -X -v ON_ERROR_STOP=1 -P pager=off "$@"
}
