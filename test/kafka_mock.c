/*
 * kafka_mock.c: a Kafka cluster for the tests and benchmarks, the one
 * librdkafka ships in itself (rdkafka_mock.h), speaking the Kafka protocol
 * on loopback ports.  No Kafka broker is installable on the test machines;
 * users point counter at their own Kafka.
 *
 *   kafka_mock BROKERS [TOPIC:PARTITIONS ...]
 *
 * Creates the cluster and the topics, prints its bootstrap servers on one
 * line, and runs until SIGTERM or SIGINT.  The cluster lives only in this
 * process's memory: stopping it loses every message.
 *
 * Built by test/lib.sh (counter_kafka_start): cc kafka_mock.c -lrdkafka.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

static volatile sig_atomic_t stop = 0;

/* SIGTERM / SIGINT: leave the wait loop. */
static void
on_signal(int sig)
{
	(void) sig;
	stop = 1;
}

int
main(int argc, char **argv)
{
	char		err[512];
	rd_kafka_conf_t *conf;
	rd_kafka_t *rk;
	rd_kafka_mock_cluster_t *mc;
	int			brokers;
	int			i;

	if (argc < 2 || (brokers = atoi(argv[1])) < 1)
	{
		fprintf(stderr, "usage: %s BROKERS [TOPIC:PARTITIONS ...]\n", argv[0]);
		return 2;
	}
	conf = rd_kafka_conf_new();
	/* the handle only keeps the cluster's books; it produces nothing */
	if (rd_kafka_conf_set(conf, "log_level", "3", err, sizeof(err)) != RD_KAFKA_CONF_OK)
	{
		fprintf(stderr, "kafka_mock: %s\n", err);
		return 1;
	}
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
	if (rk == NULL)
	{
		fprintf(stderr, "kafka_mock: %s\n", err);
		return 1;
	}
	mc = rd_kafka_mock_cluster_new(rk, brokers);
	if (mc == NULL)
	{
		fprintf(stderr, "kafka_mock: could not create a mock cluster\n");
		return 1;
	}
	for (i = 2; i < argc; i++)
	{
		char	   *topic = strdup(argv[i]);
		char	   *colon = strrchr(topic, ':');
		int			parts = colon ? atoi(colon + 1) : 1;
		rd_kafka_resp_err_t rc;

		if (colon)
			*colon = '\0';
		rc = rd_kafka_mock_topic_create(mc, topic, parts > 0 ? parts : 1,
										brokers < 3 ? brokers : 3);
		if (rc != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			fprintf(stderr, "kafka_mock: topic %s: %s\n", topic, rd_kafka_err2str(rc));
			return 1;
		}
		free(topic);
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	printf("%s\n", rd_kafka_mock_cluster_bootstraps(mc));
	fflush(stdout);
	while (!stop)
		pause();
	rd_kafka_mock_cluster_destroy(mc);
	rd_kafka_destroy(rk);
	return 0;
}
