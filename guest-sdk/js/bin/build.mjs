#!/usr/bin/env node
// bullpen-build: turn a JavaScript processor into a bullpen component.
//
//   bullpen-build <entry.js> -o <out.wasm> [--world processor|processor-with-backoff] [--wit <dir>]
//
// 1. esbuild bundles the entry with everything it imports (bullpen-guest,
//    other npm packages, relative modules) into one ES module, because
//    componentize-js takes a single source file. `bullpen-guest` always
//    resolves to the SDK next to this script; the host interfaces
//    (`bullpen:processor/job-context@0.1.0`, `wasi:http/...`,
//    `wasi:config/store`) stay imports.
// 2. componentize-js (StarlingMonkey) makes the component for the world:
//    `processor-with-backoff` when the entry exports `backoff`, else
//    `processor`. StarlingMonkey's `http` and `fetch-event` features stay
//    disabled: the SDK, evaluated first, provides the global `fetch` over
//    the world's wasi:http import itself (index.js says why; measured in
//    bench/README.md, the feature would also cost every attempt).
//    componentize-js is called directly (`jco componentize` cannot find the
//    WIT here).
// 3. esbuild's source map of the bundle (positions only, no sources) is
//    appended to the bundle as a global the SDK reads when `process`
//    throws: the job's `stacktrace` then names your files and lines, not
//    the bundle's. Its paths are relative to the project (the folder of the
//    nearest package.json above the entry, else the entry's folder), so
//    the same sources give the same component wherever they are built.
import { build } from 'esbuild';
import { componentize } from '@bytecodealliance/componentize-js';
import { appendFileSync, existsSync, mkdtempSync, readFileSync, rmSync, copyFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, extname, join, relative, resolve, sep } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const WORLDS = ['processor', 'processor-with-backoff'];
const sdkDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const usage = `usage: bullpen-build <entry.js> -o <out.wasm> [--world processor|processor-with-backoff] [--wit <dir>]

Bundles <entry.js> with esbuild and makes a bullpen processor component of it
with componentize-js. The entry must export \`process\` (and \`backoff\` for
the processor-with-backoff world):

  export const { process } = exportProcessor(handle);
  export const { process, backoff } = exportProcessor(handle, { backoff: strategy });

Options:
  -o, --out <file>     the component to write (required)
  --world <name>       processor | processor-with-backoff (default: from the entry's exports)
  --wit <dir>          the bullpen WIT directory (default: the SDK's own wit/, else <repo>/wit)
  --keep-bundle        also write the bundled JavaScript to <out>.bundle.js
  -h, --help           this text`;

// Throws, so the `finally` below still removes the work directory.
class BuildError extends Error {}
function fail(msg) {
  throw new BuildError(msg);
}
process.on('uncaughtException', (e) => {
  console.error(e instanceof BuildError ? `bullpen-build: ${e.message}` : e);
  process.exit(1);
});

