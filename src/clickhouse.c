/*
 * clickhouse.c
 *		The ClickHouse transport of the export: one INSERT over ClickHouse's
 *		HTTP interface with libcurl, acknowledged by HTTP 200.
 *
 * Rules: every request has a connect and a total timeout
 * (counter.clickhouse_timeout), and a progress callback aborts it as soon
 * as the process is asked to stop, so SIGTERM is never held up by a slow
 * server.  Nothing here may ereport(ERROR) while a curl handle is live:
 * the outcome goes into a CounterChResult, the handle is cleaned up, and
 * the caller decides.  Called only outside any transaction.  The password
 * travels in the Authorization header, never in the URL, and neither shows
 * in an error.
 */
#include "counter.h"
#include "counter_clickhouse.h"

#include <curl/curl.h>

#include "miscadmin.h"

#define COUNTER_CH_REPLY_MAX 4096

/* What ClickHouse answered, kept up to COUNTER_CH_REPLY_MAX bytes. */
typedef struct ChReply
{
	char		data[COUNTER_CH_REPLY_MAX];
	size_t		len;
} ChReply;

static bool curl_ready = false;

/* curl write callback: keep the start of the reply, swallow the rest. */
static size_t
CounterChWrite(char *ptr, size_t size, size_t nmemb, void *arg)
{
	ChReply    *reply = arg;
	size_t		n = size * nmemb;
	size_t		room = COUNTER_CH_REPLY_MAX - 1 - reply->len;

	memcpy(reply->data + reply->len, ptr, Min(n, room));
	reply->len += Min(n, room);
	return n;
}

/* curl progress callback: abort the transfer when the process must stop. */
static int
CounterChProgress(void *arg, curl_off_t dltotal, curl_off_t dlnow,
				  curl_off_t ultotal, curl_off_t ulnow)
{
	return (counter_shutdown_requested || ProcDiePending) ? 1 : 0;
}

/* Copy a reply into an error message: its first line, printable ASCII only. */
static void
CounterChMessage(char *dst, size_t size, const char *src, size_t len)
{
	size_t		o = 0;
	size_t		i;

	for (i = 0; i < len && o + 1 < size; i++)
	{
		unsigned char c = (unsigned char) src[i];

		if (c == '\n' || c == '\r')
			break;
		dst[o++] = (c >= 0x20 && c < 0x7f) ? (char) c : '?';
	}
	dst[o] = '\0';
}

/* The query as a URL parameter: everything but unreserved characters %-encoded. */
static char *
CounterChEscape(const char *s)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (; *s; s++)
	{
		unsigned char c = (unsigned char) *s;

		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			(c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' || c == '~')
			appendStringInfoChar(&buf, (char) c);
		else
			appendStringInfo(&buf, "%%%02X", c);
	}
	return buf.data;
}

/*
 * POST body (len bytes, TabSeparated rows of columns) into table: true if
 * ClickHouse acknowledged it.  On failure res says what happened and
 * whether the server could not be reached at all (then nothing else will
 * work either).
 */
bool
CounterClickhouseInsert(const char *table, const char *columns,
						const char *body, size_t len, CounterChResult *res)
{
	CURL	   *curl;
	CURLcode	rc;
	ChReply    *reply;
	char	   *url;
	long		status = 0;

	/* everything that can fail with an ERROR, before there is a handle */
	memset(res, 0, sizeof(*res));
	reply = palloc0(sizeof(ChReply));
	url = psprintf("%s%s?query=%s", counter_clickhouse_url,
				   counter_clickhouse_url[strlen(counter_clickhouse_url) - 1] == '/' ? "" : "/",
				   CounterChEscape(psprintf("INSERT INTO %s (%s) FORMAT TabSeparated",
											table, columns)));
	if (!curl_ready)
	{
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		{
			res->transport = true;
			strlcpy(res->error, "libcurl could not be initialized", sizeof(res->error));
			return false;
		}
		curl_ready = true;
	}
	curl = curl_easy_init();
	if (curl == NULL)
	{
		res->transport = true;
		strlcpy(res->error, "libcurl could not make a handle", sizeof(res->error));
		return false;
	}
	curl_easy_setopt(curl, CURLOPT_URL, url);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS, CURLPROTO_HTTP | CURLPROTO_HTTPS);
#endif
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, (long) counter_clickhouse_timeout);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long) counter_clickhouse_timeout);
	curl_easy_setopt(curl, CURLOPT_POST, 1L);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) len);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, CounterChWrite);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, reply);
	curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, CounterChProgress);
	if (counter_clickhouse_user[0] != '\0')
	{
		curl_easy_setopt(curl, CURLOPT_HTTPAUTH, (long) CURLAUTH_BASIC);
		curl_easy_setopt(curl, CURLOPT_USERNAME, counter_clickhouse_user);
		curl_easy_setopt(curl, CURLOPT_PASSWORD, counter_clickhouse_password);
	}
	rc = curl_easy_perform(curl);
	if (rc == CURLE_OK)
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(curl);

	res->http_status = status;
	if (rc != CURLE_OK)
	{
		res->transport = true;
		res->aborted = rc == CURLE_ABORTED_BY_CALLBACK;
		snprintf(res->error, sizeof(res->error), "ClickHouse: %s",
				 res->aborted ? "request cancelled" : curl_easy_strerror(rc));
	}
	else if (status != 200)
	{
		char		msg[200];

		CounterChMessage(msg, sizeof(msg), reply->data, reply->len);
		snprintf(res->error, sizeof(res->error), "ClickHouse answered HTTP %ld: %s",
				 status, msg);
	}
	pfree(reply);
	pfree(url);
	return rc == CURLE_OK && status == 200;
}
