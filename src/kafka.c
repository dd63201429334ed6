/*
 * kafka.c
 *		Increment events from Kafka: the ingest process of each database
 *		consumes the topics its counters name (counter.alter(c, kafka_topic
 *		=> 'events')) from counter.kafka_brokers, through the consumer group
 *		counter.kafka_group || '-' || the database's name, with librdkafka.
 *		The messages' meaning is kafka_message.c's; its status and the
 *		function counter.kafka_status() are kafka_status.c's.
 *
 * Exactly once: a batch of messages is applied in one transaction that
 * also stores, per partition, the first offset not applied yet in
 * counter.kafka_offset.  When the group assigns partitions, the consumer
 * starts each at its stored offset (the beginning when none is stored),
 * never at the group's offsets in Kafka; those are committed after each
 * batch for monitoring only.  A message below the stored offset, or below
 * one applied earlier in the same batch (a partition revoked and assigned
 * again while a batch was being read), was applied already and is
 * skipped.  Messages of a topic no counter reads any more are left
 * where they are, unapplied, for when one reads it again.  A batch that
 * fails is rolled back and the consumer made again, so that it is read
 * again from the stored offsets.
 *
 * Never in the way of folds: librdkafka fetches in its own threads, and a
 * round only takes what is already queued (polls with no wait), for at
 * most a second, folding between batches (CounterSourceYield).  An
 * unreachable broker just leaves the queue empty; its errors are logged,
 * rate-limited, and shown by kafka_status() and worker_status().
 * librdkafka's callbacks (rebalance, log, error) are served by those
 * polls, in this process's own thread; they never let an error escape
 * into librdkafka's stack.
 */
#include "counter.h"

#include <fcntl.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "counter_kafka.h"

/* The consumer and what it was made for. */
static rd_kafka_t *consumer = NULL;
static char *consumer_conf = NULL;	/* brokers, group and options it was made with */
static char *subscribed = NULL;	/* the topics, comma-separated, sorted */
static bool consumer_broken = false;	/* make it again at the next round */
static TimestampTz next_attempt = 0;	/* backoff after a failure to make one */
static int	wake_fds[2] = {-1, -1};	/* librdkafka writes when messages arrive */
static bool more_queued = false;	/* the last round stopped with messages left */

/* The counters that read topics, loaded at most once a second. */
static MemoryContext kafka_cxt = NULL;
static CounterKafkaCounter *counters = NULL;
static int	ncounters = 0;
static TimestampTz counters_at = 0;
static uint64 counters_generation = 0;	/* CounterDefGeneration() at the load */

/* An error caught in a PG_CATCH: roll back, note it, go on. */
static void
CounterKafkaCaught(MemoryContext cxt, const char *what)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(cxt);
	CounterKafkaError(psprintf("%s: %s", what, edata->message));
	FreeErrorData(edata);
}

/* librdkafka's log lines, served by our polls: into the server log. */
static void
CounterKafkaLog(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	if (level <= 4)				/* warning and worse */
		CounterKafkaError(psprintf("%s: %s", fac, buf));
}

/* librdkafka's errors (brokers down, bad settings), served by our polls. */
static void
CounterKafkaOnError(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	CounterKafkaError(reason);
	if (err == RD_KAFKA_RESP_ERR__FATAL)
		consumer_broken = true;
}

/*
 * Set each partition of parts to its stored offset, or the beginning when
 * none is stored.  False (the error noted) if they could not be read.
 */
static bool
CounterKafkaStoredOffsets(rd_kafka_topic_partition_list_t *parts)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = true;
	int			i;

	for (i = 0; i < parts->cnt; i++)
		parts->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING;
	PG_TRY();
	{
		CounterScope scope;
		Oid			argtypes[1] = {TEXTOID};
		Datum		values[1];
		uint64		r;
		int			rc;

		CounterSourceBegin();
		values[0] = CStringGetTextDatum(CounterKafkaGroup());
		CounterEnter(&scope);
		rc = SPI_execute_with_args("SELECT topic, partition, next_offset FROM counter.kafka_offset"
								   " WHERE grp = $1", 1, argtypes, values, NULL, true, 0);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "reading Kafka offsets failed: %s", SPI_result_code_string(rc));
		for (r = 0; r < SPI_processed; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			char	   *topic = SPI_getvalue(tup, desc, 1);
			int32		part = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
			int64		next = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));

			for (i = 0; i < parts->cnt; i++)
				if (parts->elems[i].partition == part &&
					strcmp(parts->elems[i].topic, topic) == 0)
					parts->elems[i].offset = next;
		}
		CounterLeave(&scope);
		CounterSourceCommit();
	}
	PG_CATCH();
	{
		CounterKafkaCaught(cxt, "reading the stored offsets");
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	return ok;
}

