// The canvassers' app's browser test fixtures, on top of the dashboard's (harness.mjs: the real
// `tally serve`, the `tally` and `tally-device` commands, Debian's Chromium, `until`):
//
// - `World`: a scratch folder with a server (restarted on the same port and data, with other
//   environment: `TALLY_REFUSE_RECORDS`), its organizer's commands and keys, and a TCP proxy that
//   is the phone's way to the server (the server's public_url, so the invite's link names it);
// - `Proxy`: can hold back what the server sends on sync connections once the phone has sent
//   more than `holdAfter` bytes on one: the server then has the phone's changes, and the phone
//   never hears that it has; and can answer requests whose first line matches `refuse` with a
//   503 itself (the server never sees them: e.g. the phone's record keys, PUT /api/v1/keys);
// - `Shots`: screenshots of a phone-sized viewport, numbered, under $TALLY_WEB_OUT/screens;
// - `PHONE`: the browser context of a small touch screen.

import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

import { CHROMIUM, OUT, Phone, Server, scratch, tally } from './harness.mjs';

export { OUT };

/** Chromium as harness.mjs's `browser()` launches it, with `extra` arguments. */
export function launchWith(extra) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-dev-shm-usage', ...extra],
  });
}

/** A phone: a small touch screen. */
export const PHONE = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true, locale: 'en-CA' };

export class Proxy {
  constructor() {
    this.target = 0;
    this.holdAfter = Infinity;
    this.held = 0;
    /** Requests whose first line matches are answered 503 by the proxy; `refused` counts them. */
    this.refuse = null;
    this.refused = 0;
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
      if (!sync && this.refuse?.test(d.toString('latin1', 0, 200))) {
        this.refused += 1;
        const body = '{"error":"refused by the test proxy"}';
        client.end(`HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
        upstream.destroy();
        return;
      }
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

/** A server, its organizer (in the world's folder) and the proxy phones reach it through. */
export class World {
  constructor() {
    this.dir = scratch();
    this.proxy = new Proxy();
    this.server = new Server(join(this.dir, 'data'));
  }

  /** The server, as the organizer's commands and the test reach it. */
  get url() {
    return this.server.url;
  }

  /** The server, as the phone reaches it (the invite's `server`). */
  get phoneUrl() {
    return this.proxy.url;
  }

  /** Starts the server (again, on the same port and data) with `env`. */
  async start(env = {}) {
    if (!this.proxy.port) {
      await this.proxy.start();
      this.server.env = { ...this.server.env, TALLY_PUBLIC_URL: this.proxy.url };
    }
    await this.server.start(env);
    this.proxy.target = Number(this.server.listen.split(':').pop());
  }

  /** SIGKILL: no goodbye to anyone, as a crash or a pulled plug. */
  kill() {
    return this.server.kill();
  }

  stop() {
    return this.server.stop();
  }

  tally(...args) {
    return tally(this.server, this.dir, args);
  }

  async tallyJson(...args) {
    return JSON.parse(await this.tally('--json', ...args));
  }

  /** A `tally-device` phone with its home in the world's folder. */
  device(name) {
    return new Phone(join(this.dir, name));
  }

  /** GET on the organizer API with the admin token; the JSON. */
  async api(path) {
    const [status, json] = await this.server.api('GET', path, this.server.adminToken);
    if (status !== 200) throw new Error(`GET ${path}: ${status} ${JSON.stringify(json)}`);
    return json;
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
    await this.server.kill();
    await this.proxy.close();
    mkdirSync(OUT, { recursive: true });
    writeFileSync(join(OUT, 'serve.log'), this.server.log);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Screenshots of what the phone's screen shows, numbered in the order they are taken. */
export class Shots {
  constructor() {
    this.dir = join(OUT, 'screens');
    rmSync(this.dir, { recursive: true, force: true });
    mkdirSync(this.dir, { recursive: true });
    this.n = 0;
    this.paths = [];
  }

  async take(page, name) {
    this.n += 1;
    const path = join(this.dir, `${String(this.n).padStart(2, '0')}-${name}.png`);
    await page.screenshot({ path });
    this.paths.push(path);
    return path;
  }
}
