import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';

import { BinCache } from '../src/bincache.js';
import { Rebuilder, rebuildCodestream } from '../src/codestream.js';
import { StreamParser } from '../src/jpp.js';
import { chunkings, unb64, vectors } from './vectors.js';

const sha256 = (u8) => createHash('sha256').update(u8).digest('hex');

function bins(cache, cs) {
  const s = cache.streams.get(cs);
  const tiles = new Map();
  for (const [t, b] of s.tileHeaders) if (b.complete) tiles.set(t, b.data);
  const precincts = new Map();
  for (const [i, b] of s.precincts) precincts.set(i, b.data);
  return { main: s.mainHeader.data, tiles, precincts };
}

for (const v of vectors.rebuild) {
  test(`rebuild: ${v.file} fsiz=${v.fsiz} roff=${v.roff} rsiz=${v.rsiz}`, () => {
    const cache = new BinCache();
    let rebuilder = null;
    for (const [n, r] of v.responses.entries()) {
      const data = unb64(r.stream);
      // The stream arrives in pieces: the parser and the cache must not care.
      const pieces = chunkings(data)[2];
      const parser = new StreamParser();
      for (const piece of pieces) for (const item of parser.feed(piece)) cache.add(item);
      parser.close();
      assert.equal(cache.lastEor, r.eor);
      assert.equal(cache.duplicateBytes, 0);
      const { main, tiles, precincts } = bins(cache, 0);
      const all = rebuildCodestream(main, tiles, precincts);
      assert.equal(all.length, r.rebuilt.all.length, `response ${n}: length`);
      assert.equal(sha256(all), r.rebuilt.all.sha256, `response ${n}: bytes`);
      const one = rebuildCodestream(main, tiles, precincts, { maxLayers: 1 });
      assert.equal(sha256(one), r.rebuilt['1'].sha256, `response ${n}: first layer only`);
      // The incremental rebuilder (what the viewer uses while data arrives) agrees.
      rebuilder ??= new Rebuilder(main);
      assert.equal(sha256(rebuilder.rebuild(tiles, precincts)), r.rebuilt.all.sha256);
    }
  });
}
