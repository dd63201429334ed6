-- Idempotency and rate limits: event ids count once per dedup_window, an
-- actor gets max_per_actor increments per key and rate_window, and deltas
-- beyond max_delta are refused.  Times are explicit (at =>).

SELECT counter.create('views');
SELECT name, dedup_window, max_per_actor, rate_window, max_delta
FROM counter.counters WHERE name = 'views';

-- Events: the first counts, a repeat inside the window does not.
SELECT counter.incr('views', 1, event => 'u7:p1:d1', at => '2026-01-01 10:00+00') AS first,
       counter.incr('views', 1, event => 'u7:p1:d1', at => '2026-01-01 10:30+00') AS repeat,
       counter.incr('views', 1, event => 'u8:p1:d1', at => '2026-01-01 10:30+00') AS other_user;
SELECT counter.get('views', 1) AS two;
-- After the window (1 day by default) the same id counts again.
SELECT counter.incr('views', 1, event => 'u7:p1:d1', at => '2026-01-02 10:00+00') AS expired,
       counter.incr('views', 1, event => 'u7:p1:d1', at => '2026-01-02 10:01+00') AS again_repeat;
SELECT counter.get('views', 1) AS three;
-- An id is per counter, not per key: the same event on another key is a duplicate.
SELECT counter.incr('views', 2, event => 'u8:p1:d1', at => '2026-01-01 11:00+00') AS other_key;

-- A rolled-back increment frees its event id.
BEGIN;
SELECT counter.incr('views', 3, event => 'retry-me');
ROLLBACK;
SELECT counter.incr('views', 3, event => 'retry-me') AS counted_after_rollback,
       counter.incr('views', 3, event => 'retry-me') AS then_duplicate;
SELECT counter.get('views', 3) AS one;

-- A shorter window; a zero window turns dedup off.
SELECT counter.alter('views', dedup_window => '10 minutes');
SELECT counter.incr('views', 4, event => 'e', at => '2026-01-03 10:00+00') AS first,
       counter.incr('views', 4, event => 'e', at => '2026-01-03 10:09+00') AS within,
       counter.incr('views', 4, event => 'e', at => '2026-01-03 10:10+00') AS after;
SELECT counter.alter('views', dedup_window => '0');
SELECT counter.incr('views', 4, event => 'e', at => '2026-01-03 10:11+00') AS dedup_off;
SELECT counter.get('views', 4) AS three;
SELECT counter.alter('views', dedup_window => '1 day');

-- Rate limits: 3 per actor and key per 10 minutes.
SELECT counter.alter('views', max_per_actor => 3, rate_window => '10 minutes');
SELECT array_agg(counter.incr('views', 5, actor => 'bot', at => '2026-01-04 10:01+00') ORDER BY i) AS bot
FROM generate_series(1, 5) AS i;
SELECT counter.incr('views', 5, actor => 'human', at => '2026-01-04 10:02+00') AS other_actor,
       counter.incr('views', 6, actor => 'bot', at => '2026-01-04 10:02+00') AS other_key,
       counter.incr('views', 5, at => '2026-01-04 10:02+00') AS no_actor;
-- The next window (aligned to 10 minutes) starts afresh.
SELECT counter.incr('views', 5, actor => 'bot', at => '2026-01-04 10:09:59+00') AS same_window,
       counter.incr('views', 5, actor => 'bot', at => '2026-01-04 10:10+00') AS next_window;
-- Raising the limit takes effect at once.
SELECT counter.alter('views', max_per_actor => 5);
SELECT counter.incr('views', 5, actor => 'bot', at => '2026-01-04 10:11+00') AS raised;
SELECT counter.get('views', 5) AS seven;
-- A rolled-back increment gives its budget back.
SELECT counter.alter('views', max_per_actor => 1, rate_window => '1 hour');
BEGIN;
SELECT counter.incr('views', 7, actor => 'a', at => '2026-01-05 10:00+00');
ROLLBACK;
SELECT counter.incr('views', 7, actor => 'a', at => '2026-01-05 10:00+00') AS after_rollback,
       counter.incr('views', 7, actor => 'a', at => '2026-01-05 10:01+00') AS limited;
-- Events and actors together: a duplicate spends no budget.
SELECT counter.alter('views', max_per_actor => 2);
SELECT counter.incr('views', 8, event => 'x', actor => 'a', at => '2026-01-05 10:00+00') AS first,
       counter.incr('views', 8, event => 'x', actor => 'a', at => '2026-01-05 10:01+00') AS duplicate,
       counter.incr('views', 8, event => 'y', actor => 'a', at => '2026-01-05 10:02+00') AS second,
       counter.incr('views', 8, event => 'z', actor => 'a', at => '2026-01-05 10:03+00') AS limited;
-- A limited increment does not mark its event as seen.
SELECT counter.incr('views', 8, event => 'z', actor => 'b', at => '2026-01-05 10:04+00') AS z_by_b;
SELECT counter.get('views', 8) AS three;
SELECT counter.alter('views', max_per_actor => 0);
SELECT counter.incr('views', 7, actor => 'a', at => '2026-01-05 10:02+00') AS unlimited;

-- max_delta: a larger |delta| is an error that changes nothing.
SELECT counter.alter('views', max_delta => 100);
SELECT counter.incr('views', 9, 100) AS at_limit, counter.incr('views', 9, -100) AS negative_at_limit;
SELECT counter.incr('views', 9, 101);
SELECT counter.incr('views', 9, -101);
SELECT counter.incr_many('views', ARRAY[9, 9]::bigint[], ARRAY[1, 1000]::bigint[]);
SELECT counter.get('views', 9) AS zero;
SELECT counter.alter('views', max_delta => 0);
SELECT counter.incr('views', 9, 1000) AS unlimited;

-- Bad settings.
SELECT counter.alter('views', dedup_window => '-1 day');
SELECT counter.alter('views', dedup_window => '1 month');
SELECT counter.alter('views', rate_window => '0');
SELECT counter.alter('views', max_per_actor => -1);
SELECT counter.alter('views', max_delta => -1);

-- Buffered counters and text keys take events and actors too.
SELECT counter.create('bviews', mode => 'buffered', key_type => 'text');
SELECT counter.alter('bviews', max_per_actor => 1);
SELECT counter.incr('bviews', 'post', event => 'e1') AS first,
       counter.incr('bviews', 'post', event => 'e1') AS duplicate,
       counter.incr('bviews', 'post', actor => 'a') AS actor_first,
       counter.incr('bviews', 'post', actor => 'a') AS actor_limited;
SELECT counter.get('bviews', 'post') AS two;

-- Stats count what was refused.
SELECT name, deduplicated, rate_limited FROM counter.stats
WHERE name IN ('views', 'bviews') ORDER BY name;

-- Purging: expired ids and stale windows go, live ones stay.
SELECT count(*) AS ids FROM counter.event_seen e JOIN counter.counters c ON c.id = e.counter_id
WHERE c.name = 'views';
SELECT counter.compact(now => '2026-01-02 10:30+00') >= 1 AS purged;
SELECT e.event, e.expires_at FROM counter.event_seen e JOIN counter.counters c ON c.id = e.counter_id
WHERE c.name = 'views' AND e.event <> 'retry-me' ORDER BY 1, 2;
SELECT counter.drop('views');
SELECT counter.drop('bviews');
