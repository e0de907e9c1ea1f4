// JPEG 2000 codestream pieces a JPIP client needs: header marker segments, the geometry of
// resolutions, precincts and code-blocks (ISO 15444-1 Annex B), packet-header reading (B.10, with
// the HT segments of 15444-15) and the rebuild of a decodable codestream from data-bins. The
// same rules as the Python modules codestream/{markers,parse,geometry,progression,packets,
// rebuild}.py; the shared test vectors (test/vectors.json) keep the two in step.
//
// Coordinates reach 2^32, past the 32-bit range of JavaScript's bit operators: shifts and
// divisions here are done with arithmetic on numbers (exact below 2^53).

export const SOC = 0xff4f; export const SOT = 0xff90; export const SOD = 0xff93; export const EOC = 0xffd9;
export const SIZ = 0xff51; export const COD = 0xff52; export const COC = 0xff53; export const QCD = 0xff5c;
export const QCC = 0xff5d; export const RGN = 0xff5e; export const POC = 0xff5f; export const TLM = 0xff55;
export const PLM = 0xff57; export const PLT = 0xff58; export const PPM = 0xff60; export const PPT = 0xff61;
export const CRG = 0xff63; export const COM = 0xff64; export const CAP = 0xff50; export const CPF = 0xff59;
export const SOP = 0xff91; export const EPH = 0xff92;

const LAYOUT_MARKERS = new Set([TLM, PLM, PPM, PLT, PPT]);
const DROPPED = new Set([...LAYOUT_MARKERS, POC]);
export const RPCL = 2;
export const CBLK_BYPASS = 1; export const CBLK_TERMALL = 4; export const CBLK_HT = 0x40;
const MAX_COMPONENTS = 16384;
const MAX_LEVELS = 32;

export class CodestreamError extends Error {
  constructor(offset, reason) {
    super(`${reason} (at byte ${offset})`);
    this.name = 'CodestreamError';
    this.offset = offset;
    this.reason = reason;
  }
}

const pow2 = (p) => 2 ** p;
export const ceilDiv = (a, b) => Math.ceil(a / b);
const floorShift = (a, p) => Math.floor(a / 2 ** p);
const bitLength = (n) => 32 - Math.clz32(n);
const u16 = (b, p) => (b[p] << 8) | b[p + 1];
const u32 = (b, p) => ((b[p] << 24) >>> 0) + (b[p + 1] << 16) + (b[p + 2] << 8) + b[p + 3];

function hasNoSegment(code) {
  return code === SOC || code === SOD || code === EOC || code === EPH || (code >= 0xff30 && code <= 0xff3f);
}

/** The marker segment at `pos`: {code, offset, length (marker included), end}. */
export function readSegment(buf, pos, end) {
  if (pos + 2 > end) throw new CodestreamError(pos, 'truncated: expected a marker');
  const code = u16(buf, pos);
  if (buf[pos] !== 0xff || code < 0xff01) {
    throw new CodestreamError(pos, `expected a marker, found bytes ${code.toString(16).toUpperCase().padStart(4, '0')}`);
  }
  if (hasNoSegment(code)) return { code, offset: pos, length: 2, end: pos + 2 };
  if (pos + 4 > end) throw new CodestreamError(pos, `truncated segment 0x${code.toString(16)}`);
  const length = u16(buf, pos + 2);
  if (length < 2) throw new CodestreamError(pos, `segment length ${length} < 2`);
  if (pos + 2 + length > end) throw new CodestreamError(pos, `segment length ${length} runs past the end`);
  return { code, offset: pos, length: 2 + length, end: pos + 2 + length };
}

function need(seg, p, n) {
  if (p + n > seg.end) throw new CodestreamError(p, `segment too short: need ${n} more bytes`);
}

export function parseSiz(buf, seg) {
  const p = seg.offset + 4;
  need(seg, p, 38);
  const v = [];
  for (let i = 0; i < 8; i++) v.push(u32(buf, p + 2 + 4 * i));
  const [xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz] = v;
  const csiz = u16(buf, p + 34);
  if (csiz < 1 || csiz > MAX_COMPONENTS) throw new CodestreamError(seg.offset, `SIZ: ${csiz} components`);
  if (seg.length !== 2 + 38 + 3 * csiz) throw new CodestreamError(seg.offset, 'SIZ: length does not match its components');
  if (xsiz <= xosiz || ysiz <= yosiz) throw new CodestreamError(seg.offset, 'SIZ: empty image');
  if (xtsiz === 0 || ytsiz === 0) throw new CodestreamError(seg.offset, 'SIZ: zero tile size');
  if (xtosiz > xosiz || ytosiz > yosiz || xtosiz + xtsiz <= xosiz || ytosiz + ytsiz <= yosiz) {
    throw new CodestreamError(seg.offset, 'SIZ: tile grid offset does not cover the image origin');
  }
  const components = [];
  for (let c = 0; c < csiz; c++) {
    const q = p + 36 + 3 * c;
    const ssiz = buf[q];
    const dx = buf[q + 1];
    const dy = buf[q + 2];
    if (!dx || !dy) throw new CodestreamError(seg.offset, 'SIZ: zero component subsampling');
    components.push({ precision: (ssiz & 0x7f) + 1, signed: Boolean(ssiz & 0x80), dx, dy });
  }
  const tilesX = ceilDiv(xsiz - xtosiz, xtsiz);
  const tilesY = ceilDiv(ysiz - ytosiz, ytsiz);
  return {
    rsiz: u16(buf, p), xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz, components,
    tilesX, tilesY, numTiles: tilesX * tilesY, width: xsiz - xosiz, height: ysiz - yosiz,
  };
}

