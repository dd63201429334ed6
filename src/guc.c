/*
 * guc.c
 *		The counter.* settings.
 */
#include "counter.h"

#include "miscadmin.h"
#include "utils/guc.h"

int			counter_default_slots = 64;
int			counter_buffer_keys = 16384;
int			counter_flush_interval = 1000;
int			counter_compact_interval = 10000;
int			counter_rank_interval = 30000;
char	   *counter_database = NULL;

/* Define every counter.* setting and reserve the prefix. */
void
CounterGucInit(void)
{
	DefineCustomIntVariable("counter.default_slots",
							"Slot rows per key for sharded counters created without slots.",
							"Concurrent writers of one key use different slot rows, so up to this many never wait on each other.",
							&counter_default_slots,
							64, 1, COUNTER_MAX_SLOTS,
							PGC_USERSET, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("counter.flush_interval",
							"How often the worker folds buffered increments into the tables.",
							"This bounds what a crash can lose of buffered counters.",
							&counter_flush_interval,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("counter.compact_interval",
							"How often the worker compacts slot rows and rolls up old buckets.",
							"0 turns the worker's compaction off; counter.compact() still works.",
							&counter_compact_interval,
							10000, 0, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("counter.rank_interval",
							"How often the worker refreshes the ranking that counter.top() reads.",
							"top() without now => may be this stale; 0 turns the refresh off.",
							&counter_rank_interval,
							30000, 0, 24 * 3600 * 1000,
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

		DefineCustomStringVariable("counter.database",
								   "Database the counter worker connects to.",
								   NULL,
								   &counter_database,
								   "postgres",
								   PGC_POSTMASTER, 0,
								   NULL, NULL, NULL);
	}

	CounterRedisGucInit();
	MarkGUCPrefixReserved("counter");
}
