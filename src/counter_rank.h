/*
 * counter_rank.h
 *		What trend.c and rank.c share: the accumulator that turns a key's
 *		rows into its total, windows, trend and decayed mass, and a run of it
 *		over one counter at one time.  Only those two files include this.
 */
#ifndef COUNTER_RANK_H
#define COUNTER_RANK_H

#include "counter.h"

#include "funcapi.h"

/* The landmark of the forward decay: 2026-01-01 00:00 UTC. */
#define COUNTER_LANDMARK (INT64CONST(9497) * USECS_PER_DAY)

typedef struct RankAcc
{
	int64		key;
	int128		total;
	int128		windows[COUNTER_MAX_SPANS];
	double		m;				/* largest exponent added, -inf before any */
	double		s;				/* sum of value x 2^(e - m) */
} RankAcc;

/* One key's ranked values, as stored in counter.ranking. */
typedef struct RankRow
{
	int64		key;
	int64		total;
	int64		windows[COUNTER_MAX_SPANS];
	double		trend;
	int16		dsign;
	double		dlog;
} RankRow;

/* What a refresh accumulates for one counter at time t. */
typedef struct RankRun RankRun;
struct RankRun
{
	const CounterDef *def;
	TimestampTz t;
	TimestampTz lows[COUNTER_MAX_SPANS];	/* t - span */
	void		(*emit) (RankRun *run, const RankAcc *acc);	/* each finished key */
	ReturnSetInfo *rsinfo;		/* where rank_exact's emit puts its rows */
	RankRow    *rows;
	int			nrows;
	int64		changed;
};

extern void CounterAccReset(RankAcc *acc, int64 key);
extern void CounterAccAdd(const RankRun *run, RankAcc *acc, TimestampTz bucket, int64 value);
extern void CounterAccFinish(const CounterDef *def, const RankAcc *acc, RankRow *row);
extern double CounterDecayedAt(int16 dsign, double dlog, int64 half_life_us, TimestampTz at);
extern void CounterRunInit(RankRun *run, const CounterDef *def, TimestampTz t);
extern TimestampTz CounterNowArg(FunctionCallInfo fcinfo, int argno);
extern void CounterArgDef(FunctionCallInfo fcinfo, CounterDef *def);

#endif							/* COUNTER_RANK_H */