/** (tx0, ty0, tx1, ty1) of tile t on the reference grid (B-7). */
export function tileBounds(siz, t) {
  const p = t % siz.tilesX;
  const q = Math.floor(t / siz.tilesX);
  return [
    Math.max(siz.xtosiz + p * siz.xtsiz, siz.xosiz), Math.max(siz.ytosiz + q * siz.ytsiz, siz.yosiz),
    Math.min(siz.xtosiz + (p + 1) * siz.xtsiz, siz.xsiz), Math.min(siz.ytosiz + (q + 1) * siz.ytsiz, siz.ysiz),
  ];
}

function parseStyle(buf, seg, p, explicitPrecincts) {
  need(seg, p, 5);
  const levels = buf[p];
  if (levels > MAX_LEVELS) throw new CodestreamError(seg.offset, `${levels} decomposition levels`);
  const xcb = buf[p + 1];
  const ycb = buf[p + 2];
  const cbStyle = buf[p + 3];
  const transform = buf[p + 4];
  if (xcb > 8 || ycb > 8 || xcb + ycb > 8) throw new CodestreamError(seg.offset, `bad code-block size ${xcb},${ycb}`);
  if (transform > 1) throw new CodestreamError(seg.offset, `wavelet ${transform} is not supported`);
  const precincts = [];
  if (explicitPrecincts) {
    need(seg, p + 5, levels + 1);
    for (let r = 0; r <= levels; r++) {
      const b = buf[p + 5 + r];
      if (r > 0 && (!(b & 0x0f) || !(b >> 4))) throw new CodestreamError(seg.offset, 'precinct size 1 above resolution 0 is invalid');
      precincts.push([b & 0x0f, b >> 4]);
    }
  } else {
    for (let r = 0; r <= levels; r++) precincts.push([15, 15]);
  }
  return { levels, cbW: xcb + 2, cbH: ycb + 2, cbStyle, reversible: transform === 1, precincts, isHT: Boolean(cbStyle & CBLK_HT) };
}

function parseCod(buf, seg) {
  const p = seg.offset + 4;
  need(seg, p, 5);
  const scod = buf[p];
  const progression = buf[p + 1];
  const layers = u16(buf, p + 2);
  if (progression > 4) throw new CodestreamError(seg.offset, `COD: unknown progression order ${progression}`);
  if (layers === 0) throw new CodestreamError(seg.offset, 'COD: zero layers');
  return { scod, progression, layers, mct: buf[p + 4], eph: Boolean(scod & 4), sop: Boolean(scod & 2), style: parseStyle(buf, seg, p + 5, Boolean(scod & 1)) };
}

function parseCoc(buf, seg, csiz) {
  let p = seg.offset + 4;
  const wide = csiz >= 257;
  need(seg, p, wide ? 3 : 2);
  const c = wide ? u16(buf, p) : buf[p];
  p += wide ? 2 : 1;
  if (c >= csiz) throw new CodestreamError(seg.offset, `COC: component ${c} >= Csiz ${csiz}`);
  return { component: c, style: parseStyle(buf, seg, p + 1, Boolean(buf[p] & 1)) };
}

/** The COD/COC/QCD a header (main or tile) holds, from its marker segments in [pos, end). */
function parseHeaderMarkers(buf, pos, end, siz) {
  const hm = { cod: null, cocs: new Map(), qcd: false };
  while (pos < end) {
    const seg = readSegment(buf, pos, end);
    if (seg.code === COD) hm.cod = parseCod(buf, seg);
    else if (seg.code === COC) {
      const coc = parseCoc(buf, seg, siz.components.length);
      hm.cocs.set(coc.component, coc);
    } else if (seg.code === QCD) hm.qcd = true;
    else if (seg.code === SOT || seg.code === SOD || seg.code === EOC || seg.code === SOC) {
      throw new CodestreamError(pos, 'unexpected marker in a header data-bin');
    }
    pos = seg.end;
  }
  return hm;
}

