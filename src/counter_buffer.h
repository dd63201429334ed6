/*
 * counter_buffer.h
 *		What buffer.c and buffer_fold.c share of the shared buffer: its hash,
 *		the partition and entry locks, and the whole-buffer lock.  The rules
 *		are in buffer.c's header; only those two files include this.
 */
#ifndef COUNTER_BUFFER_H
#define COUNTER_BUFFER_H

#include "counter.h"

#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/hsearch.h"

extern HTAB *counter_buffer_hash;

/* The partition lock guarding a hash value. */
static inline LWLock *
CounterPartitionLock(uint32 hashcode)
{
	return counter_shared->partition_locks[hashcode % COUNTER_PARTITIONS];
}

/*
 * Writers of an entry hold its spinlock and make its change count odd while
 * they change it; readers take no lock: they copy the fields and retry if
 * the count was odd or moved meanwhile, so readers of a hot key never
 * contend with each other.
 */
static inline void
CounterEntryLock(CounterBufEntry *entry)
{
	SpinLockAcquire(&entry->mutex);
	pg_atomic_fetch_add_u32(&entry->changecount, 1);
}

/* End a change begun by CounterEntryLock. */
static inline void
CounterEntryUnlock(CounterBufEntry *entry)
{
	pg_atomic_fetch_add_u32(&entry->changecount, 1);
	SpinLockRelease(&entry->mutex);
}

/* Start a lock-free read of an entry; pass the result to CounterEntryReadEnd. */
static inline uint32
CounterEntryReadBegin(CounterBufEntry *entry)
{
	uint32		count;

	while ((count = pg_atomic_read_u32(&entry->changecount)) & 1)
		SPIN_DELAY();
	pg_read_barrier();
	return count;
}

/* Whether a read begun with `before` saw a consistent entry. */
static inline bool
CounterEntryReadEnd(CounterBufEntry *entry, uint32 before)
{
	pg_read_barrier();
	return pg_atomic_read_u32(&entry->changecount) == before;
}

extern void CounterLockAll(LWLockMode mode);
extern void CounterUnlockAll(void);
extern void CounterBufRemove(CounterBufEntry *entry);

#endif							/* COUNTER_BUFFER_H */
