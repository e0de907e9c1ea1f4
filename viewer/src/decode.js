// Decoding a rebuilt codestream with OpenJPEG (JPEG 2000) or OpenJPH (HTJ2K) compiled to
// WebAssembly (@cornerstonejs/codec-openjpeg, @cornerstonejs/codec-openjph), and cutting the
// view's region out of the decoded frame. Used by the worker (worker.js); plain functions, so
// node can run them too.
//
// What the codecs give back shapes what is asked of them. Both decode a whole frame at a
// resolution (no area decoding) and write the samples of component 0's size, interleaved:
// OpenJPEG only for one component, or three of at most 8 bits; OpenJPH for any count of same-
// sized components. So a codestream is decoded in groups of components (`decodeGroups`): all of
// them at once where the codec can, else [0, 1, 2] together when a colour transform (MCT)
// binds them, and every other component on its own (a one-component codestream written by
// the Rebuilder).

export class UnsupportedImage extends Error {
  constructor(message) {
    super(message);
    this.name = 'UnsupportedImage';
  }
}

const cdiv = (a, b) => Math.ceil(a / b);

/**
 * The component groups to decode, each {comps, codec}, from a codestream's header info
 * (codestream.js headerInfo): throws UnsupportedImage for what neither codec can return.
 */
export function decodeGroups(info) {
  const comps = info.siz.components;
  const n = comps.length;
  for (const [c, comp] of comps.entries()) {
    if (comp.precision > 16) throw new UnsupportedImage(`component ${c} has ${comp.precision} bits (the decoders return up to 16)`);
    if (comp.signed && comp.precision <= 8) throw new UnsupportedImage(`component ${c} is signed with ${comp.precision} bits (the decoders clip it to 0..255)`);
  }
  const codec = info.ht ? 'openjph' : 'openjpeg';
  const sameSize = comps.every((c) => c.dx === comps[0].dx && c.dy === comps[0].dy);
  const upTo8 = (cs) => cs.every((c) => comps[c].precision <= 8);
  const all = comps.map((_, c) => c);
  if (n === 1) return [{ comps: [0], codec }];
  if (info.ht) {
    if (sameSize) return [{ comps: all, codec }];
    if (info.mct) throw new UnsupportedImage('HTJ2K with a colour transform and subsampled components');
    return all.map((c) => ({ comps: [c], codec }));
  }
  const rgb = [0, 1, 2];
  const rgbTogether = n >= 3 && rgb.every((c) => comps[c].dx === comps[0].dx && comps[c].dy === comps[0].dy) && upTo8(rgb);
  if (n === 3 && rgbTogether && comps[0].dx === 1 && comps[0].dy === 1) return [{ comps: rgb, codec }];
  const groups = [];
  let rest = all;
  if (info.mct && n >= 3) {
    if (!rgbTogether) throw new UnsupportedImage('a colour transform over components of more than 8 bits (OpenJPEG\'s decoder returns those one at a time)');
    groups.push({ comps: rgb, codec });
    rest = all.slice(3);
  }
  for (const c of rest) groups.push({ comps: [c], codec });
  return groups;
}

/** Samples of component c at discard level d: [x0, y0, x1, y1] on its own grid. */
function componentBounds(siz, comp, d, region) {
  const sx = comp.dx * 2 ** d; const sy = comp.dy * 2 ** d;
  const [X0, Y0, X1, Y1] = region || [siz.xosiz, siz.yosiz, siz.xsiz, siz.ysiz];
  return [cdiv(X0, sx), cdiv(Y0, sy), cdiv(X1, sx), cdiv(Y1, sy)];
}

function arrayType(comp) {
  if (comp.precision <= 8) return Uint8Array;
  return comp.signed ? Int16Array : Uint16Array;
}

/**
 * Decodes one group's codestream at discard level d with a codec module; returns the group's
 * frame: {stride (samples per row of component 0), samples (typed, interleaved by group)}.
 */
export function runCodec(modules, codec, codestream, d, layers, comp0) {
  let decoder;
  if (codec === 'openjph') {
    decoder = new modules.openjph.HTJ2KDecoder();
  } else {
    decoder = new modules.openjpeg.J2KDecoder();
  }
  try {
    decoder.getEncodedBuffer(codestream.length).set(codestream);
    if (codec === 'openjph') decoder.decodeSubResolution(d);
    else decoder.decodeSubResolution(d, layers || 0);
    const raw = decoder.getDecodedBuffer();
    // Copy out of the decoder's memory (it is reused or freed with the decoder).
    const Type = arrayType(comp0);
    const bytes = raw.slice();
    return new Type(bytes.buffer, 0, Math.floor(bytes.length / Type.BYTES_PER_ELEMENT));
  } finally {
    decoder.delete();
  }
}

/**
 * The decoded frames of the groups as component planes: [{x0, y0, width, height, data}] per
 * component, (x0, y0) being the plane's first sample on the component's own grid at level d.
 * `groups` are [{comps, codec, written}] (written: the SIZ the codec saw), `decoded` the codec
 * outputs in the same order; `siz` is the original SIZ.
 */
