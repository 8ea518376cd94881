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
import { createHash } from 'node:crypto';
import {
  appendFileSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { basename, dirname, extname, join, relative, resolve, sep } from 'node:path';
import { homedir, tmpdir } from 'node:os';
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
  --wit <dir>          the bullpen WIT directory (default: the SDK's own wit/)
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

// The WIT: the package's own copy (scripts/sync-wit.sh keeps it equal to
// the repository's wit/), so the SDK builds from its npm package alone.
const witDir = opts.wit ? resolve(opts.wit) : join(sdkDir, 'wit');
if (!existsSync(join(witDir, 'processor.wit'))) fail(`no processor.wit in ${witDir}; pass --wit <dir>`);

// componentize-js does not give the same bytes twice: StarlingMonkey's
// pre-initialisation (wizer) runs the engine on the machine's clocks and
// randomness, and its memory snapshot differs from run to run (about 3 MB of
// a 13 MB component, with paths and features pinned). So the same inputs
// reuse the component made from them before: same bytes, same digest, and
// bullpen's compile cache serves it. BULLPEN_BUILD_CACHE=off: always build.
const cacheDir =
  process.env.BULLPEN_BUILD_CACHE === 'off'
    ? null
    : (process.env.BULLPEN_BUILD_CACHE ?? join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'bullpen', 'js-builds'));
const CACHE_KEEP = 8; // ~13 MB each

/** sha256 of everything the component is made from. */
function inputsKey({ bundle, world, disableFeatures, knob, warm }) {
  const h = createHash('sha256');
  const add = (label, data) => h.update(`${label}\0${data.length}\0`).update(data);
  add('bundle', readFileSync(bundle));
  add('module name', basename(bundle)); // componentize-js names the module after it
  add('world', world);
  add('disabled features', disableFeatures.join(','));
  add('componentize options', JSON.stringify(knob));
  add('bindings warm-up', warm);
  add('build.mjs', readFileSync(fileURLToPath(import.meta.url)));
  const cjs = fileURLToPath(new URL('../package.json', import.meta.resolve('@bytecodealliance/componentize-js')));
  add('componentize-js', JSON.parse(readFileSync(cjs, 'utf8')).version);
  const witFiles = (dir) =>
    readdirSync(dir, { withFileTypes: true })
      .sort((a, b) => (a.name < b.name ? -1 : 1))
      .flatMap((e) => (e.isDirectory() ? witFiles(join(dir, e.name)).map((f) => join(e.name, f)) : [e.name]));
  for (const f of witFiles(witDir)) add(`wit/${f}`, readFileSync(join(witDir, f)));
  return h.digest('hex');
}

/** Keep `component` as the build of its inputs; the least recently used beyond CACHE_KEEP go. */
function remember(path, component) {
  try {
    mkdirSync(dirname(path), { recursive: true });
    const tmp = `${path}.${process.pid}.tmp`;
    writeFileSync(tmp, component);
    renameSync(tmp, path);
    const dir = dirname(path);
    const entries = readdirSync(dir)
      .filter((f) => f.endsWith('.wasm'))
      .map((f) => ({ f, t: statSync(join(dir, f)).mtimeMs }))
      .sort((a, b) => b.t - a.t);
    for (const { f } of entries.slice(CACHE_KEEP)) rmSync(join(dir, f), { force: true });
  } catch (e) {
    console.error(`bullpen-build: cannot keep the build in ${dirname(path)} (${e.message}); the next build of the same source makes it again`);
  }
}

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
  if (world === 'processor' && exported.includes('backoff')) {
    // The processor world has no `backoff` export: the strategy would be
    // dropped silently and custom backoff types retried at once.
    fail(`${positionals[0]} exports \`backoff\`, but the processor world has none: the strategy would never run. Build for --world processor-with-backoff, or leave --world out (it is chosen from the exports)`);
  }
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
  const disableFeatures = ['http', 'fetch-event'];
  const warm = readFileSync(join(sdkDir, 'bin', 'warm-bindings.js'), 'utf8');
  const key = inputsKey({ bundle, world, disableFeatures, knob, warm });
  const cached = cacheDir && join(cacheDir, `${key}.wasm`);
  if (cached && existsSync(cached)) {
    const component = readFileSync(cached);
    if (!existsSync(out) || !component.equals(readFileSync(out))) writeFileSync(out, component);
    utimesSync(cached, new Date(), new Date()); // its last use, for eviction
    console.error(`bullpen-build: ${opts.out} is the component built before from the same inputs (same digest; world ${world})`);
  } else {
    let component;
    try {
      const warmed = await warmBindings(warm);
      ({ component } = await componentize({ sourcePath: bundle, witPath: witDir, worldName: world, disableFeatures, ...knob }));
      if (!warmed.done) {
        console.error(`bullpen-build: note: this componentize-js did not let bin/warm-bindings.js in; the component works, its fresh instances start slower`);
      }
    } catch (e) {
      fail(`componentize-js failed for ${positionals[0]} (world ${world}):\n${e.message}`);
    }
    writeFileSync(out, component);
    if (cached) remember(cached, component);
    const mb = (component.length / 1e6).toFixed(1);
    const secs = ((Date.now() - started) / 1000).toFixed(1);
    console.error(`bullpen-build: wrote ${opts.out} (world ${world}, ${mb} MB) in ${secs} s`);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}

// Have componentize-js append `warm` (bin/warm-bindings.js) to the bindings
// it generates, which run at build time before the snapshot. It has no
// option for that: its splicer module (the one instance both share) gets a
// wrapper around spliceBindings. `done` says whether it was called; another
// componentize-js version may not have the module, and then the build goes
// on without the warm-up.
async function warmBindings(warm) {
  const state = { done: false };
  let splicer;
  try {
    const url = new URL('../lib/spidermonkey-embedding-splicer.js', import.meta.resolve('@bytecodealliance/componentize-js'));
    ({ splicer } = await import(url.href));
  } catch {
    return state;
  }
  if (!splicer || typeof splicer.spliceBindings !== 'function' || splicer.spliceBindings.bullpenWarm) return state;
  const splice = splicer.spliceBindings;
  const wrapped = (...args) => {
    const spliced = splice(...args);
    if (typeof spliced?.jsBindings === 'string') {
      spliced.jsBindings += `\n;${warm}\n`;
      state.done = true;
    }
    return spliced;
  };
  wrapped.bullpenWarm = true;
  splicer.spliceBindings = wrapped;
  return state;
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
