// ScoreReader: online lookups of batchscore scores in Redis, the guarantees of the Python
// reader (batchscore/reader.py) on the npm `redis` client. Contract: docs/redis-layout.md.
//
// A lookup reads the pointer {ns}:current (cached pointerTtlMs), the version's metadata by its
// whole identity "N.epoch" (cached, the last 256), then the entities' bucket hashes of that one
// identity: one HGET, or for a batch one pipeline (no MULTI) of one HMGET per bucket. So a
// getMany never mixes versions. With `subscribe` a listener connection PSUBSCRIBEs the flip
// channels {prefix:*}:changed; a message only drops the cached pointer (its payload is ignored:
// the next lookup re-reads the pointer from the reader's own database). While the listener is
// cut off a cached pointer is trusted at most CUT_OFF_TTL_MS.

import { createHash } from 'node:crypto';

import { createClient, RESP_TYPES } from 'redis';

import {
  LookupError, MetadataError, PointerError, ScoreDecodeError, bucketOf, channelPattern, dataKey, decodeScores,
  keyText, metaKey, namespace, namespaceOfChannel, parseMeta, parseVersionId, pointerKey,
} from './layout.js';

export { LookupError, MetadataError, PointerError, ScoreDecodeError };

export const CUT_OFF_TTL_MS = 1000;
export const META_CACHE_SIZE = 256;
export const BACKOFF_BASE_MS = 50;
export const BACKOFF_CAP_MS = 2000;
export const KEEPALIVE_MS = 5000;
export const SUBSCRIBE_WAIT_MS = 1000;

/** The served version is older than the reader's maxAgeMs (onStale: 'raise'). */
export class StaleScoreError extends Error {
  constructor(model, versionId, ageMs, maxAgeMs) {
    const howOld = ageMs === null ? 'of unknown age' : `${(ageMs / 1000).toFixed(1)} s old`;
    super(`model '${model}': the served version ${versionId} is ${howOld}, older than maxAgeMs ${maxAgeMs}; `
      + 'its pipeline has not published since: check it, or raise maxAgeMs');
    this.name = 'StaleScoreError';
    this.kind = 'stale';
    Object.assign(this, { model, versionId, ageMs, maxAgeMs });
  }
}

/** A lookup (one round trip) that took longer than the reader's timeoutMs. */
export class TimeoutError extends Error {
  constructor(ms) {
    super(`no reply from Redis within ${ms} ms`);
    this.name = 'TimeoutError';
  }
}

/**
 * @typedef {object} Score
 * @property {Record<string, number>} values  output column -> score (float32 value), in meta `columns` order
 * @property {string} modelVersion
 * @property {number} version    the version's number
 * @property {string} versionId  the version's identity "N.epoch"
 * @property {Date | null} publishedAt  the flip that made the version the served one (meta `published_at`)
 * @property {Date | null} scoredAt  when its run scored it (meta `scored_at`; null if the publisher did not record it)
 */

export const CHAMPION = 'champion';

/** The split record of a champion namespace (batchscore/splits.py): {seq, salt, arms: [[name, weight], ...]}. */
export function parseSplit(ns, raw) {
  if (raw === null || raw === undefined) return null;
  let doc;
  try {
    doc = JSON.parse(String(raw));
  } catch {
    throw new PointerError(`{${ns}}:split is not valid JSON; set it again with \`batchscore split\``);
  }
  const arms = (doc.arms ?? []).map(([name, weight]) => [String(name), Number(weight)]);
  const total = arms.reduce((t, [, w]) => t + w, 0);
  if (!(total > 0) || arms.some(([, w]) => !(w >= 0))) {
    throw new PointerError(`{${ns}}:split has no positive weight; set it again with \`batchscore split\``);
  }
  return { seq: Number(doc.seq), salt: String(doc.salt), arms, total };
}

