#!/usr/bin/python3
"""Every public call of counter through real Python drivers, with bound
parameters, then 32 concurrent connections with an exact total.

    drivers.py [--pooler] DRIVER...     DRIVER: psycopg3, psycopg3_binary,
                                        psycopg2, asyncpg

Connects with the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE).
Prints one line per check, "ok - ..." or "not ok - ... # why", and exits 1
if any failed.  With --pooler the drivers are set up as the README's
"Connection poolers" says (no named prepared statements, for pgbouncer in
transaction mode), and the counters are named apart from a direct run's.
"""
import asyncio
import datetime
import decimal
import json
import os
import re
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
CONCURRENCY = 32
PER_CONNECTION = 100
failures = 0


def report(ok, name, why=""):
    global failures
    if not ok:
        failures += 1
    print(("ok" if ok else "not ok") + " - " + name + (" # " + why if why and not ok else ""), flush=True)


def dsn_parts():
    return {
        "host": os.environ.get("PGHOST", "/tmp"),
        "port": int(os.environ.get("PGPORT", "5432")),
        "user": os.environ.get("PGUSER", "postgres"),
        "dbname": os.environ.get("PGDATABASE", "postgres"),
    }


def convert(arg, tag):
    """A JSON argument of calls.json as the Python value an application passes."""
    if isinstance(arg, str):
        return arg.replace("@", tag)
    if isinstance(arg, list):
        return [convert(a, tag) for a in arg]
    if isinstance(arg, dict):
        if "ts" in arg:
            return datetime.datetime.fromisoformat(arg["ts"])
        if "iv" in arg:
            return datetime.timedelta(seconds=arg["iv"])
        if "big" in arg:
            return int(arg["big"])
    return arg


