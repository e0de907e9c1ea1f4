import assert from 'node:assert/strict';
import { test } from 'node:test';

import { BinCache, StreamError } from '../src/bincache.js';
import { StreamParser } from '../src/jpp.js';
import { b64, unb64, vectors } from './vectors.js';

function binJson(b) {
  return { held: b64(b.data), length: b.length, complete: b.complete,
    pending: [...b.pending.keys()].sort((x, y) => x - y) };
}

const sortedObject = (map, f) => Object.fromEntries([...map.entries()].sort((a, b) => a[0] - b[0]).map(([k, v]) => [String(k), f(v)]));

function cacheJson(cache) {
  return {
    streams: sortedObject(cache.streams, (s) => ({
      main: binJson(s.mainHeader), tiles: sortedObject(s.tileHeaders, binJson),
      precincts: sortedObject(s.precincts, binJson), model: '',
    })),
    metadata: sortedObject(cache.metadata, binJson),
    duplicate_bytes: cache.duplicateBytes, messages: cache.messages, data_bytes: cache.dataBytes,
    last_eor: cache.lastEor,
  };
}

function feed(cache, response) {
  const parser = new StreamParser();
  for (const item of parser.feed(unb64(response))) cache.add(item);
}

for (const v of vectors.bincache) {
  test(`bincache: ${v.name}`, () => {
    const cache = new BinCache();
    if (v.error !== undefined) {
      assert.throws(() => v.responses.forEach((r) => feed(cache, r)),
        (e) => e instanceof StreamError && e.message === v.error);
      return;
    }
    v.responses.forEach((r) => feed(cache, r));
    const got = cacheJson(cache);
    for (const [cs, s] of cache.streams) got.streams[String(cs)].model = cache.modelString(cs);
    assert.deepEqual(got, v.expect);
  });
}