/** The arm of `key` (its text) under `split`: the same arm as the Python readers (sha256 of salt NUL key). */
export function assignArm(split, key) {
  const digest = createHash('sha256').update(`${split.salt}\u0000${key}`, 'utf8').digest();
  const u = (Number(digest.readBigUInt64BE(0)) / 2 ** 64) * split.total;
  let edge = 0;
  for (const [arm, weight] of split.arms) {
    edge += weight;
    if (weight && u < edge) return arm;
  }
  return [...split.arms].reverse().find(([, w]) => w > 0)[0];
}

const armModel = (model, arm) => (arm === CHAMPION ? model : `${model}@${arm}`);

const now = () => performance.now();
const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});

/** Pointer and metadata caches shared by lookups and the listener (no I/O). */
class Cache {
  constructor(prefix, ttlMs) {
    this.prefix = prefix;
    this.ttlMs = ttlMs;
    /** @type {Map<string, {at: number, pointer: object | null}>} */
    this.pointers = new Map();
    /** @type {Map<string, {at: number, split: object | null}>} champion ns -> its split record */
    this.splits = new Map();
    /** @type {Map<string, object>} */
    this.metas = new Map();
    /** @type {Map<string, string>} the identity each namespace's pointer named last */
    this.lastVid = new Map();
    this.generation = 0;
    /** null: no listener; true: subscribed; false: listener cut off. */
    this.listening = null;
  }

  fresh(ns) {
    const hit = this.pointers.get(ns);
    const ttl = this.listening === false ? Math.min(this.ttlMs, CUT_OFF_TTL_MS) : this.ttlMs;
    return hit !== undefined && now() - hit.at < ttl ? hit : null;
  }

  remember(ns, pointer, generation) {
    if (generation === this.generation) this.pointers.set(ns, { at: now(), pointer });
    if (pointer !== null && this.lastVid.get(ns) !== pointer.vid) {
      // the pointer moved to this version (again?): a rollback gives it a new published_at
      this.lastVid.set(ns, pointer.vid);
      this.metas.delete(`${ns}\u0000${pointer.vid}`);
    }
  }

  freshSplit(ns) {
    const hit = this.splits.get(ns);
    const ttl = this.listening === false ? Math.min(this.ttlMs, CUT_OFF_TTL_MS) : this.ttlMs;
    return hit !== undefined && now() - hit.at < ttl ? hit : null;
  }

  invalidate(ns = null) {
    this.generation += 1;
    if (ns === null) {
      this.pointers.clear();
      this.splits.clear();
    } else {
      this.pointers.delete(ns);
      this.splits.delete(ns);
    }
  }

  meta(ns, vid) {
    return this.metas.get(`${ns}\u0000${vid}`);
  }

  storeMeta(ns, vid, meta) {
    this.metas.set(`${ns}\u0000${vid}`, meta);
    while (this.metas.size > META_CACHE_SIZE) this.metas.delete(this.metas.keys().next().value);
  }
}

/** Whether `meta`'s scores are older than `maxAgeMs` (age from scoredAt, else publishedAt; unknown: too old). */
function isStale(model, pointer, meta, maxAgeMs, onStale) {
  if (maxAgeMs === null || maxAgeMs === undefined) return false;
  const born = meta.scoredAt ?? meta.publishedAt;
  const ageMs = born ? Date.now() - born.getTime() : null;
  if (ageMs !== null && ageMs <= maxAgeMs) return false;
  if (onStale === 'raise') throw new StaleScoreError(model, pointer.vid, ageMs, maxAgeMs);
  return true;
}

function score(meta, pointer, raw, arm = CHAMPION, stale = false) {
  if (raw === null || raw === undefined) return null;
  const values = decodeScores(raw, meta.columns.length);
  return {
    values: Object.fromEntries(meta.columns.map((c, i) => [c, values[i]])),
    modelVersion: meta.modelVersion,
    version: Number(pointer.number),
    versionId: pointer.vid,
    publishedAt: meta.publishedAt,
    scoredAt: meta.scoredAt,
    arm,
    stale,
  };
}

