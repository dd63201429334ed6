/*
 * launcher.c
 *		The launcher: one background process per cluster that serves every
 *		database with the extension, by starting and watching an ingest and
 *		a maintenance process for each; and the utility hook that steps them
 *		aside when a DROP, ALTER or CREATE DATABASE needs a database alone.
 *
 * The launcher reads pg_database (a shared catalog: it connects to no
 * database) and gives each connectable database a slot.  It starts the
 * slot's ingest process, which looks for the extension: where there is
 * none the slot turns idle and costs nothing; where there is one, the
 * ingest process takes one of counter.max_databases places (or, over that
 * budget, marks the database unserved and leaves), and the launcher adds
 * the maintenance process.  A backend that uses the extension in an idle
 * or unknown database asks for it to be served (CounterSlotRequest), as
 * CREATE EXTENSION does by its first call.
 *
 * Processes that stop unasked are restarted with a backoff that doubles up
 * to a minute while they keep failing, so nothing loops.  A database that
 * disappears gives its slot and its buffered entries back.  Only the
 * launcher starts processes; states are set under counter_shared->mutex by
 * whoever learns them (see CounterDbState).
 */
#include "counter.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

PGDLLEXPORT void CounterLauncherMain(Datum arg);

#define COUNTER_BACKOFF_MIN_MS 1000
#define COUNTER_BACKOFF_MAX_MS 60000
#define COUNTER_PAUSE_MS 60000

/* The launcher's own view of one slot's processes (launcher memory). */
typedef struct LauncherProc
{
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
	TimestampTz retry_at;
	int			backoff_ms;
} LauncherProc;

typedef struct LauncherDb
{
	Oid			dbid;
	char		name[NAMEDATALEN];
	LauncherProc proc[COUNTER_ROLES];
} LauncherDb;

static LauncherDb dbs[COUNTER_MAX_DATABASES];
static ProcessUtility_hook_type prev_utility_hook = NULL;

static const char *const role_names[COUNTER_ROLES] = {"ingest", "maintenance"};
static const char *const role_mains[COUNTER_ROLES] = {"CounterIngestMain",
"CounterMaintenanceMain"};

/* Utility hook, below; installed in every backend of a preloading server. */
static void CounterUtilityHook(PlannedStmt *pstmt, const char *queryString,
							   bool readOnlyTree, ProcessUtilityContext context,
							   ParamListInfo params, QueryEnvironment *queryEnv,
							   DestReceiver *dest, QueryCompletion *qc);

/*
 * At the commit of a CREATE or ALTER EXTENSION counter, ask for this
 * database to be served: its ingest process can only see the extension once
 * the transaction that made it is committed.
 */
static void
CounterServeAtCommit(XactEvent event, void *arg)
{
	if (!CounterServeAtCommitPending())
		return;
	if (event == XACT_EVENT_COMMIT)
	{
		CounterServeAtCommitSet(false);
		(void) CounterSlotRequest(MyDatabaseId);
	}
	else if (event == XACT_EVENT_ABORT)
		CounterServeAtCommitSet(false);
}

/* Register the launcher and the utility hook (preload only). */
void
CounterLauncherInit(void)
{
	BackgroundWorker worker;

	if (!process_shared_preload_libraries_in_progress)
		return;
	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "counter");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "CounterLauncherMain");
	snprintf(worker.bgw_name, BGW_MAXLEN, "counter launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "counter launcher");
	RegisterBackgroundWorker(&worker);

	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = CounterUtilityHook;
	RegisterXactCallback(CounterServeAtCommit, NULL);
}

/* Set a slot's state (and why), if it still belongs to dbid. */
static void
CounterSetDbState(CounterDbSlot *slot, Oid dbid, CounterDbState state, const char *why)
{
	SpinLockAcquire(&counter_shared->mutex);
	if (slot->dbid == dbid && slot->state != COUNTER_DB_FREE)
	{
		if (slot->state != state)
			slot->state_at = GetCurrentTimestamp();
		slot->state = state;
		strlcpy(slot->why, why ? why : "", sizeof(slot->why));
	}
	SpinLockRelease(&counter_shared->mutex);
}