/*
 * The group gave or took partitions: start given ones at their stored
 * offsets.  If those cannot be read, take none and make the consumer again
 * at the next round, which asks the group again.
 */
static void
CounterKafkaRebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
					  rd_kafka_topic_partition_list_t *parts, void *opaque)
{
	bool		cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
	rd_kafka_error_t *error = NULL;
	rd_kafka_resp_err_t rc = RD_KAFKA_RESP_ERR_NO_ERROR;

	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
	{
		if (!CounterKafkaStoredOffsets(parts))
		{
			consumer_broken = true;
			return;
		}
		if (cooperative)
			error = rd_kafka_incremental_assign(rk, parts);
		else
			rc = rd_kafka_assign(rk, parts);
		CounterKafkaState("consuming");
	}
	else if (cooperative)
		error = rd_kafka_incremental_unassign(rk, parts);
	else
		rc = rd_kafka_assign(rk, NULL);
	if (error)
	{
		CounterKafkaError(rd_kafka_error_string(error));
		rd_kafka_error_destroy(error);
		consumer_broken = true;
	}
	else if (rc != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		CounterKafkaError(rd_kafka_err2str(rc));
		consumer_broken = true;
	}
}

/* Stop consuming: no goodbye to the group, which never blocks. */
static void
CounterKafkaClose(void)
{
	if (consumer)
		rd_kafka_destroy_flags(consumer, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
	consumer = NULL;
	if (consumer_conf)
		pfree(consumer_conf);
	consumer_conf = NULL;
	if (subscribed)
		pfree(subscribed);
	subscribed = NULL;
	consumer_broken = false;
	more_queued = false;
	CounterKafkaState("");
}

/* Set one librdkafka setting; false with the error noted if refused. */
static bool
CounterKafkaSet(rd_kafka_conf_t *conf, const char *name, const char *value)
{
	char		err[256];

	if (rd_kafka_conf_set(conf, name, value, err, sizeof(err)) == RD_KAFKA_CONF_OK)
		return true;
	CounterKafkaError(psprintf("setting %s: %s", name, err));
	return false;
}

/*
 * The librdkafka settings: ours, then counter.kafka_options' name=value
 * pairs (which may override them).  NULL, the error noted, if refused.
 */
static rd_kafka_conf_t *
CounterKafkaConf(const char *group)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char	   *opts = pstrdup(counter_kafka_options);
	char	   *tok;
	char	   *save = NULL;
	bool		ok;

	ok = CounterKafkaSet(conf, "bootstrap.servers", counter_kafka_brokers) &&
		CounterKafkaSet(conf, "group.id", group) &&
		CounterKafkaSet(conf, "client.id", group) &&
		/* offsets live in counter.kafka_offset; Kafka's are for show */
		CounterKafkaSet(conf, "enable.auto.commit", "false") &&
		CounterKafkaSet(conf, "enable.auto.offset.store", "false") &&
		CounterKafkaSet(conf, "auto.offset.reset", "earliest") &&
		/*
		 * A static member: a restarted process takes its place in the group
		 * back at once, with no rebalance; one that is gone gives it up soon.
		 */
		CounterKafkaSet(conf, "group.instance.id", group) &&
		CounterKafkaSet(conf, "session.timeout.ms", "6000") &&
		CounterKafkaSet(conf, "heartbeat.interval.ms", "1000") &&
		/* log lines come through our polls, into our thread */
		CounterKafkaSet(conf, "log.queue", "true") &&
		CounterKafkaSet(conf, "log_level", "4");
	for (tok = strtok_r(opts, " \t\n", &save); ok && tok; tok = strtok_r(NULL, " \t\n", &save))
	{
		char	   *eq = strchr(tok, '=');

		if (eq == NULL || eq == tok)
		{
			CounterKafkaError(psprintf("counter.kafka_options: \"%s\" is not name=value", tok));
			ok = false;
			break;
		}
		*eq = '\0';
		ok = CounterKafkaSet(conf, tok, eq + 1);
	}
	if (!ok)
	{
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	rd_kafka_conf_set_rebalance_cb(conf, CounterKafkaRebalance);
	rd_kafka_conf_set_error_cb(conf, CounterKafkaOnError);
	rd_kafka_conf_set_log_cb(conf, CounterKafkaLog);
	return conf;
}

/*
 * Make the consumer for the settings in conf_key; false (the error noted,
 * the next attempt in 10 seconds) if librdkafka refuses.  In a transaction.
 */
static bool
CounterKafkaOpen(const char *conf_key)
{
	char		err[512];
	char	   *group = CounterKafkaGroup();
	rd_kafka_conf_t *conf = CounterKafkaConf(group);
	rd_kafka_queue_t *q;

	if (conf == NULL ||
		(consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err))) == NULL)
	{
		if (conf)
		{
			rd_kafka_conf_destroy(conf);
			CounterKafkaError(err);
		}
		next_attempt = GetCurrentTimestamp() + 10 * USECS_PER_SEC;
		return false;
	}
	rd_kafka_set_log_queue(consumer, NULL);
	rd_kafka_poll_set_consumer(consumer);
	if (wake_fds[0] < 0 && pipe(wake_fds) == 0)
	{
		fcntl(wake_fds[0], F_SETFL, O_NONBLOCK);
		fcntl(wake_fds[1], F_SETFL, O_NONBLOCK);
	}
	if (wake_fds[1] >= 0)
	{
		q = rd_kafka_queue_get_consumer(consumer);
		rd_kafka_queue_io_event_enable(q, wake_fds[1], "k", 1);
		rd_kafka_queue_destroy(q);
	}
	consumer_conf = MemoryContextStrdup(TopMemoryContext, conf_key);
	CounterKafkaState("joining the group");
	ereport(LOG, (errmsg("counter: kafka: consuming from %s as group \"%s\"",
						 counter_kafka_brokers, group)));
	return true;
}

