// The viewer's JPIP client: one session per page (cnew once, cid afterwards, cclose when the
// page goes away), responses parsed as they arrive into one data-bin cache. The server keeps
// the session's cache model, so nothing is asked twice; a new request pre-empts the one in
// flight on the server side (it ends that response with EOR 3), and the older response is
// still read to its end, so every byte the server counted as sent is kept.

import { BinCache, StreamError } from './bincache.js';
import { EOR, StreamParser } from './jpp.js';

export const JPP_TYPE = 'image/jpp-stream';
const MAX_GET_QUERY = 6000; // longer requests (a restated model) go as a POST form body

export class JPIPError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.name = 'JPIPError';
    this.status = status;
  }
}

/** fsiz/roff/rsiz/stream/len fields as a JPIP query string piece. */
export function windowQuery({ fsiz = null, roff = null, rsiz = null, stream = null, len = null, layers = null }) {
  const q = [];
  if (fsiz) q.push(`fsiz=${fsiz[0]},${fsiz[1]}${fsiz[2] && fsiz[2] !== 'round-down' ? `,${fsiz[2]}` : ''}`);
  if (roff) q.push(`roff=${roff[0]},${roff[1]}`);
  if (rsiz) q.push(`rsiz=${rsiz[0]},${rsiz[1]}`);
  if (layers !== null && layers !== undefined) q.push(`layers=${layers}`);
  if (stream !== null && stream !== undefined) q.push(`stream=${stream}`);
  if (len !== null && len !== undefined) q.push(`len=${len}`);
  return q;
}

export class JPIPClient {
  /**
   * @param {object} o
   * @param {string} o.jpipPath the server's JPIP endpoint, e.g. "/jpip"
   * @param {string} o.target the target's name under the root
   * @param {string|null} o.token an access token passed on to every request
   * @param {Function} o.fetch the fetch function (tests may give another)
   */
  constructor({ jpipPath, target, token = null, fetch = globalThis.fetch.bind(globalThis), origin = '' }) {
    this.jpipPath = jpipPath;
    this.target = target;
    this.token = token;
    this.fetch = fetch;
    this.origin = origin;
    this.cache = new BinCache();
    this.cid = null;
    this.channelPath = null;
    this.tid = null;
    this.requests = 0;
    this.bytes = 0;
    this.channelsOpened = 0;
    this.onData = null; // called after each received chunk was added to the cache
    this._opening = null; // while the cnew request waits for its headers
    this._resync = false;
    this._inFlight = new Set();
    this.closed = false;
  }

  get stats() {
    return { requests: this.requests, bytes: this.bytes, channelsOpened: this.channelsOpened,
      duplicateBytes: this.cache.duplicateBytes };
  }

  _withToken(query) {
    return this.token ? [...query, `access_token=${encodeURIComponent(this.token)}`] : query;
  }

  /**
   * One JPIP request for a view-window; resolves once the response was read to its end:
   * {eor, status, headers}. Pre-empted requests resolve too (eor 3).
   */
  async request(fields) {
    if (this.closed) throw new JPIPError('the session is closed');
    while (this._opening) await this._opening.catch(() => {});
    const query = [...windowQuery(fields), 'type=jpp-stream'];
    let path;
    let opening = null;
    if (this.cid === null) {
      path = this.jpipPath;
      query.unshift(`target=${encodeURIComponent(this.target).replace(/%2F/g, '/')}`);
      query.push('cnew=http', 'tid=0');
      let settle;
      opening = new Promise((resolve, reject) => { settle = { resolve, reject }; });
      opening.settle = settle;
      opening.catch(() => {}); // its failure is the request's own; waiters only need it settled
      this._opening = opening;
    } else {
      path = this.channelPath;
      query.push(`cid=${encodeURIComponent(this.cid)}`);
      if (this._resync) {
        // A response broke off: the server's model may claim bytes that never arrived.
        // Restate the whole cache: subtract everything, add what is held.
        const cs = fields.stream ?? 0;
        const held = this.cache.modelString(cs);
        const rest = held ? `,${held.slice(held.indexOf(',') + 1)}` : '';
        query.push(`model=${encodeURIComponent(`[${cs}],-Hm,-H*,-P*${rest}`).replace(/%(2C|5B|5D|3A)/g, (m) => decodeURIComponent(m))}`);
        this._resync = false;
      }
    }
    const fullQuery = this._withToken(query).join('&');
    this.requests += 1;
    const token = {};
    this._inFlight.add(token);
    try {
      return await this._send(path, fullQuery, opening);
    } finally {
      this._inFlight.delete(token);
      if (opening && this._opening === opening) this._opening = null;
    }
  }

