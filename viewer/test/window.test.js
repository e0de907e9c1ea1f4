import assert from 'node:assert/strict';
import { test } from 'node:test';

import { headerInfo } from '../src/codestream.js';
import { resolveWindow } from '../src/window.js';
import { unb64, vectors } from './vectors.js';

for (const v of vectors.window) {
  test(`window: ${v.file}`, () => {
    const info = headerInfo(unb64(v.main_header));
    for (const k of ['xsiz', 'ysiz', 'xosiz', 'yosiz']) assert.equal(info.siz[k], v.siz[k]);
    for (const c of v.cases) {
      const w = resolveWindow(v.siz, v.max_levels, { fsiz: c.fsiz, roff: c.roff, rsiz: c.rsiz });
      assert.deepEqual(w, { discard: c.discard, frame: c.frame, offset: c.offset, size: c.size, region: c.region },
        JSON.stringify(c));
    }
  });
}