def as_text(v):
    """A result value as calls.json spells it."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, (int, decimal.Decimal)):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


class Sync:
    """psycopg 3 (text or binary parameters) and psycopg2: %s placeholders."""

    def __init__(self, driver, pooler):
        self.driver = driver
        p = dsn_parts()
        if driver.startswith("psycopg3"):
            import psycopg
            self.errors = (psycopg.Error,)
            kw = {"prepare_threshold": None} if pooler else {}
            self.connect = lambda: psycopg.connect(autocommit=True, **p, **kw)
            self.mark = "%b" if driver == "psycopg3_binary" else "%s"
        else:
            import psycopg2
            self.errors = (psycopg2.Error,)

            def connect():
                c = psycopg2.connect(**p)
                c.autocommit = True
                return c
            self.connect = connect
            self.mark = "%s"
        self.conn = self.connect()

    def sql(self, text):
        return re.sub(r"\$\d+", self.mark, text.replace("%", "%%"))

    def run(self, text, args, conn=None):
        cur = (conn or self.conn).cursor()
        cur.execute(self.sql(text), args)
        rows = cur.fetchall() if cur.description else []
        cur.close()
        return rows

    def literal(self, text):
        cur = self.conn.cursor()
        cur.execute(text.replace("%", "%%"))
        rows = cur.fetchall()
        cur.close()
        return rows

    @staticmethod
    def sqlstate(e):
        return getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)

    def concurrent(self, text, args):
        errors = []

        def work():
            try:
                c = self.connect()
                for _ in range(PER_CONNECTION):
                    self.run(text, args, c)
                c.close()
            except Exception as e:  # reported below, with the others
                errors.append(repr(e))
        threads = [threading.Thread(target=work) for _ in range(CONCURRENCY)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return errors

    def close(self):
        self.conn.close()


class Async:
    """asyncpg, set up as the README says: str as the text encoder."""

    def __init__(self, driver, pooler):
        import asyncpg
        self.asyncpg = asyncpg
        self.errors = (asyncpg.PostgresError,)
        self.loop = asyncio.new_event_loop()
        p = dsn_parts()
        self.kw = {"host": p["host"], "port": p["port"], "user": p["user"], "database": p["dbname"]}
        if pooler:
            self.kw["statement_cache_size"] = 0
        self.conn = self.loop.run_until_complete(self.connect())

    async def connect(self):
        c = await self.asyncpg.connect(**self.kw)
        await c.set_type_codec("text", schema="pg_catalog", encoder=str, decoder=str, format="text")
        return c

    def run(self, text, args):
        return [tuple(r) for r in self.loop.run_until_complete(self.conn.fetch(text, *args))]

    def literal(self, text):
        return self.run(text, [])

    @staticmethod
    def sqlstate(e):
        return getattr(e, "sqlstate", None)

    def concurrent(self, text, args):
        async def work():
            c = await self.connect()
            try:
                for _ in range(PER_CONNECTION):
                    await c.fetch(text, *args)
            finally:
                await c.close()

        async def all_of_them():
            return await asyncio.gather(*[work() for _ in range(CONCURRENCY)], return_exceptions=True)
        results = self.loop.run_until_complete(all_of_them())
        return [repr(r) for r in results if isinstance(r, BaseException)]

    def close(self):
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


def check(db, driver, tag, call):
    sql = call.get("sql_" + driver.split("_")[0], call["sql"])
    args = [convert(a, tag) for a in call["args"]]
    expect = call["expect"]
    name = "%s: %s" % (driver, call["name"])
    if isinstance(expect, dict) and "sqlstate" in expect:
        try:
            db.run(sql, args)
        except db.errors as e:
            report(db.sqlstate(e) == expect["sqlstate"], name, "SQLSTATE %s: %s" % (db.sqlstate(e), e))
            return
        report(False, name, "no error")
        return
    try:
        rows = db.run(sql, args)
    except Exception as e:
        report(False, name, "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else ""))
        return
    got = [[as_text(v) for v in r] for r in rows]
    if isinstance(expect, dict) and "rows" in expect:
        report(got == expect["rows"], name, "got %r" % got)
    elif isinstance(expect, dict) and "same_as" in expect:
        want = [[as_text(v) for v in r] for r in db.literal(expect["same_as"].replace("@", tag))]
        report(got == want, name, "got %r, the literal call gives %r" % (got, want))
    elif isinstance(expect, dict) and "void" in expect:
        report(got in ([[None]], [[""]]), name, "got %r" % got)
    elif isinstance(expect, dict) and "notnull" in expect:
        report(len(got) == 1 and got[0][0] is not None, name, "got %r" % got)
    else:
        want = expect.replace("@", tag) if isinstance(expect, str) else expect
        report(len(got) == 1 and got[0][0] == want, name, "got %r, want %r" % (got, want))


def main():
    argv = sys.argv[1:]
    pooler = "--pooler" in argv
    drivers = [a for a in argv if not a.startswith("--")]
    with open(os.path.join(HERE, "calls.json")) as f:
        calls = json.load(f)["calls"]
    for driver in drivers:
        tag = ("pool_" if pooler else "") + driver
        db = Async(driver, pooler) if driver == "asyncpg" else Sync(driver, pooler)
        for call in calls:
            check(db, driver, tag, call)
        # many connections at once: sharded and buffered, totals exact
        for mode in ("sharded", "buffered"):
            name = "%s_c%s" % (tag, mode[0])
            db.run("SELECT counter.create($1, mode => $2)", [name, mode])
            errors = db.concurrent("SELECT counter.incr($1, $2)", [name, 7])
            report(not errors, "%s: %d connections incrementing a %s counter, no error" % (driver, CONCURRENCY, mode),
                   "; ".join(sorted(set(errors)))[:500])
            db.run("SELECT counter.flush()", [])
            total = db.run("SELECT counter.get($1, $2)", [name, 7])[0][0]
            report(int(total) == CONCURRENCY * PER_CONNECTION,
                   "%s: %s total exact after %d increments" % (driver, mode, CONCURRENCY * PER_CONNECTION),
                   "got %s" % total)
        db.close()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