/* The launcher's record of the slot at the same position. */
static LauncherDb *
CounterLauncherDb(CounterDbSlot *slot)
{
	return &dbs[slot - counter_shared->dbs];
}

/* Whether a process the launcher started is still there. */
static bool
CounterProcRunning(LauncherProc *p)
{
	pid_t		pid;

	if (p->handle == NULL)
		return false;
	if (GetBackgroundWorkerPid(p->handle, &pid) == BGWH_STOPPED)
	{
		pfree(p->handle);
		p->handle = NULL;
		return false;
	}
	return true;
}

/* Ask a process the launcher started to stop. */
static void
CounterProcStop(LauncherProc *p)
{
	if (CounterProcRunning(p))
		TerminateBackgroundWorker(p->handle);
}

/*
 * Start a slot's process for role unless it runs or its backoff is not
 * over.  Returns false if no background worker slot was free.
 */
static bool
CounterProcStart(CounterDbSlot *slot, LauncherDb *ld, CounterRole role, TimestampTz now)
{
	LauncherProc *p = &ld->proc[role];
	BackgroundWorker worker;
	MemoryContext old;
	bool		ok;

	if (CounterProcRunning(p) || now < p->retry_at)
		return true;
	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "counter");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", role_mains[role]);
	snprintf(worker.bgw_name, BGW_MAXLEN, "counter %s for database %s",
			 role_names[role], ld->name[0] ? ld->name : "?");
	snprintf(worker.bgw_type, BGW_MAXLEN, "counter %s", role_names[role]);
	worker.bgw_main_arg = ObjectIdGetDatum(slot->dbid);
	worker.bgw_notify_pid = MyProcPid;
	/* the handle outlives the round's memory context */
	old = MemoryContextSwitchTo(TopMemoryContext);
	ok = RegisterDynamicBackgroundWorker(&worker, &p->handle);
	MemoryContextSwitchTo(old);
	if (!ok)
	{
		p->handle = NULL;
		return false;
	}
	/* one that stops again soon backs off, doubling, up to a minute */
	if (p->started_at != 0 && now - p->started_at < 10 * USECS_PER_SEC)
		p->backoff_ms = p->backoff_ms == 0 ? COUNTER_BACKOFF_MIN_MS :
			Min(p->backoff_ms * 2, COUNTER_BACKOFF_MAX_MS);
	else
		p->backoff_ms = 0;
	p->started_at = now;
	p->retry_at = now + (int64) Max(p->backoff_ms, COUNTER_BACKOFF_MIN_MS) * 1000;
	return true;
}

/*
 * Read pg_database: give every connectable database a slot (wanted, so its
 * ingest process looks for the extension), and free the slots of databases
 * that are gone.  Returns false if the scan failed (retried next loop).
 */
