// The browser tests' fixtures: a real `tally serve` on 127.0.0.1 (started, killed and started
// again on the same port and data folder), the organizer's `tally` commands and a
// `tally-device` phone run as child processes, the organizer API with the admin token, and
// Debian's Chromium driven by playwright-core with a phone-sized viewport.
//
// Environment:
//   TALLY_BIN_DIR        where `tally` and `tally-device` are (default: <repo>/target/debug)
//   TALLY_APP_TEST_OUT   the output folder: screenshots, server logs, figures
//                        (default: <repo>/target/app-tests)
//   TALLY_CHROMIUM       the browser (default: /usr/bin/chromium)

import { execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, createWriteStream } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { chromium } from 'playwright-core';

const run = promisify(execFile);
export const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const binDir = process.env.TALLY_BIN_DIR ?? join(repo, 'target', 'debug');
export const outDir = process.env.TALLY_APP_TEST_OUT ?? join(repo, 'target', 'app-tests');
export const chromiumPath = process.env.TALLY_CHROMIUM ?? '/usr/bin/chromium';

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** Waits until `check()` is truthy (polling, no fixed sleeps as synchronization). */
export async function until(what, check, { timeout = 20_000, every = 50 } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/**
 * A TCP proxy in front of the server, the phone's way to it (the server's public_url, so the
 * invite's link names it). It can hold back what the server sends on sync connections once the
 * phone has sent more than `holdAfter` bytes on one: the server then has the phone's changes,
 * and the phone never hears the acknowledgement.
 */
export class Proxy {
  constructor() {
    this.target = 0;
    this.holdAfter = Infinity;
    this.held = 0;
    this.sockets = new Set();
  }

  async start() {
    this.server = createServer((client) => this.accept(client));
    await new Promise((ok) => this.server.listen(0, '127.0.0.1', ok));
    this.port = this.server.address().port;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  accept(client) {
    const upstream = connect(this.target, '127.0.0.1');
    this.sockets.add(client);
    let sync = false;
    let sent = 0;
    client.on('data', (d) => {
      if (sent === 0 && d.toString('latin1', 0, 10).startsWith('GET /sync')) sync = true;
      sent += d.length;
      upstream.write(d);
    });
    upstream.on('data', (d) => {
      if (sync && sent > this.holdAfter) {
        this.held += d.length;
        return;
      }
      client.write(d);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
    };
    client.on('close', end);
    client.on('error', end);
    upstream.on('close', end);
    upstream.on('error', end);
  }

  async close() {
    for (const s of this.sockets) s.destroy();
    await new Promise((ok) => this.server?.close(ok));
  }
}

/** A scratch folder with a tally server's data, its organizer and their keys. */
export class World {
  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), 'tally-app-test-'));
    this.port = 0;
    this.server = undefined;
    this.logs = join(outDir, 'logs');
    mkdirSync(this.logs, { recursive: true });
    this.starts = 0;
    this.proxy = new Proxy();
  }

  /** The server, as the organizer's commands reach it. */
  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The server, as the phone reaches it (through the proxy: the invite's `server`). */
  get phoneUrl() {
    return this.proxy.url;
  }

  env(extra = {}) {
    const env = { ...process.env };
    for (const k of Object.keys(env)) if (k.startsWith('TALLY_')) delete env[k];
    return { ...env, TALLY_LISTEN: `127.0.0.1:${this.port}`, TALLY_SERVER: this.url, TALLY_PUBLIC_URL: this.phoneUrl, RUST_LOG: 'info', ...extra };
  }

  /** Starts `tally serve` (again, on the same port and data) with `extra` environment. */
  async start(extra = {}) {
    if (!this.port) {
      this.port = await freePort();
      await this.proxy.start();
      this.proxy.target = this.port;
    }
    this.starts += 1;
    const log = createWriteStream(join(this.logs, `serve-${this.starts}.log`));
    const child = spawn(join(binDir, 'tally'), ['serve'], { cwd: this.dir, env: this.env(extra), stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.pipe(log);
    child.stderr.pipe(log);
    const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
    this.server = { child, exited };
    await until('the server to answer /healthz', async () => {
      if (child.exitCode !== null) throw new Error(`tally serve exited (${child.exitCode}); see ${log.path}`);
      const r = await fetch(`${this.url}/healthz`).catch(() => undefined);
      return r?.ok;
    });
  }

  /** Kills the server (SIGKILL by default: no goodbye to anyone) and waits for it to be gone. */
  async kill(signal = 'SIGKILL') {
    const s = this.server;
    if (!s) return;
    this.server = undefined;
    s.child.kill(signal);
    await s.exited;
  }

  /** Runs `tally ARGS` (the organizer's commands) in the world's folder. */
  async tally(...args) {
    const { stdout } = await run(join(binDir, 'tally'), args, { cwd: this.dir, env: this.env(), maxBuffer: 64 << 20 });
    return stdout;
  }

  async tallyJson(...args) {
    return JSON.parse(await this.tally('--json', ...args));
  }

  /** Runs `tally-device --home HOME ARGS` (a phone of the command line). */
  async device(home, ...args) {
    const { stdout } = await run(join(binDir, 'tally-device'), ['--home', join(this.dir, home), ...args], { cwd: this.dir, env: this.env(), maxBuffer: 64 << 20 });
    return stdout;
  }

  /** GET on the organizer API with the admin token. */
  async api(path) {
    const token = readFileSync(join(this.dir, 'tally-data', 'admin.token'), 'utf8').trim();
    const r = await fetch(`${this.url}${path}`, { headers: { Authorization: `Bearer ${token}` } });
    if (!r.ok) throw new Error(`GET ${path}: ${r.status} ${await r.text()}`);
    return r.json();
  }

  write(name, text) {
    const p = join(this.dir, name);
    writeFileSync(p, text);
    return p;
  }

  read(name) {
    return readFileSync(join(this.dir, name), 'utf8');
  }

  async close() {
    await this.kill('SIGKILL');
    await this.proxy.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Debian's Chromium, headless, with nothing from the network but what the test serves. */
export async function launch() {
  return chromium.launch({
    executablePath: chromiumPath,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-dev-shm-usage'],
  });
}

/** A phone: a small touch screen. */
export const PHONE = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true, locale: 'en-CA' };

/** Screenshots, numbered in the order they are taken, under <out>/screens. */
export class Shots {
  constructor() {
    this.dir = join(outDir, 'screens');
    rmSync(this.dir, { recursive: true, force: true });
    mkdirSync(this.dir, { recursive: true });
    this.n = 0;
    this.paths = [];
  }

  async take(page, name, { fullPage = false } = {}) {
    this.n += 1;
    const path = join(this.dir, `${String(this.n).padStart(2, '0')}-${name}.png`);
    await page.screenshot({ path, fullPage });
    this.paths.push(path);
    return path;
  }
}
