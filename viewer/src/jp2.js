// What the viewer reads from metadata-bin 0 (the JP2 file's top-level boxes, ISO 15444-1
// Annex I): the colour space of the image, to show sYCC images in RGB.

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

/** 'srgb', 'grey', 'sycc', another enumerated colour space's number, or null. */
export function colourSpace(meta) {
  if (!meta || !meta.length) return null;
  for (const box of boxes(meta, 0, meta.length)) {
    if (box.type !== 'jp2h') continue;
    for (const inner of boxes(meta, box.start, box.end)) {
      if (inner.type !== 'colr' || inner.end - inner.start < 7 || meta[inner.start] !== 1) continue;
      const cs = u32(meta, inner.start + 3);
      return { 16: 'srgb', 17: 'grey', 18: 'sycc' }[cs] || cs;
    }
  }
  return null;
}
