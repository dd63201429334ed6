/*
 * counter.h
 *		Declarations shared by the counter extension's source files.
 *
 * Each .c file holds one concern: the type (type.c), the catalog of declared
 * counters and its backend-local cache (catalog.c), the write paths
 * (write.c), the read paths (read.c) and the settings (guc.c).  counter.c
 * only carries the module magic and delegates _PG_init to them.
 */
#ifndef COUNTER_H
#define COUNTER_H

#include "postgres.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "utils/timestamp.h"

#define COUNTER_NAME_MAXLEN 63
#define COUNTER_MAX_SLOTS 1024
#define COUNTER_SCHEMA "counter"

typedef enum CounterMode
{
	COUNTER_MODE_DIRECT,
	COUNTER_MODE_SHARDED,
	COUNTER_MODE_BUFFERED
} CounterMode;

typedef enum CounterKeyType
{
	COUNTER_KEY_BIGINT,
	COUNTER_KEY_TEXT
} CounterKeyType;

/* A declared counter, as cached in each backend (a copy is handed out). */
typedef struct CounterDef
{
	int32		id;
	char		name[COUNTER_NAME_MAXLEN + 1];
	CounterMode mode;
	int32		slots;
	CounterKeyType key_type;
	Oid			owner;
} CounterDef;

/* Saved state of CounterEnter, restored by CounterLeave. */
typedef struct CounterScope
{
	Oid			save_userid;
	int			save_sec_context;
} CounterScope;

/* guc.c */
extern int	counter_default_slots;
extern void CounterGucInit(void);

/* catalog.c */
extern void CounterCatalogInit(void);
extern bool CounterLookupById(int32 id, CounterDef *def);
extern bool CounterLookupByName(const char *name, CounterDef *def);
extern void CounterGetById(int32 id, CounterDef *def);
extern void CounterEnter(CounterScope *scope);
extern void CounterLeave(CounterScope *scope);
extern SPIPlanPtr CounterPlan(SPIPlanPtr *cache, const char *sql,
							  int nargs, Oid *argtypes);
extern const char *CounterModeName(CounterMode mode);
extern void CounterOverflow(const CounterDef *def, const int64 *key,
							bool reading) pg_attribute_noreturn();
extern int	CounterExecGuarded(const CounterDef *def, const int64 *key,
							   bool reading, SPIPlanPtr plan, Datum *values);
extern void CounterCheckName(const char *name);

/* write.c */
extern int64 CounterTextKeyId(const CounterDef *def, text *key, bool create);

/* Attribute time: the start of the minute holding ts. */
static inline TimestampTz
CounterMinute(TimestampTz ts)
{
	TimestampTz r = ts % USECS_PER_MINUTE;

	return ts - r - (r < 0 ? USECS_PER_MINUTE : 0);
}

#endif							/* COUNTER_H */