/* Load the counters that read topics, with their topics sorted and joined. */
static char *
CounterKafkaLoad(void)
{
	CounterScope scope;
	StringInfoData topics;
	int			rc;
	uint64		i;

	MemoryContextReset(kafka_cxt);
	counters = NULL;
	ncounters = 0;
	counters_generation = CounterDefGeneration();
	initStringInfo(&topics);
	CounterEnter(&scope);
	rc = SPI_execute("SELECT id, name, key_type, kafka_topic FROM counter.definition"
					 " WHERE kafka_topic IS NOT NULL ORDER BY kafka_topic, id", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "loading counters for Kafka failed: %s", SPI_result_code_string(rc));
	counters = MemoryContextAllocZero(kafka_cxt,
									  sizeof(CounterKafkaCounter) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *topic = SPI_getvalue(tup, desc, 4);

		counters[i].id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		strlcpy(counters[i].name, SPI_getvalue(tup, desc, 2), sizeof(counters[i].name));
		counters[i].key_type = strcmp(SPI_getvalue(tup, desc, 3), "text") == 0 ?
			COUNTER_KEY_TEXT : COUNTER_KEY_BIGINT;
		counters[i].topic = MemoryContextStrdup(kafka_cxt, topic);
		if (i == 0 || strcmp(counters[i - 1].topic, topic) != 0)
			appendStringInfo(&topics, "%s%s", topics.len ? "," : "", topic);
	}
	ncounters = (int) SPI_processed;
	CounterLeave(&scope);
	return topics.data;
}

/*
 * Have a consumer subscribed to the topics the counters read, if Kafka
 * ingestion is on: make, remake or drop it as settings and counters
 * change.  False when there is nothing to consume.
 */
