/*
 * guc.c
 *		Every counter.* setting, the Redis and ClickHouse ones included.
 */
#include "counter.h"

#include "miscadmin.h"
#include "utils/guc.h"

int			counter_default_slots = 64;
int			counter_buffer_keys = 16384;
int			counter_flush_interval = 1000;
int			counter_compact_interval = 10000;
int			counter_rank_interval = 5000;
char	   *counter_database = NULL;
int			counter_max_databases = 3;
int			counter_changed_keys = 131072;
char	   *counter_redis_url = NULL;
char	   *counter_redis_password = NULL;
char	   *counter_redis_password_file = NULL;
int			counter_redis_poll_interval = 1000;
int			counter_redis_batch_size = 50000;
char	   *counter_redis_stream = NULL;
char	   *counter_redis_stream_group = NULL;
int			counter_redis_connect_timeout = 1000;
int			counter_redis_command_timeout = 2000;
char	   *counter_kafka_brokers = NULL;
char	   *counter_kafka_group = NULL;
char	   *counter_kafka_options = NULL;
int			counter_kafka_batch_size = 10000;
char	   *counter_clickhouse_url = NULL;
char	   *counter_clickhouse_user = NULL;
char	   *counter_clickhouse_password = NULL;
int			counter_clickhouse_interval = 10000;
int			counter_clickhouse_timeout = 5000;
int			counter_clickhouse_batch_size = 100000;

