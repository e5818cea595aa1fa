// batchscore-reader: the reference Node.js reader of batchscore's Redis layout (docs/redis-layout.md).
export {
  CHAMPION, CUT_OFF_TTL_MS, META_CACHE_SIZE, ScoreReader, StaleScoreError, TimeoutError, assignArm, parseSplit,
} from './reader.js';
export {
  LookupError, MetadataError, PointerError, ScoreDecodeError, bucketOf, channel, channelPattern, crc32, dataKey,
  decodeScores, encodeScores, keyText, metaKey, namespace, namespaceOfChannel, parseMeta, parseVersionId,
  pointerKey, publicationKey,
} from './layout.js';
