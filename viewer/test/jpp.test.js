import assert from 'node:assert/strict';
import { test } from 'node:test';

import { JPPError, StreamParser, encodeVbas, readVbas } from '../src/jpp.js';
import { b64, chunkings, unb64, vectors } from './vectors.js';

function asJson(item) {
  if (item.eor !== undefined) return { eor: item.eor, body: b64(item.body) };
  return { class: item.binClass, csn: item.csn, id: item.binId, offset: item.offset,
    data: b64(item.data), last: item.isLast, aux: item.aux };
}

for (const v of vectors.jpp) {
  test(`jpp: ${v.name} parses as the Python parser does, however it is chunked`, () => {
    const data = unb64(v.stream);
    for (const pieces of chunkings(data)) {
      const parser = new StreamParser();
      const items = [];
      for (const piece of pieces) items.push(...parser.feed(piece));
      parser.close();
      assert.deepEqual(items.map(asJson), v.items);
      assert.equal(parser.end.eor, v.items.at(-1).eor);
    }
  });
}

for (const v of vectors.jpp_errors) {
  test(`jpp error: ${v.name}, at the offset the Python parser names`, () => {
    const data = unb64(v.stream);
    for (const pieces of chunkings(data)) {
      const parser = new StreamParser(v.max_message_length);
      const err = (() => {
        try {
          for (const piece of pieces) parser.feed(piece);
          parser.close();
        } catch (e) {
          return e;
        }
        return null;
      })();
      assert.ok(err instanceof JPPError, `no JPPError (got ${err})`);
      assert.equal(err.reason, v.reason);
      assert.equal(err.offset, v.offset);
      assert.throws(() => parser.feed(Uint8Array.of(1)), JPPError); // errors are sticky
    }
  });
}

test('vbas: minimal encodings round-trip and refuse values past 2^53', () => {
  for (const v of [0, 1, 127, 128, 16383, 16384, 2 ** 21, 2 ** 35 + 3, 2 ** 53 - 1]) {
    const enc = encodeVbas(v);
    assert.deepEqual(readVbas(enc, 0, enc.length), [v, enc.length]);
  }
  const tooBig = Uint8Array.of(0x90, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00); // 2^53
  assert.throws(() => readVbas(tooBig, 0, tooBig.length), JPPError);
  assert.deepEqual(readVbas(Uint8Array.of(0x81, 0x80), 0, 2), [0, -1]);
});
