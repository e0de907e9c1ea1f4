// The client's data-bin cache: what JPP-streams delivered, per codestream and bin. The same
// rules as the Python client's client/bincache.py: a bin is a contiguous prefix plus pieces that
// arrived ahead of it; it is complete once its last byte and everything before it are held;
// bytes received twice are counted (duplicateBytes) and must agree with those held.

import { EXT_PRECINCT, MAIN_HEADER, METADATA, PRECINCT, TILE_HEADER } from './jpp.js';

export const MAX_BIN_BYTES = 2 ** 31;

export class StreamError extends Error {
  constructor(message) {
    super(message);
    this.name = 'StreamError';
  }
}

function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export class DataBin {
  constructor() {
    this._data = new Uint8Array(0);
    this.held = 0; // length of the contiguous prefix
    this.pending = new Map(); // offset -> bytes beyond the prefix
    this.length = null; // total length, known once the last byte arrived
  }

  /** The contiguous prefix held (a view: copy it to keep it). */
  get data() {
    return this._data.subarray(0, this.held);
  }

  get complete() {
    return this.length !== null && this.held >= this.length;
  }

  /** Stores a message body; returns how many of its bytes were already held. */
  add(offset, chunk, isLast) {
    let end = offset + chunk.length;
    if (end > MAX_BIN_BYTES) throw new StreamError(`data-bin grows past ${MAX_BIN_BYTES} bytes`);
    if (isLast) {
      if (this.length !== null && this.length !== end) {
        throw new StreamError(`bin length changes from ${this.length} to ${end}`);
      }
      this.length = end;
    }
    if (this.length !== null && end > this.length) throw new StreamError('message beyond the end of its data-bin');
    let dup = 0;
    if (offset < this.held) {
      const overlap = Math.min(end, this.held) - offset;
      if (!sameBytes(this._data.subarray(offset, offset + overlap), chunk.subarray(0, overlap))) {
        throw new StreamError(`bytes at offset ${offset} differ from those already held`);
      }
      dup = overlap;
      chunk = chunk.subarray(overlap);
      offset = this.held;
    }
    if (!chunk.length) return dup;
    if (offset === this.held) {
      this._append(chunk);
      this._absorbPending();
    } else {
      this.pending.set(offset, chunk.slice());
    }
    return dup;
  }

  _append(chunk) {
    const need = this.held + chunk.length;
    if (need > this._data.length) {
      const grown = new Uint8Array(Math.max(need, this._data.length * 2, 64));
      grown.set(this._data.subarray(0, this.held));
      this._data = grown;
    }
    this._data.set(chunk, this.held);
    this.held = need;
  }

  _absorbPending() {
    let progressed = true;
    while (progressed && this.pending.size) {
      progressed = false;
      for (const off of [...this.pending.keys()].sort((a, b) => a - b)) {
        const piece = this.pending.get(off);
        if (off <= this.held) {
          this.pending.delete(off);
          if (off + piece.length > this.held) this._append(piece.subarray(this.held - off));
          progressed = true;
          break;
        }
      }
    }
  }
}

export class CodestreamBins {
  constructor() {
    this.mainHeader = new DataBin();
    this.tileHeaders = new Map();
    this.precincts = new Map();
    this.version = 0; // bumped on every message: the decoder redraws when it changed
  }
}

function binOf(map, id) {
  let b = map.get(id);
  if (b === undefined) {
    b = new DataBin();
    map.set(id, b);
  }
  return b;
}

/** Everything the client holds, by codestream; fed with parsed JPP messages. */
export class BinCache {
  constructor() {
    this.streams = new Map();
    this.metadata = new Map();
    this.duplicateBytes = 0;
    this.messages = 0;
    this.dataBytes = 0;
    this.lastEor = null;
  }

  stream(cs) {
    let s = this.streams.get(cs);
    if (s === undefined) {
      s = new CodestreamBins();
      this.streams.set(cs, s);
    }
    return s;
  }

  add(item) {
    if (item.eor !== undefined) {
      this.lastEor = item.eor;
      return;
    }
    this.messages += 1;
    this.dataBytes += item.data.length;
    const cls = item.binClass;
    let bin;
    let s = null;
    if (cls === PRECINCT || cls === EXT_PRECINCT) {
      s = this.stream(item.csn);
      bin = binOf(s.precincts, item.binId);
    } else if (cls === TILE_HEADER) {
      s = this.stream(item.csn);
      bin = binOf(s.tileHeaders, item.binId);
    } else if (cls === MAIN_HEADER) {
      if (item.binId !== 0) throw new StreamError(`main header bin id ${item.binId} (only 0 exists)`);
      s = this.stream(item.csn);
      bin = s.mainHeader;
    } else if (cls === METADATA) {
      bin = binOf(this.metadata, item.binId);
    } else {
      throw new StreamError(`data-bin class ${cls} is not part of a JPP-stream`);
    }
    this.duplicateBytes += bin.add(item.offset, item.data, item.isLast);
    if (s !== null) s.version += 1;
  }

  /** The `model=` descriptors of what is held for codestream `cs` (to restate a session). */
  modelString(cs) {
    const items = [];
    const describe = (prefix, b) => {
      if (b.complete) items.push(prefix);
      else if (b.held) items.push(`${prefix}:${b.held}`);
    };
    const sorted = (m) => [...m.entries()].sort((a, b) => a[0] - b[0]);
    for (const [i, b] of sorted(this.metadata)) describe(`M${i}`, b);
    const s = this.streams.get(cs);
    if (s !== undefined) {
      describe('Hm', s.mainHeader);
      for (const [t, b] of sorted(s.tileHeaders)) describe(`H${t}`, b);
      for (const [i, b] of sorted(s.precincts)) describe(`P${i}`, b);
    }
    return items.length ? `[${cs}],${items.join(',')}` : '';
  }
}