static bool
CounterLauncherScan(void)
{
	Oid			found[1024];
	char		names[1024][NAMEDATALEN];
	int			nfound = 0;
	MemoryContext cxt = CurrentMemoryContext;
	int			i;

	PG_TRY();
	{
		Relation	rel;
		TableScanDesc scan;
		HeapTuple	tup;

		StartTransactionCommand();
		(void) GetTransactionSnapshot();
		rel = table_open(DatabaseRelationId, AccessShareLock);
		scan = table_beginscan_catalog(rel, 0, NULL);
		while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL && nfound < 1024)
		{
			Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

			if (!db->datallowconn || db->datistemplate)
				continue;
#ifdef DATCONNLIMIT_INVALID_DB
			if (db->datconnlimit == DATCONNLIMIT_INVALID_DB)
				continue;
#endif
			strlcpy(names[nfound], NameStr(db->datname), NAMEDATALEN);
			found[nfound++] = db->oid;
		}
		table_endscan(scan);
		table_close(rel, AccessShareLock);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		CounterReportFailure("reading pg_database", cxt);
		return false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);

	/* slots of databases that are gone */
	for (i = 0; i < COUNTER_MAX_DATABASES; i++)
	{
		CounterDbSlot *slot = &counter_shared->dbs[i];
		Oid			dbid;
		bool		gone = true;
		int			j;
		int			r;

		SpinLockAcquire(&counter_shared->mutex);
		dbid = slot->state == COUNTER_DB_FREE ? InvalidOid : slot->dbid;
		SpinLockRelease(&counter_shared->mutex);
		if (!OidIsValid(dbid))
			continue;
		for (j = 0; j < nfound && gone; j++)
			gone = found[j] != dbid;
		if (!gone)
			continue;
		for (r = 0; r < COUNTER_ROLES; r++)
			CounterProcStop(&dbs[i].proc[r]);
		CounterBufForgetDatabase(dbid);
		CounterChangedForgetDatabase(dbid);
		CounterStatsForgetDatabase(dbid);
		SpinLockAcquire(&counter_shared->mutex);
		if (slot->dbid == dbid)
			slot->state = COUNTER_DB_FREE;
		SpinLockRelease(&counter_shared->mutex);
		memset(&dbs[i], 0, sizeof(dbs[i]));
	}

	/* databases without a slot yet */
	for (i = 0; i < nfound; i++)
	{
		CounterDbSlot *slot = CounterSlotFor(found[i]);

		if (slot == NULL)
		{
			slot = CounterSlotRequest(found[i]);
			if (slot == NULL)
			{
				ereport(LOG,
						(errmsg("counter launcher: more than %d databases; database \"%s\" is not looked at",
								COUNTER_MAX_DATABASES, names[i])));
				break;
			}
		}
		strlcpy(CounterLauncherDb(slot)->name, names[i], NAMEDATALEN);
		CounterLauncherDb(slot)->dbid = found[i];
	}
	return true;
}

/* How many databases take a place in counter.max_databases now. */
static int
CounterServedCount(void)
{
	int			n = 0;
	int			i;

	SpinLockAcquire(&counter_shared->mutex);
	for (i = 0; i < COUNTER_MAX_DATABASES; i++)
		if (counter_shared->dbs[i].state == COUNTER_DB_SERVED)
			n++;
	SpinLockRelease(&counter_shared->mutex);
	return n;
}

