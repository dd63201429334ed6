/*
 * counter_clickhouse.h
 *		The ClickHouse transport (clickhouse.c) as the export step
 *		(export.c) sees it.
 */
#ifndef COUNTER_CLICKHOUSE_H
#define COUNTER_CLICKHOUSE_H

/* The outcome of one request. */
typedef struct CounterChResult
{
	bool		transport;		/* the server could not be reached or did not answer in time */
	bool		aborted;		/* cut short because the process must stop */
	long		http_status;	/* 0 when nothing came back */
	char		error[256];		/* what went wrong; never the URL or the password */
} CounterChResult;

extern bool CounterClickhouseInsert(const char *table, const char *columns,
									const char *body, size_t len,
									CounterChResult *res);

#endif							/* COUNTER_CLICKHOUSE_H */