  async _send(path, query, opening) {
    let resp;
    try {
      const url = `${this.origin}${path}`;
      resp = query.length <= MAX_GET_QUERY
        ? await this.fetch(`${url}?${query}`, { cache: 'no-store' })
        : await this.fetch(url, { method: 'POST', body: query, cache: 'no-store',
          headers: { 'Content-Type': 'application/x-www-form-urlencoded' } });
    } catch (e) {
      opening?.settle.reject(e);
      throw new JPIPError(`network error: ${e.message}`);
    }
    const headers = Object.fromEntries(resp.headers.entries());
    if (resp.status !== 200 && resp.status !== 202) {
      const text = (await resp.text()).trim().slice(0, 300);
      const err = new JPIPError(`server answered ${resp.status}: ${text}`, resp.status);
      if (resp.status === 503 && this.cid !== null && /cid/.test(text)) this.cid = null; // the session expired
      opening?.settle.reject(err);
      throw err;
    }
    this._noteHeaders(headers);
    opening?.settle.resolve();
    if ((headers['content-type'] || '').split(';')[0].trim() !== JPP_TYPE) {
      throw new JPIPError(`unexpected Content-Type ${headers['content-type']}`, resp.status);
    }
    const parser = new StreamParser();
    const reader = resp.body.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        this.bytes += value.length;
        for (const item of parser.feed(value)) this.cache.add(item);
        if (this.onData) this.onData();
      }
      parser.close();
    } catch (e) {
      this._resync = true;
      if (e instanceof StreamError || e.name === 'JPPError') throw new JPIPError(`bad JPP-stream: ${e.message}`);
      throw new JPIPError(`response broke off: ${e.message}`);
    }
    if (parser.end === null) {
      this._resync = true;
      throw new JPIPError('response ended without an EOR message');
    }
    return { eor: parser.end.eor, status: resp.status, headers };
  }

  _noteHeaders(headers) {
    const tid = headers['jpip-tid'];
    if (tid && this.tid !== null && tid !== this.tid) {
      this.cache = new BinCache(); // the target changed on the server: what we hold is void
    }
    if (tid) this.tid = tid;
    const cnew = headers['jpip-cnew'];
    if (cnew) {
      const f = Object.fromEntries(cnew.split(',').map((kv) => kv.trim().split('=')).filter((kv) => kv.length === 2));
      if (f.cid) {
        this.cid = f.cid;
        this.channelsOpened += 1;
        this.channelPath = f.path ? `/${f.path.replace(/^\/+/, '')}` : this.jpipPath;
      }
    }
  }

  /**
   * Requests a window until the server says it is complete. Resolves with the last response's
   * EOR reason: 1 or 2 (complete), 3 (pre-empted by a newer request of this client).
   */
  async fetchWindow(fields, { maxResponses = 64 } = {}) {
    for (let n = 0; n < maxResponses; n++) {
      const { eor } = await this.request(fields);
      if (eor === EOR.IMAGE_DONE || eor === EOR.WINDOW_DONE || eor === EOR.WINDOW_CHANGE) return eor;
      if (eor === EOR.SESSION_LIMIT) throw new JPIPError('the server ended the session (EOR 6)');
      // Byte, quality or response limits: ask again for the rest.
    }
    throw new JPIPError(`window not complete after ${maxResponses} responses`);
  }

  /** Closes the session without waiting (the page is going away): cclose by beacon. */
  closeNow() {
    if (this.closed) return;
    this.closed = true;
    if (this.cid === null) return;
    const query = this._withToken([`cclose=${encodeURIComponent(this.cid)}`, 'len=0']).join('&');
    const url = `${this.origin}${this.channelPath}?${query}`;
    this.cid = null;
    const sent = typeof navigator !== 'undefined' && navigator.sendBeacon && navigator.sendBeacon(url);
    if (!sent) this.fetch(url, { method: 'POST', keepalive: true }).catch(() => {});
  }
}
