// Argument parsing shared by bin/lookup.js and bin/poll.js (no dependency).
import { readFileSync } from 'node:fs';

export function parseArgs(argv, defaults) {
  const opts = { ...defaults, keys: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--url') opts.url = value();
    else if (a === '--prefix') opts.prefix = value();
    else if (a === '--model') opts.model = value();
    else if (a === '--keys-json') opts.keys.push(...JSON.parse(value()));
    else if (a === '--keys-file') opts.keys.push(...JSON.parse(readFileSync(value(), 'utf8')));
    else if (a === '--pointer-ttl-ms') opts.pointerTtlMs = Number(value());
    else if (a === '--timeout-ms') opts.timeoutMs = Number(value());
    else if (a === '--seconds') opts.seconds = Number(value());
    else if (a === '--interval-ms') opts.intervalMs = Number(value());
    else if (a === '--subscribe') opts.subscribe = true;
    else if (a === '--get') opts.get = true;
    else if (a === '--max-age-ms') opts.maxAgeMs = Number(value());
    else if (a === '--on-stale') opts.onStale = value();
    else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else opts.keys.push(a);
  }
  opts.url ??= process.env.BATCHSCORE_REDIS_URL;
  if (!opts.url || !opts.model) throw new Error('--url (or BATCHSCORE_REDIS_URL) and --model are required');
  return opts;
}

export function fail(err, usage) {
  process.stderr.write(`${err?.name ?? 'Error'}: ${err?.message ?? err}\n${usage}\n`);
  process.exit(2);
}
