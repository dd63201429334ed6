-- counter 0.1 -> 0.2.  CREATE EXTENSION runs counter--0.1.sql and then this
-- script, so a fresh install and an upgrade end in the same objects.
-- Every object is schema-qualified, as in the install script.

\echo Use "ALTER EXTENSION counter UPDATE TO '0.2'" to load this file. \quit

-- Quarantine ----------------------------------------------------------------
-- Whatever a background process was handed but could not count: a buffered
-- amount whose key would leave bigint, a Redis value that is not an integer,
-- a stream entry or message that names no counter.  Nothing is dropped
-- silently: each lands here with its reason, and is logged.

CREATE TABLE @extschema@.quarantine (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	source text NOT NULL,			-- buffer, redis, redis stream, kafka
	origin text NOT NULL,			-- the database, Redis master or topic it came from
	item text NOT NULL,				-- its key or entry id, printable
	value text NOT NULL,			-- its value, printable (\x hex when not UTF-8 text)
	counter_id integer,
	key bigint,
	bucket timestamptz,
	delta bigint,
	reason text NOT NULL,
	at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE @extschema@.quarantine IS
	'items a background process could not count, with the reason: kept, never applied, never dropped silently';
SELECT pg_catalog.pg_extension_config_dump('@extschema@.quarantine', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.quarantine_id_seq', '');
REVOKE ALL ON @extschema@.quarantine FROM PUBLIC;
