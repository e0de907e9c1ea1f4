// View-window resolution (ISO 15444-9 C.4), as the server does it (jpip/window.py): the frame
// size at discard level d is ceil(Xsiz/2^d) - ceil(XOsiz/2^d); the requested region is rescaled
// into the chosen frame (start floored, end ceiled) and clipped. The client needs the same
// answer to know, before (or without) asking, which samples a view covers.

const cdiv = (a, b) => Math.ceil(a / b);

export function frameSize(siz, d) {
  const s = 2 ** d;
  return [cdiv(siz.xsiz, s) - cdiv(siz.xosiz, s), cdiv(siz.ysiz, s) - cdiv(siz.yosiz, s)];
}

/** The discard level the rounding rule picks for a requested frame size (C.4.2). */
export function chooseDiscard(siz, maxDiscard, fx, fy, rounding = 'round-down') {
  const sizes = [];
  for (let d = 0; d <= maxDiscard; d++) sizes.push(frameSize(siz, d));
  if (rounding === 'round-up') {
    let best = -1;
    sizes.forEach(([w, h], d) => { if (w >= fx && h >= fy) best = d; });
    return best < 0 ? 0 : best;
  }
  if (rounding === 'closest') {
    const target = fx * fy;
    let best = 0;
    sizes.forEach(([w, h], d) => {
      if (Math.abs(w * h - target) < Math.abs(sizes[best][0] * sizes[best][1] - target)) best = d;
    });
    return best;
  }
  for (let d = 0; d < sizes.length; d++) if (sizes[d][0] <= fx && sizes[d][1] <= fy) return d;
  return maxDiscard;
}

/**
 * Resolves fsiz/roff/rsiz against a codestream's SIZ and its number of discard levels:
 * {discard, frame: [w, h], offset: [x, y], size: [w, h], region: [x0, y0, x1, y1] (reference
 * grid)}. `fsiz` is [fx, fy] or [fx, fy, rounding]; null asks for no image data.
 */
export function resolveWindow(siz, maxLevels, { fsiz = null, roff = null, rsiz = null } = {}) {
  if (fsiz === null) return { discard: 0, frame: frameSize(siz, 0), offset: [0, 0], size: [0, 0], region: [0, 0, 0, 0] };
  const [fx, fy, rounding = 'round-down'] = fsiz;
  const d = chooseDiscard(siz, maxLevels, fx, fy, rounding);
  const [w, h] = frameSize(siz, d);
  const [ox, oy] = roff || [0, 0];
  const [sx, sy] = rsiz || [fx - ox, fy - oy];
  let x0 = Math.floor((ox * w) / fx); let y0 = Math.floor((oy * h) / fy);
  const x1 = Math.min(w, cdiv((ox + Math.max(sx, 0)) * w, fx));
  const y1 = Math.min(h, cdiv((oy + Math.max(sy, 0)) * h, fy));
  x0 = Math.min(x0, w); y0 = Math.min(y0, h);
  const rw = Math.max(0, x1 - x0); const rh = Math.max(0, y1 - y0);
  const s = 2 ** d;
  const bx = cdiv(siz.xosiz, s); const by = cdiv(siz.yosiz, s);
  const region = [Math.max(siz.xosiz, (bx + x0) * s), Math.max(siz.yosiz, (by + y0) * s),
    Math.min(siz.xsiz, (bx + x0 + rw) * s), Math.min(siz.ysiz, (by + y0 + rh) * s)];
  return { discard: d, frame: [w, h], offset: [x0, y0], size: [rw, rh], region };
}