/* The buffer, the background processes and their intervals. */
static void
CounterGucInitCore(void)
{
	DefineCustomIntVariable("counter.default_slots",
							"Slot rows per key for sharded counters created without slots.",
							"Concurrent writers of one key use different slot rows, so up to this many never wait on each other.",
							&counter_default_slots,
							64, 1, COUNTER_MAX_SLOTS,
							PGC_USERSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("counter.flush_interval",
							"How often the ingest process folds buffered increments into the tables.",
							"This bounds what a crash can lose of buffered counters.",
							&counter_flush_interval,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("counter.compact_interval",
							"How often the maintenance process compacts slot rows and rolls up old buckets.",
							"0 turns the background compaction off; counter.compact() still works.",
							&counter_compact_interval,
							10000, 0, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("counter.rank_interval",
							"How often the maintenance process refreshes the ranking that counter.top() reads.",
							"top() without now => may be this stale; 0 turns the refresh off.",
							&counter_rank_interval,
							5000, 0, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	/*
	 * Settings fixed at server start exist only when the library is
	 * preloaded, the only case in which they mean anything.
	 */
	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomIntVariable("counter.buffer_keys",
								"Keys the shared buffer of buffered counters can hold.",
								"When it is full, increments of new keys take the durable path.",
								&counter_buffer_keys,
								16384, 64, 16 * 1024 * 1024,
								PGC_POSTMASTER, 0,
								NULL, NULL, NULL);

		DefineCustomIntVariable("counter.changed_keys",
								"Changed keys the shared set remembers for the ranking refresh.",
								"When it overflows, the next refresh of that database rebuilds every ranking in full.",
								&counter_changed_keys,
								131072, 1024, 64 * 1024 * 1024,
								PGC_POSTMASTER, 0,
								NULL, NULL, NULL);

		DefineCustomStringVariable("counter.database",
								   "No longer used: every database with the extension is served.",
								   "Kept so that configurations written for 0.1 still load.",
								   &counter_database,
								   "",
								   PGC_POSTMASTER, GUC_NO_SHOW_ALL,
								   NULL, NULL, NULL);

		DefineCustomIntVariable("counter.max_databases",
								"Databases with the extension that get background processes.",
								"Each served database has an ingest and a maintenance process; beyond this many, a database is not served (buffered mode and Redis ingestion are unavailable there).",
								&counter_max_databases,
								3, 1, COUNTER_MAX_DATABASES,
								PGC_SIGHUP, 0,
								NULL, NULL, NULL);
	}
}

/* Redis ingestion (redis*.c). */
static void
CounterGucInitRedis(void)
{
	DefineCustomStringVariable("counter.redis_url",
							   "Redis masters the worker drains, as a comma-separated list of redis://host:port/db URLs.",
							   "Empty turns Redis ingestion off.  A URL naming a Redis Cluster node drains every master of the cluster.",
							   &counter_redis_url, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("counter.redis_password",
							   "Password for the Redis masters (AUTH).",
							   "Readable by superusers only; counter.redis_password_file is the alternative.",
							   &counter_redis_password, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("counter.redis_password_file",
							   "File whose first line is the password for the Redis masters.",
							   NULL,
							   &counter_redis_password_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomIntVariable("counter.redis_poll_interval",
							"How often the worker drains Redis.",
							"A drained increment is in the tables within about this time.",
							&counter_redis_poll_interval,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("counter.redis_batch_size",
							"Redis keys or stream entries claimed per batch.",
							"Each batch is applied in one Postgres transaction.",
							&counter_redis_batch_size,
							50000, 1, 1000000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("counter.redis_stream",
							   "No longer read: each counter names its stream, with counter.alter(c, redis_stream => ...).",
							   "An upgrade from 0.1 assigns the stream set here to every counter.",
							   &counter_redis_stream, "",
							   PGC_SIGHUP, GUC_NO_SHOW_ALL, NULL, NULL, NULL);
	DefineCustomStringVariable("counter.redis_stream_group",
							   "Consumer group the worker reads the stream through.",
							   NULL,
							   &counter_redis_stream_group, "counter",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("counter.redis_connect_timeout",
							"Timeout for connecting to a Redis master.",
							NULL,
							&counter_redis_connect_timeout,
							1000, 10, 60000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("counter.redis_command_timeout",
							"Timeout for one Redis command.",
							NULL,
							&counter_redis_command_timeout,
							2000, 10, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
}

/* Kafka ingestion (kafka*.c). */
static void
CounterGucInitKafka(void)
{
	DefineCustomStringVariable("counter.kafka_brokers",
							   "Kafka bootstrap servers the ingest processes consume from, as host:port[,host:port...].",
							   "Empty turns Kafka ingestion off.",
							   &counter_kafka_brokers, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("counter.kafka_group",
							   "Consumer group of the Kafka consumers; each database's is this, a dash and the database's name.",
							   "Offsets are kept in counter.kafka_offset, not in the group.",
							   &counter_kafka_group, "counter",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("counter.kafka_options",
							   "More librdkafka settings for the consumers, as space-separated name=value pairs.",
							   "For example security.protocol=SASL_SSL sasl.mechanism=PLAIN sasl.username=u sasl.password=p.  Readable by superusers only.",
							   &counter_kafka_options, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("counter.kafka_batch_size",
							"Kafka messages applied per transaction.",
							NULL,
							&counter_kafka_batch_size,
							10000, 1, 1000000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
}

/* The ClickHouse export (export*.c, clickhouse.c). */
static void
CounterGucInitClickhouse(void)
{
	DefineCustomStringVariable("counter.clickhouse_url",
							   "ClickHouse HTTP interface the maintenance process exports minute buckets to, as http://host:port.",
							   "Empty turns the export off; counters choose their table with counter.alter(c, clickhouse_table => ...).",
							   &counter_clickhouse_url, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("counter.clickhouse_user",
							   "ClickHouse user the export authenticates as.",
							   NULL,
							   &counter_clickhouse_user, "default",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("counter.clickhouse_password",
							   "Password of counter.clickhouse_user.",
							   "Readable by superusers only.",
							   &counter_clickhouse_password, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("counter.clickhouse_interval",
							"How often the maintenance process exports settled minutes to ClickHouse.",
							"A settled minute is in ClickHouse within about this time; failures back off from it.",
							&counter_clickhouse_interval,
							10000, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("counter.clickhouse_timeout",
							"Timeout of one request to ClickHouse, connecting included.",
							NULL,
							&counter_clickhouse_timeout,
							5000, 100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("counter.clickhouse_batch_size",
							"Minute buckets sent to ClickHouse per request.",
							"Each request is one batch, acknowledged before the next.",
							&counter_clickhouse_batch_size,
							100000, 1, 10000000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
}

/* Define every counter.* setting and reserve the prefix. */
void
CounterGucInit(void)
{
	CounterGucInitCore();
	CounterGucInitRedis();
	CounterGucInitKafka();
	CounterGucInitClickhouse();
	MarkGUCPrefixReserved("counter");
}
