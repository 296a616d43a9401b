// Builds tally's web pages into dist/, which the server embeds (server/build.rs) and serves.
//
//   node build.mjs            build into dist/ (what is committed)
//   node build.mjs --verify   build into a scratch folder and fail unless it equals dist/ byte
//                             for byte (CI: the committed build is the build of the source)
//
// Each page is a folder of src/ with an index.html, a main.ts and a style.css; it is built to
// the folder of dist/ it is served from (`/` for the dashboard; `/app/` is kept for the
// canvassers' app). The output depends only on the source and the locked packages: no
// timestamps, no absolute paths, no source maps.
import * as esbuild from 'esbuild';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

import { buildAppExtras } from './app-build.mjs';

const root = dirname(fileURLToPath(import.meta.url));

/** The pages: source folder under src/, output folder under dist/ ('' is the site's root). */
export const PAGES = [
  { src: 'dashboard', out: '', name: 'dashboard' },
  // The canvassers' app (issue 16), served at /app/; `extra` adds its manifest, icons,
  // WebAssembly and service worker (app-build.mjs).
  { src: 'app', out: 'app', name: 'app', extra: buildAppExtras },
];

async function build(outdir) {
  rmSync(outdir, { recursive: true, force: true });
  mkdirSync(outdir, { recursive: true });
  for (const page of PAGES) {
    const src = join(root, 'src', page.src);
    const out = join(outdir, page.out);
    mkdirSync(out, { recursive: true });
    await esbuild.build({
      absWorkingDir: root,
      entryPoints: { [page.name]: join(src, 'main.ts') },
      outdir: out,
      bundle: true,
      format: 'esm',
      platform: 'browser',
      target: ['es2022', 'chrome110', 'firefox110', 'safari16'],
      minify: true,
      legalComments: 'eof',
      charset: 'utf8',
      sourcemap: false,
      logLevel: 'warning',
      // No environment leaks into the bundle.
      define: { 'process.env.NODE_ENV': '"production"' },
    });
    await esbuild.build({
      absWorkingDir: root,
      entryPoints: { [page.name]: join(src, 'style.css') },
      outdir: out,
      bundle: true,
      minify: true,
      charset: 'utf8',
      logLevel: 'warning',
    });
    copyFileSync(join(src, 'index.html'), join(out, 'index.html'));
    if (page.extra) await page.extra({ esbuild, root, src, out });
  }
}

function files(dir) {
  const all = [];
  const walk = (d) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else all.push(relative(dir, p));
    }
  };
  walk(dir);
  return all;
}

const digest = (p) => createHash('sha256').update(readFileSync(p)).digest('hex');

if (process.argv.includes('--verify')) {
  const scratch = mkdtempSync(join(tmpdir(), 'tally-web-'));
  try {
    await build(scratch);
    const dist = join(root, 'dist');
    const fresh = files(scratch);
    const committed = files(dist);
    const problems = [];
    for (const f of fresh) {
      if (!committed.includes(f)) problems.push(`missing from dist/: ${f}`);
      else if (digest(join(scratch, f)) !== digest(join(dist, f))) problems.push(`differs: dist/${f}`);
    }
    for (const f of committed) if (!fresh.includes(f)) problems.push(`not built from the source: dist/${f}`);
    if (problems.length) {
      console.error(`web/dist is not the build of web/src:\n  ${problems.join('\n  ')}\nrun \`npm run build\` in web/ and commit web/dist`);
      process.exit(1);
    }
    console.log(`web/dist equals a fresh build (${fresh.length} files)`);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
} else {
  await build(join(root, 'dist'));
  console.log(`built ${files(join(root, 'dist')).join(', ')}`);
}
