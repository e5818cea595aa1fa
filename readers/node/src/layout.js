// The batchscore Redis layout (docs/redis-layout.md): key names, version identities, the bucket
// function and the score encoding. No I/O, no dependencies.

/** Thrown for what a reader must refuse: `kind` says which case of the contract it is. */
export class LookupError extends Error {
  /** @param {string} message @param {string} kind */
  constructor(message, kind) {
    super(message);
    this.name = 'LookupError';
    /** legacy_pointer | bad_pointer | missing_meta | epoch_mismatch | malformed_meta */
    this.kind = kind;
  }
}

/** The pointer holds no version identity "N.epoch": a bare number of the old layout or garbage. */
export class PointerError extends LookupError {
  constructor(message, kind) {
    super(message, kind);
    this.name = 'PointerError';
  }
}

/** The pointer's version has no usable metadata (collected, another life of its number,
 * malformed): retry the lookup (the reader has already dropped the cached pointer). */
export class MetadataError extends LookupError {
  constructor(message, kind) {
    super(message, kind);
    this.name = 'MetadataError';
    this.retryable = true;
  }
}

/** A stored score value is not 4 bytes per output column. */
export class ScoreDecodeError extends RangeError {
  constructor(message) {
    super(message);
    this.name = 'ScoreDecodeError';
    this.kind = 'bad_value';
  }
}

/** @param {string} prefix @param {string} model */
export const namespace = (prefix, model) => `${prefix}:${model}`;
/** @param {string} ns @param {string} vid @param {number} bucket */
export const dataKey = (ns, vid, bucket) => `${ns}:v${vid}:b${bucket}`;
/** @param {string} ns */
export const pointerKey = (ns) => `{${ns}}:current`;
/** @param {string} ns @param {string} vid */
export const metaKey = (ns, vid) => `{${ns}}:meta:v${vid}`;
/** @param {string} ns */
export const publicationKey = (ns) => `{${ns}}:publication`;
/** @param {string} ns */
export const channel = (ns) => `{${ns}}:changed`;

const globEscape = (text) => text.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
/** PSUBSCRIBE pattern of every flip channel under `prefix`. @param {string} prefix */
export const channelPattern = (prefix) => `{${globEscape(prefix)}:*}:changed`;