/** SIZ and the main COD/COC of a main header data-bin. */
export function parseMainHeader(mainHeader) {
  if (mainHeader.length < 4 || u16(mainHeader, 0) !== SOC) throw new CodestreamError(0, 'main header bin does not start with SOC');
  const seg = readSegment(mainHeader, 2, mainHeader.length);
  if (seg.code !== SIZ) throw new CodestreamError(2, 'expected SIZ after SOC');
  const siz = parseSiz(mainHeader, seg);
  const hm = parseHeaderMarkers(mainHeader, seg.end, mainHeader.length, siz);
  if (hm.cod === null) throw new CodestreamError(0, 'main header has no COD');
  if (!hm.qcd) throw new CodestreamError(0, 'main header has no QCD');
  return { siz, cod: hm.cod, cocs: hm.cocs };
}

/** Effective COD and per-component style of a tile: tile COC > tile COD > main COC > main COD. */
export function tileCoding(main, tileMarkers) {
  const tileCod = tileMarkers ? tileMarkers.cod : null;
  const cod = tileCod || main.cod;
  const styles = main.siz.components.map((_, c) => {
    if (tileMarkers && tileMarkers.cocs.has(c)) return tileMarkers.cocs.get(c).style;
    if (tileCod) return tileCod.style;
    if (main.cocs.has(c)) return main.cocs.get(c).style;
    return main.cod.style;
  });
  return { cod, styles };
}

/** What the main header says, all a client knows before image data arrives. */
export function headerInfo(mainHeader) {
  const main = parseMainHeader(mainHeader);
  const { cod, styles } = tileCoding(main, null);
  return {
    siz: main.siz, levels: Math.min(...styles.map((s) => s.levels)), layers: cod.layers,
    progression: cod.progression, mct: cod.mct, ht: styles.some((s) => s.isHT),
    reversible: styles.every((s) => s.reversible), main,
  };
}

// ----- geometry (Annex B) -----

export function tileComponentBounds(siz, t, c) {
  const [tx0, ty0, tx1, ty1] = tileBounds(siz, t);
  const { dx, dy } = siz.components[c];
  return [ceilDiv(tx0, dx), ceilDiv(ty0, dy), ceilDiv(tx1, dx), ceilDiv(ty1, dy)];
}

export function resolutionGrids(siz, t, c, style) {
  const [tcx0, tcy0, tcx1, tcy1] = tileComponentBounds(siz, t, c);
  const nl = style.levels;
  const grids = [];
  for (let r = 0; r <= nl; r++) {
    const scale = pow2(nl - r);
    const x0 = ceilDiv(tcx0, scale); const y0 = ceilDiv(tcy0, scale);
    const x1 = ceilDiv(tcx1, scale); const y1 = ceilDiv(tcy1, scale);
    const [ppx, ppy] = style.precincts[r];
    let npw = 0; let nph = 0;
    if (x1 > x0 && y1 > y0) {
      npw = ceilDiv(x1, pow2(ppx)) - floorShift(x0, ppx);
      nph = ceilDiv(y1, pow2(ppy)) - floorShift(y0, ppy);
    }
    grids.push({ r, x0, y0, x1, y1, ppx, ppy, npw, nph, numPrecincts: npw * nph });
  }
  return grids;
}

function bandBounds(tc, nb, xob, yob) {
  const [tcx0, tcy0, tcx1, tcy1] = tc;
  if (nb === 0) return tc;
  const hx = pow2(nb - 1) * xob; const hy = pow2(nb - 1) * yob;
  const s = pow2(nb);
  return [ceilDiv(tcx0 - hx, s), ceilDiv(tcy0 - hy, s), ceilDiv(tcx1 - hx, s), ceilDiv(tcy1 - hy, s)];
}

/** Code-block grid [cw, ch] of each band of precinct p, in packet order (LL | HL, LH, HH). */
export function precinctBandGrids(siz, t, c, style, grid, p) {
  const tc = tileComponentBounds(siz, t, c);
  const nl = style.levels;
  const r = grid.r;
  const px = p % grid.npw; const py = Math.floor(p / grid.npw);
  let bands; let bpx; let bpy;
  if (r === 0) {
    bands = [[nl, 0, 0]];
    bpx = grid.ppx; bpy = grid.ppy;
  } else {
    bands = [[nl - r + 1, 1, 0], [nl - r + 1, 0, 1], [nl - r + 1, 1, 1]];
    bpx = grid.ppx - 1; bpy = grid.ppy - 1;
  }
  const xcb = Math.min(style.cbW, bpx); const ycb = Math.min(style.cbH, bpy);
  return bands.map(([nb, xob, yob]) => {
    const [bx0, by0, bx1, by1] = bandBounds(tc, nb, xob, yob);
    const cx0 = (floorShift(grid.x0, grid.ppx) + px) * pow2(bpx);
    const cy0 = (floorShift(grid.y0, grid.ppy) + py) * pow2(bpy);
    const x0 = Math.max(cx0, bx0); const y0 = Math.max(cy0, by0);
    const x1 = Math.min(cx0 + pow2(bpx), bx1); const y1 = Math.min(cy0 + pow2(bpy), by1);
    if (x1 > x0 && y1 > y0) return [ceilDiv(x1, pow2(xcb)) - floorShift(x0, xcb), ceilDiv(y1, pow2(ycb)) - floorShift(y0, ycb)];
    return [0, 0];
  });
}