/* Bring one slot's processes in line with its state. */
static void
CounterLauncherTend(CounterDbSlot *slot, TimestampTz now)
{
	LauncherDb *ld = CounterLauncherDb(slot);
	CounterDbState state;
	Oid			dbid;
	TimestampTz paused_until;
	TimestampTz state_at;
	int			r;

	SpinLockAcquire(&counter_shared->mutex);
	state = slot->state;
	dbid = slot->dbid;
	paused_until = slot->paused_until;
	state_at = slot->state_at;
	SpinLockRelease(&counter_shared->mutex);
	if (state == COUNTER_DB_FREE)
		return;
	if (ld->dbid != dbid)
	{
		memset(ld, 0, sizeof(*ld));
		ld->dbid = dbid;
	}

	switch (state)
	{
		case COUNTER_DB_FREE:
			break;
		case COUNTER_DB_PAUSED:
			for (r = 0; r < COUNTER_ROLES; r++)
				CounterProcStop(&ld->proc[r]);
			if (now >= paused_until)
				CounterSetDbState(slot, dbid, COUNTER_DB_WANTED, NULL);
			break;
		case COUNTER_DB_WANTED:
			/* looking for the extension takes no place of the budget */
			if (CounterProcRunning(&ld->proc[COUNTER_ROLE_INGEST]))
				break;
			ld->proc[COUNTER_ROLE_INGEST].retry_at = 0;
			if (CounterProcStart(slot, ld, COUNTER_ROLE_INGEST, now))
				CounterSetDbState(slot, dbid, COUNTER_DB_STARTING, NULL);
			else
				CounterSetDbState(slot, dbid, COUNTER_DB_UNSERVED,
								  "No background worker slot was free: raise max_worker_processes.");
			break;
		case COUNTER_DB_STARTING:
			/* the ingest process stopped before it said what it found */
			if (!CounterProcRunning(&ld->proc[COUNTER_ROLE_INGEST]) &&
				now - state_at > 5 * USECS_PER_SEC)
				CounterSetDbState(slot, dbid, COUNTER_DB_WANTED, NULL);
			break;
		case COUNTER_DB_SERVED:
			for (r = 0; r < COUNTER_ROLES; r++)
			{
				bool		was = ld->proc[r].handle != NULL;


				if (CounterProcRunning(&ld->proc[r]))
					continue;
				if (was && r == COUNTER_ROLE_INGEST)
					ereport(LOG,
							(errmsg("counter launcher: the %s process of database \"%s\" stopped; starting it again",
									role_names[r], ld->name)));
				if (!CounterProcStart(slot, ld, r, now))
					ereport(LOG,
							(errmsg("counter launcher: no background worker slot for the %s process of database \"%s\"",
									role_names[r], ld->name)));
			}
			break;
		case COUNTER_DB_IDLE:
			break;
		case COUNTER_DB_UNSERVED:
			/* retry when a place came free, or every half minute */
			if (CounterServedCount() < counter_max_databases ||
				now - state_at > 30 * USECS_PER_SEC)
				CounterSetDbState(slot, dbid, COUNTER_DB_WANTED, NULL);
			break;
	}
}

/* Entry point of the launcher. */
void
CounterLauncherMain(Datum arg)
{
	MemoryContext loop_cxt;
	TimestampTz last_scan = 0;

	CounterWorkerSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("counter launcher");
	if (!CounterProcAttach(NULL, COUNTER_ROLE_INGEST))
		proc_exit(0);
	memset(dbs, 0, sizeof(dbs));
	ereport(LOG, (errmsg("counter launcher started; serving up to %d databases",
						 counter_max_databases)));
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "counter launcher round",
									 ALLOCSET_DEFAULT_SIZES);
	while (!counter_shutdown_requested)
	{
		TimestampTz now = GetCurrentTimestamp();
		int			i;

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		CounterReloadIfAsked();
		MemoryContextSwitchTo(loop_cxt);
		if (now - last_scan >= USECS_PER_SEC)
		{
			CounterProcState("reading pg_database");
			if (CounterLauncherScan())
				last_scan = now;
		}
		for (i = 0; i < COUNTER_MAX_DATABASES; i++)
			CounterLauncherTend(&counter_shared->dbs[i], now);
		CounterProcRound(now, 0);
		CounterProcState("idle");
		pgstat_report_activity(STATE_IDLE, NULL);
		MemoryContextReset(loop_cxt);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
	}
	proc_exit(0);
}

/*
 * Pause a database's processes: set its slot paused and ask them to stop,
 * so that a statement that needs the database alone (DROP DATABASE, ALTER
 * DATABASE ... RENAME / SET TABLESPACE, CREATE DATABASE ... TEMPLATE) does
 * not find them connected.  The ingest process folds before it goes.
 * Returns whether the database had a slot.
 */
