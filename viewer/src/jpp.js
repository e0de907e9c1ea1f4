// JPP-stream messages (ISO 15444-9 A.2; EOR from D.3): an incremental parser for one HTTP
// response, following the rules of the Python client's jpip/jpp.py StreamParser.
//
// Header layout: Bin-ID [Class] [CSn] Msg-Offset Msg-Length [Aux], every field a VBAS. The first
// Bin-ID byte is `Xbbc iiii`: bb says which of Class/CSn follow (1 none, 2 Class, 3 both), c marks
// the message holding the bin's last byte, and a k-byte Bin-ID carries 7k-3 id bits. Absent
// Class/CSn repeat the previous message's; they start from 0/0 at each HTTP response.

export const PRECINCT = 0;
export const EXT_PRECINCT = 1;
export const TILE_HEADER = 2;
export const TILE = 4;
export const EXT_TILE = 5;
export const MAIN_HEADER = 6;
export const METADATA = 8;
export const KNOWN_CLASSES = new Set([PRECINCT, EXT_PRECINCT, TILE_HEADER, TILE, EXT_TILE,
  MAIN_HEADER, METADATA]);

export const EOR = Object.freeze({
  IMAGE_DONE: 1, WINDOW_DONE: 2, WINDOW_CHANGE: 3, BYTE_LIMIT: 4, QUALITY_LIMIT: 5,
  SESSION_LIMIT: 6, RESPONSE_LIMIT: 7, UNSPECIFIED: 255,
});

const MAX_VBAS_BYTES = 8;
// JavaScript numbers hold integers exactly up to 2^53; longer VBAS values (which the Python
// side accepts up to 2^56) would be silently wrong here, so they are refused.
const MAX_SAFE = 2 ** 53;

export class JPPError extends Error {
  constructor(reason, offset) {
    super(`${reason} (at byte ${offset})`);
    this.name = 'JPPError';
    this.reason = reason;
    this.offset = offset;
  }
}

/**
 * Reads a VBAS at `pos` (not past `end`). Returns [value, new position], the position being -1
 * when the buffer ends first (wait for more bytes). Throws JPPError past 8 bytes.
 */
export function readVbas(buf, pos, end, base = 0) {
  let value = 0;
  const stop = Math.min(end, pos + MAX_VBAS_BYTES);
  let i = pos;
  while (i < stop) {
    const b = buf[i++];
    value = value * 128 + (b & 0x7f);
    if (b < 0x80) {
      if (value >= MAX_SAFE) throw new JPPError('VBAS value beyond 2^53', base + pos);
      return [value, i];
    }
  }
  if (i - pos >= MAX_VBAS_BYTES) throw new JPPError(`VBAS longer than ${MAX_VBAS_BYTES} bytes`, base + pos);
  return [0, -1];
}

/** Minimal VBAS encoding (for tests and the rare client-built message). */
export function encodeVbas(value) {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`bad VBAS value ${value}`);
  const out = [value % 128];
  value = Math.floor(value / 128);
  while (value > 0) {
    out.push(0x80 | (value % 128));
    value = Math.floor(value / 128);
  }
  return Uint8Array.from(out.reverse());
}

/**
 * One data-bin message: `data` holds bytes [offset, offset + data.length) of the bin.
 * @typedef {{binClass: number, csn: number, binId: number, offset: number, data: Uint8Array,
 *            isLast: boolean, aux: number|null}} Message
 * The end of a response: @typedef {{eor: number, body: Uint8Array}} EndOfResponse
 */

/**
 * Incremental JPP-stream parser for one HTTP response: feed() returns every item completed so
 * far and keeps the rest, so chunk boundaries may fall anywhere. Errors are sticky.
 */
export class StreamParser {
  constructor(maxMessageLength = 2 ** 31) {
    this.maxMessageLength = maxMessageLength;
    this._buf = new Uint8Array(4096);
    this._start = 0; // first unparsed byte in _buf
    this._end = 0; // end of held bytes in _buf
    this._base = 0; // stream offset of _buf[_start]
    this._cls = 0;
    this._csn = 0;
    this.end = null; // the EOR item once received
    this._error = null;
  }

  /** Adds received bytes; returns the messages (and EOR) they complete, in stream order. */
  feed(chunk) {
    if (this._error) throw this._error;
    try {
      return this._feed(chunk);
    } catch (e) {
      if (e instanceof JPPError) this._error = e;
      throw e;
    }
  }

  /** Declares the response over; throws if it stopped inside a message. */
  close() {
    if (this._error) throw this._error;
    const left = this._end - this._start;
    if (left) {
      this._error = new JPPError(`stream ends inside a message (${left} bytes left)`, this._base);
      throw this._error;
    }
  }