// Reference-grid point where the position-driven orders visit precinct rows (or columns)
// 0..count-1 (B.12.1.3): coord0 = first coordinate of the resolution, t0 = tile start.
function triggers(coord0, t0, pp, scale, count) {
  const m0 = floorShift(coord0, pp);
  const out = [];
  for (let k = 0; k < count; k++) out.push((k + m0) * pow2(pp) * scale);
  if (count) out[0] = coord0 % pow2(pp) ? t0 : coord0 * scale;
  return out;
}

/** The precincts of tile t in RPCL order (one layer): [{c, r, p}]. */
export function rpclPrecinctOrder(siz, t, styles) {
  const [tx0, ty0] = tileBounds(siz, t);
  const list = [];
  styles.forEach((style, c) => {
    const { dx, dy } = siz.components[c];
    const nl = style.levels;
    for (const g of resolutionGrids(siz, t, c, style)) {
      if (!g.numPrecincts) continue;
      const ty = triggers(g.y0, ty0, g.ppy, dy * pow2(nl - g.r), g.nph);
      const tx = triggers(g.x0, tx0, g.ppx, dx * pow2(nl - g.r), g.npw);
      for (let p = 0; p < g.numPrecincts; p++) {
        list.push({ c, r: g.r, p, ty: ty[Math.floor(p / g.npw)], tx: tx[p % g.npw], grid: g });
      }
    }
  });
  // RPCL: resolution, then position (y, then x), then component; stable otherwise.
  list.sort((a, b) => a.r - b.r || a.ty - b.ty || a.tx - b.tx || a.c - b.c);
  return list;
}

// ----- packet headers (B.10) -----

export class BitReader {
  constructor(buf, pos, end) {
    this.buf = buf; this.pos = pos; this.end = end;
    this.byte = 0; this.bits = 0; this.last = 0;
  }

  _nextByte() {
    if (this.pos >= this.end) throw new CodestreamError(this.pos, 'packet header runs past the data');
    const stuffed = this.last === 0xff;
    this.last = this.buf[this.pos++];
    if (stuffed) { this.byte = this.last & 0x7f; this.bits = 7; } else { this.byte = this.last; this.bits = 8; }
  }

  bit() {
    if (this.bits === 0) this._nextByte();
    this.bits -= 1;
    return (this.byte >> this.bits) & 1;
  }

  read(n) {
    let v = 0;
    while (n > 0) {
      if (this.bits === 0) this._nextByte();
      const take = n < this.bits ? n : this.bits;
      this.bits -= take;
      v = v * pow2(take) + ((this.byte >> this.bits) & ((1 << take) - 1));
      n -= take;
    }
    return v;
  }

  /** Ends the header: skips the stuffed byte after a final 0xFF; returns the position. */
  align() {
    this.bits = 0;
    if (this.last === 0xff) {
      if (this.pos >= this.end) throw new CodestreamError(this.pos, 'packet header ends on 0xFF at the end');
      this.pos += 1;
      this.last = 0;
    }
    return this.pos;
  }
}

const INFINITY = 2 ** 30;
const MAX_ZERO_BITPLANES = 80;
const DENSE_NODES = 1 << 12;

// A store of tag-tree node values: dense typed arrays for ordinary trees, a Map (only touched
// nodes) for the huge grids only crafted headers claim.
function nodeStore(total, fill) {
  if (total <= DENSE_NODES) return new Int32Array(total).fill(fill);
  const m = new Map();
  return { get: (k) => (m.has(k) ? m.get(k) : fill), set: (k, v) => m.set(k, v), sparse: true };
}

class TagTree {
  constructor(w, h) {
    const levels = [];
    let total = 0; let lw = w; let lh = h;
    for (;;) {
      levels.push([total, lw]);
      total += lw * lh;
      if (lw * lh <= 1) break;
      lw = (lw + 1) >> 1; lh = (lh + 1) >> 1;
    }
    this.w = w;
    this.levels = levels;
    this.dense = total <= DENSE_NODES;
    this.value = nodeStore(total, INFINITY);
    this.low = nodeStore(total, 0);
  }

  _get(store, k) { return this.dense ? store[k] : store.get(k); }

  _set(store, k, v) { if (this.dense) store[k] = v; else store.set(k, v); }

  /** -1 if the leaf is below `threshold`, else the level of the highest node known >= it. */
  decode(bits, leaf, threshold) {
    const x = leaf % this.w; const y = Math.floor(leaf / this.w);
    let low = 0;
    for (let lev = this.levels.length - 1; lev >= 0; lev--) {
      const [off, lw] = this.levels[lev];
      const node = off + (y >> lev) * lw + (x >> lev);
      const nl = this._get(this.low, node);
      if (low > nl) this._set(this.low, node, low); else low = nl;
      let v = this._get(this.value, node);
      while (low < threshold && low < v) {
        if (bits.bit()) { v = low; this._set(this.value, node, v); } else low += 1;
      }
      this._set(this.low, node, low);
      if (v >= threshold) return lev;
    }
    return -1;
  }