let args;
try {
  args = parseArgs({
    allowPositionals: true,
    options: {
      out: { type: 'string', short: 'o' },
      world: { type: 'string' },
      wit: { type: 'string' },
      'keep-bundle': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
} catch (e) {
  fail(`${e.message}\n\n${usage}`);
}
const { values: opts, positionals } = args;
if (opts.help) {
  console.log(usage);
  process.exit(0);
}
if (positionals.length !== 1) fail(`expected exactly one entry file\n\n${usage}`);
if (!opts.out) fail(`-o <out.wasm> is required\n\n${usage}`);
if (opts.world && !WORLDS.includes(opts.world)) fail(`--world must be one of: ${WORLDS.join(', ')}`);

const entry = resolve(positionals[0]);
if (!existsSync(entry)) fail(`${positionals[0]}: no such file`);
const out = resolve(opts.out);

// The WIT: a copy inside the package (if one was packed), else the repository's.
const witDir = opts.wit
  ? resolve(opts.wit)
  : [join(sdkDir, 'wit'), join(sdkDir, '..', '..', 'wit')].find((d) => existsSync(join(d, 'processor.wit')));
if (!witDir) fail('cannot find the bullpen wit/ directory; pass --wit <dir>');

const started = Date.now();
const work = mkdtempSync(join(tmpdir(), 'bullpen-build-'));
try {
  // componentize-js names the module after its file: keep the entry's name,
  // so stack traces in job logs say which processor it was.
  const bundle = join(work, `${basename(entry, extname(entry))}.js`);
  let result;
  try {
    result = await build({
      // The SDK first, then the entry with its imports: the SDK sets the
      // global `fetch` (index.js) before any other module can keep it.
      stdin: {
        contents: `import 'bullpen-guest';\nexport * from ${JSON.stringify(entry)};\n`,
        resolveDir: dirname(entry),
      },
      bundle: true,
      format: 'esm',
      platform: 'neutral',
      mainFields: ['module', 'main'],
      target: 'es2022',
      alias: { 'bullpen-guest': join(sdkDir, 'index.js') },
      external: ['bullpen:*', 'wasi:*'],
      outfile: bundle,
      metafile: true,
      logLevel: 'silent',
      legalComments: 'none',
      sourcemap: 'external',
      sourcesContent: false,
    });
  } catch (e) {
    const errors = (e.errors ?? []).map(
      (m) => `  ${m.location ? `${m.location.file}:${m.location.line}:${m.location.column}: ` : ''}${m.text}`,
    );
    fail(`bundling ${positionals[0]} failed:\n${errors.join('\n') || e.message}`);
  }
  // The bundle's entry in the metafile (the source map has one too).
  const exported = Object.entries(result.metafile.outputs).find(([f]) => f.endsWith('.js'))?.[1]?.exports ?? [];
  if (!exported.includes('process')) {
    fail(`${positionals[0]} does not export \`process\`; end it with\n  export const { process } = exportProcessor(handle);`);
  }
  const world = opts.world ?? (exported.includes('backoff') ? 'processor-with-backoff' : 'processor');
  if (world === 'processor-with-backoff' && !exported.includes('backoff')) {
    fail(`the processor-with-backoff world needs a \`backoff\` export:\n  export const { process, backoff } = exportProcessor(handle, { backoff: strategy });`);
  }
  embedSourceMap(bundle, projectRoot(dirname(entry)));
  if (opts['keep-bundle']) copyFileSync(bundle, `${out}.bundle.js`);

  // A knob for measuring componentize-js's options (bench/README.md, issue
  // 27), not for users: JSON merged over the options below, e.g.
  // BULLPEN_BUILD_COMPONENTIZE='{"enableAot":true,"wevalBin":"/path/weval"}'.
  let knob = {};
  if (process.env.BULLPEN_BUILD_COMPONENTIZE) {
    try {
      knob = JSON.parse(process.env.BULLPEN_BUILD_COMPONENTIZE);
    } catch (e) {
      fail(`BULLPEN_BUILD_COMPONENTIZE is not JSON: ${e.message}`);
    }
  }
  let component;
  try {
    ({ component } = await componentize({
      sourcePath: bundle,
      witPath: witDir,
      worldName: world,
      disableFeatures: ['http', 'fetch-event'],
      ...knob,
    }));
  } catch (e) {
    fail(`componentize-js failed for ${positionals[0]} (world ${world}):\n${e.message}`);
  }
  writeFileSync(out, component);
  const mb = (component.length / 1e6).toFixed(1);
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  console.error(`bullpen-build: wrote ${opts.out} (world ${world}, ${mb} MB) in ${secs} s`);
} finally {
  rmSync(work, { recursive: true, force: true });
}

// The folder of the nearest package.json at or above `dir`, else `dir`.
function projectRoot(dir) {
  for (let d = dir; ; d = dirname(d)) {
    if (existsSync(join(d, 'package.json'))) return d;
    if (dirname(d) === d) return dir;
  }
}

// Append esbuild's map of `bundle` to it as the global the SDK reads
// (index.js, `sourcePosition`): `sources` relative to `root` ('/'
// separators), and which of them are the SDK's own files (left out of
// stack traces). Appended last, so no bundle position moves.
function embedSourceMap(bundle, root) {
  const mapFile = `${bundle}.map`;
  const map = JSON.parse(readFileSync(mapFile, 'utf8'));
  const sdkRoot = join(sdkDir, sep);
  const abs = map.sources.map((src) => resolve(dirname(bundle), src));
  const embedded = {
    sources: abs.map((a) => relative(root, a).split(sep).join('/')),
    sdk: abs.flatMap((a, i) => (a.startsWith(sdkRoot) && !a.includes(`${sep}node_modules${sep}`) ? [i] : [])),
    mappings: map.mappings,
  };
  appendFileSync(bundle, `\nglobalThis[Symbol.for('bullpen-guest.sourceMap')] = ${JSON.stringify(embedded)};\n`);
  rmSync(mapFile);
}
