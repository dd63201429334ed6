/*
 * module.c
 *		Module entry point: the magic block and _PG_init, which only hands
 *		each concern its own initialisation.  Loaded through
 *		shared_preload_libraries it also sets up shared memory and the
 *		launcher of the background processes; loaded on demand, everything
 *		but buffered mode and the background processes works.
 */
#include "counter.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* Set up settings and the catalog cache when the library loads. */
void
_PG_init(void)
{
	CounterGucInit();
	CounterShmemInit();
	CounterBufferInit();
	CounterChangedInit();
	CounterCatalogInit();
	CounterTallyAmInit();
	CounterBufferedInit();
	CounterLauncherInit();
}
