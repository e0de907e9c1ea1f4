// The viewer page: a canvas showing one target, panned by dragging, zoomed by the wheel (or a
// pinch) across resolution levels, with window/level for images deeper than 8 bits (right-drag).
// Each view asks the server for the frame size and region on screen only; data is decoded in
// a worker as it arrives (progressive display) and every byte is fetched once.
//
// Public API (window.jpipViewer):
//   view({fsiz: [w, h], roff: [x, y], rsiz: [w, h], stream}) -> Promise, resolved when every
//     byte of that view is received, decoded and drawn
//   decoded() -> {width, height, components, bitDepth, signed, data, planes}: the view's decoded
//     samples, component-interleaved in `data` (null if the components differ in size: then
//     one {width, height, data} per component in `planes`), before any display mapping
//   stats() -> {requests, bytes, channelsOpened, duplicateBytes}
//   document.body.dataset.state: "loading" while data is in flight or decoding, "idle" after
//   ("error", set by main.js, when the page could not start).

import { JPIPClient } from './client.js';
import { headerInfo } from './codestream.js';
import { UnsupportedImage, cutRegion, decodeGroups } from './decode.js';
import { colourSpace } from './jp2.js';
import { EOR } from './jpp.js';
import { groupCodestreams, tilesOf } from './views.js';
import { frameSize, resolveWindow } from './window.js';

const REDRAW_EVERY_MS = 150; // progressive display: at most this often while data arrives
const SETTLE_MS = 120; // after an interaction, wait this long before asking the server
const MAX_DECODE_SAMPLES = 48e6; // a frame to decode is kept below this (memory of the codecs)
const KEPT_FRAMES = 4;
const MIN_ZOOM_OUT = 0.25; // of the fitting scale
const MAX_ZOOM_IN = 16; // screen pixels per image sample

export class Superseded extends Error {
  constructor() {
    super('a newer view replaced this one');
    this.name = 'Superseded';
  }
}

/** The viewer's parameters from its URL: target, the first view's fields, an access token. */
export function pageParams(search) {
  const q = new URLSearchParams(search);
  const pair = (name) => {
    const v = q.get(name);
    if (v === null) return null;
    const parts = v.split(',');
    const nums = parts.slice(0, 2).map(Number);
    if (nums.length !== 2 || nums.some((n) => !Number.isInteger(n) || n < 0)) throw new Error(`${name}: expected two integers, got "${v}"`);
    return parts.length > 2 ? [...nums, parts[2]] : nums;
  };
  const stream = q.get('stream');
  return {
    target: q.get('target'), fsiz: pair('fsiz'), roff: pair('roff'), rsiz: pair('rsiz'),
    stream: stream === null ? null : Number(stream), token: q.get('access_token'),
  };
}

function withToken(url, token) {
  if (!token) return url;
  return `${url}${url.includes('?') ? '&' : '?'}access_token=${encodeURIComponent(token)}`;
}

