// The canvassers' app's part of the build (build.mjs calls it after the page's script, style
// and index.html): the web app manifest, the icons, automerge's WebAssembly (loaded by the app,
// not inlined: 3.6 MB of base64 would be parsed on every start), and the service worker, given
// the list of the app's files and a version made from their bytes (so a new build is a new
// offline cache, and the same build the same worker, byte for byte).
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

/** Files of the app besides the script, style and index.html, from src/app. */
const COPIED = ['manifest.webmanifest', 'icons/icon.svg', 'icons/icon-192.png', 'icons/icon-512.png', 'icons/icon-maskable-512.png'];

export async function buildAppExtras({ esbuild, root, src, out }) {
  mkdirSync(join(out, 'icons'), { recursive: true });
  for (const f of COPIED) copyFileSync(join(src, f), join(out, f));
  copyFileSync(join(root, 'node_modules/@automerge/automerge/dist/automerge.wasm'), join(out, 'automerge.wasm'));
  const files = [];
  const walk = (d) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else files.push(relative(out, p).split('\\').join('/'));
    }
  };
  walk(out);
  const version = createHash('sha256');
  for (const f of files) version.update(f).update('\0').update(readFileSync(join(out, f))).update('\0');
  // The shell is cached as ./ too: a navigation to /app/ finds it under either name.
  const precache = ['./', ...files];
  await esbuild.build({
    absWorkingDir: root,
    entryPoints: { sw: join(src, 'sw.ts') },
    outdir: out,
    bundle: true,
    format: 'iife',
    platform: 'browser',
    target: ['es2022', 'chrome110', 'firefox110', 'safari16'],
    minify: true,
    charset: 'utf8',
    logLevel: 'warning',
    define: {
      TALLY_PRECACHE: JSON.stringify(precache),
      TALLY_VERSION: JSON.stringify(version.digest('hex').slice(0, 16)),
    },
  });
}
