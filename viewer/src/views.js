// From a codestream's data-bins to the codestreams the decoder is handed: one per component
// group (decode.js decodeGroups), rebuilt by Rebuilders kept per group so that redrawing as data
// arrives only re-reads the precinct bins that grew.

import { Rebuilder } from './codestream.js';

/** The bins of a codestream as the Rebuilder takes them (complete tile headers only). */
export function rebuildInputs(bins) {
  const tiles = new Map();
  for (const [t, b] of bins.tileHeaders) if (b.complete) tiles.set(t, b.data);
  const precincts = new Map();
  for (const [i, b] of bins.precincts) if (b.held) precincts.set(i, b.data);
  return { tiles, precincts };
}

/**
 * [{comps, codec, codestream, written}] for the groups: `written` is the SIZ of the rebuilt
 * codestream (a tile range or a component may change its grid). `rebuilders` (a Map kept by the
 * caller for one codestream, or null) remembers the Rebuilder of each group and tile range;
 * `tiles` ([p0, q0, p1, q1] or null for all) limits the codestreams to those tiles.
 */
export function groupCodestreams(bins, groups, rebuilders, { tiles = null, maxLayers = null } = {}) {
  const { tiles: tileBins, precincts } = rebuildInputs(bins);
  const main = bins.mainHeader.data;
  return groups.map((g) => {
    const key = `${g.comps.join(',')}|${tiles ? tiles.join(',') : ''}`;
    let rb = rebuilders ? rebuilders.get(key) : undefined;
    if (rb === undefined) {
      rb = new Rebuilder(main, { comps: g.comps, tiles });
      if (rebuilders) rebuilders.set(key, rb);
    }
    return { comps: g.comps, codec: g.codec, codestream: rb.rebuild(tileBins, precincts, maxLayers), written: rb.written };
  });
}

/** The tiles [p0, q0, p1, q1] (ends excluded) a reference-grid region touches. */
export function tilesOf(siz, [x0, y0, x1, y1]) {
  const clamp = (v, n) => Math.min(Math.max(v, 0), n);
  const p0 = clamp(Math.floor((x0 - siz.xtosiz) / siz.xtsiz), siz.tilesX - 1);
  const q0 = clamp(Math.floor((y0 - siz.ytosiz) / siz.ytsiz), siz.tilesY - 1);
  const p1 = clamp(Math.ceil((x1 - siz.xtosiz) / siz.xtsiz), siz.tilesX);
  const q1 = clamp(Math.ceil((y1 - siz.ytosiz) / siz.ytsiz), siz.tilesY);
  return [p0, q0, Math.max(p1, p0 + 1), Math.max(q1, q0 + 1)];
}
