#!/usr/bin/env node
// Poll getMany in a loop and write one JSON line per batch, for the "never mixes versions" test:
//   node bin/poll.js --url URL --prefix t --model m --keys-json '[...]' [--seconds 60] [--subscribe]
//                    [--pointer-ttl-ms 100] [--timeout-ms 2000] [--interval-ms 0]
// First line {"ready": true}; then per batch {"versions": [identities of the found scores],
// "values": [per key: [column values...] | null]}; a failed lookup writes {"error": ...} and goes
// on. Stops after --seconds or when its standard input closes; the last line is {"done": batches}.
import { ScoreReader } from '../src/index.js';
import { fail, parseArgs } from './cli.js';

const USAGE = 'usage: poll.js --url URL --model MODEL --keys-json JSON [--prefix P] [--seconds S] [--subscribe] [--pointer-ttl-ms MS] [--timeout-ms MS] [--interval-ms MS]';

let opts;
try {
  opts = parseArgs(process.argv.slice(2), { prefix: 'bs', seconds: 60, pointerTtlMs: 100, timeoutMs: 2000, intervalMs: 0 });
} catch (err) {
  fail(err, USAGE);
}
const keys = opts.keys.map(String);
const reader = await ScoreReader.open({ url: opts.url, prefix: opts.prefix, pointerTtlMs: opts.pointerTtlMs,
  subscribe: Boolean(opts.subscribe), timeoutMs: opts.timeoutMs, connectTimeoutMs: opts.timeoutMs });
let stopped = false;
process.stdin.on('end', () => { stopped = true; }).on('error', () => { stopped = true; }).resume();
const deadline = performance.now() + 1000 * opts.seconds;
const out = [];
const flush = () => new Promise((resolve) => {
  if (!out.length) { resolve(); return; }
  const text = out.join('');
  out.length = 0;
  if (process.stdout.write(text)) resolve();
  else process.stdout.once('drain', resolve);
});
out.push(`${JSON.stringify({ ready: true, subscribed: reader.listenerAlive })}\n`);
let batches = 0;
while (!stopped && performance.now() < deadline) {
  try {
    const got = await reader.getMany(opts.model, keys);
    const versions = new Set();
    const values = keys.map((k) => {
      const s = got.get(k);
      if (s === null) return null;
      versions.add(s.versionId);
      return Object.values(s.values);
    });
    out.push(`${JSON.stringify({ versions: [...versions], values })}\n`);
  } catch (err) {
    out.push(`${JSON.stringify({ error: err.name, kind: err.kind ?? null, message: err.message })}\n`);
  }
  batches += 1;
  if (out.length >= 20 || batches === 1) await flush();
  if (opts.intervalMs > 0) await new Promise((resolve) => setTimeout(resolve, opts.intervalMs));
}
out.push(`${JSON.stringify({ done: batches })}\n`);
await flush();
await reader.close();
process.exit(0);