  _append(chunk) {
    const n = chunk.length;
    if (this._end + n > this._buf.length) {
      const held = this._end - this._start;
      if (held + n <= this._buf.length && this._start > 0) {
        this._buf.copyWithin(0, this._start, this._end);
      } else {
        let size = this._buf.length;
        while (size < held + n) size *= 2;
        const grown = new Uint8Array(size);
        grown.set(this._buf.subarray(this._start, this._end));
        this._buf = grown;
      }
      this._start = 0;
      this._end = held;
    }
    this._buf.set(chunk, this._end);
    this._end += n;
  }

  _feed(chunk) {
    if (chunk && chunk.length) {
      if (this.end !== null) throw new JPPError('data after end-of-response', this._base + this._end - this._start);
      this._append(chunk);
    }
    const out = [];
    const buf = this._buf;
    const n = this._end;
    let pos = this._start;
    while (pos < n) {
      if (this.end !== null) throw new JPPError('data after end-of-response', this._base + pos - this._start);
      const [item, next] = buf[pos] === 0 ? this._eor(buf, pos, n) : this._message(buf, pos, n);
      if (next < 0) break;
      out.push(item);
      pos = next;
    }
    this._base += pos - this._start;
    this._start = pos;
    if (this._start === this._end) this._start = this._end = 0;
    return out;
  }

  _offset(pos) {
    return this._base + pos - this._start;
  }

  _eor(buf, pos, n) {
    if (pos + 2 > n) return [null, -1];
    const reason = buf[pos + 1];
    const [length, p] = readVbas(buf, pos + 2, n, this._offset(0));
    if (p < 0) return [null, -1];
    if (length > this.maxMessageLength) throw new JPPError(`EOR body length ${length} exceeds limit`, this._offset(pos + 2));
    if (p + length > n) return [null, -1];
    this.end = { eor: reason, body: buf.slice(p, p + length) };
    return [this.end, p + length];
  }

  _message(buf, pos, n) {
    const base = this._offset(0); // so that base + index = stream offset
    const b0 = buf[pos];
    if (!(b0 & 0x60)) throw new JPPError(`Bin-ID with bb=0 (first byte 0x${b0.toString(16).padStart(2, '0')})`, base + pos);
    // The Bin-ID VBAS: the first byte's low 4 bits and 7 bits of each later byte are the id
    // (7k-3 bits for k bytes); read them apart from the bb/c flags, which could push the whole
    // value past 2^53.
    let binId = b0 & 0x0f;
    let p = pos + 1;
    if (b0 & 0x80) {
      for (;;) {
        if (p - pos >= MAX_VBAS_BYTES) throw new JPPError(`VBAS longer than ${MAX_VBAS_BYTES} bytes`, base + pos);
        if (p >= n) return [null, -1];
        const b = buf[p++];
        binId = binId * 128 + (b & 0x7f);
        if (b < 0x80) break;
      }
    }
    let cls = this._cls;
    let csn = this._csn;
    if (b0 & 0x40) { // bb >= 2: Class present
      const q = p;
      [cls, p] = readVbas(buf, p, n, base);
      if (p < 0) return [null, -1];
      if (!KNOWN_CLASSES.has(cls)) throw new JPPError(`unknown data-bin class ${cls}`, base + q);
      if (b0 & 0x20) { // bb == 3: CSn present
        [csn, p] = readVbas(buf, p, n, base);
        if (p < 0) return [null, -1];
      }
    }
    let offset;
    [offset, p] = readVbas(buf, p, n, base);
    if (p < 0) return [null, -1];
    const q = p;
    let length;
    [length, p] = readVbas(buf, p, n, base);
    if (p < 0) return [null, -1];
    if (length > this.maxMessageLength) throw new JPPError(`message length ${length} exceeds limit`, base + q);
    let aux = null;
    if (cls & 1) { // extended precinct / tile: Aux required
      [aux, p] = readVbas(buf, p, n, base);
      if (p < 0) return [null, -1];
    }
    if (p + length > n) return [null, -1];
    this._cls = cls;
    this._csn = csn;
    const msg = { binClass: cls, csn, binId, offset, data: buf.slice(p, p + length), isLast: Boolean(b0 & 0x10), aux };
    return [msg, p + length];
  }
}

/** Parses one complete response body; throws JPPError if it is malformed or truncated. */
export function parseStream(data, maxMessageLength = 2 ** 31) {
  const parser = new StreamParser(maxMessageLength);
  const out = parser.feed(data);
  parser.close();
  return out;
}