/** The namespace a flip channel announces, or null for any other channel. @param {string} name */
export function namespaceOfChannel(name) {
  return name.startsWith('{') && name.endsWith('}:changed') ? name.slice(1, -'}:changed'.length) : null;
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32/ISO-HDLC (zlib's) of bytes, as an unsigned 32-bit number. @param {Uint8Array} bytes */
export function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/**
 * An entity key as the text stored in Redis: a string as is, an integer as its decimal text (what
 * the publisher's Arrow cast makes of an integer key column: 42 -> "42"). Numbers past 2^53 are
 * not exact in JS: pass such keys as strings or BigInts.
 * @param {string | number | bigint} key
 * @returns {string}
 */
export function keyText(key) {
  if (typeof key === 'string') {
    if (LONE_SURROGATE.test(key)) {
      throw new TypeError('entity key is not well-formed Unicode (a lone surrogate): it has no UTF-8 form');
    }
    return key;
  }
  if (typeof key === 'bigint') return key.toString();
  if (typeof key === 'number') {
    if (!Number.isSafeInteger(key)) {
      throw new TypeError(`entity key ${key} is not a safe integer: pass it as a string or a BigInt`);
    }
    return String(key); // -0 -> "0"
  }
  throw new TypeError(`entity keys are strings, integers or BigInts, not ${typeof key}`);
}

/** Bucket of an entity key: crc32(UTF-8 of the key text) % buckets.
 * @param {string | number | bigint} key @param {number} buckets */
export function bucketOf(key, buckets) {
  return crc32(Buffer.from(keyText(key), 'utf8')) % buckets;
}

/** `{number, epoch}` of a version identity "N.epoch", number as canonical decimal text. */
const IDENTITY = /^([0-9]+)\.([A-Za-z0-9]+)$/;

/**
 * Parse a version identity; throws PointerError (kind legacy_pointer or bad_pointer).
 * @param {string} text
 * @returns {{number: string, epoch: string, vid: string}}
 */
export function parseVersionId(text) {
  const m = IDENTITY.exec(text);
  if (m === null) {
    if (/^\s*[0-9]+\s*$/.test(text)) {
      throw new PointerError(
        `pointer holds ${JSON.stringify(text.trim())}, a bare version number from the old key layout; this ` +
          'reader reads only "N.epoch" identities: republish the model with a current batchscore',
        'legacy_pointer',
      );
    }
    throw new PointerError(
      `pointer does not hold a version identity "N.epoch" (got ${JSON.stringify(text.slice(0, 40))}); ` +
        'republish or roll back the model',
      'bad_pointer',
    );
  }
  const number = BigInt(m[1]).toString();
  return { number, epoch: m[2], vid: `${number}.${m[2]}` };
}

/** @param {ArrayLike<number>} values @returns {Buffer} little-endian float32, 4 bytes each */
export function encodeScores(values) {
  const buf = Buffer.alloc(4 * values.length);
  for (let i = 0; i < values.length; i++) {
    const v = Number(values[i]);
    if (Number.isFinite(v) && !Number.isFinite(Math.fround(v))) {
      throw new RangeError(`score ${v} is out of float32 range`);
    }
    buf.writeFloatLE(v, 4 * i);
  }
  return buf;
}

/** @param {Uint8Array} raw @param {number} columns @returns {number[]} */
export function decodeScores(raw, columns) {
  if (raw.length !== 4 * columns) {
    throw new ScoreDecodeError(`score value has ${raw.length} bytes, expected ${4 * columns}`);
  }
  const buf = Buffer.isBuffer(raw) ? raw : Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  const out = new Array(columns);
  for (let i = 0; i < columns; i++) out[i] = buf.readFloatLE(4 * i);
  return out;
}

const DECIMAL = /^[0-9]+$/;

/** A meta timestamp (seconds since the epoch, text) as a Date, or null when absent or unreadable. */
function when(raw) {
  const t = typeof raw === 'string' && raw !== '' ? Number(raw) : NaN;
  return Number.isFinite(t) ? new Date(t * 1000) : null;
}

/**
 * A version's metadata hash (HGETALL of its meta key) checked against the pointer's identity.
 * @param {string} ns
 * @param {{number: string, epoch: string, vid: string}} pointer
 * @param {Record<string, string>} m
 * @returns {{buckets: number, columns: string[], modelVersion: string, publishedAt: Date | null,
 *   scoredAt: Date | null}}
 */
export function parseMeta(ns, pointer, m) {
  const fail = (what, kind) => {
    throw new MetadataError(`${ns}: version ${pointer.vid} ${what}; retry the lookup`, kind);
  };
  if (!m || Object.keys(m).length === 0) fail('has no metadata (collected?)', 'missing_meta');
  if (m.epoch !== pointer.epoch || ('number' in m && m.number !== pointer.number)) {
    fail(`has metadata of another life of number ${pointer.number} (epoch ${JSON.stringify(String(m.epoch ?? '').slice(0, 16))})`,
      'epoch_mismatch');
  }
  const buckets = DECIMAL.test(m.buckets ?? '') ? Number(m.buckets) : NaN;
  const columns = typeof m.columns === 'string' ? m.columns.split(',') : [];
  if (!Number.isSafeInteger(buckets) || buckets < 1 || columns.length === 0 || !columns.every(Boolean)
      || typeof m.model_version !== 'string') {
    fail('has malformed metadata', 'malformed_meta');
  }
  return { buckets, columns, modelVersion: m.model_version, publishedAt: when(m.published_at),
    scoredAt: when(m.scored_at) };
}