  /** The leaf's value, read to the end; an error past `limit`. */
  valueOf(bits, leaf, limit) {
    const x = leaf % this.w; const y = Math.floor(leaf / this.w);
    let low = 0;
    for (let lev = this.levels.length - 1; lev >= 0; lev--) {
      const [off, lw] = this.levels[lev];
      const node = off + (y >> lev) * lw + (x >> lev);
      const nl = this._get(this.low, node);
      if (low < nl) low = nl;
      let v = this._get(this.value, node);
      while (low < v) {
        if (bits.bit()) { v = low; this._set(this.value, node, v); } else {
          low += 1;
          if (low > limit) throw new CodestreamError(bits.pos, 'zero bit-plane tag tree does not terminate');
        }
      }
      this._set(this.low, node, low);
    }
    return low;
  }
}

function numPasses(bits) {
  if (!bits.bit()) return 1;
  if (!bits.bit()) return 2;
  let v = bits.read(2);
  if (v !== 3) return 3 + v;
  v = bits.read(5);
  if (v !== 31) return 6 + v;
  return 37 + bits.read(7);
}

function segmentMax(style, segno, firstPasses) {
  if (style & CBLK_HT) {
    if (segno === 0) return firstPasses;
    return segno % 2 === 1 ? 2 : 1;
  }
  if (style & CBLK_TERMALL) return 1;
  if (style & CBLK_BYPASS) {
    if (segno === 0) return 10;
    return segno % 2 === 1 ? 2 : 1;
  }
  return INFINITY;
}

class BandState {
  constructor(cw, ch) {
    this.cw = cw;
    this.count = cw * ch;
    this.incl = this.count ? new TagTree(cw, ch) : null;
    this.zbp = this.count ? new TagTree(cw, ch) : null;
    this.blocks = new Map(); // k -> [lblock, segno, segPasses, segMax]
    this.included = []; // sorted raster indices of the code-blocks included so far
  }
}

/** Everything a precinct's later packets need from its earlier ones. */
export class PrecinctState {
  constructor(bandGrids, style) {
    this.bandGrids = bandGrids;
    this.bands = null;
    this.style = style;
  }

  /** Decodes one packet header (bits at its start); returns the body length. */
  readHeader(bits, layer) {
    if (!bits.bit()) return 0; // empty packet
    if (this.bands === null) this.bands = this.bandGrids.map(([cw, ch]) => new BandState(cw, ch));
    let body = 0;
    for (const band of this.bands) if (band.count) body += this._readBand(bits, band, layer);
    return body;
  }

  _readBand(bits, band, layer) {
    const style = this.style;
    const ht = Boolean(style & CBLK_HT);
    const threshold = layer + 1;
    const { count, cw, blocks, included } = band;
    const oneSegment = !(style & (CBLK_HT | CBLK_TERMALL | CBLK_BYPASS));
    const newly = [];
    let body = 0;
    const nIncluded = included.length;
    let i = 0;
    let k = 0;
    while (k < count) {
      let state; let first;
      if (i < nIncluded && included[i] === k) {
        i += 1;
        if (!bits.bit()) { k += 1; continue; }
        state = blocks.get(k);
        first = false;
      } else {
        const level = band.incl.decode(bits, k, threshold);
        if (level >= 0) {
          if (level) { // skip the rest of that tag-tree node's span on this row
            const x = k % cw;
            const end = ((x >> level) + 1) << level;
            k += (end < cw ? end : cw) - x;
            while (i < nIncluded && included[i] < k) i += 1;
          } else k += 1;
          continue;
        }
        band.zbp.valueOf(bits, k, MAX_ZERO_BITPLANES);
        state = [3, 0, 0, 0];
        blocks.set(k, state);
        newly.push(k);
        first = true;
      }
      let n = numPasses(bits);
      while (bits.bit()) { // Lblock increment, a comma code
        state[0] += 1;
        if (state[0] > 64) throw new CodestreamError(bits.pos, 'Lblock grows without bound');
      }
      if (oneSegment) {
        body += bits.read(state[0] + bitLength(n) - 1);
        k += 1;
        continue;
      }
      if (first) {
        state[3] = segmentMax(style, 0, ht ? 1 + 3 * Math.floor((n - 1) / 3) : 0);
      } else if (state[2] >= state[3]) {
        state[1] += 1; state[2] = 0; state[3] = segmentMax(style, state[1], 0);
      }
      const lblock = state[0];
      while (n > 0) {
        const take = Math.min(state[3] - state[2], n);
        body += bits.read(lblock + bitLength(take) - 1);
        state[2] += take;
        n -= take;
        if (n > 0) { state[1] += 1; state[2] = 0; state[3] = segmentMax(style, state[1], 0); }
      }
      k += 1;
    }
    if (newly.length) band.included = [...included, ...newly].sort((a, b) => a - b);
    return body;
  }
}