export function framePlanes(siz, d, groups, decoded) {
  const planes = new Array(siz.components.length);
  groups.forEach((g, gi) => {
    const samples = decoded[gi];
    const k = g.comps.length;
    const wc = g.written.components[0];
    // What the codec wrote: the rows of the written codestream's frame, one after the other,
    // k samples a pixel. OpenJPEG sizes its output by the whole grid but fills it row by row
    // from the start, with rows of ceil(width / 2^d) samples (the component's full-resolution
    // width halved d times: one more than the frame's width for some image offsets, the extra
    // sample not being part of the image); OpenJPH's rows are the frame's width.
    const [fx0, fy0, fx1, fy1] = componentBounds(g.written, wc, d, null);
    const [wx0, , wx1] = componentBounds(g.written, wc, 0, null);
    const stride = g.codec === 'openjpeg' ? cdiv(wx1 - wx0, 2 ** d) : fx1 - fx0;
    const w = fx1 - fx0; const h = fy1 - fy0;
    if (w > 0 && h > 0 && samples.length < ((h - 1) * stride + w) * k) {
      throw new Error(`the ${g.codec} decoder returned ${samples.length} samples for a ${w}x${h} frame (a decoding error)`);
    }
    // The written grid may be the original one divided by a subsampling (a lone component):
    // (fx0, fy0) are then already on the component's own grid.
    g.comps.forEach((c, j) => {
      const Type = arrayType(siz.components[c]);
      const out = new Type(w * h);
      for (let y = 0; y < h; y++) {
        let src = y * stride * k + j;
        const row = y * w;
        for (let x = 0; x < w; x++, src += k) out[row + x] = samples[src];
      }
      planes[c] = { x0: fx0, y0: fy0, width: w, height: h, data: out };
    });
  });
  return planes;
}

/**
 * The samples of a reference-grid region from frame planes: {width, height, components,
 * bitDepth, signed, data, planes}; `data` interleaves the components when they all have the
 * region's size (else null: see `planes`, one {width, height, data} per component).
 */
export function cutRegion(siz, d, planes, region) {
  const comps = siz.components;
  const out = planes.map((plane, c) => {
    const [rx0, ry0, rx1, ry1] = componentBounds(siz, comps[c], d, region);
    const w = Math.max(0, rx1 - rx0); const h = Math.max(0, ry1 - ry0);
    if (rx0 < plane.x0 || ry0 < plane.y0 || rx0 + w > plane.x0 + plane.width || ry0 + h > plane.y0 + plane.height) {
      throw new RangeError('the region is not inside the decoded frame');
    }
    const data = new plane.data.constructor(w * h);
    for (let y = 0; y < h; y++) {
      const src = (ry0 - plane.y0 + y) * plane.width + (rx0 - plane.x0);
      data.set(plane.data.subarray(src, src + w), y * w);
    }
    return { width: w, height: h, data };
  });
  const { width, height } = out[0];
  const same = out.every((p) => p.width === width && p.height === height);
  const bitDepth = Math.max(...comps.map((c) => c.precision));
  const signed = comps.some((c) => c.signed);
  const result = { width, height, components: comps.length, bitDepth, signed, data: null, planes: out };
  if (same) {
    const Type = bitDepth <= 8 ? Uint8Array : signed ? Int16Array : Uint16Array;
    const n = comps.length;
    const data = new Type(width * height * n);
    out.forEach((p, c) => { for (let i = 0; i < p.data.length; i++) data[i * n + c] = p.data[i]; });
    result.data = data;
  }
  return result;
}

/**
 * Decodes the groups of a view: `request` = {groups: [{comps, codec, codestream, written}],
 * discard, layers, siz}. Returns the frame planes (framePlanes()).
 */
export function decodeFrame(modules, request) {
  const { groups, discard: d, layers, siz } = request;
  for (const g of groups) {
    if (g.codec !== 'openjph') continue;
    // OpenJPH sizes its output by ceil(width / 2^d), which is the frame's width only when the
    // image offset does not change the count.
    const w = g.written;
    const cw = cdiv(w.xsiz, 2 ** d) - cdiv(w.xosiz, 2 ** d);
    const ch = cdiv(w.ysiz, 2 ** d) - cdiv(w.yosiz, 2 ** d);
    if (cw !== cdiv(w.xsiz - w.xosiz, 2 ** d) || ch !== cdiv(w.ysiz - w.yosiz, 2 ** d)) {
      throw new UnsupportedImage('HTJ2K frame whose offset changes its reduced size (OpenJPH\'s decoder sizes frames without it)');
    }
  }
  const decoded = groups.map((g) => runCodec(modules, g.codec, g.codestream, d, layers, siz.components[g.comps[0]]));
  return framePlanes(siz, d, groups, decoded);
}

/** Loads the codecs; `locate(file)` says where their .wasm files are. */
export async function loadCodecs(factories, locate) {
  const quiet = { print: () => {}, printErr: () => {} };
  const [openjpeg, openjph] = await Promise.all([
    factories.openjpeg({ ...quiet, locateFile: locate }),
    factories.openjph({ ...quiet, locateFile: locate }),
  ]);
  return { openjpeg, openjph };
}