static bool
CounterKafkaReady(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ready = false;
	TimestampTz now = GetCurrentTimestamp();

	if (counter_kafka_brokers == NULL || counter_kafka_brokers[0] == '\0')
	{
		CounterKafkaClose();
		return false;
	}
	if (consumer && !consumer_broken && now - counters_at < USECS_PER_SEC)
		return ncounters > 0;
	if (consumer_broken)
	{
		CounterKafkaClose();
		next_attempt = Max(next_attempt, now + 2 * USECS_PER_SEC);
	}
	if (kafka_cxt == NULL)
		kafka_cxt = AllocSetContextCreate(TopMemoryContext, "counter kafka",
										  ALLOCSET_SMALL_SIZES);
	PG_TRY();
	{
		char	   *topics;
		char	   *key;

		CounterSourceBegin();
		topics = CounterKafkaLoad();
		counters_at = now;
		key = psprintf("%s|%s|%s|%s", counter_kafka_brokers, counter_kafka_group,
					   counter_kafka_options, get_database_name(MyDatabaseId));
		if (consumer && strcmp(consumer_conf, key) != 0)
			CounterKafkaClose();
		if (ncounters == 0)
			CounterKafkaClose();
		else if (consumer || (now >= next_attempt && CounterKafkaOpen(key)))
			ready = true;
		if (ready && (subscribed == NULL || strcmp(subscribed, topics) != 0))
		{
			rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(4);
			char	   *copy = pstrdup(topics);
			char	   *save = NULL;
			char	   *t;
			rd_kafka_resp_err_t rc;

			for (t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
				rd_kafka_topic_partition_list_add(list, t, RD_KAFKA_PARTITION_UA);
			rc = rd_kafka_subscribe(consumer, list);
			rd_kafka_topic_partition_list_destroy(list);
			if (rc != RD_KAFKA_RESP_ERR_NO_ERROR)
			{
				CounterKafkaError(psprintf("subscribing to %s: %s", topics, rd_kafka_err2str(rc)));
				consumer_broken = true;
				ready = false;
			}
			else
			{
				if (subscribed)
					pfree(subscribed);
				subscribed = MemoryContextStrdup(TopMemoryContext, topics);
			}
		}
		CounterSourceCommit();
	}
	PG_CATCH();
	{
		CounterKafkaCaught(cxt, "loading the counters");
		ready = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	return ready;
}

/* Whether a counter reads topic. */
static bool
CounterKafkaTopicRead(const char *topic)
{
	int			i;

	for (i = 0; i < ncounters; i++)
		if (strcmp(counters[i].topic, topic) == 0)
			return true;
	return false;
}

/* The stored offset of one partition, as a batch goes. */
typedef struct PartitionPos
{
	char	   *topic;
	int32		partition;
	int64		next;			/* first offset not applied */
	bool		touched;
} PartitionPos;

/* The position of a partition in pos[], added (next = -1) if new. */
static PartitionPos *
CounterKafkaPos(PartitionPos **pos, int *npos, int *cap, const char *topic, int32 partition)
{
	int			i;

	for (i = 0; i < *npos; i++)
		if ((*pos)[i].partition == partition && strcmp((*pos)[i].topic, topic) == 0)
			return &(*pos)[i];
	if (*npos == *cap)
	{
		*cap *= 2;
		*pos = repalloc(*pos, sizeof(PartitionPos) * *cap);
	}
	memset(&(*pos)[*npos], 0, sizeof(PartitionPos));
	(*pos)[*npos].topic = pstrdup(topic);
	(*pos)[*npos].partition = partition;
	(*pos)[*npos].next = -1;
	return &(*pos)[(*npos)++];
}

/*
 * Store the batch's new offsets (and the partitions' ends as last seen),
 * in its transaction.
 */
static void
CounterKafkaStore(const char *group, PartitionPos *pos, int npos)
{
	Oid			argtypes[5] = {TEXTOID, TEXTOID, INT4OID, INT8OID, INT8OID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	int			i;

	values[0] = CStringGetTextDatum(group);
	for (i = 0; i < npos; i++)
	{
		int64		lo,
					hi;

		if (!pos[i].touched)
			continue;
		values[1] = CStringGetTextDatum(pos[i].topic);
		values[2] = Int32GetDatum(pos[i].partition);
		values[3] = Int64GetDatum(pos[i].next);
		nulls[4] = 'n';
		if (rd_kafka_get_watermark_offsets(consumer, pos[i].topic, pos[i].partition,
										   &lo, &hi) == RD_KAFKA_RESP_ERR_NO_ERROR && hi >= 0)
		{
			values[4] = Int64GetDatum(Max(hi, pos[i].next));
			nulls[4] = ' ';
		}
		if (SPI_execute_with_args("INSERT INTO counter.kafka_offset AS o"
								  " (grp, topic, partition, next_offset, high_watermark)"
								  " VALUES ($1, $2, $3, $4, $5)"
								  " ON CONFLICT (grp, topic, partition) DO UPDATE"
								  " SET next_offset = excluded.next_offset,"
								  " high_watermark = coalesce(excluded.high_watermark, o.high_watermark),"
								  " updated_at = pg_catalog.now()",
								  5, argtypes, values, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "storing a Kafka offset failed");
	}
}

/*
 * Apply a batch in one transaction with its partitions' new offsets;
 * messages already applied are skipped.  On failure everything is rolled
 * back and the consumer is made again (the caller reads from the stored offsets).
 */
static void
CounterKafkaApply(CounterKafkaMessage *msgs, int n)
{
	MemoryContext cxt = CurrentMemoryContext;
	int			cap = 16;
	PartitionPos *volatile pos = palloc(sizeof(PartitionPos) * cap);
	volatile int npos = 0;
	CounterSourceItem *items = palloc(sizeof(CounterSourceItem) * n);
	volatile int nitems = 0;
	volatile bool ok = true;
	char	   *group;
	int			i;

	PG_TRY();
	{
		CounterScope scope;
		Oid			argtypes[1] = {TEXTOID};
		Datum		values[1];
		TimestampTz now = GetCurrentTimestamp();
		PartitionPos *p = pos;
		int			np = 0;
		uint64		r;

		CounterSourceBegin();
		/* an alter committed since the load counts from this batch on */
		if (CounterDefGeneration() != counters_generation)
			(void) CounterKafkaLoad();
		group = MemoryContextStrdup(cxt, CounterKafkaGroup());
		values[0] = CStringGetTextDatum(group);
		MemoryContextSwitchTo(cxt);
		/* the batch's partitions, with their stored offsets below */
		for (i = 0; i < n; i++)
			(void) CounterKafkaPos(&p, &np, &cap, msgs[i].topic, msgs[i].partition);
		pos = p;
		npos = np;
		CounterEnter(&scope);
		if (SPI_execute_with_args("SELECT topic, partition, next_offset FROM counter.kafka_offset"
								  " WHERE grp = $1 FOR UPDATE", 1, argtypes, values, NULL,
								  false, 0) != SPI_OK_SELECT)
			elog(ERROR, "reading Kafka offsets failed");
		for (r = 0; r < SPI_processed; r++)
		{
			bool		isnull;
			char	   *topic = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1);
			int32		part = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[r],
														   SPI_tuptable->tupdesc, 2, &isnull));

			for (i = 0; i < np; i++)
				if (p[i].partition == part && strcmp(p[i].topic, topic) == 0)
					p[i].next = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
															SPI_tuptable->tupdesc, 3, &isnull));
		}
		CounterLeave(&scope);
		MemoryContextSwitchTo(cxt);

		for (i = 0; i < n; i++)
		{
			PartitionPos *pp = CounterKafkaPos(&p, &np, &cap, msgs[i].topic, msgs[i].partition);

			if (msgs[i].offset < pp->next)
				continue;		/* applied already */
			if (!CounterKafkaTopicRead(msgs[i].topic))
				continue;		/* left for when a counter reads it again */
			pp->next = msgs[i].offset + 1;
			pp->touched = true;
			CounterKafkaItem(counters, ncounters, &msgs[i], now, &items[nitems++]);
		}
		if (nitems > 0)
		{
			CounterSourceApply("kafka", group, items, nitems, COUNTER_SLOT_FOLD);
			CounterEnter(&scope);
			CounterKafkaStore(group, p, np);
			CounterLeave(&scope);
		}
		CounterSourceCommit();
	}
	PG_CATCH();
	{
		CounterKafkaCaught(cxt, "applying a batch");
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);

	if (!ok)
	{
		/*
		 * Messages after the batch may be queued already: only a new
		 * consumer, assigned at the stored offsets, reads it again in order.
		 */
		consumer_broken = true;
		return;
	}
	CounterSourceCountStats(items, nitems, COUNTER_STAT_KAFKA);
	{
		/* the group's offsets in Kafka follow, for monitoring tools */
		rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(npos);

		for (i = 0; i < npos; i++)
			if (pos[i].touched)
				rd_kafka_topic_partition_list_add(list, pos[i].topic, pos[i].partition)->offset = pos[i].next;
		if (list->cnt > 0)
			(void) rd_kafka_commit(consumer, list, 1);
		rd_kafka_topic_partition_list_destroy(list);
	}
}