export class ScoreReader {
  /**
   * @param {object} options
   * @param {string} [options.url]  redis:// or rediss:// URL (the reader opens and closes its connection)
   * @param {import('redis').RedisClientType} [options.client]  a connected client to use instead (not closed by the reader)
   * @param {string} [options.prefix]  outputs.redis.key_prefix of the models' configs (default "bs")
   * @param {number} [options.pointerTtlMs]  how long a resolved pointer is reused (default 1000)
   * @param {boolean} [options.subscribe]  listen for flip announcements to drop cached pointers at once
   * @param {number} [options.timeoutMs]  per round trip (default 250, the online profile); 0: none
   * @param {number} [options.connectTimeoutMs]  default 250
   */
  constructor({ url, client, prefix = 'bs', pointerTtlMs = 1000, subscribe = false, timeoutMs = 250,
    connectTimeoutMs = 250, maxAgeMs = null, onStale = 'mark' } = {}) {
    if (!url && !client) throw new TypeError('ScoreReader needs a Redis url or a client');
    if (maxAgeMs !== null && !(maxAgeMs > 0)) throw new TypeError(`maxAgeMs must be above 0 or null, got ${maxAgeMs}`);
    if (onStale !== 'mark' && onStale !== 'raise') throw new TypeError(`onStale must be 'mark' or 'raise', got ${onStale}`);
    this.maxAgeMs = maxAgeMs;
    this.onStale = onStale;
    this.url = url;
    this.connectTimeoutMs = connectTimeoutMs;
    this.timeoutMs = timeoutMs;
    this.ownsClient = !client;
    this.client = client ?? createClient(this.#options({ reconnect: true }));
    this.everReady = !this.ownsClient;
    if (this.ownsClient) {
      this.client.on('error', (err) => { this.lastError = err; });
      this.client.on('ready', () => { this.everReady = true; });
    }
    /** Replies as Buffers: score values are binary. */
    this.raw = this.client.withTypeMapping({ [RESP_TYPES.BLOB_STRING]: Buffer });
    this.cache = new Cache(prefix, pointerTtlMs);
    this.subscribe = subscribe;
    this.listener = null;
    this.stop = new AbortController();
    this.subscribedOnce = null;
  }

  /** Open a reader (connect, and with `subscribe` wait up to 1 s for the first subscription). */
  static async open(options) {
    return new ScoreReader(options).start();
  }

  async start() {
    if (this.ownsClient && !this.client.isOpen) await this.client.connect();
    if (this.subscribe && this.listener === null) {
      this.cache.listening = false;
      let ready;
      this.subscribedOnce = new Promise((resolve) => { ready = resolve; });
      this.listener = this.#listen(ready);
      await Promise.race([this.subscribedOnce, sleep(SUBSCRIBE_WAIT_MS)]);
    }
    return this;
  }

  /** True while the flip listener holds a confirmed subscription. */
  get listenerAlive() {
    return this.cache.listening === true;
  }

  #options({ reconnect }) {
    const socket = {
      connectTimeout: this.connectTimeoutMs || undefined,
      // Reconnect with back-off once connected; a first connect that fails rejects open() at once.
      reconnectStrategy: reconnect
        ? (retries) => (this.everReady ? Math.min(BACKOFF_BASE_MS * 2 ** retries, BACKOFF_CAP_MS) : false)
        : false,
    };
    if (this.url) return { url: this.url, socket, disableOfflineQueue: true };
    const base = this.client.options ?? {};
    return { ...base, socket: { ...(base.socket ?? {}), ...socket }, disableOfflineQueue: true };
  }

