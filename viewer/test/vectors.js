// Loads the vectors shared with the Python tests (made by tests/viewer/vectors.py).
import { readFileSync } from 'node:fs';

export const vectors = JSON.parse(readFileSync(new URL('./vectors.json', import.meta.url), 'utf8'));

export const unb64 = (s) => new Uint8Array(Buffer.from(s, 'base64'));
export const b64 = (u8) => Buffer.from(u8.buffer, u8.byteOffset, u8.length).toString('base64');

/** The ways a stream is cut into chunks: whole, byte by byte, and a few seeded random cuts. */
export function chunkings(data) {
  const out = [[data]];
  const bytes = [];
  for (let i = 0; i < data.length && data.length <= 20000; i++) bytes.push(data.subarray(i, i + 1));
  if (bytes.length) out.push(bytes);
  let seed = data.length + 1;
  const rand = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
  for (let k = 0; k < 3; k++) {
    const pieces = [];
    let pos = 0;
    while (pos < data.length) {
      const n = 1 + Math.floor(rand() * 97 * (k + 1));
      pieces.push(data.subarray(pos, pos + n));
      pos += n;
    }
    out.push(pieces);
  }
  return out;
}
