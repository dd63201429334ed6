# counter: PGXS build.  `make && make install`, then CREATE EXTENSION counter.
MODULE_big = counter
OBJS = $(patsubst %.c,%.o,$(wildcard src/*.c))

EXTENSION = counter
# The install script of 0.1 and the upgrade chain from it: CREATE EXTENSION
# runs 0.1 and every upgrade script in turn, so every install tests the chain.
DATA = counter--0.1.sql $(sort $(wildcard counter--*--*.sql))
PGFILEDESC = "counter - hot counters for PostgreSQL"

REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
# The suites run in a database the test runner creates; each suite creates
# the extension itself.
REGRESS_DB ?= contrib_regression
REGRESS_OPTS = --inputdir=. --use-existing
ISOLATION = $(patsubst specs/%.spec,%,$(sort $(wildcard specs/*.spec)))
ISOLATION_OPTS = --use-existing

PG_CPPFLAGS = -I$(srcdir)/src
# Locals changed inside PG_TRY and read after a longjmp must be volatile.
PG_CFLAGS = -Wclobbered
SHLIB_LINK = -lhiredis -lrdkafka -lcurl

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS adds --dbname=$(CONTRIB_TESTDB) / $(ISOLATION_TESTDB): both suites use
# the worker's database.
CONTRIB_TESTDB = $(REGRESS_DB)
ISOLATION_TESTDB = $(REGRESS_DB)

# Every object depends on the headers.
$(OBJS): $(wildcard src/*.h)
