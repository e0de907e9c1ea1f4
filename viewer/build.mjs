// Builds the viewer's bundle into the Python package (server/viewer_static/), which the server
// serves at /viewer/: the page, its script, the decoding worker and the codecs' WebAssembly.
//   node build.mjs [OUT_DIR]
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import * as esbuild from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] || join(here, '..', 'server', 'viewer_static');
const require = createRequire(import.meta.url);
mkdirSync(out, { recursive: true });

const common = {
  bundle: true, format: 'iife', target: ['chrome100', 'firefox100', 'safari15'], minify: true,
  sourcemap: true, logLevel: 'warning', legalComments: 'linked',
  // The Emscripten glue reaches for node's modules only when it runs under node.
  external: ['fs', 'path', 'crypto', 'url', 'module', 'worker_threads'],
};
await esbuild.build({ ...common, entryPoints: [join(here, 'src', 'main.js')], outfile: join(out, 'viewer.js') });
await esbuild.build({ ...common, entryPoints: [join(here, 'src', 'worker.js')], outfile: join(out, 'worker.js') });

const wasm = [
  require.resolve('@cornerstonejs/codec-openjpeg/decodewasm'),
  require.resolve('@cornerstonejs/codec-openjph/wasm'),
];
for (const file of wasm) copyFileSync(file, join(out, file.split('/').pop()));
for (const file of ['index.html', 'viewer.css']) copyFileSync(join(here, 'src', file), join(out, file));

const lock = JSON.parse(readFileSync(join(here, 'package-lock.json'), 'utf8'));
const versions = Object.fromEntries(Object.entries(lock.packages)
  .filter(([k]) => k.startsWith('node_modules/@cornerstonejs/') || k === 'node_modules/esbuild')
  .map(([k, v]) => [k.slice('node_modules/'.length), v.version]));
writeFileSync(join(out, 'build.json'), `${JSON.stringify({ built: 'make viewer', versions }, null, 1)}\n`);
console.log(`viewer bundle written to ${out}`);
