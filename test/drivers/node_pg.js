// Every public call of counter through node-postgres (`pg`), with bound
// parameters, then 32 concurrent connections with an exact total: the same
// calls as drivers.py, from test/drivers/calls.json.
//
//   node node_pg.js [--pooler]
//
// Connects with the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE);
// `pg` is found through NODE_PATH.  Prints "ok - ..." or "not ok - ... # why"
// per check and exits 1 if any failed.
'use strict';

const fs = require('fs');
const path = require('path');
const { Client } = require('pg');

const CONCURRENCY = 32;
const PER_CONNECTION = 100;
const pooler = process.argv.includes('--pooler');
const tag = (pooler ? 'pool_' : '') + 'node_pg';
let failures = 0;

function report(ok, name, why) {
  if (!ok) failures++;
  console.log((ok ? 'ok' : 'not ok') + ' - ' + name + (!ok && why ? ' # ' + why : ''));
}

function connect() {
  const c = new Client({
    host: process.env.PGHOST || '/tmp',
    port: Number(process.env.PGPORT || 5432),
    user: process.env.PGUSER || 'postgres',
    database: process.env.PGDATABASE || 'postgres',
  });
  return c.connect().then(() => c);
}

// A calls.json argument as the value a node application passes.
function convert(arg) {
  if (typeof arg === 'string') return arg.split('@').join(tag);
  if (Array.isArray(arg)) return arg.map(convert);
  if (arg && typeof arg === 'object') {
    if ('ts' in arg) return new Date(arg.ts);
    if ('iv' in arg) return arg.iv + ' seconds';
    if ('big' in arg) return arg.big;
  }
  return arg;
}

// A result value as calls.json spells it.
function asText(v) {
  if (v === null || v === undefined) return null;
  if (typeof v === 'boolean') return v ? 't' : 'f';
  return String(v);
}

async function rows(c, sql, args) {
  const r = await c.query({ text: sql, values: args, rowMode: 'array' });
  return r.rows.map((row) => row.map(asText));
}

async function check(c, call) {
  const sql = call.sql_node_pg || call.sql;
  const args = call.args.map(convert);
  const expect = call.expect;
  const name = 'node_pg: ' + call.name;
  if (expect && typeof expect === 'object' && 'sqlstate' in expect) {
    try {
      await c.query(sql, args);
      report(false, name, 'no error');
    } catch (e) {
      report(e.code === expect.sqlstate, name, 'SQLSTATE ' + e.code + ': ' + e.message);
    }
    return;
  }
  let got;
  try {
    got = await rows(c, sql, args);
  } catch (e) {
    report(false, name, e.message);
    return;
  }
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  if (expect && typeof expect === 'object' && 'rows' in expect) {
    report(same(got, expect.rows), name, 'got ' + JSON.stringify(got));
  } else if (expect && typeof expect === 'object' && 'same_as' in expect) {
    const want = await rows(c, expect.same_as.split('@').join(tag), []);
    report(same(got, want), name, 'got ' + JSON.stringify(got) + ', the literal call gives ' + JSON.stringify(want));
  } else if (expect && typeof expect === 'object' && 'void' in expect) {
    report(same(got, [[null]]) || same(got, [['']]), name, 'got ' + JSON.stringify(got));
  } else if (expect && typeof expect === 'object' && 'notnull' in expect) {
    report(got.length === 1 && got[0][0] !== null, name, 'got ' + JSON.stringify(got));
  } else {
    const want = typeof expect === 'string' ? expect.split('@').join(tag) : expect;
    report(got.length === 1 && got[0][0] === want, name, 'got ' + JSON.stringify(got) + ', want ' + want);
  }
}

async function main() {
  const calls = JSON.parse(fs.readFileSync(path.join(__dirname, 'calls.json'), 'utf8')).calls;
  const c = await connect();
  for (const call of calls) await check(c, call);
  for (const mode of ['sharded', 'buffered']) {
    const name = tag + '_c' + mode[0];
    await c.query('SELECT counter.create($1, mode => $2)', [name, mode]);
    const errors = [];
    await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
      try {
        const w = await connect();
        for (let i = 0; i < PER_CONNECTION; i++) await w.query('SELECT counter.incr($1, $2)', [name, 7]);
        await w.end();
      } catch (e) {
        errors.push(e.message);
      }
    }));
    report(errors.length === 0, 'node_pg: ' + CONCURRENCY + ' connections incrementing a ' + mode + ' counter, no error',
      [...new Set(errors)].join('; ').slice(0, 500));
    await c.query('SELECT counter.flush()');
    const total = (await c.query('SELECT counter.get($1, $2) AS n', [name, 7])).rows[0].n;
    report(Number(total) === CONCURRENCY * PER_CONNECTION,
      'node_pg: ' + mode + ' total exact after ' + CONCURRENCY * PER_CONNECTION + ' increments', 'got ' + total);
  }
  await c.end();
  process.exit(failures ? 1 : 0);
}

main().catch((e) => {
  console.log('not ok - node_pg: ' + e.message);
  process.exit(1);
});