static bool
CounterPauseDatabase(Oid dbid)
{
	CounterDbSlot *slot = CounterSlotFor(dbid);
	pid_t		pids[COUNTER_ROLES];
	int			r;

	if (slot == NULL)
		return false;
	SpinLockAcquire(&counter_shared->mutex);
	if (slot->dbid == dbid && slot->state != COUNTER_DB_FREE)
	{
		slot->state = COUNTER_DB_PAUSED;
		slot->state_at = GetCurrentTimestamp();
		slot->paused_until = slot->state_at + (int64) COUNTER_PAUSE_MS * 1000;
		strlcpy(slot->why, "A CREATE, ALTER or DROP DATABASE needs the database alone.",
				sizeof(slot->why));
	}
	for (r = 0; r < COUNTER_ROLES; r++)
		pids[r] = slot->dbid == dbid ? slot->proc[r].pid : 0;
	SpinLockRelease(&counter_shared->mutex);
	for (r = 0; r < COUNTER_ROLES; r++)
		if (pids[r] != 0)
			(void) kill(pids[r], SIGTERM);
	CounterWakeLauncher();
	return true;
}

/* Serve a paused database again (its statement ended, or failed). */
static void
CounterResumeDatabase(Oid dbid)
{
	CounterDbSlot *slot = CounterSlotFor(dbid);

	if (slot == NULL)
		return;
	SpinLockAcquire(&counter_shared->mutex);
	if (slot->dbid == dbid && slot->state == COUNTER_DB_PAUSED)
	{
		slot->state = COUNTER_DB_WANTED;
		slot->state_at = GetCurrentTimestamp();
		slot->why[0] = '\0';
	}
	SpinLockRelease(&counter_shared->mutex);
	CounterWakeLauncher();
}

/* The database a statement needs alone, or InvalidOid. */
static Oid
CounterDatabaseNeededAlone(Node *stmt)
{
	const char *name = NULL;

	if (IsA(stmt, DropdbStmt))
		name = ((DropdbStmt *) stmt)->dbname;
	else if (IsA(stmt, RenameStmt) && ((RenameStmt *) stmt)->renameType == OBJECT_DATABASE)
		name = ((RenameStmt *) stmt)->subname;
	else if (IsA(stmt, AlterDatabaseStmt))
	{
		ListCell   *lc;

		foreach(lc, ((AlterDatabaseStmt *) stmt)->options)
			if (strcmp(((DefElem *) lfirst(lc))->defname, "tablespace") == 0)
				name = ((AlterDatabaseStmt *) stmt)->dbname;
	}
	else if (IsA(stmt, CreatedbStmt))
	{
		ListCell   *lc;

		name = "template1";
		foreach(lc, ((CreatedbStmt *) stmt)->options)
		{
			DefElem    *opt = lfirst(lc);

			if (strcmp(opt->defname, "template") == 0 && opt->arg)
				name = defGetString(opt);
		}
	}
	return name ? get_database_oid(name, true) : InvalidOid;
}

/*
 * Utility hook: before a statement that needs a database alone, pause that
 * database's processes; afterwards, or if it fails, serve it again (a
 * dropped database's slot is freed by the launcher's next scan).
 */
static void
CounterUtilityHook(PlannedStmt *pstmt, const char *queryString,
				   bool readOnlyTree, ProcessUtilityContext context,
				   ParamListInfo params, QueryEnvironment *queryEnv,
				   DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;
	Oid			dbid = CounterShmemReady() ?
		CounterDatabaseNeededAlone(stmt) : InvalidOid;
	bool		paused = OidIsValid(dbid) && dbid != MyDatabaseId &&
		CounterPauseDatabase(dbid);

	PG_TRY();
	{
		if (prev_utility_hook)
			prev_utility_hook(pstmt, queryString, readOnlyTree, context,
							  params, queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
									params, queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		if (paused)
			CounterResumeDatabase(dbid);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if ((IsA(stmt, CreateExtensionStmt) &&
		 strcmp(((CreateExtensionStmt *) stmt)->extname, "counter") == 0) ||
		(IsA(stmt, AlterExtensionStmt) &&
		 strcmp(((AlterExtensionStmt *) stmt)->extname, "counter") == 0))
		CounterServeAtCommitSet(CounterShmemReady());
	/* a dropped database stays paused until the launcher frees its slot */
	if (paused && !IsA(pstmt->utilityStmt, DropdbStmt))
		CounterResumeDatabase(dbid);
}