  async #timed(promise) {
    if (!this.timeoutMs) return promise;
    let timer;
    const expired = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new TimeoutError(this.timeoutMs)), this.timeoutMs);
    });
    promise.catch(() => {}); // a reply that arrives after the timeout is dropped
    try {
      return await Promise.race([promise, expired]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Forget cached pointers (all, or one model's). @param {string} [model] */
  invalidate(model) {
    this.cache.invalidate(model === undefined ? null : namespace(this.cache.prefix, model));
  }

  /** The published version identity "N.epoch" of `model`, or null when nothing is published. */
  async currentVersionId(model) {
    const pointer = await this.#pointer(namespace(this.cache.prefix, model));
    return pointer ? pointer.vid : null;
  }

  /** The published version number of `model`, or null. */
  async currentVersion(model) {
    const pointer = await this.#pointer(namespace(this.cache.prefix, model));
    return pointer ? Number(pointer.number) : null;
  }

  /**
   * The current score of one entity (one HGET), or null when it is not published.
   * @param {string} model @param {string | number | bigint} key @returns {Promise<Score | null>}
   */
  async get(model, key) {
    const k = keyText(key);
    const split = await this.#split(model);
    const arm = split === null ? CHAMPION : assignArm(split, k);
    const { ns, pointer, meta } = await this.#resolve(armModel(model, arm));
    if (pointer === null) return null;
    const stale = isStale(model, pointer, meta, this.maxAgeMs, this.onStale);
    const raw = await this.#timed(this.raw.hGet(dataKey(ns, pointer.vid, bucketOf(k, meta.buckets)), k));
    return score(meta, pointer, raw, arm, stale);
  }

  /** The model's traffic split as this reader sees it (cached like a pointer), or null. */
  async split(model) {
    return this.#split(model);
  }

  /**
   * Current scores of many entities, all of one version, in one pipelined round trip.
   * @param {string} model @param {Iterable<string | number | bigint>} keys
   * @returns {Promise<Map<string, Score | null>>} keyed by key text, in the order asked
   */
  async getMany(model, keys) {
    const wanted = Array.from(keys, keyText);
    const split = await this.#split(model);
    /** @type {Map<string, string[]>} arm -> its keys */
    const byArm = new Map();
    for (const k of wanted) {
      const arm = split === null ? CHAMPION : assignArm(split, k);
      const ks = byArm.get(arm);
      if (ks) ks.push(k);
      else byArm.set(arm, [k]);
    }
    const parts = []; // one per arm that has a version: {arm, meta, pointer, plan}
    for (const [arm, ks] of byArm) {
      const { ns, pointer, meta } = await this.#resolve(armModel(model, arm));
      if (pointer === null) continue;
      const stale = isStale(model, pointer, meta, this.maxAgeMs, this.onStale);
      /** @type {Map<string, string[]>} data key -> the wanted entity keys in that bucket */
      const plan = new Map();
      for (const k of ks) {
        const dk = dataKey(ns, pointer.vid, bucketOf(k, meta.buckets));
        const got = plan.get(dk);
        if (got) got.push(k);
        else plan.set(dk, [k]);
      }
      parts.push({ arm, meta, pointer, plan, stale });
    }
    const pipe = this.raw.multi();
    for (const { plan } of parts) for (const [dk, ks] of plan) pipe.hmGet(dk, ks);
    const size = parts.reduce((n, p) => n + p.plan.size, 0);
    const replies = size ? await this.#timed(pipe.execAsPipeline()) : [];
    const found = new Map();
    let i = 0;
    for (const { arm, meta, pointer, plan, stale } of parts) {
      for (const ks of plan.values()) {
        const raws = replies[i++];
        ks.forEach((k, j) => found.set(k, score(meta, pointer, raws[j], arm, stale)));
      }
    }
    return new Map(wanted.map((k) => [k, found.get(k) ?? null]));
  }

  async close() {
    this.stop.abort();
    if (this.listener !== null) await this.listener;
    this.listener = null;
    if (this.ownsClient && this.client.isOpen) {
      try {
        await this.client.close();
      } catch {
        this.client.destroy();
      }
    }
  }

  async #pointer(ns) {
    const hit = this.cache.fresh(ns);
    if (hit !== null) return hit.pointer;
    const generation = this.cache.generation;
    const raw = await this.#timed(this.client.get(pointerKey(ns)));
    const pointer = raw === null ? null : parsePointer(ns, raw);
    this.cache.remember(ns, pointer, generation);
    return pointer;
  }

  async #split(model) {
    const ns = namespace(this.cache.prefix, model);
    const hit = this.cache.freshSplit(ns);
    if (hit !== null) return hit.split;
    const generation = this.cache.generation;
    const split = parseSplit(ns, await this.#timed(this.client.get(`{${ns}}:split`)));
    if (generation === this.cache.generation) this.cache.splits.set(ns, { at: now(), split });
    return split;
  }

  async #resolve(model) {
    const ns = namespace(this.cache.prefix, model);
    const pointer = await this.#pointer(ns);
    if (pointer === null) return { ns, pointer, meta: null };
    let meta = this.cache.meta(ns, pointer.vid);
    if (meta === undefined) {
      const m = await this.#timed(this.client.hGetAll(metaKey(ns, pointer.vid)));
      try {
        meta = parseMeta(ns, pointer, { ...m });
      } catch (err) {
        this.cache.invalidate(ns);
        throw err;
      }
      this.cache.storeMeta(ns, pointer.vid, meta);
    }
    return { ns, pointer, meta };
  }

  /** The listener: subscribe, invalidate on every announcement; on any loss forget every pointer,
   * back off (doubling, capped at 2 s) and subscribe again. */
  async #listen(ready) {
    const { signal } = this.stop;
    let delay = BACKOFF_BASE_MS;
    while (!signal.aborted) {
      const sub = this.url ? createClient(this.#options({ reconnect: false }))
        : this.client.duplicate(this.#options({ reconnect: false }));
      let watchdog;
      try {
        const lost = new Promise((resolve) => {
          sub.on('error', resolve);
          sub.on('end', () => resolve(new Error('subscription connection ended')));
          signal.addEventListener('abort', () => resolve(null), { once: true });
        });
        let seen = now();
        await sub.connect();
        await sub.pSubscribe(channelPattern(this.cache.prefix), (_message, name) => {
          seen = now();
          const ns = namespaceOfChannel(String(name));
          if (ns !== null) this.cache.invalidate(ns);
        });
        this.cache.invalidate(); // flips may have been missed while not subscribed
        this.cache.listening = true;
        delay = BACKOFF_BASE_MS;
        ready();
        // Keep-alive: PING after KEEPALIVE_MS idle; no reply within as long again -> reconnect.
        let pinged = false;
        let dead;
        const silent = new Promise((resolve) => { dead = resolve; });
        watchdog = setInterval(() => {
          const idle = now() - seen;
          if (pinged && idle > 2 * KEEPALIVE_MS) dead(new Error('no reply to PING on the subscription'));
          else if (!pinged && idle > KEEPALIVE_MS) {
            pinged = true;
            sub.ping().then(() => { seen = now(); pinged = false; }, () => {});
          }
        }, 250);
        watchdog.unref?.();
        await Promise.race([lost, silent]);
      } catch {
        // could not connect or subscribe: back off and retry
      } finally {
        clearInterval(watchdog);
        this.cache.listening = false;
        this.cache.invalidate();
        try {
          sub.destroy();
        } catch {
          // already closed
        }
      }
      if (signal.aborted) break;
      await sleep(delay, signal);
      delay = Math.min(delay * 2, BACKOFF_CAP_MS);
    }
  }
}

function parsePointer(ns, raw) {
  try {
    return parseVersionId(String(raw));
  } catch (err) {
    if (err instanceof PointerError) err.message = `${pointerKey(ns)}: ${err.message}`;
    throw err;
  }
}
