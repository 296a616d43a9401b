// The connection to the server: automerge-repo's WebSocket client adapter, to `/sync?token=...`
// (a browser cannot set a header on a WebSocket), with what the stock adapter lacks for tally
// (docs/clients.md §2, §6):
//
// - the server's `error` messages: the stock adapter only logs them; here they reach the phone,
//   with the refused document (`documentId`) and record (`tallyRecord`), so that it can follow its
//   chain of collections;
// - reconnecting with backoff (1 s doubling to 30 s, with jitter) instead of a fixed interval,
//   at once when the browser says it is online again or the canvasser asks, and not at all while
//   it says it is offline or after the server refused the token.

import { cbor } from '@automerge/automerge-repo/slim';
import type { PeerId, PeerMetadata } from '@automerge/automerge-repo/slim';
import { WebSocketClientAdapter } from '@automerge/automerge-repo-network-websocket';

/** An `error` message from the server. */
export interface ServerError {
  message: string;
  /** The refused document (bare id), when the error is about one. */
  documentId?: string;
  /** The record at fault, when one is. */
  tallyRecord?: string;
}

export type LinkState = 'offline' | 'connecting' | 'connected' | 'waiting' | 'stopped';

export interface LinkEvents {
  /** The connection's state changed; `retryIn` is the wait before the next attempt (ms). */
  state(state: LinkState, retryIn?: number): void;
  /** The server sent an `error` message. */
  error(e: ServerError): void;
  /** An attempt failed before the server answered (refused, unreachable, or a token refused). */
  failed(attempts: number): void;
}

const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 30_000;
/** Longer than any session: the stock adapter's own retry timers never fire. */
const NEVER_MS = 2 ** 31 - 1;

function text(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v instanceof Uint8Array) return undefined;
  return undefined;
}

/** The stock adapter, with the server's errors surfaced and a backoff of our own. */
export class TallyLink extends WebSocketClientAdapter {
  private delay = FIRST_RETRY_MS;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private opened = false;
  private failures = 0;
  private stopped = false;
  private meta: { peerId: PeerId; metadata?: PeerMetadata } | undefined;

  constructor(
    url: string,
    private readonly events: LinkEvents,
  ) {
    super(url, NEVER_MS);
    // The stock handlers are instance fields: replaced here, before any socket exists.
    const open = this.onOpen;
    this.onOpen = () => {
      this.opened = true;
      this.events.state('connecting');
      open();
    };
    this.onClose = () => this.closed();
    this.onError = () => {
      // The browser says nothing more; `close` follows.
    };
  }

  override connect(peerId: PeerId, peerMetadata?: PeerMetadata): void {
    this.meta = { peerId, metadata: peerMetadata };
    if (this.stopped || !navigator.onLine) {
      this.events.state(this.stopped ? 'stopped' : 'offline');
      return;
    }
    this.clearTimer();
    this.opened = false;
    this.events.state('connecting');
    super.connect(peerId, peerMetadata);
  }

  override receiveMessage(bytes: Uint8Array): void {
    let message: Record<string, unknown> | undefined;
    try {
      message = cbor.decode<Record<string, unknown>>(new Uint8Array(bytes));
    } catch {
      // The stock adapter reports undecodable frames itself.
    }
    if (message?.type === 'error') {
      const documentId = text(message.documentId);
      const tallyRecord = text(message.tallyRecord);
      this.events.error({
        message: text(message.message) ?? 'error',
        ...(documentId !== undefined ? { documentId } : {}),
        ...(tallyRecord !== undefined ? { tallyRecord } : {}),
      });
      return;
    }
    if (message?.type === 'peer') {
      this.delay = FIRST_RETRY_MS;
      this.failures = 0;
      this.events.state('connected');
    }
    super.receiveMessage(bytes);
  }

  private closed(): void {
    if (this.remotePeerId) this.emit('peer-disconnected', { peerId: this.remotePeerId });
    this.remotePeerId = undefined;
    if (!this.opened) {
      this.failures++;
      this.events.failed(this.failures);
    }
    this.schedule();
  }

  private schedule(): void {
    this.clearTimer();
    if (this.stopped) {
      this.events.state('stopped');
      return;
    }
    if (!navigator.onLine) {
      this.events.state('offline');
      return;
    }
    const wait = Math.round(this.delay * (0.75 + Math.random() * 0.5));
    this.delay = Math.min(this.delay * 2, MAX_RETRY_MS);
    this.events.state('waiting', wait);
    this.timer = setTimeout(() => this.reconnect(), wait);
  }

  private clearTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private reconnect(): void {
    if (this.meta) this.connect(this.meta.peerId, this.meta.metadata);
  }

  /** The stock adapter's socket, typed (its declaration comes from node's `ws`). */
  private get ws(): WebSocket | undefined {
    return (this as unknown as { socket?: WebSocket }).socket;
  }

  /** True while a connection is open. */
  get isOpen(): boolean {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  /** Connect now if not connected (the browser is online again, or the canvasser asked). */
  now(): void {
    if (this.stopped || this.isOpen || this.ws?.readyState === WebSocket.CONNECTING) return;
    this.delay = FIRST_RETRY_MS;
    this.reconnect();
  }

  /** The browser went offline: close, and wait for `now()`. */
  pause(): void {
    this.clearTimer();
    this.dropSocket();
    this.events.state('offline');
  }

  /** Attempts again after `stop()` (enrolling again failed: the old token still works). */
  resume(): void {
    this.stopped = false;
    this.now();
  }

  /** The server refused the token: no more attempts. */
  stop(): void {
    this.stopped = true;
    this.clearTimer();
    this.dropSocket();
    this.events.state('stopped');
  }

  private dropSocket(): void {
    const s = this.ws;
    if (!s) return;
    s.removeEventListener('open', this.onOpen);
    s.removeEventListener('close', this.onClose);
    s.removeEventListener('message', this.onMessage as unknown as (e: MessageEvent) => void);
    s.removeEventListener('error', this.onError);
    s.close();
    (this as unknown as { socket?: WebSocket }).socket = undefined;
    if (this.remotePeerId) this.emit('peer-disconnected', { peerId: this.remotePeerId });
    this.remotePeerId = undefined;
  }
}
