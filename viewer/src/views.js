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
 * [{comps, codec, codestream}] for the groups; `rebuilders` (a Map kept by the caller for one
 * codestream, or null) remembers the Rebuilder of each group.
 */
export function groupCodestreams(bins, groups, rebuilders, maxLayers = null) {
  const { tiles, precincts } = rebuildInputs(bins);
  const main = bins.mainHeader.data;
  return groups.map((g) => {
    const key = g.comps.join(',');
    let rb = rebuilders ? rebuilders.get(key) : undefined;
    if (rb === undefined) {
      rb = new Rebuilder(main, g.comps);
      if (rebuilders) rebuilders.set(key, rb);
    }
    return { comps: g.comps, codec: g.codec, codestream: rb.rebuild(tiles, precincts, maxLayers) };
  });
}
