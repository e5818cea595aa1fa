#!/usr/bin/env node
// Print the current scores of keys as one JSON object:
//   node bin/lookup.js --url redis://127.0.0.1:6379/0 --prefix bs --model demo [--get] KEY... | --keys-json '["1","2"]'
// {"versionId": "3.9f3a01bc" | null, "scores": {"<key>": {"values": {...}, "modelVersion", "version", "versionId"} | null}}
// One getMany (one version for all keys); --get looks each key up alone instead.
import { ScoreReader } from '../src/index.js';
import { fail, parseArgs } from './cli.js';

const USAGE = 'usage: lookup.js --url URL --model MODEL [--prefix P] [--get] [--timeout-ms MS] [--max-age-ms MS] [--on-stale mark|raise] (KEY... | --keys-json JSON | --keys-file F)';

let opts;
try {
  opts = parseArgs(process.argv.slice(2), { prefix: 'bs', timeoutMs: 1000 });
} catch (err) {
  fail(err, USAGE);
}
const reader = await ScoreReader.open({ url: opts.url, prefix: opts.prefix, pointerTtlMs: 0, timeoutMs: opts.timeoutMs,
  connectTimeoutMs: opts.timeoutMs, maxAgeMs: opts.maxAgeMs ?? null, onStale: opts.onStale ?? 'mark' });
try {
  let scores;
  if (opts.get) {
    scores = new Map();
    for (const k of opts.keys) scores.set(String(k), await reader.get(opts.model, String(k)));
  } else {
    scores = await reader.getMany(opts.model, opts.keys.map(String));
  }
  const versionId = [...scores.values()].find((s) => s !== null)?.versionId ?? await reader.currentVersionId(opts.model);
  process.stdout.write(`${JSON.stringify({ versionId, scores: Object.fromEntries(scores) })}\n`);
} catch (err) {
  process.stdout.write(`${JSON.stringify({ error: err.name, kind: err.kind ?? null, message: err.message })}\n`);
  process.exitCode = 1;
} finally {
  await reader.close();
}
