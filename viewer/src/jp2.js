// What the viewer reads from the metadata-bins (the JP2 file's boxes, ISO 15444-1 Annex I, as
// ISO 15444-9 A.3.6 partitions them): the colour space of the image, to show sYCC images in
// RGB. Metadata-bin 0 holds the top-level boxes; a placeholder box ('phld') stands for a box
// whose contents are in another metadata-bin (Flags bit 0: that bin is OrigID), as the server
// sends the JP2 header box ('jp2h') and any box over 64 bytes.

const u32 = (b, p) => ((b[p] << 24) >>> 0) + (b[p + 1] << 16) + (b[p + 2] << 8) + b[p + 3];
const type = (b, p) => String.fromCharCode(b[p], b[p + 1], b[p + 2], b[p + 3]);

function* boxes(buf, start, end) {
  let pos = start;
  while (pos + 8 <= end) {
    let length = u32(buf, pos);
    let header = 8;
    if (length === 1) {
      if (pos + 16 > end) return;
      length = u32(buf, pos + 8) * 2 ** 32 + u32(buf, pos + 12);
      header = 16;
    } else if (length === 0) {
      length = end - pos;
    }
    if (length < header || pos + length > end) return;
    yield { type: type(buf, pos + 4), start: pos + header, end: pos + length };
    pos += length;
  }
}

/**
 * The boxes of one metadata-bin (or of a superbox in it), with placeholders followed:
 * yields {type, buf, start, end} where buf[start, end) holds the box's contents, when held.
 * `bins` maps bin ids to {data, complete}.
 */
function* resolved(bins, buf, start, end) {
  for (const box of boxes(buf, start, end)) {
    if (box.type !== 'phld') {
      yield { type: box.type, buf, start: box.start, end: box.end };
      continue;
    }
    if (box.end - box.start < 20) continue;
    const flags = u32(buf, box.start);
    if (!(flags & 1)) continue; // a codestream, or contents not given
    const id = u32(buf, box.start + 4) * 2 ** 32 + u32(buf, box.start + 8);
    const bin = bins.get(id);
    if (!bin || !bin.complete) continue;
    const data = bin.data;
    yield { type: type(buf, box.start + 16), buf: data, start: 0, end: data.length };
  }
}

/** 'srgb', 'grey', 'sycc', another enumerated colour space's number, or null. */
export function colourSpace(bins) {
  const root = bins.get(0);
  if (!root || !root.complete || !root.data.length) return null;
  for (const box of resolved(bins, root.data, 0, root.data.length)) {
    if (box.type !== 'jp2h') continue;
    for (const inner of resolved(bins, box.buf, box.start, box.end)) {
      const b = inner.buf;
      if (inner.type !== 'colr' || inner.end - inner.start < 7 || b[inner.start] !== 1) continue;
      const cs = u32(b, inner.start + 3);
      return { 16: 'srgb', 17: 'grey', 18: 'sycc' }[cs] || cs;
    }
  }
  return null;
}
