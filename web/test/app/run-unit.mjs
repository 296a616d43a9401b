// Runs the app's unit tests (web/test/app/*.test.mjs) with node's test runner. The tests import
// the app's TypeScript modules, so each is bundled first by esbuild into a scratch folder.
//
//   node test/app/run-unit.mjs
import * as esbuild from 'esbuild';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const tests = readdirSync(here).filter((f) => f.endsWith('.test.mjs')).sort();
const out = mkdtempSync(join(tmpdir(), 'tally-app-unit-'));
try {
  await esbuild.build({
    entryPoints: tests.map((t) => join(here, t)),
    outdir: out,
    bundle: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    logLevel: 'warning',
    // Node's own modules stay imports; the repo's are bundled.
    packages: 'bundle',
  });
  const run = spawnSync(process.execPath, ['--test', ...tests.map((t) => join(out, t.replace(/\.mjs$/, '.js')))], {
    stdio: 'inherit',
    env: { ...process.env, TALLY_WEB_ROOT: join(here, '..', '..') },
  });
  process.exitCode = run.status ?? 1;
} finally {
  rmSync(out, { recursive: true, force: true });
}
