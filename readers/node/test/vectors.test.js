// The shared test vectors (tests/vectors/*.json, made by tests/vectors/make_vectors.py) against
// this reader: the layout functions offline, the published layout on a real redis-server (the
// one BATCHSCORE_TEST_REDIS_URL names, else a throwaway one started here on a free port).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { createClient } from 'redis';

import {
  LookupError, MetadataError, PointerError, ScoreDecodeError, ScoreReader, bucketOf, crc32, decodeScores,
  encodeScores, keyText, parseVersionId,
} from '../src/index.js';

const VECTORS = fileURLToPath(new URL('../../../tests/vectors/', import.meta.url));
const load = (name) => JSON.parse(readFileSync(join(VECTORS, name), 'utf8'));
const buckets = load('buckets.json');
const scores = load('scores.json');
const identities = load('identities.json');
const published = load('published.json');

const sameDouble = (a, b) => Object.is(a, b);

describe('keys -> buckets', () => {
  test('crc32 of the UTF-8 bytes and every bucket count', () => {
    for (const c of buckets.cases) {
      const key = c.input.int64 !== undefined ? keyText(BigInt(c.input.int64)) : keyText(c.input.string);
      assert.equal(key, c.key);
      assert.equal(Buffer.from(key, 'utf8').toString('hex'), c.key_utf8_hex);
      assert.equal(crc32(Buffer.from(key, 'utf8')), c.crc32, JSON.stringify(key));
      for (const [n, b] of Object.entries(c.buckets)) assert.equal(bucketOf(key, Number(n)), b, `${key} % ${n}`);
    }
  });

  test('integer keys are their decimal text, numbers and BigInts alike', () => {
    for (const c of buckets.cases.filter((x) => x.input.int64 !== undefined)) {
      const n = Number(c.input.int64);
      if (Number.isSafeInteger(n)) {
        assert.equal(keyText(n), c.key);
        assert.equal(bucketOf(n, 7919), c.buckets['7919']);
      } else {
        assert.throws(() => keyText(n), TypeError);
      }
    }
    assert.equal(keyText(-0), '0');
    assert.throws(() => keyText(1.5), TypeError);
    assert.throws(() => keyText('\ud800'), TypeError);
  });
});

describe('scores -> bytes', () => {
  test('encode and decode exactly', () => {
    for (const c of scores.cases) {
      const raw = encodeScores(c.values);
      assert.equal(raw.toString('hex'), c.hex, c.description);
      const back = decodeScores(Buffer.from(c.hex, 'hex'), c.values.length);
      back.forEach((v, i) => assert.ok(sameDouble(v, c.values[i]), `${c.description}: ${v} != ${c.values[i]}`));
      c.float32_bits.forEach((bits, i) => assert.equal(raw.subarray(4 * i, 4 * i + 4).reverse().toString('hex'), bits));
    }
  });

  test('doubles round to nearest float32', () => {
    for (const c of scores.rounding) {
      assert.equal(encodeScores([c.input]).toString('hex'), c.hex, c.description);
      assert.ok(sameDouble(decodeScores(Buffer.from(c.hex, 'hex'), 1)[0], c.decoded), c.description);
    }
  });

  test('a value of the wrong width is refused', () => {
    for (const c of scores.bad_widths) {
      assert.throws(() => decodeScores(Buffer.from(c.hex, 'hex'), c.columns), ScoreDecodeError);
    }
  });
});

describe('pointer values', () => {
  test('identities parse to their canonical form', () => {
    for (const c of identities.valid) {
      assert.deepEqual(parseVersionId(c.pointer), { number: c.number, epoch: c.epoch, vid: c.canonical });
    }
  });

  test('legacy and garbage pointers are refused', () => {
    for (const c of identities.invalid) {
      assert.throws(() => parseVersionId(c.pointer), (err) => err instanceof PointerError && err.kind === c.error,
        JSON.stringify(c.pointer));
    }
  });
});

// -- the published layout on a real redis-server --------------------------------------------------

const arg = (a) => (typeof a === 'string' ? a : Buffer.from(a.hex, 'hex'));

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    }).on('error', reject);
  });
}