async function getJson(url, token) {
  const resp = await fetch(withToken(url, token), { cache: 'no-store' });
  if (!resp.ok) throw new Error(`${url.split('?')[0]}: ${resp.status} ${(await resp.text()).trim()}`);
  return resp.json();
}

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 ** 2).toFixed(1)} MB`;
}

/** Window centre/width, rescale and photometric interpretation from DICOM JSON (PS3.18 F.2). */
export function dicomDisplay(json) {
  const first = (tag) => {
    const v = json && json[tag] && json[tag].Value;
    return v && v.length ? v[0] : undefined;
  };
  const num = (tag) => {
    const v = first(tag);
    const n = typeof v === 'string' ? Number(v) : v;
    return Number.isFinite(n) ? n : undefined;
  };
  return {
    center: num('00281050'), width: num('00281051'), intercept: num('00281052') ?? 0,
    slope: num('00281053') ?? 1, photometric: first('00280004'),
  };
}

export class Viewer {
  constructor(root, params) {
    this.root = root;
    this.params = params;
    this.canvas = root.querySelector('canvas');
    this.ctx = this.canvas.getContext('2d');
    this.overlay = root.querySelector('#overlay');
    this.errorBox = root.querySelector('#error');
    this.slider = root.querySelector('#frame');
    this.generation = 0;
    this.frames = []; // decoded frames kept for drawing: [{stream, d, planes, canvas, ...}]
    this.completed = []; // windows received in full: [{stream, d, region}]
    this.headers = new Map(); // stream -> headerInfo of its main header
    this.rebuilders = new Map(); // stream -> Map of Rebuilders
    this.current = null; // the view being shown: {fields, win, stream, gen}
    this.windowLevel = null; // {center, width} in modality units
    this.dicom = null;
    this._decodeId = 0;
    this._decodes = new Map();
    this._lastDecode = 0;
    this._pending = null; // a progressive decode waiting to run
    this._settle = null;
    this._loading = 0;
    this.setState('loading');
  }

  setState(state) {
    document.body.dataset.state = state;
  }

  showError(message) {
    this.errorBox.textContent = message;
    this.errorBox.hidden = !message;
  }

  async init() {
    const { target, token } = this.params;
    if (!target) throw new Error('no target: open the viewer as /viewer?target=NAME');
    this.info = await getJson(`/api/info?target=${encodeURIComponent(target)}`, token);
    document.title = `${target} - JPIP viewer`;
    this.root.querySelector('#title').textContent = target;
    if (this.info.dicom_json) {
      try {
        this.dicom = dicomDisplay(await getJson(this.info.dicom_json, token));
      } catch (e) {
        this.dicom = null; // the image still shows, with defaults from the data
      }
    }
    this.client = new JPIPClient({ jpipPath: this.info.jpip_path, target, token });
    this.client.onData = () => this._dataArrived();
    window.addEventListener('pagehide', () => this.client.closeNow());
    this.worker = new Worker('/viewer/worker.js');
    this.worker.onmessage = ({ data }) => this._workerMessage(data);
    await new Promise((resolve, reject) => { this._workerReady = { resolve, reject }; });
    this.stream = this.params.stream ?? this.info.first_codestream;
    this._setupSlider();
    this._resize();
    new ResizeObserver(() => {
      const before = [this.canvas.width, this.canvas.height];
      this._resize();
      if (before[0] === this.canvas.width && before[1] === this.canvas.height) return;
      this._clampView();
      this._draw();
      this._scheduleLoad();
    }).observe(this.canvas);
    this._bindInput();
    const { fsiz, roff, rsiz } = this.params;
    try {
      if (fsiz) return await this.view({ fsiz, roff, rsiz, stream: this.stream });
      this.fit();
      return await this._load(this._visibleFields());
    } catch (e) {
      if (e instanceof Superseded) return null; // the user moved on before the first view came
      throw e;
    }
  }

  // ----- geometry -------------------------------------------------------------------------

  /** The reference grid of a codestream: its own main header once received, else /api/info. */
  siz(stream = this.stream) {
    const h = this.headers.get(stream);
    if (h) return h.siz;
    const { width, height, offset } = this.info;
    return { xosiz: offset[0], yosiz: offset[1], xsiz: offset[0] + width, ysiz: offset[1] + height };
  }

  _resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(this.canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(this.canvas.clientHeight * dpr));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
  }

  fitScale() {
    const s = this.siz();
    return Math.min(this.canvas.width / (s.xsiz - s.xosiz), this.canvas.height / (s.ysiz - s.yosiz));
  }

  fit() {
    const s = this.siz();
    this.scale = this.fitScale();
    this.cx = (s.xosiz + s.xsiz) / 2;
    this.cy = (s.yosiz + s.ysiz) / 2;
  }

  _clampView() {
    const fit = this.fitScale();
    this.scale = Math.min(Math.max(this.scale, fit * MIN_ZOOM_OUT), MAX_ZOOM_IN);
    const s = this.siz();
    this.cx = Math.min(Math.max(this.cx, s.xosiz), s.xsiz);
    this.cy = Math.min(Math.max(this.cy, s.yosiz), s.ysiz);
  }

  /** The visible part of the image on the reference grid: [x0, y0, x1, y1] (may be empty). */
  _visibleRegion() {
    const s = this.siz();
    const hw = this.canvas.width / (2 * this.scale);
    const hh = this.canvas.height / (2 * this.scale);
    return [Math.max(s.xosiz, this.cx - hw), Math.max(s.yosiz, this.cy - hh),
      Math.min(s.xsiz, this.cx + hw), Math.min(s.ysiz, this.cy + hh)];
  }

  /** The discard level for the current scale: the coarsest whose samples are not magnified. */
  _level(region) {
    const maxD = Math.min(this.info.levels, this.info.min_levels);
    let d = Math.min(maxD, Math.max(0, Math.floor(Math.log2(1 / this.scale) + 1e-9)));
    // Whole frames (of the tiles in view) are decoded: keep them within the codecs' memory.
    const s = this.siz();
    const comps = this.info.components.length;
    const tiled = this.headers.get(this.stream);
    while (d < maxD) {
      let [x0, y0, x1, y1] = [s.xosiz, s.yosiz, s.xsiz, s.ysiz];
      if (tiled) {
        const t = tilesOf(tiled.siz, region);
        const ts = tiled.siz;
        x0 = Math.max(s.xosiz, ts.xtosiz + t[0] * ts.xtsiz); y0 = Math.max(s.yosiz, ts.ytosiz + t[1] * ts.ytsiz);
        x1 = Math.min(s.xsiz, ts.xtosiz + t[2] * ts.xtsiz); y1 = Math.min(s.ysiz, ts.ytosiz + t[3] * ts.ytsiz);
      }
      if (((x1 - x0) / 2 ** d) * ((y1 - y0) / 2 ** d) * comps <= MAX_DECODE_SAMPLES) break;
      d += 1;
    }
    return d;
  }

  /** The JPIP fields of what is on screen: the frame size of its level, the visible region. */
  _visibleFields() {
    const region = this._visibleRegion();
    const d = this._level(region);
    const s = this.siz();
    const [w, h] = frameSize(s, d);
    const scale = 2 ** d;
    const bx = Math.ceil(s.xosiz / scale); const by = Math.ceil(s.yosiz / scale);
    const fx0 = Math.min(w, Math.max(0, Math.floor(region[0] / scale) - bx));
    const fy0 = Math.min(h, Math.max(0, Math.floor(region[1] / scale) - by));
    const fx1 = Math.min(w, Math.max(fx0, Math.ceil(region[2] / scale) - bx));
    const fy1 = Math.min(h, Math.max(fy0, Math.ceil(region[3] / scale) - by));
    return { fsiz: [w, h], roff: [fx0, fy0], rsiz: [Math.max(1, fx1 - fx0), Math.max(1, fy1 - fy0)], stream: this.stream };
  }

  // ----- views ----------------------------------------------------------------------------

  /** The public view(): shows exactly that window (fitted to the canvas) once fully received. */
  async view({ fsiz, roff = null, rsiz = null, stream = this.stream }) {
    if (!fsiz) throw new Error('view() needs fsiz');
    if (stream !== this.stream) this._setStream(stream, false);
    const win = resolveWindow(this.siz(stream), this.info.levels, { fsiz, roff, rsiz });
    const [x0, y0, x1, y1] = win.region;
    if (x1 > x0 && y1 > y0) {
      this.scale = Math.min(this.canvas.width / (x1 - x0), this.canvas.height / (y1 - y0));
      this.cx = (x0 + x1) / 2;
      this.cy = (y0 + y1) / 2;
    }
    return this._load({ fsiz, roff, rsiz, stream });
  }

  _held(stream, win) {
    const [x0, y0, x1, y1] = win.region;
    return this.completed.some((c) => c.stream === stream && c.d === win.discard
      && c.region[0] <= x0 && c.region[1] <= y0 && c.region[2] >= x1 && c.region[3] >= y1);
  }

  /** Fetches (unless held), decodes and draws a view; the newest call wins. */
  async _load(fields) {
    const gen = ++this.generation;
    const stream = fields.stream ?? this.stream;
    const win = resolveWindow(this.siz(stream), this.info.levels, fields);
    this.current = { fields, win, stream, gen };
    this._loading += 1;
    this.setState('loading');
    try {
      if (!this._held(stream, win)) {
        const eor = await this.client.fetchWindow({ ...fields, stream });
        if (eor === EOR.WINDOW_CHANGE || gen !== this.generation) throw new Superseded();
        this.completed.push({ stream, d: win.discard, region: win.region });
      }
      if (gen !== this.generation) throw new Superseded();
      await this._decode(gen);
      if (gen !== this.generation) throw new Superseded();
      this._draw();
      this.showError('');
      return this.current.frame ? this._describe() : null;
    } catch (e) {
      if (!(e instanceof Superseded) && gen === this.generation) this.showError(e.message);
      throw e;
    } finally {
      this._loading -= 1;
      if (this._loading === 0 && gen === this.generation) this.setState('idle');
    }
  }

  _describe() {
    const { win, stream } = this.current;
    return { stream, discard: win.discard, fsiz: win.frame, roff: win.offset, rsiz: win.size };
  }

  _scheduleLoad() {
    if (!this.client) return;
    this.setState('loading');
    clearTimeout(this._settle);
    this._settle = setTimeout(() => {
      this._load(this._visibleFields()).catch(() => {});
    }, SETTLE_MS);
  }

  // ----- decoding -------------------------------------------------------------------------

  _dataArrived() {
    const bins = this.client.cache.streams.get(this.stream);
    if (bins && !this.headers.has(this.stream) && bins.mainHeader.complete) {
      this.headers.set(this.stream, headerInfo(bins.mainHeader.data));
    }
    // Progressive display: redraw what arrived so far, not more often than REDRAW_EVERY_MS.
    if (this._pending || !this.current) return;
    const wait = Math.max(0, this._lastDecode + REDRAW_EVERY_MS - performance.now());
    this._pending = setTimeout(() => {
      this._pending = null;
      const gen = this.generation;
      this._decode(gen).then(() => { if (gen === this.generation) this._draw(); }, () => {});
    }, wait);
  }

  /** Decodes the current view's tiles from what the cache holds (unless already decoded). */
  async _decode(gen) {
    const { stream, win } = this.current;
    const bins = this.client.cache.streams.get(stream);
    if (!bins || !bins.mainHeader.complete) return;
    let header = this.headers.get(stream);
    if (!header) {
      header = headerInfo(bins.mainHeader.data);
      this.headers.set(stream, header);
    }
    const d = win.discard;
    const tiles = tilesOf(header.siz, win.region);
    const key = `${stream}|${d}|${tiles.join(',')}`;
    this.current.frameKey = key;
    const kept = this.frames.find((f) => f.key === key);
    if (kept && kept.version === bins.version) {
      this.current.frame = kept;
      kept.used = performance.now();
      return;
    }
    if (this._decoding && this._decoding.key === key && this._decoding.version === bins.version) {
      await this._decoding.promise;
      return;
    }
    const groups = decodeGroups(header); // UnsupportedImage: shown as the page's error
    let rebuilders = this.rebuilders.get(stream);
    if (!rebuilders) this.rebuilders.set(stream, (rebuilders = new Map()));
    const version = bins.version;
    const built = groupCodestreams(bins, groups, rebuilders, { tiles });
    const job = { key, version };
    job.promise = this._worker({
      groups: built.map((g) => ({ comps: g.comps, codec: g.codec, codestream: g.codestream.buffer, written: g.written })),
      discard: d, layers: 0, siz: header.siz,
    }, built.map((g) => g.codestream.buffer)).then((planes) => {
      const frame = { key, stream, d, version, planes, siz: header.siz, used: performance.now() };
      frame.canvas = this._render(frame);
      this.frames = this.frames.filter((f) => f.key !== key);
      this.frames.push(frame);
      this._evict();
      if (this.current.frameKey === key) this.current.frame = frame;
      return frame;
    });
    this._decoding = job;
    this._lastDecode = performance.now();
    try {
      await job.promise;
    } finally {
      if (this._decoding === job) this._decoding = null;
    }
  }

  _worker(message, transfer) {
    const id = ++this._decodeId;
    return new Promise((resolve, reject) => {
      this._decodes.set(id, { resolve, reject });
      this.worker.postMessage({ id, ...message }, transfer);
    });
  }

  _workerMessage(data) {
    if (data.ready !== undefined) {
      if (data.ready) this._workerReady.resolve();
      else this._workerReady.reject(new Error(data.error));
      return;
    }
    const waiting = this._decodes.get(data.id);
    if (!waiting) return;
    this._decodes.delete(data.id);
    if (data.error) waiting.reject(data.unsupported ? new UnsupportedImage(data.error) : new Error(`decoding failed: ${data.error}`));
    else waiting.resolve(data.planes);
  }

  _evict() {
    while (this.frames.length > KEPT_FRAMES) {
      let oldest = null;
      for (const f of this.frames) {
        if (this.current && this.current.frame === f) continue;
        if (!oldest || f.used < oldest.used) oldest = f;
      }
      this.frames = this.frames.filter((f) => f !== oldest);
    }
  }

  // ----- display --------------------------------------------------------------------------

  _defaultWindowLevel(frame) {
    const comps = this.info.components;
    const depth = Math.max(...comps.map((c) => c.precision));
    const d = this.dicom;
    if (d && d.center !== undefined && d.width !== undefined && d.width > 0) return { center: d.center, width: d.width };
    if (depth <= 8 && !comps[0].signed) return { center: 2 ** depth / 2, width: 2 ** depth };
    // Deeper data: the range of the first frame decoded.
    const { slope, intercept } = this._rescale();
    let lo = Infinity; let hi = -Infinity;
    const data = frame.planes[0].data;
    for (let i = 0; i < data.length; i++) {
      const v = data[i];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (!Number.isFinite(lo)) return { center: 0, width: 1 };
    const a = lo * slope + intercept; const b = hi * slope + intercept;
    return { center: (a + b) / 2, width: Math.max(1, Math.abs(b - a) + 1) };
  }

  _rescale() {
    return this.dicom ? { slope: this.dicom.slope, intercept: this.dicom.intercept } : { slope: 1, intercept: 0 };
  }

  /** A lookup from sample value to display level 0..255 for the current window/level. */
  _lut(comp) {
    const { slope, intercept } = this._rescale();
    const { center, width } = this.windowLevel;
    const invert = this.dicom && this.dicom.photometric === 'MONOCHROME1';
    const lo = comp.signed ? -(2 ** (comp.precision - 1)) : 0;
    const n = 2 ** comp.precision;
    const lut = new Uint8ClampedArray(n);
    // DICOM's linear VOI function (PS3.3 C.11.2.1.2.1).
    for (let i = 0; i < n; i++) {
      const v = (lo + i) * slope + intercept;
      let y = ((v - (center - 0.5)) / Math.max(width - 1, 1) + 0.5) * 255;
      if (width <= 1) y = v <= center - 0.5 ? 0 : 255;
      lut[i] = invert ? 255 - y : y;
    }
    return { lut, lo };
  }

  /** The frame's samples mapped for display, as a canvas the size of component 0's plane. */
  _render(frame) {
    if (!this.windowLevel) this.windowLevel = this._defaultWindowLevel(frame);
    const { planes } = frame;
    const comps = this.info.components;
    const p0 = planes[0];
    const out = new OffscreenCanvas(Math.max(1, p0.width), Math.max(1, p0.height));
    if (!p0.width || !p0.height) return out;
    const image = new ImageData(p0.width, p0.height);
    const px = image.data;
    const n = p0.width * p0.height;
    const colour = planes.length >= 3;
    const luts = (colour ? [0, 1, 2] : [0]).map((c) => this._lut(comps[c]));
    // Components of other sizes (subsampled) are sampled at the nearest position.
    const sample = (c) => {
      const p = planes[c];
      if (p.width === p0.width && p.height === p0.height) return (i) => p.data[i];
      const rx = comps[0].dx / comps[c].dx; const ry = comps[0].dy / comps[c].dy;
      return (i) => {
        const x = i % p0.width; const y = (i - x) / p0.width;
        const u = Math.min(p.width - 1, Math.max(0, Math.floor((p0.x0 + x) * rx) - p.x0));
        const v = Math.min(p.height - 1, Math.max(0, Math.floor((p0.y0 + y) * ry) - p.y0));
        return p.data[v * p.width + u];
      };
    };
    if (!colour) {
      const { lut, lo } = luts[0];
      const data = p0.data;
      for (let i = 0, j = 0; i < n; i++, j += 4) {
        const g = lut[data[i] - lo];
        px[j] = g; px[j + 1] = g; px[j + 2] = g; px[j + 3] = 255;
      }
    } else {
      const get = [0, 1, 2].map(sample);
      const sycc = this._colour() === 'sycc';
      for (let i = 0, j = 0; i < n; i++, j += 4) {
        let r = luts[0].lut[get[0](i) - luts[0].lo];
        let g = luts[1].lut[get[1](i) - luts[1].lo];
        let b = luts[2].lut[get[2](i) - luts[2].lo];
        if (sycc) { // YCbCr (sYCC, full range) to RGB, for display only
          const y = r; const cb = g - 128; const cr = b - 128;
          r = y + 1.402 * cr; g = y - 0.344136 * cb - 0.714136 * cr; b = y + 1.772 * cb;
        }
        px[j] = r; px[j + 1] = g; px[j + 2] = b; px[j + 3] = 255;
      }
    }
    out.getContext('2d').putImageData(image, 0, 0);
    return out;
  }

  _colour() {
    return colourSpace(this.client.cache.metadata);
  }

  _rerender() {
    for (const f of this.frames) f.canvas = this._render(f);
    this._draw();
  }

  /** Draws the kept frames of the current codestream, coarse to fine, and the overlay. */
  _draw() {
    const ctx = this.ctx;
    const { width: cw, height: ch } = this.canvas;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = '#111';
    ctx.fillRect(0, 0, cw, ch);
    const frames = this.frames.filter((f) => f.stream === this.stream).sort((a, b) => b.d - a.d);
    for (const f of frames) {
      const p0 = f.planes[0];
      const comp = this.info.components[0];
      const sx = comp.dx * 2 ** f.d; const sy = comp.dy * 2 ** f.d;
      // Plane sample (u, v) covers [u*sx, (u+1)*sx) x [v*sy, (v+1)*sy) on the reference grid.
      const x = (p0.x0 * sx - this.cx) * this.scale + cw / 2;
      const y = (p0.y0 * sy - this.cy) * this.scale + ch / 2;
      ctx.imageSmoothingEnabled = sx * this.scale < 1;
      ctx.drawImage(f.canvas, x, y, p0.width * sx * this.scale, p0.height * sy * this.scale);
    }
    this._drawOverlay();
  }

  _drawOverlay() {
    const st = this.client ? this.client.stats : { requests: 0, bytes: 0 };
    const levels = this.info ? this.info.levels : 0;
    const parts = [];
    if (this.current) {
      const { win } = this.current;
      parts.push(`resolution ${levels - win.discard}/${levels} (${win.frame[0]}\u00d7${win.frame[1]})`);
    }
    parts.push(`${fmtBytes(st.bytes)} in ${st.requests} request${st.requests === 1 ? '' : 's'}`);
    if (this.info && this.info.codestreams > 1) parts.push(`${this.info.dicom ? 'frame' : 'codestream'} ${this.stream}`);
    if (this.windowLevel && (this.info.bit_depth > 8 || this.dicom)) {
      parts.push(`W ${Math.round(this.windowLevel.width)} L ${Math.round(this.windowLevel.center)}`);
    }
    this.overlay.textContent = parts.join(' \u00b7 ');
  }

  // ----- interaction ----------------------------------------------------------------------

  _setupSlider() {
    const { codestreams, first_codestream: first } = this.info;
    if (codestreams <= 1) return;
    this.slider.hidden = false;
    this.slider.min = String(first);
    this.slider.max = String(first + codestreams - 1);
    this.slider.value = String(this.stream);
    this.slider.addEventListener('input', () => this._setStream(Number(this.slider.value), true));
  }

  _setStream(stream, load) {
    const { codestreams, first_codestream: first } = this.info;
    const s = Math.min(first + codestreams - 1, Math.max(first, stream));
    if (s === this.stream) return;
    this.stream = s;
    this.slider.value = String(s);
    this._draw();
    if (load) this._scheduleLoad();
  }

  _zoomAt(factor, px, py) {
    const before = this.scale;
    this.scale *= factor;
    this._clampView();
    const applied = this.scale / before;
    // Keep the image point under (px, py) where it is.
    const ix = this.cx + (px - this.canvas.width / 2) / before;
    const iy = this.cy + (py - this.canvas.height / 2) / before;
    this.cx = ix - (ix - this.cx) / applied;
    this.cy = iy - (iy - this.cy) / applied;
    this._clampView();
    this._draw();
    this._scheduleLoad();
  }

  _panBy(dx, dy) {
    this.cx -= dx / this.scale;
    this.cy -= dy / this.scale;
    this._clampView();
    this._draw();
    this._scheduleLoad();
  }

  _adjustWindowLevel(dx, dy) {
    if (!this.windowLevel) return;
    const step = Math.max(this.windowLevel.width, 1) / 256;
    this.windowLevel = { width: Math.max(1, this.windowLevel.width + dx * step), center: this.windowLevel.center + dy * step };
    this._rerender();
  }

  _bindInput() {
    const c = this.canvas;
    const dpr = () => window.devicePixelRatio || 1;
    const pointers = new Map();
    let pinch = null;
    c.addEventListener('contextmenu', (e) => e.preventDefault());
    c.addEventListener('pointerdown', (e) => {
      c.setPointerCapture(e.pointerId);
      pointers.set(e.pointerId, { x: e.offsetX, y: e.offsetY, button: e.button });
      if (pointers.size === 2) {
        const [a, b] = [...pointers.values()];
        pinch = { dist: Math.hypot(a.x - b.x, a.y - b.y) };
      }
    });
    c.addEventListener('pointermove', (e) => {
      const p = pointers.get(e.pointerId);
      if (!p) return;
      const dx = (e.offsetX - p.x) * dpr(); const dy = (e.offsetY - p.y) * dpr();
      p.x = e.offsetX; p.y = e.offsetY;
      if (pointers.size === 2 && pinch) {
        const [a, b] = [...pointers.values()];
        const dist = Math.hypot(a.x - b.x, a.y - b.y);
        if (pinch.dist > 0) this._zoomAt(dist / pinch.dist, ((a.x + b.x) / 2) * dpr(), ((a.y + b.y) / 2) * dpr());
        pinch.dist = dist;
      } else if (p.button === 2 || e.shiftKey) {
        this._adjustWindowLevel(dx, dy);
      } else {
        this._panBy(dx, dy);
      }
    });
    const up = (e) => { pointers.delete(e.pointerId); if (pointers.size < 2) pinch = null; };
    c.addEventListener('pointerup', up);
    c.addEventListener('pointercancel', up);
    c.addEventListener('wheel', (e) => {
      e.preventDefault();
      const amount = e.deltaMode === 1 ? e.deltaY * 33 : e.deltaY;
      this._zoomAt(Math.pow(2, -amount / 300), e.offsetX * dpr(), e.offsetY * dpr());
    }, { passive: false });
    window.addEventListener('keydown', (e) => {
      if (e.target instanceof HTMLInputElement) return; // the frame slider has its own keys
      const w = this.canvas.width; const h = this.canvas.height;
      const keys = {
        '+': () => this._zoomAt(2, w / 2, h / 2), '=': () => this._zoomAt(2, w / 2, h / 2),
        '-': () => this._zoomAt(0.5, w / 2, h / 2),
        ArrowLeft: () => this._panBy(w / 10, 0), ArrowRight: () => this._panBy(-w / 10, 0),
        ArrowUp: () => this._panBy(0, h / 10), ArrowDown: () => this._panBy(0, -h / 10),
        0: () => { this.fit(); this._draw(); this._scheduleLoad(); },
        Home: () => { this.fit(); this._draw(); this._scheduleLoad(); },
        1: () => this._zoomAt(1 / this.scale, w / 2, h / 2),
        PageUp: () => this._setStream(this.stream - 1, true), ',': () => this._setStream(this.stream - 1, true),
        PageDown: () => this._setStream(this.stream + 1, true), '.': () => this._setStream(this.stream + 1, true),
        r: () => { if (this.frames.length) { this.windowLevel = null; this.windowLevel = this._defaultWindowLevel(this.frames.at(-1)); this._rerender(); } },
        i: () => { this.overlay.hidden = !this.overlay.hidden; },
      };
      const action = keys[e.key];
      if (action) {
        e.preventDefault();
        action();
      }
    });
  }

  // ----- the public API -------------------------------------------------------------------

  decoded() {
    if (!this.current || !this.current.frame) return null;
    const { win, frame } = this.current;
    return cutRegion(frame.siz, win.discard, frame.planes, win.region);
  }

  stats() {
    return this.client.stats;
  }
}