/**
 * How many whole packets (layers, up to maxLayers) the start of a precinct bin holds, and where
 * the last of them ends: [count, end].
 */
export function completePackets(bandGrids, style, data, eph, maxLayers) {
  const state = new PrecinctState(bandGrids, style);
  let pos = 0;
  for (let layer = 0; layer < maxLayers; layer++) {
    if (pos >= data.length) return [layer, pos];
    let end; let body;
    try {
      const bits = new BitReader(data, pos, data.length);
      body = state.readHeader(bits, layer);
      end = bits.align();
    } catch (e) {
      if (e instanceof CodestreamError) return [layer, pos];
      throw e;
    }
    if (eph && end + 2 <= data.length && data[end] === 0xff && data[end + 1] === 0x92) end += 2;
    if (end + body > data.length) return [layer, pos];
    pos = end + body;
  }
  return [maxLayers, pos];
}

// ----- rebuild -----

/**
 * The marker segments of tile-header bin `t`, in either convention: the standard one (marker
 * segments only) or OpenJPEG opj_server's (`Lsot Isot Psot TPsot TNsot <segments> FF93`).
 */
export function tileHeaderSegments(data, t) {
  if (data.length < 12 || data[0] !== 0x00 || data[1] !== 0x0a) return data;
  const isot = u16(data, 2);
  if (isot !== t || data[data.length - 2] !== 0xff || data[data.length - 1] !== 0x93) {
    throw new CodestreamError(-1, `tile-header bin ${t} starts with an SOT body (Isot ${isot}) but is not SOT body ... SOD`);
  }
  return data.subarray(10, data.length - 2);
}

// Marker segments naming a component (Ccoc, Cqcc, Crgn: one byte, two when Csiz >= 257).
const COMPONENT_SEGMENTS = new Set([COC, QCC, RGN]);

/**
 * Header marker segments with layout markers and POC dropped, COD set to RPCL without SOP. With
 * a component selection (`sel`: {map: old index -> new, csiz: old Csiz, mct: keep the MCT
 * flag}), segments of other components are dropped and the rest renumbered.
 */
function rewriteHeader(data, start, sel = null) {
  const pieces = [];
  let pos = start;
  while (pos < data.length) {
    const seg = readSegment(data, pos, data.length);
    pos = seg.end;
    if (DROPPED.has(seg.code)) continue;
    let chunk = data.slice(seg.offset, seg.end);
    if (seg.code === COD) {
      chunk[4] &= ~0x02 & 0xff; // Scod: no SOP markers in the rebuilt stream
      chunk[5] = RPCL;
      if (sel && !sel.mct) chunk[8] = 0;
    } else if (sel && COMPONENT_SEGMENTS.has(seg.code)) {
      const wide = sel.csiz >= 257;
      const c = wide ? u16(chunk, 4) : chunk[4];
      if (!sel.map.has(c)) continue;
      const rest = chunk.subarray(wide ? 6 : 5);
      const out = new Uint8Array(5 + rest.length); // the new Csiz is below 257: one byte
      out.set([chunk[0], chunk[1], ((3 + rest.length) >> 8) & 0xff, (3 + rest.length) & 0xff, sel.map.get(c)]);
      out.set(rest, 5);
      chunk = out;
    }
    pieces.push(chunk);
  }
  return concat(pieces);
}

export function concat(pieces) {
  let n = 0;
  for (const p of pieces) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of pieces) { out.set(p, o); o += p.length; }
  return out;
}

function sotBytes(t, psot) {
  const b = new Uint8Array(12);
  b[0] = 0xff; b[1] = 0x90; b[2] = 0; b[3] = 10;
  b[4] = t >> 8; b[5] = t & 0xff;
  b[6] = (psot >>> 24) & 0xff; b[7] = (psot >>> 16) & 0xff; b[8] = (psot >>> 8) & 0xff; b[9] = psot & 0xff;
  b[10] = 0; b[11] = 1;
  return b;
}

/** A SIZ segment for the written grid and components. */
function sizSegment(siz, written) {
  const comps = written.components;
  const out = new Uint8Array(2 + 38 + 3 * comps.length);
  const put32 = (p, v) => { out[p] = (v >>> 24) & 0xff; out[p + 1] = (v >>> 16) & 0xff; out[p + 2] = (v >>> 8) & 0xff; out[p + 3] = v & 0xff; };
  out.set([0xff, 0x51, ((38 + 3 * comps.length) >> 8) & 0xff, (38 + 3 * comps.length) & 0xff, siz.rsiz >> 8, siz.rsiz & 0xff]);
  const w = written;
  [w.xsiz, w.ysiz, w.xosiz, w.yosiz, w.xtsiz, w.ytsiz, w.xtosiz, w.ytosiz].forEach((v, i) => put32(6 + 4 * i, v));
  out[38] = comps.length >> 8; out[39] = comps.length & 0xff;
  comps.forEach((comp, i) => out.set([(comp.precision - 1) | (comp.signed ? 0x80 : 0), comp.dx, comp.dy], 40 + 3 * i));
  return out;
}

