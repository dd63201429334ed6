/*
 * kafka_status.c
 *		What this database's Kafka consumer (kafka.c) is called and shows:
 *		its group's name; its state and last error in shared memory, for
 *		kafka_status() and worker_status(), and the same error in the log
 *		at most once a minute per text; and counter.kafka_status().
 */
#include "counter.h"

#include "commands/dbcommands.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"

#include "counter_kafka.h"

PG_FUNCTION_INFO_V1(counter_kafka_status);

/* This database's consumer group; in a transaction. */
char *
CounterKafkaGroup(void)
{
	return psprintf("%s-%s", counter_kafka_group, get_database_name(MyDatabaseId));
}

/* Rate limit for repeated errors in the log. */
static char last_logged[200];
static TimestampTz last_logged_at = 0;

/* Show the consumer's state in kafka_status(). */
void
CounterKafkaState(const char *state)
{
	CounterDbSlot *slot = CounterSlotFor(MyDatabaseId);

	if (slot == NULL)
		return;
	SpinLockAcquire(&counter_shared->mutex);
	strlcpy(slot->kafka_state, state, sizeof(slot->kafka_state));
	SpinLockRelease(&counter_shared->mutex);
}

/*
 * Note a Kafka error: in kafka_status() and worker_status() always, in the
 * log once a minute for the same text.  Never raises.
 */
void
CounterKafkaError(const char *msg)
{
	CounterDbSlot *slot = CounterSlotFor(MyDatabaseId);
	TimestampTz now = GetCurrentTimestamp();

	if (slot)
	{
		SpinLockAcquire(&counter_shared->mutex);
		slot->kafka_error_at = now;
		strlcpy(slot->kafka_error, msg, sizeof(slot->kafka_error));
		SpinLockRelease(&counter_shared->mutex);
	}
	CounterProcError("kafka", msg);
	if (strcmp(last_logged, msg) != 0 || now - last_logged_at >= 60 * USECS_PER_SEC)
	{
		ereport(LOG, (errmsg("counter: kafka: %s", msg)));
		strlcpy(last_logged, msg, sizeof(last_logged));
		last_logged_at = now;
	}
}

/*
 * counter.kafka_status(): per partition this database's consumer has
 * applied messages of, the next offset to apply, the partition's end as
 * last seen and the difference; with the consumer's state and last error
 * (one row with no partition when none is stored yet).
 */
Datum
counter_kafka_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CounterDbSlot *slot = CounterShmemReady() ? CounterSlotFor(MyDatabaseId) : NULL;
	char		state[64] = "";
	char		error[200] = "";
	TimestampTz error_at = 0;
	CounterScope scope;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	uint64		i;
	int			rc;

	if (slot)
	{
		SpinLockAcquire(&counter_shared->mutex);
		if (slot->dbid == MyDatabaseId)
		{
			strlcpy(state, slot->kafka_state, sizeof(state));
			strlcpy(error, slot->kafka_error, sizeof(error));
			error_at = slot->kafka_error_at;
		}
		SpinLockRelease(&counter_shared->mutex);
	}
	InitMaterializedSRF(fcinfo, 0);
	args[0] = CStringGetTextDatum(CounterKafkaGroup());
	CounterEnter(&scope);
	rc = SPI_execute_with_args("SELECT topic, partition, next_offset, high_watermark,"
							   " high_watermark - next_offset, updated_at"
							   " FROM counter.kafka_offset WHERE grp = $1"
							   " ORDER BY topic, partition", 1, argtypes, args, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading Kafka offsets failed: %s", SPI_result_code_string(rc));
	for (i = 0; i < Max(SPI_processed, 1); i++)
	{
		Datum		values[9];
		bool		nulls[9] = {0};
		int			j;

		for (j = 0; j < 6; j++)
		{
			nulls[j] = true;
			if (i < SPI_processed)
				values[j] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
										  j + 1, &nulls[j]);
		}
		values[6] = CStringGetTextDatum(state[0] ? state : "off");
		values[7] = CStringGetTextDatum(error);
		nulls[7] = (error[0] == '\0');
		values[8] = TimestampTzGetDatum(error_at);
		nulls[8] = (error_at == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	CounterLeave(&scope);
	PG_RETURN_VOID();
}
