// Decodes view-windows the way the viewer does (JPP-stream -> data-bin cache -> rebuilt
// codestreams -> WebAssembly OpenJPEG/OpenJPH -> region), outside the browser: the Python tests
// use it to compare the viewer's decoding with OpenJPEG's over the whole corpus.
//
//   node scripts/decode-window.mjs JOBS.json
// JOBS.json: [{response: "r.jpp", codestream: 0, discard: 2, region: [x0, y0, x1, y1],
// out: "o.bin"}]. For each job, prints one JSON line describing the decoded view (or its error)
// and writes the samples (component planes one after the other, little-endian) to `out`.
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

import { BinCache } from '../src/bincache.js';
import { headerInfo } from '../src/codestream.js';
import { cutRegion, decodeFrame, decodeGroups, loadCodecs } from '../src/decode.js';
import { StreamParser } from '../src/jpp.js';
import { groupCodestreams, tilesOf } from '../src/views.js';

const require = createRequire(import.meta.url);
const openjpegJs = require.resolve('@cornerstonejs/codec-openjpeg/decodewasmjs');
const openjphJs = require.resolve('@cornerstonejs/codec-openjph/wasmjs');
const wasmDirs = { 'openjpegwasm_decode.wasm': dirname(openjpegJs), 'openjphjs.wasm': dirname(openjphJs) };
const codecs = await loadCodecs({ openjpeg: require(openjpegJs), openjph: require(openjphJs) },
  (file) => join(wasmDirs[file], file));

function decodeJob(job) {
  const cache = new BinCache();
  const parser = new StreamParser();
  for (const item of parser.feed(readFileSync(job.response))) cache.add(item);
  parser.close();
  const bins = cache.stream(job.codestream);
  const info = headerInfo(bins.mainHeader.data);
  // Only the tiles the region touches are rebuilt and decoded, as the viewer does.
  const tiles = tilesOf(info.siz, job.region);
  const groups = groupCodestreams(bins, decodeGroups(info), null, { tiles });
  const planes = decodeFrame(codecs, { groups, discard: job.discard, layers: 0, siz: info.siz });
  const view = cutRegion(info.siz, job.discard, planes, job.region);
  writeFileSync(job.out, Buffer.concat(view.planes.map((p) => Buffer.from(p.data.buffer, p.data.byteOffset, p.data.byteLength))));
  return {
    width: view.width, height: view.height, components: view.components, bitDepth: view.bitDepth,
    signed: view.signed, interleaved: view.data !== null, groups: groups.map((g) => g.comps), tiles,
    planes: view.planes.map((p) => ({ width: p.width, height: p.height, type: p.data.constructor.name })),
  };
}

for (const job of JSON.parse(readFileSync(process.argv[2], 'utf8'))) {
  try {
    console.log(JSON.stringify(decodeJob(job)));
  } catch (e) {
    console.log(JSON.stringify({ error: `${e.name}: ${e.message}` }));
  }
}
