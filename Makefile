# counter: PGXS build.  `make && make install`, then CREATE EXTENSION counter.
MODULE_big = counter
OBJS = $(patsubst %.c,%.o,$(wildcard src/*.c))

EXTENSION = counter
DATA = counter--0.1.sql
PGFILEDESC = "counter - hot counters for PostgreSQL"

REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --inputdir=. --load-extension=counter
ISOLATION = $(patsubst specs/%.spec,%,$(sort $(wildcard specs/*.spec)))
ISOLATION_OPTS = --load-extension=counter

PG_CPPFLAGS = -I$(srcdir)/src
SHLIB_LINK = -lhiredis

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
