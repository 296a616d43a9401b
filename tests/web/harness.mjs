// The browser tests' fixtures: a real `tally serve` on 127.0.0.1 (a port of its own, read from
// its log), the real command lines (`tally`, `tally-device`), Debian's Chromium through
// playwright-core, and helpers that wait for conditions (never for a fixed time).
//
// Environment: TALLY_BIN_DIR (where `tally` and `tally-device` are built; tests/e2e/dashboard.rs
// sets it), CHROMIUM (default /usr/bin/chromium), TALLY_WEB_OUT (where screenshots and logs go).

import { spawn, execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createServer } from 'node:net';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

const run = promisify(execFile);

export const BIN_DIR = process.env.TALLY_BIN_DIR ?? resolve(import.meta.dirname, '../../target/debug');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const OUT = process.env.TALLY_WEB_OUT ?? resolve(import.meta.dirname, '../../target/browser-tests');

/** A free TCP port on 127.0.0.1 (bound and released). */
function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/** A scratch folder for one test run. */
export function scratch() {
  return mkdtempSync(join(tmpdir(), 'tally-web-'));
}

/** The environment of a child command: the test's own TALLY_* variables removed. */
function childEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('TALLY_')) env[k] = v;
  return { ...env, RUST_LOG: 'info', ...extra };
}

/** Waits until `check()` returns a truthy value (or a promise of one); its value. */
export async function until(what, check, { timeout = 15_000, every = 50 } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/**
 * `tally serve` on 127.0.0.1:PORT with its data in `data` (port 0 the first time: the bound
 * address is read from the log; a restart reuses it, so the page's origin stays the same).
 */
export class Server {
  constructor(data, env = {}) {
    this.data = data;
    this.env = env;
    this.listen = null;
    this.log = '';
    this.proc = null;
  }

  get url() {
    return `http://${this.listen}`;
  }

  get adminToken() {
    return readFileSync(join(this.data, 'admin.token'), 'utf8').trim();
  }

  async start(extraEnv = {}) {
    // A port of its own, chosen once: invites carry the server's URL (public_url defaults to
    // the listen address), and a restart must come back at the same origin as the page.
    this.listen ??= `127.0.0.1:${await freePort()}`;
    const proc = spawn(join(BIN_DIR, 'tally'), ['serve', '--listen', this.listen, '--data', this.data], {
      env: childEnv({ ...this.env, ...extraEnv }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    const exited = new Promise((res) => proc.once('exit', (code) => res(code)));
    this.exited = exited;
    let text = '';
    const onData = (b) => {
      text += b.toString();
      this.log += b.toString();
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', onData);
    await until(`tally serve to listen on ${this.listen}`, () => {
      if (proc.exitCode !== null) throw new Error(`tally serve exited ${proc.exitCode}: ${text}`);
      return text.includes('tally serving');
    });
    await until('the server to answer /healthz', async () => (await fetch(`${this.url}/healthz`)).ok);
    return this;
  }

  /** Stops the server abruptly (SIGKILL), as a crash or a pulled plug would. */
  async kill() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill('SIGKILL');
    await this.exited;
  }

  /** Stops it cleanly. */
  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill('SIGTERM');
    await this.exited;
  }

  /** One API call as `token`: [status, JSON]. */
  async api(method, path, token, body) {
    const res = await fetch(`${this.url}${path}`, {
      method,
      headers: { Authorization: `Bearer ${token}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      json = text;
    }
    return [res.status, json];
  }
}

/** Runs `tally ARGS` in `cwd` against `server`; its stdout. */
export async function tally(server, cwd, args) {
  const { stdout } = await run(join(BIN_DIR, 'tally'), args, {
    cwd,
    env: childEnv({ TALLY_SERVER: server.url, TALLY_DATA: server.data, TALLY_KEYS: join(cwd, 'tally-keys') }),
  });
  return stdout;
}

/** A phone: `tally-device --home DIR`. */
export class Phone {
  constructor(home) {
    this.home = home;
  }

  /** Runs a command; {code, stdout, stderr} (never throws on a non-zero exit). */
  async run(args) {
    return new Promise((res) => {
      execFile(join(BIN_DIR, 'tally-device'), ['--home', this.home, ...args], { env: childEnv() }, (err, stdout, stderr) => {
        res({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
      });
    });
  }

  /** Runs a command that must succeed; its JSON output. */
  async ok(args) {
    const r = await this.run(['--json', ...args]);
    if (r.code !== 0) throw new Error(`tally-device ${args.join(' ')} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
    return JSON.parse(r.stdout.trim().split('\n').pop());
  }
}

/** Debian's Chromium, headless. */
export async function browser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-dev-shm-usage'],
  });
}

/** The folder screenshots go to (made). */
export function outDir() {
  mkdirSync(join(OUT, 'screenshots'), { recursive: true });
  return OUT;
}

/** Saves a screenshot of the page as OUT/screenshots/NAME.png; its path. */
export async function screenshot(page, name) {
  const path = join(outDir(), 'screenshots', `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

export function writeOut(name, text) {
  writeFileSync(join(outDir(), name), text);
}