async function startRedis() {
  if (process.env.BATCHSCORE_TEST_REDIS_URL) return { url: process.env.BATCHSCORE_TEST_REDIS_URL, stop: async () => {} };
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'batchscore-node-redis-'));
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    '--dir', dir], { stdio: 'ignore' });
  const spawned = new Promise((resolve, reject) => {
    proc.once('spawn', resolve);
    proc.once('error', (err) => reject(new Error(`cannot start redis-server (${err.message}); install it: apt-get install redis-server`)));
  });
  await spawned;
  const url = `redis://127.0.0.1:${port}/0`;
  for (let i = 0; ; i++) {
    const c = createClient({ url, socket: { reconnectStrategy: false } });
    c.on('error', () => {});
    try {
      await c.connect();
      await c.ping();
      await c.close();
      break;
    } catch (err) {
      if (i > 200) throw new Error(`redis-server did not start on ${url}: ${err.message}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    url,
    stop: async () => {
      proc.kill('SIGTERM');
      await new Promise((r) => (proc.exitCode !== null ? r() : proc.once('exit', r)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const ERROR_CLASS = {
  legacy_pointer: PointerError, bad_pointer: PointerError, missing_meta: MetadataError, epoch_mismatch: MetadataError,
  malformed_meta: MetadataError, bad_value: ScoreDecodeError,
};

function assertScore(got, want, key) {
  if (want === null) {
    assert.equal(got, null, `${JSON.stringify(key)} should be absent`);
    return;
  }
  assert.ok(got, `${JSON.stringify(key)} not found`);
  assert.equal(got.versionId, want.version_id);
  assert.equal(got.version, want.version);
  assert.equal(got.modelVersion, want.model_version);
  assert.deepEqual(Object.keys(got.values), published.columns); // meta 'columns' order
  for (const c of published.columns) {
    assert.ok(sameDouble(got.values[c], want.values[c]), `${JSON.stringify(key)} ${c}: ${got.values[c]} != ${want.values[c]}`);
  }
}

describe('published layout', () => {
  let server;
  let admin;
  before(async () => {
    server = await startRedis();
    admin = createClient({ url: server.url });
    admin.on('error', () => {});
    await admin.connect();
  });
  after(async () => {
    await admin?.close();
    await server?.stop();
  });

  async function loadDump(extra = []) {
    await admin.flushDb();
    for (const cmd of [...published.commands, ...extra]) await admin.sendCommand(cmd.map(arg));
  }

  for (const sc of published.scenarios) {
    test(`scenario ${sc.name}`, async () => {
      await loadDump(sc.commands);
      const reader = await ScoreReader.open({ url: server.url, prefix: published.prefix, pointerTtlMs: 0, timeoutMs: 2000 });
      try {
        const keys = sc.lookups.map((l) => l.key);
        if (sc.expect_error) {
          const isKind = (err) => err instanceof ERROR_CLASS[sc.expect_error] && err.kind === sc.expect_error
            && (sc.expect_error === 'bad_value' || err instanceof LookupError);
          await assert.rejects(reader.getMany(published.model, keys), isKind);
          for (const k of keys) await assert.rejects(reader.get(published.model, k), isKind);
          return;
        }
        assert.equal(await reader.currentVersionId(published.model), sc.current_version_id);
        const many = await reader.getMany(published.model, keys);
        assert.deepEqual([...many.keys()], keys);
        for (const l of sc.lookups) {
          assertScore(many.get(l.key), l.expect, l.key);
          assertScore(await reader.get(published.model, l.key), l.expect, l.key);
        }
      } finally {
        await reader.close();
      }
    });
  }

  const flip = published.scenarios.find((s) => s.name === 'flip');
  const served = published.scenarios.find((s) => s.name === 'served');
  const probe = served.lookups.find((l) => l.expect !== null).key;

  test('a cached pointer is kept for its TTL, invalidate() drops it', async () => {
    await loadDump();
    const reader = await ScoreReader.open({ url: server.url, prefix: published.prefix, pointerTtlMs: 60_000 });
    try {
      assert.equal((await reader.get(published.model, probe)).versionId, served.current_version_id);
      for (const cmd of flip.commands) await admin.sendCommand(cmd.map(arg));
      assert.equal((await reader.get(published.model, probe)).versionId, served.current_version_id);
      reader.invalidate(published.model);
      assert.equal((await reader.get(published.model, probe)).versionId, flip.current_version_id);
    } finally {
      await reader.close();
    }
  });

  test('subscribed: a flip announcement drops the pointer; its payload chooses nothing', async () => {
    await loadDump();
    const reader = await ScoreReader.open({ url: server.url, prefix: published.prefix, pointerTtlMs: 60_000,
      subscribe: true });
    try {
      assert.ok(reader.listenerAlive, 'not subscribed within 1 s');
      const version = async () => (await reader.get(published.model, probe)).versionId;
      assert.equal(await version(), served.current_version_id);
      // An announcement naming another version while the pointer did not move: still version 2.
      await admin.publish(`{${published.namespace}}:changed`, flip.current_version_id);
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(await version(), served.current_version_id);
      for (const cmd of flip.commands) await admin.sendCommand(cmd.map(arg)); // ends with the PUBLISH
      const deadline = performance.now() + 2000;
      while ((await version()) !== flip.current_version_id) {
        assert.ok(performance.now() < deadline, 'the flip was not seen within 2 s despite the announcement');
        await new Promise((r) => setTimeout(r, 10));
      }
    } finally {
      await reader.close();
    }
  });

  test('the listener survives a dropped connection and forgets pointers meanwhile', async () => {
    await loadDump();
    const reader = await ScoreReader.open({ url: server.url, prefix: published.prefix, pointerTtlMs: 60_000,
      subscribe: true });
    try {
      assert.equal((await reader.get(published.model, probe)).versionId, served.current_version_id);
      await admin.sendCommand(['CLIENT', 'KILL', 'TYPE', 'pubsub']);
      for (const cmd of flip.commands.slice(0, -1)) await admin.sendCommand(cmd.map(arg)); // flip, no announcement
      const deadline = performance.now() + 3000;
      while ((await reader.get(published.model, probe)).versionId !== flip.current_version_id) {
        assert.ok(performance.now() < deadline, 'a lost subscription kept a stale pointer');
        await new Promise((r) => setTimeout(r, 20));
      }
      while (!reader.listenerAlive) {
        assert.ok(performance.now() < deadline, 'the listener did not subscribe again');
        await new Promise((r) => setTimeout(r, 20));
      }
    } finally {
      await reader.close();
    }
  });

  test('a legacy pointer is an error, not a lookup of version 2', async () => {
    await loadDump([['SET', `{${published.namespace}}:current`, '2']]);
    const reader = await ScoreReader.open({ url: server.url, prefix: published.prefix });
    try {
      await assert.rejects(reader.currentVersionId(published.model), (err) => err instanceof PointerError
        && err.kind === 'legacy_pointer' && /old key layout/.test(err.message));
    } finally {
      await reader.close();
    }
  });
});
