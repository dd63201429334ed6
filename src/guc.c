/*
 * guc.c
 *		The counter.* settings.
 */
#include "counter.h"

#include "utils/guc.h"

int			counter_default_slots = 64;

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

	MarkGUCPrefixReserved("counter");
}