function withTiles(grid) {
  const tilesX = ceilDiv(grid.xsiz - grid.xtosiz, grid.xtsiz);
  const tilesY = ceilDiv(grid.ysiz - grid.ytosiz, grid.ytsiz);
  return { ...grid, tilesX, tilesY, numTiles: tilesX * tilesY, width: grid.xsiz - grid.xosiz, height: grid.ysiz - grid.yosiz };
}

/**
 * The grid of a codestream holding tiles [p0, p1) x [q0, q1) of `siz`: their union, with the
 * tile grid moved so that those tiles keep their bounds (and so decode as they did).
 */
function tileCrop(siz, [p0, q0, p1, q1]) {
  const first = tileBounds(siz, q0 * siz.tilesX + p0);
  const last = tileBounds(siz, (q1 - 1) * siz.tilesX + (p1 - 1));
  return withTiles({
    ...siz, xosiz: first[0], yosiz: first[1], xsiz: last[2], ysiz: last[3],
    xtosiz: siz.xtosiz + p0 * siz.xtsiz, ytosiz: siz.ytosiz + q0 * siz.ytsiz,
  });
}

/**
 * The grid of a one-component codestream. A subsampled component (XRsiz, YRsiz > 1) gets the
 * same samples from a grid divided by its subsampling with XRsiz = YRsiz = 1, when every tile
 * boundary stays on a multiple of it: decoders then size their output by the component, not by
 * the whole grid. Returns {grid, unit}.
 */
function componentGrid(grid, comps) {
  if (comps.length !== 1) return { grid, unit: false };
  const { dx, dy } = comps[0];
  if (dx === 1 && dy === 1) return { grid, unit: false };
  const aligned = grid.numTiles === 1 || (grid.xtsiz % dx === 0 && grid.xtosiz % dx === 0
    && grid.ytsiz % dy === 0 && grid.ytosiz % dy === 0);
  if (!aligned) return { grid, unit: false };
  const g = {
    ...grid, xsiz: ceilDiv(grid.xsiz, dx), ysiz: ceilDiv(grid.ysiz, dy), xosiz: ceilDiv(grid.xosiz, dx),
    yosiz: ceilDiv(grid.yosiz, dy), xtosiz: ceilDiv(grid.xtosiz, dx), ytosiz: ceilDiv(grid.ytosiz, dy),
  };
  g.xtsiz = grid.numTiles === 1 ? g.xsiz - g.xtosiz : grid.xtsiz / dx;
  g.ytsiz = grid.numTiles === 1 ? g.ysiz - g.ytosiz : grid.ytsiz / dy;
  return { grid: withTiles(g), unit: true };
}

/**
 * Rebuilds codestreams from one codestream's data-bins, remembering what does not change
 * between calls (the precinct order of each tile, how much of each bin parsed as whole
 * packets) so that redrawing while data arrives stays cheap.
 *
 * Options: `comps`, the components to write (all by default), in order: a codestream of a
 * subset renumbers them, drops the segments of the others and keeps the MCT flag only for
 * exactly [0, 1, 2]; `tiles`, [p0, q0, p1, q1], the tile columns [p0, p1) and rows [q0, q1) to
 * write (all by default): the codestream then covers just those tiles. Either way the decoder
 * sees the same samples for what is written; `written` is the SIZ it sees.
 */
export class Rebuilder {
  constructor(mainHeader, { comps = null, tiles = null } = {}) {
    this.mainHeader = mainHeader.slice();
    this.main = parseMainHeader(this.mainHeader);
    const { siz } = this.main;
    const all = siz.components.map((_, c) => c);
    this.comps = comps ? [...comps] : all;
    if (!this.comps.length || this.comps.some((c) => !(c >= 0 && c < siz.components.length))) {
      throw new RangeError(`no such components: ${this.comps}`);
    }
    const range = tiles || [0, 0, siz.tilesX, siz.tilesY];
    const [p0, q0, p1, q1] = range;
    if (!(p0 >= 0 && q0 >= 0 && p1 <= siz.tilesX && q1 <= siz.tilesY && p0 < p1 && q0 < q1)) {
      throw new RangeError(`no such tiles: ${range}`);
    }
    this.tileList = [];
    for (let q = q0; q < q1; q++) for (let p = p0; p < p1; p++) this.tileList.push(q * siz.tilesX + p);
    const subset = this.comps.length !== all.length || this.comps.some((c, i) => c !== i);
    const cropped = p0 > 0 || q0 > 0 || p1 < siz.tilesX || q1 < siz.tilesY;
    const crop = cropped ? tileCrop(siz, range) : siz;
    const { grid, unit } = componentGrid(crop, this.comps.map((c) => siz.components[c]));
    this.written = { ...grid, components: this.comps.map((c) => (unit ? { ...siz.components[c], dx: 1, dy: 1 } : siz.components[c])) };
    this.sel = subset ? { map: new Map(this.comps.map((c, i) => [c, i])), csiz: siz.components.length, mct: this.comps.join() === '0,1,2' } : null;
    if (subset || cropped) {
      const afterSiz = readSegment(this.mainHeader, 2, this.mainHeader.length).end;
      this.headerOut = concat([sizSegment(siz, this.written), rewriteHeader(this.mainHeader, afterSiz, this.sel)]);
    } else {
      this.headerOut = rewriteHeader(this.mainHeader, 2);
    }
    this._tiles = new Map(); // t -> {key, plan}
    this._parsed = new Map(); // precinct id -> {held, take, have, end}
  }

