// The JPIP session rules of the viewer's client, against a scripted server (a fake fetch):
// cnew once and cid afterwards, requests waiting for the channel, the access token on every
// request, the model restated after a broken response, windows asked again after a byte limit.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { JPIPClient, JPIPError } from '../src/client.js';
import { encodeVbas } from '../src/jpp.js';

const concat = (...parts) => Uint8Array.from(parts.flatMap((p) => [...p]));

/** One precinct message (class and codestream given: bb=3) and an EOR. */
function stream({ id = 1, offset = 0, data = [1, 2, 3], last = true, eor = 2 } = {}) {
  const head = concat([(last ? 0x70 : 0x60) | id], encodeVbas(0), encodeVbas(0), encodeVbas(offset), encodeVbas(data.length));
  return concat(head, data, [0, eor, 0]);
}

function reply(body, headers = {}, { status = 200, breakAfter = null } = {}) {
  const chunks = breakAfter === null ? [body] : [body.subarray(0, breakAfter)];
  const rs = new ReadableStream({
    pull(controller) { // one chunk a read; then the end, or the connection lost
      if (chunks.length) controller.enqueue(chunks.shift());
      else if (breakAfter === null) controller.close();
      else controller.error(new TypeError('network connection lost'));
    },
  });
  return new Response(rs, { status, headers: { 'Content-Type': 'image/jpp-stream', ...headers } });
}

function server(script) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    calls.push({ url, init });
    const next = script.shift();
    if (!next) throw new Error(`unexpected request ${url}`);
    return typeof next === 'function' ? next(url, init) : next;
  };
  return { calls, fetch };
}

const CNEW = { 'JPIP-cnew': 'cid=C1,path=jpip,transport=http', 'JPIP-tid': 'T1' };

test('one channel: cnew with the target first, cid on the channel path afterwards', async () => {
  const s = server([reply(stream(), CNEW), reply(stream({ id: 2 }))]);
  const c = new JPIPClient({ jpipPath: '/jpip', target: 'dir/a b.jp2', fetch: s.fetch });
  assert.equal(await c.fetchWindow({ fsiz: [64, 64], stream: 0 }), 2);
  await c.request({ fsiz: [128, 128], roff: [1, 2], rsiz: [3, 4], stream: 0 });
  assert.equal(s.calls[0].url, '/jpip?target=dir/a%20b.jp2&fsiz=64,64&stream=0&type=jpp-stream&cnew=http&tid=0');
  assert.equal(s.calls[1].url, '/jpip?fsiz=128,128&roff=1,2&rsiz=3,4&stream=0&type=jpp-stream&cid=C1');
  const received = stream().length + stream({ id: 2 }).length;
  assert.deepEqual(c.stats, { requests: 2, bytes: received, channelsOpened: 1, duplicateBytes: 0 });
  assert.equal(c.cache.stream(0).precincts.get(2).complete, true);
});

test('a request made while the channel opens waits for it (one cnew only)', async () => {
  let open;
  const first = new Promise((resolve) => { open = resolve; });
  const s = server([() => first, reply(stream({ id: 2 }))]);
  const c = new JPIPClient({ jpipPath: '/jpip', target: 'a.jp2', fetch: s.fetch });
  const a = c.request({ fsiz: [64, 64] });
  const b = c.request({ fsiz: [32, 32] });
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(s.calls.length, 1);
  open(reply(stream(), CNEW));
  await Promise.all([a, b]);
  assert.match(s.calls[1].url, /&cid=C1$/);
  assert.equal(c.channelsOpened, 1);
});

test('the access token goes with every request, the cclose too', async () => {
  const s = server([reply(stream(), CNEW), reply(stream({ id: 2 })), reply(new Uint8Array(0))]);
  const c = new JPIPClient({ jpipPath: '/jpip', target: 'a.jp2', token: 'a&b', fetch: s.fetch });
  await c.request({ fsiz: [64, 64] });
  await c.request({ fsiz: [64, 64] });
  c.closeNow(); // no sendBeacon in node: a keepalive POST
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(s.calls.length, 3);
  for (const { url } of s.calls) assert.ok(url.endsWith('access_token=a%26b'), url);
  assert.equal(s.calls[2].url, '/jpip?cclose=C1&len=0&access_token=a%26b');
  assert.equal(s.calls[2].init.method, 'POST');
  await assert.rejects(c.request({ fsiz: [1, 1] }), JPIPError);
});

test('after a broken response the next request restates the whole cache', async () => {
  const body = concat(stream({ id: 3, data: [9, 9, 9, 9], last: false }).subarray(0, 9), stream({ id: 4 }));
  const s = server([reply(stream(), CNEW), reply(body, {}, { breakAfter: 9 }), reply(stream({ id: 5 }))]);
  const c = new JPIPClient({ jpipPath: '/jpip', target: 'a.jp2', fetch: s.fetch });
  await c.request({ fsiz: [64, 64] });
  await assert.rejects(c.request({ fsiz: [64, 64] }), /broke off/);
  await c.request({ fsiz: [64, 64], stream: 0 });
  assert.match(s.calls[2].url, /&cid=C1&model=\[0\],-Hm,-H\*,-P\*,P1,P3:4$/);
});

test('a window cut by a byte limit is asked for again until complete', async () => {
  const s = server([reply(stream({ eor: 4 }), CNEW), reply(stream({ id: 2, eor: 7 })), reply(stream({ id: 3, eor: 2 }))]);
  const c = new JPIPClient({ jpipPath: '/jpip', target: 'a.jp2', fetch: s.fetch });
  assert.equal(await c.fetchWindow({ fsiz: [64, 64] }), 2);
  assert.equal(c.requests, 3);
});

test('errors: an HTTP error names the status, a wrong type is refused', async () => {
  const s = server([
    new Response('target: no such target\n', { status: 404, headers: { 'Content-Type': 'text/plain' } }),
    new Response('x', { status: 200, headers: { 'Content-Type': 'text/html' } }),
  ]);
  const c = new JPIPClient({ jpipPath: '/jpip', target: 'a.jp2', fetch: s.fetch });
  await assert.rejects(c.request({ fsiz: [1, 1] }), (e) => e.status === 404 && /no such target/.test(e.message));
  await assert.rejects(c.request({ fsiz: [1, 1] }), /Content-Type/);
});

test('a changed target id voids what the cache holds', async () => {
  const s = server([reply(stream(), CNEW), reply(stream({ id: 2 }), { 'JPIP-tid': 'T2' })]);
  const c = new JPIPClient({ jpipPath: '/jpip', target: 'a.jp2', fetch: s.fetch });
  await c.request({ fsiz: [64, 64] });
  await c.request({ fsiz: [64, 64] });
  assert.deepEqual([...c.cache.stream(0).precincts.keys()], [2]);
});
