import assert from 'node:assert/strict';
import { test } from 'node:test';

import { colourSpace } from '../src/jp2.js';
import { unb64, vectors } from './vectors.js';

const held = (bins) => new Map(Object.entries(bins).map(([k, v]) => {
  const data = unb64(v);
  return [Number(k), { data, complete: true }];
}));

for (const v of vectors.colour) {
  test(`jp2: the colour space of ${v.file} through its metadata-bins, as Python reads it`, () => {
    assert.equal(colourSpace(held(v.bins)), v.colour);
  });
}

test('jp2: nothing is known before metadata-bin 0 is held whole', () => {
  const [v] = vectors.colour.filter((c) => c.colour === 'sycc');
  const bins = held(v.bins);
  assert.equal(colourSpace(bins), 'sycc');
  bins.get(0).complete = false;
  assert.equal(colourSpace(bins), null);
  bins.get(0).complete = true;
  for (const k of bins.keys()) if (k !== 0) bins.delete(k); // the JP2 header's bin is missing
  assert.equal(colourSpace(bins), null);
});
