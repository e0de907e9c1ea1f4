// The viewer page's entry point: builds the Viewer from the page's URL and publishes the API
// (window.jpipViewer) that embedding pages and the tests drive.
import { Viewer, pageParams } from './viewer.js';

const root = document.getElementById('viewer');
let viewer = null;
let failed = null;
const ready = (async () => {
  try {
    viewer = new Viewer(root, pageParams(window.location.search));
    await viewer.init();
  } catch (e) {
    failed = e;
    if (e.name !== 'Superseded') {
      const box = document.getElementById('error');
      box.textContent = e.message;
      box.hidden = false;
      document.body.dataset.state = 'error';
    }
  }
})();

function need() {
  if (!viewer || !viewer.client) throw failed || new Error('the viewer is not ready');
  return viewer;
}

window.jpipViewer = {
  /** Resolves once the page's first view is shown (or failed: see error). */
  ready,
  get error() { return failed ? failed.message : null; },
  get info() { return viewer ? viewer.info : null; },
  view: async (fields) => { await ready; return need().view(fields); },
  decoded: () => need().decoded(),
  stats: () => need().stats(),
  /** The view on screen: {stream, discard, fsiz, roff, rsiz} (fsiz the frame at that level). */
  current: () => (viewer && viewer.current ? viewer._describe() : null),
};
