/*
 * kafka_message.c
 *		What a Kafka message means: its value is a JSON object with the
 *		fields a Redis stream entry has, turned into a source item.
 *
 *		{"key": 42, "delta": 1, "event": "e-1", "time": 1767225600000,
 *		 "counter": "views"}
 *
 * key is a number or a string (the message's own Kafka key when the field
 * is absent); delta a number (default 1); event an event id, counted once
 * within the counter's dedup window; time Unix milliseconds or an ISO 8601
 * string (default: the message's Kafka timestamp), which picks the minute
 * bucket; counter names the counter when several read the topic.  Other
 * fields are ignored.  Whatever cannot count gets a reason and is
 * quarantined by source_apply.c; nothing here raises an error.
 */
#include "counter.h"

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"

#include "counter_kafka.h"

/* The deepest nesting a message may have: the parser recurses per level. */
#define COUNTER_KAFKA_MAX_DEPTH 32

/* The top-level fields of a message as the JSON parser finds them. */
typedef struct MessageFields
{
	int			depth;
	const char *field;			/* the top-level field being read, or NULL */
	char	   *values[5];		/* counter, key, delta, event, time */
	const char *bad;			/* a known field whose value is no scalar */
	bool		is_object;
} MessageFields;

static const char *const field_names[5] = {"counter", "key", "delta", "event", "time"};

/* Parser callback: entering an object. */
static void
CounterMsgObjectStart(void *state)
{
	MessageFields *f = state;

	if (f->depth == 0)
		f->is_object = true;
	else if (f->depth == 1 && f->field)
		f->bad = f->field;
	f->depth++;
}

/* Parser callback: leaving an object or array. */
static void
CounterMsgEnd(void *state)
{
	((MessageFields *) state)->depth--;
}

/* Parser callback: entering an array. */
static void
CounterMsgArrayStart(void *state)
{
	MessageFields *f = state;

	if (f->depth == 1 && f->field)
		f->bad = f->field;
	f->depth++;
}

/* Parser callback: a field name; only top-level known fields matter. */
static void
CounterMsgField(void *state, char *fname, bool isnull)
{
	MessageFields *f = state;
	int			i;

	if (f->depth != 1)
		return;
	f->field = NULL;
	for (i = 0; i < lengthof(field_names); i++)
		if (strcmp(fname, field_names[i]) == 0)
			f->field = field_names[i];
}

/* Parser callback: a scalar; kept if it is a known top-level field's. */
static void
CounterMsgScalar(void *state, char *token, JsonTokenType type)
{
	MessageFields *f = state;
	int			i;

	if (f->depth != 1 || f->field == NULL)
		return;
	for (i = 0; i < lengthof(field_names); i++)
		if (f->field == field_names[i])
			f->values[i] = type == JSON_TOKEN_NULL ? NULL : token;
	if (type == JSON_TOKEN_TRUE || type == JSON_TOKEN_FALSE)
		f->bad = f->field;
}

/*
 * How deep s nests, counting brackets outside strings; stops counting past
 * the limit.  Malformed text is the parser's to find.
 */
static int
CounterMsgDepth(const char *s, size_t len)
{
	int			depth = 0;
	int			max = 0;
	bool		in_string = false;
	size_t		i;

	for (i = 0; i < len && max <= COUNTER_KAFKA_MAX_DEPTH; i++)
	{
		char		c = s[i];

		if (in_string)
		{
			if (c == '\\')
				i++;
			else if (c == '"')
				in_string = false;
		}
		else if (c == '"')
			in_string = true;
		else if (c == '{' || c == '[')
			max = Max(max, ++depth);
		else if (c == '}' || c == ']')
			depth--;
	}
	return max;
}

/*
 * The item for one message of a topic some counters read: counted,
 * or with the reason it cannot be.  now caps times in the future.
 */
void
CounterKafkaItem(const CounterKafkaCounter *counters, int ncounters,
				 const CounterKafkaMessage *m, TimestampTz now,
				 CounterSourceItem *it)
{
	MessageFields f = {0};
	JsonSemAction sem = {0};
	JsonLexContext *lex;
	const CounterKafkaCounter *owner = NULL;
	int			readers = 0;
	char	   *key;
	int			i;

	memset(it, 0, sizeof(*it));
	it->item = psprintf("%s/%d/" INT64_FORMAT, m->topic, m->partition, m->offset);
	it->item_len = strlen(it->item);
	it->value = m->key ?
		psprintf("key=%s value=%s", CounterSafeText(m->key, m->key_len, 200),
				 CounterSafeText(m->value ? m->value : "", m->value_len, COUNTER_SHOW_MAX)) :
		CounterSafeText(m->value ? m->value : "", m->value_len, COUNTER_SHOW_MAX);
	it->value_len = strlen(it->value);
	it->delta = 1;
	/* the message's own time (producer's or broker's), unless a field says */
	it->bucket = CounterMinute(m->timestamp > 0 ? Min(m->timestamp, now) : now);

	if (m->value == NULL || m->value_len == 0)
	{
		it->reason = "message has no value";
		return;
	}
	if (memchr(m->value, '\0', m->value_len) ||
		!pg_verifymbstr(m->value, (int) m->value_len, true))
	{
		it->reason = "message is not valid UTF-8 text";
		return;
	}
	if (CounterMsgDepth(m->value, m->value_len) > COUNTER_KAFKA_MAX_DEPTH)
	{
		it->reason = "message nests deeper than 32 levels";
		return;
	}
	sem.semstate = &f;
	sem.object_start = CounterMsgObjectStart;
	sem.object_end = CounterMsgEnd;
	sem.array_start = CounterMsgArrayStart;
	sem.array_end = CounterMsgEnd;
	sem.object_field_start = CounterMsgField;
	sem.scalar = CounterMsgScalar;
	lex = makeJsonLexContextCstringLen(m->value, (int) m->value_len, PG_UTF8, true);
	if (pg_parse_json(lex, &sem) != JSON_SUCCESS)
	{
		it->reason = "message is not valid JSON";
		return;
	}
	if (!f.is_object)
	{
		it->reason = "message is not a JSON object";
		return;
	}
	if (f.bad)
	{
		it->reason = psprintf("field %s is neither a string nor a number", f.bad);
		return;
	}

	/* the counter it names, which must read this topic, or the only one */
	for (i = 0; i < ncounters; i++)
	{
		if (strcmp(counters[i].topic, m->topic) != 0)
			continue;
		readers++;
		if (f.values[0] == NULL || strcmp(counters[i].name, f.values[0]) == 0)
			owner = &counters[i];
	}
	if (f.values[0] != NULL && owner == NULL)
		it->reason = "the counter it names does not read this topic";
	else if (owner == NULL)
		it->reason = "no counter reads this topic";
	else if (f.values[0] == NULL && readers > 1)
		it->reason = "message lacks the field counter, and several counters read this topic";
	if (it->reason)
		return;
	it->counter_id = owner->id;
	key = f.values[1];
	if (key == NULL && m->key != NULL && memchr(m->key, '\0', m->key_len) == NULL)
		key = m->key;
	CounterSourceFields(it, owner->key_type, key, f.values[2], f.values[4],
						f.values[3], now);
}
