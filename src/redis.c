/*
 * redis.c
 *		Redis ingestion: the worker drains INCR keys and stream events from
 *		Redis into the tables, exactly once.
 */
#include "counter.h"

/* Define the counter.redis_* settings. */
void
CounterRedisGucInit(void)
{
}

/*
 * One drain round, called by the worker after each fold, outside any
 * transaction.  It starts its own short transactions and never holds one
 * while talking to Redis.
 */
void
CounterRedisRound(void)
{
}

/* The worker is stopping: drop connections. */
void
CounterRedisShutdown(void)
{
}

/* How long the worker may sleep before the next round. */
long
CounterRedisWaitMs(long fold_ms)
{
	return fold_ms;
}
