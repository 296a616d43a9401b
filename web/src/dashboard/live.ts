// The live totals: the server's Server-Sent Events stream
// (GET /api/v1/campaigns/{id}/totals/stream), read with fetch so that the token goes in the
// Authorization header (an EventSource could only put it in the URL). It reconnects by itself
// when the stream ends or the network drops (after 1, 2, 4, 8, then every 10 s, or at once when
// the page hears the server answer again), and treats a stream that has sent nothing for
// STALE_MS (the server sends a keep-alive every 15 s) as dead.

import { authHeaders, errorMessage } from './api';
import type { Totals } from './types';

/** A stream silent this long is dead: reconnect. */
export const STALE_MS = 35_000;
const BACKOFF_MS = [1000, 2000, 4000, 8000, 10_000];

export type LiveState =
  | { kind: 'connecting' }
  | { kind: 'live' }
  | { kind: 'reconnecting'; reason: string; retryAt: number }
  | { kind: 'refused'; status: number; message: string };

export interface LiveHandlers {
  totals(t: Totals, receivedAt: number): void;
  state(s: LiveState): void;
}

export class LiveTotals {
  private abort: AbortController | null = null;
  private stopped = false;
  private failures = 0;
  private lastByte = 0;
  private watchdog: number | undefined;
  private retry: number | undefined;
  private waiting = false;
  /** The server answers again (the page noticed): reconnect now rather than after the backoff. */
  private readonly onReachable = () => {
    if (!this.waiting || this.stopped) return;
    window.clearTimeout(this.retry);
    this.waiting = false;
    void this.connect();
  };

  constructor(
    private readonly url: string,
    private readonly on: LiveHandlers,
  ) {}

  start(): void {
    this.stopped = false;
    window.addEventListener('tally:reachable', this.onReachable);
    this.watchdog = window.setInterval(() => {
      if (this.abort && this.lastByte && Date.now() - this.lastByte > STALE_MS) {
        this.abort.abort();
      }
    }, 1000);
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    window.removeEventListener('tally:reachable', this.onReachable);
    window.clearInterval(this.watchdog);
    window.clearTimeout(this.retry);
    this.abort?.abort();
    this.abort = null;
  }

  private later(reason: string): void {
    if (this.stopped) return;
    const wait = BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)] ?? 10_000;
    this.failures += 1;
    this.on.state({ kind: 'reconnecting', reason, retryAt: Date.now() + wait });
    this.waiting = true;
    this.retry = window.setTimeout(() => {
      this.waiting = false;
      void this.connect();
    }, wait);
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    this.on.state({ kind: 'connecting' });
    const abort = new AbortController();
    this.abort = abort;
    this.lastByte = 0;
    let res: Response;
    try {
      res = await fetch(this.url, {
        headers: { Accept: 'text/event-stream', ...authHeaders() },
        cache: 'no-store',
        credentials: 'omit',
        signal: abort.signal,
      });
    } catch (e) {
      this.later(e instanceof Error ? e.message : String(e));
      window.dispatchEvent(new CustomEvent('tally:unreachable'));
      return;
    }
    window.dispatchEvent(new CustomEvent('tally:reachable'));
    if (!res.ok) {
      const message = await errorMessage(res);
      if (res.status === 429 || res.status === 503 || res.status >= 500) {
        this.later(message);
      } else {
        if (res.status === 401) {
          window.dispatchEvent(new CustomEvent('tally:unauthorized', { detail: message }));
        }
        this.on.state({ kind: 'refused', status: res.status, message });
      }
      return;
    }
    const body = res.body;
    if (!body) {
      this.later('no stream');
      return;
    }
    this.lastByte = Date.now();
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let reason = 'the stream ended';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        this.lastByte = Date.now();
        buffer += value.replace(/\r\n?/g, '\n');
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          this.dispatch(block);
        }
      }
    } catch (e) {
      reason = abort.signal.aborted ? `nothing heard for ${STALE_MS / 1000} s` : e instanceof Error ? e.message : String(e);
    }
    if (this.abort === abort) this.abort = null;
    this.later(reason);
  }

  private dispatch(block: string): void {
    let event = 'message';
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue; // keep-alive
      const colon = line.indexOf(':');
      const name = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (name === 'event') event = value;
      else if (name === 'data') data.push(value);
    }
    if (!data.length) return;
    if (event === 'totals') {
      this.failures = 0;
      this.on.state({ kind: 'live' });
      this.on.totals(JSON.parse(data.join('\n')) as Totals, Date.now());
    } else if (event === 'error') {
      let message = data.join('\n');
      try {
        message = (JSON.parse(message) as { error: string }).error;
      } catch {
        // the text as it is
      }
      this.on.state({ kind: 'reconnecting', reason: message, retryAt: Date.now() });
    }
  }
}