  _tilePlan(t, k, tileHeader) {
    const key = tileHeader ? tileHeader.length : -1;
    const cached = this._tiles.get(t);
    if (cached && cached.key === key) return cached.plan;
    const { siz } = this.main;
    const segments = tileHeader ? tileHeaderSegments(tileHeader, t) : new Uint8Array(0);
    const markers = parseHeaderMarkers(segments, 0, segments.length, siz);
    const { cod, styles } = tileCoding(this.main, markers);
    const ncomp = siz.components.length;
    const ntiles = siz.numTiles;
    const sBase = styles.map((style, c) => {
      let s = 0;
      return resolutionGrids(siz, t, c, style).map((g) => { const b = s; s += g.numPrecincts; return b; });
    });
    // The order is that of the written codestream (its tile k, its components, its grid); the
    // precincts, their ids and their code-block grids are those of the original tile t.
    const chosen = this.comps.map((c) => styles[c]);
    const order = rpclPrecinctOrder(this.written, k, chosen).map(({ c: j, r, p }) => {
      const c = this.comps[j];
      const grid = resolutionGrids(siz, t, c, styles[c])[r];
      return { ident: t + (c + (sBase[c][r] + p) * ncomp) * ntiles, c, grid, p };
    });
    const plan = { cod, styles, order, header: rewriteHeader(segments, 0, this.sel) };
    this._tiles.set(t, { key, plan });
    for (const { ident } of order) this._parsed.delete(ident);
    return plan;
  }

  /**
   * A codestream from tile-header bins (Map t -> bytes, complete ones only) and precinct bins
   * (Map in-class id -> bytes held). Tiles without a header bin are still written with every
   * packet empty; `maxLayers` caps the layers taken from each bin.
   */
  rebuild(tileHeaders, precinctBins, maxLayers = null) {
    const { siz } = this.main;
    const pieces = [Uint8Array.of(0xff, 0x4f), this.headerOut];
    this.tileList.forEach((t, k) => {
      const plan = this._tilePlan(t, k, tileHeaders.get(t) || null);
      const { cod, styles } = plan;
      const layers = cod.layers;
      const take = maxLayers === null ? layers : Math.min(layers, maxLayers);
      const body = [];
      let bodyLength = 0;
      const emptyPackets = (count) => {
        if (count <= 0) return;
        const unit = cod.eph ? [0x00, 0xff, 0x92] : [0x00];
        const e = new Uint8Array(unit.length * count);
        for (let i = 0; i < count; i++) e.set(unit, i * unit.length);
        body.push(e);
        bodyLength += e.length;
      };
      let emptyRun = 0;
      for (const { ident, c, grid, p } of plan.order) {
        const data = precinctBins.get(ident);
        let have = 0;
        if (data && data.length) {
          let parsed = this._parsed.get(ident);
          if (!parsed || parsed.held !== data.length || parsed.take !== take) {
            const bands = precinctBandGrids(siz, t, c, styles[c], grid, p);
            const [count, end] = completePackets(bands, styles[c].cbStyle, data, cod.eph, take);
            parsed = { held: data.length, take, have: count, end };
            this._parsed.set(ident, parsed);
          }
          have = parsed.have;
          if (have) {
            emptyPackets(emptyRun);
            emptyRun = 0;
            body.push(data.subarray(0, parsed.end));
            bodyLength += parsed.end;
          }
        }
        emptyRun += layers - have;
      }
      emptyPackets(emptyRun);
      const psot = 12 + plan.header.length + 2 + bodyLength;
      pieces.push(sotBytes(k, psot), plan.header, Uint8Array.of(0xff, 0x93), ...body);
    });
    pieces.push(Uint8Array.of(0xff, 0xd9));
    return concat(pieces);
  }
}

/** The functional form (one call, nothing remembered): the same as the Python rebuild. */
export function rebuildCodestream(mainHeader, tileHeaders, precinctBins, { maxLayers = null, comps = null, tiles = null } = {}) {
  return new Rebuilder(mainHeader, { comps, tiles }).rebuild(tileHeaders, precinctBins, maxLayers);
}
