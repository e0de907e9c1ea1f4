// The decoding worker: OpenJPEG and OpenJPH compiled to WebAssembly, off the page's thread so
// that panning and zooming stay smooth while frames decode. Messages:
//   in:  {id, groups: [{comps, codec, codestream (ArrayBuffer), written}], discard, layers, siz}
//   out: {id, planes: [{x0, y0, width, height, data}], ms} or {id, error, unsupported}
import openjpegFactory from '@cornerstonejs/codec-openjpeg/decodewasmjs';
import openjphFactory from '@cornerstonejs/codec-openjph/wasmjs';

import { UnsupportedImage, decodeFrame, loadCodecs } from './decode.js';

const load = () => loadCodecs({ openjpeg: openjpegFactory, openjph: openjphFactory },
  (file) => new URL(file, self.location.href).href);
let codecs = load();

codecs.then(() => self.postMessage({ ready: true }),
  (e) => self.postMessage({ ready: false, error: `cannot load the decoders: ${e.message || e}` }));

self.onmessage = async ({ data: request }) => {
  const { id } = request;
  try {
    const modules = await codecs;
    const t0 = performance.now();
    const groups = request.groups.map((g) => ({ ...g, codestream: new Uint8Array(g.codestream) }));
    const planes = decodeFrame(modules, { ...request, groups });
    self.postMessage({ id, planes, ms: performance.now() - t0 }, planes.map((p) => p.data.buffer));
  } catch (e) {
    // A WebAssembly trap or abort leaves the module unusable: start afresh for the next frame.
    if (e instanceof WebAssembly.RuntimeError || /abort/i.test(String(e.message))) codecs = load();
    self.postMessage({ id, error: e.message || String(e), unsupported: e instanceof UnsupportedImage });
  }
};
