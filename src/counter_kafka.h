/*
 * counter_kafka.h
 *		What the Kafka consumer (kafka.c), the meaning of its messages
 *		(kafka_message.c) and its status (kafka_status.c) share.
 */
#ifndef COUNTER_KAFKA_H
#define COUNTER_KAFKA_H

#include "counter.h"

/* A counter that reads a topic. */
typedef struct CounterKafkaCounter
{
	int32		id;
	char		name[NAMEDATALEN];
	CounterKeyType key_type;
	char	   *topic;
} CounterKafkaCounter;

/* One message as consumed: copies of its bytes, each NUL-terminated. */
typedef struct CounterKafkaMessage
{
	char	   *topic;
	int32		partition;
	int64		offset;
	char	   *key;			/* NULL: none */
	size_t		key_len;
	char	   *value;			/* NULL: none (a tombstone) */
	size_t		value_len;
	TimestampTz timestamp;		/* 0: unknown */
} CounterKafkaMessage;

/* kafka_message.c */
extern void CounterKafkaItem(const CounterKafkaCounter *counters, int ncounters,
							 const CounterKafkaMessage *m, TimestampTz now,
							 CounterSourceItem *it);

/* kafka_status.c */
extern char *CounterKafkaGroup(void);
extern void CounterKafkaState(const char *state);
extern void CounterKafkaError(const char *msg);

#endif							/* COUNTER_KAFKA_H */