/* Copy one consumed message; false for an error event instead. */
static bool
CounterKafkaCopy(rd_kafka_message_t *rm, CounterKafkaMessage *m)
{
	rd_kafka_timestamp_type_t tstype;
	int64		ts;

	if (rm->err)
	{
		if (rm->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
			CounterKafkaError(rd_kafka_message_errstr(rm));
		return false;
	}
	m->topic = pstrdup(rd_kafka_topic_name(rm->rkt));
	m->partition = rm->partition;
	m->offset = rm->offset;
	m->key = rm->key ? CounterBytes(rm->key, rm->key_len) : NULL;
	m->key_len = rm->key_len;
	m->value = rm->payload ? CounterBytes(rm->payload, rm->len) : NULL;
	m->value_len = rm->len;
	ts = rd_kafka_message_timestamp(rm, &tstype);
	m->timestamp = (tstype == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE || ts <= 0) ? 0 :
		(TimestampTz) (ts - ((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) *
							 SECS_PER_DAY * 1000)) * 1000;
	return true;
}

/*
 * One round: apply what the consumer has queued, in batches of
 * counter.kafka_batch_size, for at most a second.  Outside any transaction.
 */
void
CounterKafkaRound(void)
{
	TimestampTz deadline = GetCurrentTimestamp() + USECS_PER_SEC;
	MemoryContext batch_cxt;
	MemoryContext old;
	char		drain[64];

	more_queued = false;
	if (!CounterKafkaReady())
		return;
	while (wake_fds[0] >= 0 && read(wake_fds[0], drain, sizeof(drain)) > 0)
		;
	batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "counter kafka batch",
									  ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		CounterKafkaMessage *msgs;
		int			n = 0;
		bool		empty = false;

		old = MemoryContextSwitchTo(batch_cxt);
		msgs = palloc(sizeof(CounterKafkaMessage) * counter_kafka_batch_size);
		while (n < counter_kafka_batch_size && !consumer_broken)
		{
			rd_kafka_message_t *rm = rd_kafka_consumer_poll(consumer, 0);

			if (rm == NULL)
			{
				empty = true;
				break;
			}
			if (CounterKafkaCopy(rm, &msgs[n]))
				n++;
			rd_kafka_message_destroy(rm);
		}
		if (n > 0 && !consumer_broken)
			CounterKafkaApply(msgs, n);
		MemoryContextSwitchTo(old);
		MemoryContextReset(batch_cxt);
		if (empty || consumer_broken)
			break;
		CounterSourceYield();
		if (GetCurrentTimestamp() >= deadline || counter_shutdown_requested)
		{
			more_queued = true;
			break;
		}
	}
	MemoryContextDelete(batch_cxt);
}

/* How long the ingest process may wait: not at all with messages left. */
long
CounterKafkaWaitMs(long wait_ms)
{
	return more_queued ? 0 : wait_ms;
}

/* A descriptor that becomes readable when messages arrive, or none. */
pgsocket
CounterKafkaWaitFd(void)
{
	return consumer ? wake_fds[0] : PGINVALID_SOCKET;
}

/* On the way out: drop the consumer without waiting on the group. */
void
CounterKafkaShutdown(void)
{
	CounterKafkaClose();
}
