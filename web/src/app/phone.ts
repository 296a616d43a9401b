// The phone: what `tally-device` (client-core) does, in the browser, on automerge-repo. It
// enrolls with an invite, keeps the campaign and team totals documents, writes its own chain of
// collections (signatures and check-ins, sealed), keeps a receipt of every record until the
// server's heads cover it and, for a signature, the server holds its record key (uploaded
// beside the sync, PUT /api/v1/keys), and follows the chain after a refusal (docs/clients.md,
// docs/documents.md "A chain of collections"; client-core/src/chain.rs and sync.rs do the
// same in Rust).
//
// Documents live in automerge-repo's IndexedDB storage ("tally-repo", written with strict
// durability); receipts and settings in the phone's own store (store.ts). A record is "saved"
// only once both hold it. Sync runs by itself whenever the browser is online (net.ts).

import {
  Automerge as A,
  ImmutableString,
  Repo,
  initializeWasm,
  isValidAutomergeUrl,
  parseAutomergeUrl,
  stringifyAutomergeUrl,
} from '@automerge/automerge-repo/slim';
import type { DocHandle, DocumentId, PeerId } from '@automerge/automerge-repo/slim';
import { IndexedDBStorageAdapter } from '@automerge/automerge-repo-storage-indexeddb';

import { checkCheckin, checkSignature, deviceName, randomRecordId } from './core/rules';
import type { SignatureInput } from './core/rules';
import { seal } from './core/seal';
import { DuplicateKey } from './core/tokens';
import { TallyLink } from './net';
import type { LinkState, ServerError } from './net';
import { PhoneStore } from './store';
import type {
  ChainLink,
  CheckinRecord,
  Counts,
  Enrollment,
  InvitePayload,
  Receipt,
  RecordKind,
  SignatureRecord,
} from './store';

/** Records a collection takes before the next one starts (client-core's `DEFAULT_ROLL_OVER_AT`). */
export const ROLL_OVER_AT = 5000;
/** Refusals one connection recovers from at most (client-core's `MAX_RECOVERIES_PER_CONNECTION`). */
export const MAX_RECOVERIES_PER_CONNECTION = 16;

/** What the app shows of the campaign document (no personal data: kept for offline display). */
export interface CampaignInfo {
  title: string;
  petition: string;
  addressee: string;
  goal: number;
  recipients: string[];
  events: { id: string; name: string; city: string; starts_at: number; place: string }[];
}

/** The team's last known totals (the totals document, as the server wrote it). */
export interface TotalsInfo {
  signatures: number;
  unique_signers: number;
  computed_at: number;
  checkins: number;
}

/** Record keys one upload request carries at most (the server takes 256). */
export const KEYS_PER_REQUEST = 256;
/** How long before refused keys are sent again, while connected. */
const KEY_RETRY_MS = 30_000;

/** One key's answer from PUT /api/v1/keys (docs/clients.md §5a). */
interface KeyResult {
  record: string;
  status: 'stored' | 'already_stored' | 'refused';
  reason?: string;
  message?: string;
}

/** Bytes as standard base64. */
function base64(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

/** A receipt once safe: only that a record was taken and is safe (no name, record or key). */
function safeReceipt(r: Receipt, now: number): Receipt {
  return {
    key: r.key,
    kind: r.kind,
    record_id: r.record_id,
    doc_id: r.doc_id,
    change: r.change,
    state: 'safe',
    taken_at: r.taken_at,
    safe_at: now,
    ...(r.erased ? { erased: true } : {}),
  };
}

/** Why the phone cannot take records now, if it cannot. */
export type Blocker = 'not_enrolled' | 'loading' | 'no_campaign' | 'no_recipients';

/** A snapshot of the phone for the screens. */
export interface PhoneState {
  enrollment: Enrollment | undefined;
  campaign: CampaignInfo | undefined;
  totals: TotalsInfo | undefined;
  counts: Counts;
  link: LinkState;
  retryIn: number | undefined;
  lastAckAt: number | undefined;
  /** The server's errors that refused nothing of ours (retry later), latest last. */
  errors: string[];
  /** Refusals followed along the chain during this session. */
  refusals: string[];
  /** Whether the browser keeps this site's storage under pressure; undefined if unknown. */
  persisted: boolean | undefined;
  ready: boolean;
  chain: ChainLink[];
  unavailable: ('campaign' | 'totals')[];
}

/** Thrown for the canvasser: `code` picks the catalogue's words, `detail` is shown as is. */
export class PhoneError extends Error {
  constructor(
    readonly code: string,
    readonly detail = '',
  ) {
    super(detail ? `${code}: ${detail}` : code);
  }
}

type Doc = Record<string, unknown>;

/** automerge 3 reads scalar strings as ImmutableString: the text either way. */
function str(v: unknown): string {
  if (typeof v === 'string') return v;
  if (v instanceof ImmutableString) return v.val;
  if (v !== null && typeof v === 'object' && 'val' in v && typeof v.val === 'string') return v.val;
  return typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint' ? String(v) : '';
}

function num(v: unknown): number {
  return typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : 0;
}

/** A record's fields as the document stores them: every text a scalar string. */
function scalars(record: SignatureRecord | CheckinRecord): Doc {
  const out: Doc = {};
  for (const [k, v] of Object.entries(record)) out[k] = typeof v === 'string' ? new ImmutableString(v) : v;
  return out;
}

function bareId(url: string): string {
  return url.startsWith('automerge:') ? url.slice('automerge:'.length) : url;
}

/** The strict-durability storage: a write is reported done only once it is on disk. */
class DurableStorage extends IndexedDBStorageAdapter {
  private readonly durable: Promise<IDBDatabase>;

  constructor(name: string) {
    super(name, 'documents');
    this.durable = new Promise((resolve, reject) => {
      const r = indexedDB.open(name, 1);
      r.onupgradeneeded = () => {
        if (!r.result.objectStoreNames.contains('documents')) r.result.createObjectStore('documents');
      };
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error ?? new Error('IndexedDB open failed'));
    });
  }

  private async strict(work: (s: IDBObjectStore) => void): Promise<void> {
    const db = await this.durable;
    const tx = db.transaction('documents', 'readwrite', { durability: 'strict' });
    work(tx.objectStore('documents'));
    await new Promise<void>((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error ?? new Error('IndexedDB write failed'));
      tx.onabort = () => reject(tx.error ?? new Error('IndexedDB write aborted (is the phone out of space?)'));
    });
  }

  override save(key: string[], binary: Uint8Array): Promise<void> {
    return this.strict((s) => s.put({ key, binary }, key));
  }

  override remove(key: string[]): Promise<void> {
    return this.strict((s) => s.delete(key));
  }

  override removeRange(prefix: string[]): Promise<void> {
    return this.strict((s) => s.delete(IDBKeyRange.bound(prefix, [...prefix, '\uffff'])));
  }
}

/** One lock for the whole phone: writes, refusals and acknowledgements take turns. */
class Turns {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(work: () => Promise<T>): Promise<T> {
    const next = this.tail.then(work, work);
    this.tail = next.catch(() => undefined);
    return next;
  }
}

/** The phone. `Phone.open()` reads the store; `start()` opens the documents and syncs. */
export class Phone extends EventTarget {
  enrollment: Enrollment | undefined;
  chain: ChainLink[] = [];
  campaign: CampaignInfo | undefined;
  totals: TotalsInfo | undefined;
  counts: Counts = { pending: 0, unkeyed: 0, pendingSignatures: 0, pendingCheckins: 0, safe: 0, refused: 0, signatures: 0, checkins: 0 };
  link: LinkState = 'offline';
  retryIn: number | undefined;
  lastAckAt: number | undefined;
  errors: string[] = [];
  refusals: string[] = [];
  persisted: boolean | undefined;
  unavailable = new Set<'campaign' | 'totals'>();

  private repo: Repo | undefined;
  private net: TallyLink | undefined;
  private key: DuplicateKey | undefined;
  private readonly handles = new Map<string, DocHandle<Doc>>();
  /** Pending receipts by collection: what each acknowledgement is checked against. */
  private readonly pending = new Map<string, Map<string, string>>();
  /** Collections left behind (refused, retired): never synced again. */
  private readonly dead = new Set<string>();
  private currentRecords = 0;
  private recoveries = 0;
  private serverPeer: PeerId | undefined;
  private probing = false;
  private readonly turns = new Turns();
  private readonly ackTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly theirHeads = new Map<string, string[]>();
  private uploading = false;
  private uploadAgain = false;
  private uploadTimer: ReturnType<typeof setTimeout> | undefined;
  /** The last failure of a key upload the server answered (not a verdict on one key). */
  keyError: string | undefined;

  private constructor(readonly store: PhoneStore) {
    super();
  }

  /** Opens the phone's store: enough to draw the screens (no documents yet). */
  static async open(): Promise<Phone> {
    const p = new Phone(await PhoneStore.open());
    p.enrollment = await p.store.get<Enrollment>('enrollment');
    p.chain = (await p.store.get<ChainLink[]>('chain')) ?? [];
    p.campaign = await p.store.get<CampaignInfo>('campaign_cache');
    p.totals = await p.store.get<TotalsInfo>('totals_cache');
    p.lastAckAt = await p.store.get<number>('last_ack_at');
    p.counts = await p.store.counts();
    for (const l of p.chain) if (l.state === 'refused' || l.state === 'retired') p.dead.add(l.id);
    return p;
  }

  get state(): PhoneState {
    return {
      enrollment: this.enrollment,
      campaign: this.campaign,
      totals: this.totals,
      counts: this.counts,
      link: this.link,
      retryIn: this.retryIn,
      lastAckAt: this.lastAckAt,
      errors: this.errors,
      refusals: this.refusals,
      persisted: this.persisted,
      ready: this.repo !== undefined && this.current() !== undefined && this.handles.has(this.current()?.id ?? ''),
      chain: this.chain,
      unavailable: [...this.unavailable],
    };
  }

  /** Why a record cannot be taken now, or undefined. */
  blocker(): Blocker | undefined {
    if (!this.enrollment) return 'not_enrolled';
    // A refused token does not stop the canvasser: what they take waits, and moves to the new
    // enrollment (docs/clients.md §6).
    if (!this.state.ready) return 'loading';
    if (!this.campaign) return 'no_campaign';
    if (this.campaign.recipients.length === 0) return 'no_recipients';
    return undefined;
  }

  private changed(): void {
    this.dispatchEvent(new Event('change'));
  }

  private current(): ChainLink | undefined {
    return this.chain.find((l) => l.state === 'current');
  }

  // ---- storage persistence

  /** Asks the browser to keep the phone's storage under pressure; remembers the answer. */
  async askPersistence(): Promise<boolean | undefined> {
    if (!navigator.storage?.persist) return undefined;
    try {
      this.persisted = (await navigator.storage.persisted()) || (await navigator.storage.persist());
    } catch {
      this.persisted = false;
    }
    this.changed();
    return this.persisted;
  }

  // ---- enrollment

  /** Enrolls with an invite (again, with `replaces`, when this phone was enrolled before). */
  async enroll(payload: InvitePayload, name: string): Promise<void> {
    const phoneName = deviceName(name);
    const previous = this.enrollment;
    if (previous && previous.campaign !== bareId(payload.campaign)) {
      throw new PhoneError('other_campaign', previous.campaign);
    }
    // The key and the WebAssembly are checked before the code is spent.
    const key = await DuplicateKey.fromHex(payload.key);
    if (!A.isWasmInitialized()) await initializeWasm(new URL('automerge.wasm', import.meta.url).href);
    const body: Record<string, unknown> = { code: payload.code.trim(), name: phoneName };
    if (previous) {
      body.replaces = { device_id: previous.device_id, token: previous.token };
      // The old token is about to be revoked: no more connections with it (nor a refused one
      // mistaken for the new enrollment's).
      this.net?.stop();
    }
    const failed = (e: PhoneError): PhoneError => {
      if (previous && previous.refused_at === undefined) this.net?.resume();
      return e;
    };
    let answer: Response;
    try {
      answer = await fetch('/api/v1/enroll', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
    } catch {
      throw failed(new PhoneError('enroll_offline'));
    }
    const json = (await answer.json().catch(() => ({}))) as Record<string, unknown>;
    if (!answer.ok) throw failed(new PhoneError('enroll_refused', str(json.error) || String(answer.status)));
    const campaignUrl = str(json.campaign_url);
    if (bareId(campaignUrl) !== bareId(payload.campaign)) throw failed(new PhoneError('enroll_wrong_campaign', campaignUrl));
    const enrollment: Enrollment = {
      server: payload.server,
      device_id: str(json.device_id),
      token: str(json.token),
      role: str(json.role),
      campaign: bareId(campaignUrl),
      campaign_url: campaignUrl,
      totals_url: str(json.totals_url),
      key: payload.key,
      name: phoneName,
      enrolled_at: Date.now(),
    };
    this.key = key;
    if (!previous) {
      // The code is spent: the token is kept at once, then the first collection is made.
      await this.store.write({ enrollment });
      this.enrollment = enrollment;
      await this.openRepo();
      await this.turns.run(() => this.startCollection(undefined, enrollment.device_id, []));
      return;
    }
    // Enrolling again: the old device's collections retire, and what waits in them moves,
    // same ids, into the new device's first collection (docs/documents.md, step 3).
    await this.openRepo();
    await this.turns.run(async () => {
      const retiring = this.chain.filter((l) => l.state === 'current' || l.state === 'closed');
      for (const l of retiring) {
        l.state = 'retired';
        this.dead.add(l.id);
      }
      const moves = (await this.store.receipts('pending')).filter((r) => retiring.some((l) => l.id === r.doc_id));
      await this.startCollection(retiring.find((l) => l.chain === Math.max(...retiring.map((x) => x.chain)))?.id, enrollment.device_id, moves, { enrollment });
      this.enrollment = enrollment;
    });
  }

  // ---- documents and sync

  /** Loads the documents and starts syncing (after `open`, once enrolled). */
  async start(): Promise<void> {
    const e = this.enrollment;
    if (!e) return;
    this.key = await DuplicateKey.fromHex(e.key);
    void this.askPersistenceQuietly();
    await this.openRepo();
    await this.turns.run(async () => {
      for (const l of [...this.chain]) {
        if (l.state !== 'current' && l.state !== 'closed') continue;
        if (l.state === 'closed' && !(await this.hasPending(l.id))) continue;
        try {
          await this.load(l.id);
        } catch {
          // The browser lost this collection (its records' copies are in the receipts): the
          // next collection takes what was pending in it, same ids.
          const moves = (await this.store.receipts('pending')).filter((r) => r.doc_id === l.id && r.record);
          l.state = 'retired';
          this.dead.add(l.id);
          if (!this.current()) await this.startCollection(l.id, e.device_id, moves);
          else {
            const cur = await this.load((this.current() as ChainLink).id);
            await this.moveInto(cur, e.device_id, moves);
            await this.repo?.flush([cur.documentId]);
            await this.store.write({ chain: this.chain }, moves);
          }
        }
      }
      // Enrolled, but stopped before the first collection was made (or every one was lost).
      if (!this.current()) {
        const last = this.chain.reduce<ChainLink | undefined>((a, l) => (a === undefined || l.chain > a.chain ? l : a), undefined);
        await this.startCollection(last?.id, e.device_id, []);
      }
      await this.rebuildPending();
      await this.reconcile();
    });
    void this.follow('campaign', e.campaign_url);
    void this.follow('totals', e.totals_url);
    this.changed();
  }

  private async askPersistenceQuietly(): Promise<void> {
    if (!navigator.storage?.persisted) return;
    this.persisted = await navigator.storage.persisted().catch(() => undefined);
    if (this.persisted === false) await this.askPersistence();
    this.changed();
  }

  private async openRepo(): Promise<void> {
    if (this.repo) return;
    const e = this.enrollment;
    if (!e) throw new PhoneError('not_enrolled');
    if (!A.isWasmInitialized()) await initializeWasm(new URL('automerge.wasm', import.meta.url).href);
    const ws = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/sync?token=${encodeURIComponent(e.token)}`;
    const net = new TallyLink(ws, {
      state: (s, retryIn) => {
        this.link = s;
        this.retryIn = retryIn;
        if (s === 'connected') {
          this.recoveries = 0;
          this.scheduleUpload();
        }
        this.changed();
      },
      error: (err) => void this.onServerError(err),
      failed: () => void this.probeToken(),
    });
    this.net = net;
    const policy = async (_peer: PeerId, doc?: DocumentId): Promise<boolean> => {
      // Evaluated after the caller's synchronous work: a collection just made is in the chain.
      await Promise.resolve();
      return doc !== undefined && this.shares(doc);
    };
    const repo = new Repo({
      storage: new DurableStorage('tally-repo'),
      network: e.refused_at === undefined ? [net] : [],
      peerId: `${e.device_id}-${Math.random().toString(16).slice(2, 10)}` as PeerId,
      isEphemeral: false,
      shareConfig: { announce: policy, access: (p, d) => policy(p, d) },
    });
    repo.networkSubsystem.on('peer', ({ peerId }) => {
      this.serverPeer = peerId;
    });
    repo.synchronizer.on('sync-state', ({ peerId, documentId, syncState }) => {
      if (peerId !== this.serverPeer || !syncState.theirHeads) return;
      if (!this.chain.some((l) => l.id === documentId)) return;
      this.theirHeads.set(documentId, syncState.theirHeads);
      this.scheduleAck(documentId);
    });
    this.repo = repo;
    window.addEventListener('online', () => this.net?.now());
    window.addEventListener('offline', () => this.net?.pause());
  }

  /** May this document be synced with the server? */
  private shares(doc: string): boolean {
    const e = this.enrollment;
    if (!e) return false;
    if (doc === bareId(e.campaign_url) || doc === bareId(e.totals_url)) return true;
    if (this.dead.has(doc)) return false;
    const l = this.chain.find((c) => c.id === doc);
    return l !== undefined && (l.state === 'current' || l.state === 'closed');
  }

  /** Keeps the campaign or totals document's summary current, offline from the last copy. */
  private async follow(which: 'campaign' | 'totals', url: string): Promise<void> {
    const repo = this.repo;
    if (!repo || !isValidAutomergeUrl(url)) return;
    for (;;) {
      try {
        const handle = await repo.find<Doc>(url);
        this.unavailable.delete(which);
        const read = () => void this.summarize(which, handle.doc());
        handle.on('change', read);
        read();
        return;
      } catch {
        // Not on the phone yet, and the server has not sent it: ask again once connected.
        if (this.link === 'connected') this.unavailable.add(which);
        this.changed();
        await new Promise<void>((resolve) => {
          const again = () => {
            if (this.link === 'connected') {
              this.removeEventListener('change', again);
              setTimeout(resolve, 1000);
            }
          };
          this.addEventListener('change', again);
        });
      }
    }
  }

  private async summarize(which: 'campaign' | 'totals', doc: Doc | undefined): Promise<void> {
    if (!doc) return;
    if (which === 'campaign') {
      const events = (doc.events ?? {}) as Record<string, Doc>;
      const info: CampaignInfo = {
        title: str(doc.title),
        petition: str(doc.petition),
        addressee: str(doc.addressee),
        goal: num(doc.goal),
        recipients: ((doc.recipients ?? []) as unknown[]).map(str).filter((r) => r !== ''),
        events: Object.values(events)
          .map((ev) => ({ id: str(ev.id), name: str(ev.name), city: str(ev.city), starts_at: num(ev.starts_at), place: str(ev.place) }))
          .sort((a, b) => a.starts_at - b.starts_at || a.id.localeCompare(b.id)),
      };
      this.campaign = info;
      await this.store.write({ campaign_cache: info });
    } else {
      let parsed: Record<string, unknown>;
      try {
        parsed = JSON.parse(str(doc.json) || '{}') as Record<string, unknown>;
      } catch {
        return;
      }
      const checkins = Object.values((parsed.checkins ?? {}) as Record<string, { unique?: number }>).reduce((n, c) => n + (c.unique ?? 0), 0);
      const info: TotalsInfo = {
        signatures: num(parsed.signatures),
        unique_signers: num(parsed.unique_signers),
        computed_at: num(doc.computed_at),
        checkins,
      };
      this.totals = info;
      await this.store.write({ totals_cache: info });
    }
    this.changed();
  }

  private async load(id: string): Promise<DocHandle<Doc>> {
    const repo = this.repo;
    if (!repo) throw new PhoneError('not_enrolled');
    const known = this.handles.get(id);
    if (known) return known;
    const handle = await repo.find<Doc>(stringifyAutomergeUrl({ documentId: id as DocumentId }), { allowableStates: ['ready'] });
    this.handles.set(id, handle);
    if (this.current()?.id === id) {
      const d = handle.doc();
      this.currentRecords = Object.keys(d?.signatures ?? {}).length + Object.keys(d?.checkins ?? {}).length;
    }
    return handle;
  }

  private async hasPending(doc: string): Promise<boolean> {
    return (await this.store.receipts('pending')).some((r) => r.doc_id === doc);
  }

  private async rebuildPending(): Promise<void> {
    this.pending.clear();
    for (const r of await this.store.receipts('pending')) this.track(r);
  }

  private track(r: Receipt): void {
    let m = this.pending.get(r.doc_id);
    if (!m) this.pending.set(r.doc_id, (m = new Map<string, string>()));
    m.set(r.key, r.change);
  }

  private untrack(r: Receipt): void {
    for (const m of this.pending.values()) m.delete(r.key);
  }

  /**
   * After a crash between the two writes of a record: a record in the current collection with
   * no receipt gets one (pending), and a pending receipt whose record its collection lost is
   * written again into the current collection, with the same id.
   */
  private async reconcile(): Promise<void> {
    const cur = this.current();
    const e = this.enrollment;
    if (!cur || !e) return;
    const handle = this.handles.get(cur.id);
    if (!handle) return;
    const doc = handle.doc() ?? {};
    const all = await this.store.receipts();
    const have = new Set(all.map((r) => r.key));
    const found: Receipt[] = [];
    for (const [kind, map] of [['signature', doc.signatures], ['checkin', doc.checkins]] as const) {
      for (const id of Object.keys(map ?? {})) {
        const k = `${kind}:${id}`;
        if (have.has(k)) continue;
        found.push({ key: k, kind, record_id: id, doc_id: cur.id, change: '', state: 'pending', taken_at: Date.now() });
      }
    }
    const lost: Receipt[] = [];
    for (const r of all) {
      if (r.state !== 'pending' || !r.record) continue;
      const h = this.handles.get(r.doc_id);
      const d = h?.doc();
      if (!d) continue;
      const map = (r.kind === 'signature' ? d.signatures : d.checkins) as Doc | undefined;
      if (map && !(r.record_id in map)) lost.push(r);
    }
    if (found.length === 0 && lost.length === 0) return;
    for (const r of lost) {
      r.change = this.put(handle, r.kind, r.record as SignatureRecord | CheckinRecord);
      r.doc_id = cur.id;
    }
    await this.repo?.flush([cur.id as DocumentId]);
    await this.store.write({}, [...found, ...lost]);
    for (const r of [...found, ...lost]) this.track(r);
    this.counts = await this.store.counts();
  }

  /** Writes one record as one change; returns the change's hash. */
  private put(handle: DocHandle<Doc>, kind: RecordKind, record: SignatureRecord | CheckinRecord): string {
    const before = new Set(A.getHeads(handle.doc()));
    handle.change((d: Doc) => {
      (d[kind === 'signature' ? 'signatures' : 'checkins'] as Doc)[record.id] = scalars(record);
    });
    const after = A.getHeads(handle.doc());
    const made = after.filter((h) => !before.has(h));
    if (made.length !== 1) throw new PhoneError('write_failed', `${made.length} changes`);
    if (this.current()?.id === handle.documentId) this.currentRecords++;
    return made[0] as string;
  }

  /**
   * Starts the next collection of the chain (continuing `previous`, owned by `owner`), writes
   * the `moves` into it again with the same ids, and stores the chain, the receipts and
   * `settings` in one transaction.
   */
  private async startCollection(previous: string | undefined, owner: string, moves: Receipt[], settings: Record<string, unknown> = {}, setAside: Receipt[] = []): Promise<string> {
    const repo = this.repo;
    const e = (settings.enrollment as Enrollment | undefined) ?? this.enrollment;
    if (!repo || !e) throw new PhoneError('not_enrolled');
    const header: Doc = {
      kind: new ImmutableString('collection'),
      schema: 1,
      campaign: new ImmutableString(e.campaign),
      owner: new ImmutableString(owner),
      signatures: {},
      checkins: {},
    };
    if (previous !== undefined) header.continues = new ImmutableString(previous);
    const handle = repo.create<Doc>(header);
    const id = handle.documentId as string;
    for (const l of this.chain) if (l.state === 'current') l.state = 'closed';
    this.chain.push({ id, chain: this.chain.reduce((n, l) => Math.max(n, l.chain + 1), 0), state: 'current', owner, at: Date.now() });
    this.handles.set(id, handle);
    this.currentRecords = 0;
    await this.moveInto(handle, owner, moves);
    await repo.flush([handle.documentId]);
    await this.store.write({ ...settings, chain: this.chain }, [...moves, ...setAside]);
    for (const r of moves) this.track(r);
    for (const r of setAside) this.untrack(r);
    this.counts = await this.store.counts();
    this.changed();
    return id;
  }

  /** Writes receipts' records again into `handle`, one change each, collected by `owner`. */
  private async moveInto(handle: DocHandle<Doc>, owner: string, moves: Receipt[]): Promise<void> {
    for (const r of moves) {
      if (!r.record) throw new PhoneError('write_failed', `record ${r.record_id} has no copy to move`);
      const record = { ...r.record };
      if (r.kind === 'signature') (record as SignatureRecord).collected_by = owner;
      else (record as CheckinRecord).by = owner;
      r.record = record;
      this.untrack(r);
      r.change = this.put(handle, r.kind, record);
      r.doc_id = handle.documentId;
    }
    await Promise.resolve();
  }

  // ---- taking records

  /** Takes a signature: checks the form, seals, writes, and returns once it is on disk. */
  async sign(input: SignatureInput): Promise<Receipt> {
    const campaign = this.ready();
    const form = checkSignature(input, campaign.events.map((ev) => ev.id));
    const e = this.enrollment as Enrollment;
    const id = randomRecordId();
    const [{ sealed, wrapped }, dup] = await Promise.all([seal(campaign.recipients, id, form), (this.key as DuplicateKey).duplicateToken(form.name, form.postal_code)]);
    return this.turns.run(async () => {
      const owner = (this.enrollment as Enrollment).device_id;
      const record: SignatureRecord = {
        id,
        campaign: e.campaign,
        event: form.event,
        collected_at: Date.now(),
        collected_by: owner,
        city: form.city,
        fsa: form.fsa,
        riding: form.riding,
        consent_contact: form.consent_contact,
        dup,
        sealed,
        withdrawn: false,
      };
      return this.take('signature', record, { name: form.name, detail: form.city }, wrapped);
    });
  }

  /** Checks someone in to an event (a walk-in or pre-registered). */
  async checkin(eventId: string, name: string, walkIn: boolean): Promise<Receipt> {
    const campaign = this.ready();
    const checked = checkCheckin(eventId, name, campaign.events.map((ev) => ev.id));
    const attendee = await (this.key as DuplicateKey).attendeeToken(checked.name);
    const eventName = campaign.events.find((ev) => ev.id === checked.event)?.name ?? checked.event;
    return this.turns.run(async () => {
      const record: CheckinRecord = {
        id: randomRecordId(),
        event: checked.event,
        attendee,
        at: Date.now(),
        by: (this.enrollment as Enrollment).device_id,
        walk_in: walkIn,
        withdrawn: false,
      };
      return this.take('checkin', record, { name: checked.name, detail: eventName });
    });
  }

  private ready(): CampaignInfo {
    const b = this.blocker();
    if (b !== undefined) throw new PhoneError(b);
    return this.campaign as CampaignInfo;
  }

  private async take(kind: RecordKind, record: SignatureRecord | CheckinRecord, display: Receipt['display'], wrapped?: Uint8Array): Promise<Receipt> {
    const e = this.enrollment as Enrollment;
    if (this.currentRecords >= ROLL_OVER_AT) {
      await this.startCollection(this.current()?.id, e.device_id, []);
    }
    const cur = this.current();
    if (!cur) throw new PhoneError('loading');
    const handle = await this.load(cur.id);
    const change = this.put(handle, kind, record);
    // Durable before "saved": the document's change, then the receipt, each flushed to disk.
    await this.repo?.flush([handle.documentId]);
    const receipt: Receipt = {
      key: `${kind}:${record.id}`,
      kind,
      record_id: record.id,
      doc_id: cur.id,
      change,
      state: 'pending',
      taken_at: Date.now(),
      record,
      ...(display ? { display } : {}),
      ...(wrapped ? { wrapped } : {}),
    };
    await this.store.write({}, [receipt]);
    this.track(receipt);
    this.counts = await this.store.counts();
    this.changed();
    // Another acknowledgement may already cover it (sent before the write finished).
    this.scheduleAck(cur.id);
    if (wrapped) this.scheduleUpload();
    return receipt;
  }

  // ---- acknowledgement

  private scheduleAck(doc: string): void {
    if (this.ackTimers.has(doc)) return;
    this.ackTimers.set(
      doc,
      setTimeout(() => {
        this.ackTimers.delete(doc);
        void this.turns.run(() => this.acknowledge(doc));
      }, 20),
    );
  }

  /** Marks safe every pending receipt of `doc` whose change the server's heads cover. */
  private async acknowledge(doc: string): Promise<void> {
    const heads = this.theirHeads.get(doc);
    const waiting = this.pending.get(doc);
    const handle = this.handles.get(doc);
    if (!heads || !waiting || waiting.size === 0 || !handle) return;
    const d = handle.doc() as A.Doc<Doc> | undefined;
    if (!d) return;
    let uncovered: Set<string>;
    try {
      if (!A.hasHeads(d, heads)) return;
      uncovered = new Set(A.getChangesMetaSince(d, heads).map((m) => m.hash));
    } catch {
      return;
    }
    const safe: Receipt[] = [];
    const unkeyed: Receipt[] = [];
    const now = Date.now();
    for (const [key, change] of waiting) {
      if (change === '' || uncovered.has(change)) continue;
      const r = await this.store.receipt(key);
      if (!r || r.state !== 'pending') continue;
      // The server holds the change but not yet the key: not safe (nothing to move along the
      // chain any more; the key goes up with the next upload).
      if (r.wrapped && !r.key_stored) {
        unkeyed.push({ ...r, state: 'unkeyed', record: undefined });
        continue;
      }
      // Safe: the signer's name, the record's copy and its key go; the receipt says only that
      // it is safe.
      safe.push(safeReceipt(r, now));
    }
    // A record found in the document after a crash has no change of its own: safe when the
    // server holds the record.
    for (const [key, change] of waiting) {
      if (change !== '') continue;
      const [kind, id] = key.split(':') as [RecordKind, string];
      const at = A.view(d, heads);
      const map = (kind === 'signature' ? at.signatures : at.checkins) as Doc | undefined;
      if (map && id in map) {
        const r = await this.store.receipt(key);
        if (r && r.state === 'pending') {
          if (r.wrapped && !r.key_stored) unkeyed.push({ ...r, state: 'unkeyed', record: undefined });
          else safe.push(safeReceipt(r, now));
        }
      }
    }
    if (safe.length === 0 && unkeyed.length === 0) return;
    if (safe.length > 0) this.lastAckAt = now;
    await this.store.write(safe.length > 0 ? { last_ack_at: now } : {}, [...safe, ...unkeyed]);
    for (const r of [...safe, ...unkeyed]) waiting.delete(r.key);
    if (unkeyed.length > 0) this.scheduleUpload();
    this.counts = await this.store.counts();
    // A closed collection with nothing left to send leaves the connection and memory.
    const link = this.chain.find((l) => l.id === doc);
    if (link?.state === 'closed' && waiting.size === 0) {
      this.pending.delete(doc);
      this.handles.delete(doc);
      void this.repo?.removeFromCache(doc as DocumentId);
    }
    this.changed();
  }

  // ---- record keys (docs/clients.md §5a)

  /** Uploads the waiting record keys soon (one upload at a time; asked again while one runs, once more after it). */
  private scheduleUpload(): void {
    if (this.uploading) {
      this.uploadAgain = true;
      return;
    }
    this.uploading = true;
    clearTimeout(this.uploadTimer);
    void this.uploadKeys()
      .catch((x: unknown) => {
        this.keyError = x instanceof Error ? x.message : String(x);
        this.changed();
        if (this.link === 'connected') this.uploadTimer = setTimeout(() => this.scheduleUpload(), KEY_RETRY_MS);
      })
      .finally(() => {
        this.uploading = false;
        if (this.uploadAgain) {
          this.uploadAgain = false;
          this.scheduleUpload();
        }
      });
  }

  /**
   * Sends every record key the server does not hold yet (PUT /api/v1/keys, 256 a request) and
   * applies the answers: stored (or already, or the record was erased) makes an acknowledged
   * record safe; a refusal is kept on the receipt and shown, and the key is sent again later.
   */
  private async uploadKeys(): Promise<void> {
    const e = this.enrollment;
    if (!e || e.refused_at !== undefined || !navigator.onLine) return;
    const waiting = [...(await this.store.receipts('pending')), ...(await this.store.receipts('unkeyed'))].filter((r) => r.wrapped && !r.key_stored);
    let failed = false;
    for (let i = 0; i < waiting.length; i += KEYS_PER_REQUEST) {
      const batch = waiting.slice(i, i + KEYS_PER_REQUEST);
      let res: Response;
      try {
        res = await fetch('/api/v1/keys', {
          method: 'PUT',
          headers: { Authorization: `Bearer ${e.token}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ keys: batch.map((r) => ({ record: r.record_id, wrapped: base64(r.wrapped as Uint8Array) })) }),
          cache: 'no-store',
        });
      } catch {
        return; // The server is not there: the next connection uploads again.
      }
      if (res.status === 401) {
        void this.probeToken();
        return;
      }
      if (!res.ok) {
        const body = (await res.json().catch(() => ({}))) as { error?: unknown };
        throw new Error(`${res.status}: ${typeof body.error === 'string' ? body.error : res.statusText}`);
      }
      const answer = (await res.json()) as { results?: KeyResult[] };
      const results = new Map((answer.results ?? []).map((r) => [r.record, r]));
      await this.turns.run(async () => {
        const now = Date.now();
        const changed: Receipt[] = [];
        for (const sent of batch) {
          const got = results.get(sent.record_id);
          const r = await this.store.receipt(sent.key);
          if (!got || !r || (r.state !== 'pending' && r.state !== 'unkeyed')) continue;
          const erased = got.status === 'refused' && got.reason === 'erased';
          if (got.status === 'stored' || got.status === 'already_stored' || erased) {
            const done: Receipt = { ...r, key_stored: true, ...(erased ? { erased: true } : {}) };
            delete done.key_refusal;
            changed.push(r.state === 'unkeyed' ? safeReceipt(done, now) : done);
          } else {
            failed = true;
            changed.push({ ...r, key_refusal: got.message ?? got.reason ?? got.status });
          }
        }
        if (changed.length === 0) return;
        const nowSafe = changed.some((r) => r.state === 'safe');
        if (nowSafe) this.lastAckAt = now;
        await this.store.write(nowSafe ? { last_ack_at: now } : {}, changed);
        this.counts = await this.store.counts();
      });
    }
    this.keyError = undefined;
    this.changed();
    // A refused key (the device's quota, a conflict) is tried again later, while connected.
    if (failed && this.link === 'connected') this.uploadTimer = setTimeout(() => this.scheduleUpload(), KEY_RETRY_MS);
  }

  // ---- the server's errors, refusals, and the chain

  private async onServerError(err: ServerError): Promise<void> {
    const doc = err.documentId;
    const link = doc === undefined ? undefined : this.chain.find((l) => l.id === doc);
    if (doc !== undefined && this.dead.has(doc)) return; // a later word about a collection left behind
    if (link && (link.state === 'current' || link.state === 'closed') && this.recoveries < MAX_RECOVERIES_PER_CONNECTION) {
      this.recoveries++;
      await this.turns.run(() => this.recover(link, err.tallyRecord, err.message));
      return;
    }
    // Not a verdict on our records (a storage failure, a protocol error): shown; sync goes on.
    this.errors = [...this.errors.slice(-4), err.message];
    this.changed();
  }

  /**
   * The server refused a change in `link` (docs/documents.md, "A chain of collections", step 2):
   * the named record is set aside, every other pending record of it moves, same ids, into the
   * current collection (a new one if `link` was current), and sync goes on.
   */
  private async recover(link: ChainLink, record: string | undefined, message: string): Promise<void> {
    const e = this.enrollment;
    if (!e || (link.state !== 'current' && link.state !== 'closed')) return;
    const pending = (await this.store.receipts('pending')).filter((r) => r.doc_id === link.id);
    let setAside: Receipt[] = [];
    let moves: Receipt[] = [];
    const named = record === undefined ? [] : pending.filter((r) => r.record_id === record);
    if (named.length > 0) {
      setAside = named;
      moves = pending.filter((r) => r.record_id !== record);
    } else {
      const previousRefused = this.chain.some((l) => l.chain === link.chain - 1 && l.state === 'refused');
      const anySafe = (await this.store.receipts('safe')).some((r) => r.doc_id === link.id);
      if (previousRefused && !anySafe) setAside = pending;
      else moves = pending;
    }
    const wasCurrent = link.state === 'current';
    link.state = 'refused';
    link.refusal = message;
    this.dead.add(link.id);
    for (const r of setAside) {
      r.state = 'refused';
      r.refusal = message;
    }
    this.refusals = [...this.refusals.slice(-4), message];
    if (wasCurrent) {
      await this.startCollection(link.id, e.device_id, moves, {}, setAside);
    } else {
      const cur = this.current();
      const handle = cur ? await this.load(cur.id) : undefined;
      if (!cur || !handle) return;
      await this.moveInto(handle, e.device_id, moves);
      await this.repo?.flush([handle.documentId]);
      await this.store.write({ chain: this.chain }, [...moves, ...setAside]);
      for (const r of moves) this.track(r);
      for (const r of setAside) this.untrack(r);
      this.counts = await this.store.counts();
    }
    this.pending.delete(link.id);
    this.handles.delete(link.id);
    await this.repo?.removeFromCache(link.id as DocumentId);
    this.changed();
  }

  /** A connection failed before the server answered: is it the token? (A browser cannot see a 401.) */
  private async probeToken(): Promise<void> {
    const e = this.enrollment;
    if (!e || e.refused_at !== undefined || this.probing || !navigator.onLine) return;
    this.probing = true;
    try {
      const r = await fetch('/api/v1/me', { headers: { Authorization: `Bearer ${e.token}` }, cache: 'no-store' });
      if (r.status === 401) {
        await this.turns.run(async () => {
          // Unless the phone enrolled again meanwhile.
          if (this.enrollment !== e) return;
          e.refused_at = Date.now();
          await this.store.write({ enrollment: e });
        });
        if (this.enrollment === e) this.net?.stop();
        this.changed();
      }
    } catch {
      // The server is not there: the link retries with backoff.
    } finally {
      this.probing = false;
    }
  }

  /** Sync now (the canvasser pressed the button; it also runs by itself). */
  syncNow(): void {
    this.net?.now();
    if (this.link === 'connected') this.scheduleUpload();
  }

  /** Receipts for the list: pending first, then set aside, then the latest safe ones. */
  async list(): Promise<Receipt[]> {
    const all = await this.store.receipts();
    const order = { pending: 0, unkeyed: 0, refused: 1, safe: 2 } as const;
    return all.sort((a, b) => order[a.state] - order[b.state] || b.taken_at - a.taken_at);
  }

  /** The canvasser has seen a refused record: its name is dropped (the sealed record stays). */
  async forgetName(key: string): Promise<void> {
    const r = await this.store.receipt(key);
    if (!r?.display) return;
    delete r.display;
    await this.store.write({}, [r]);
    this.changed();
  }

  /** The document id of the payload's campaign (for comparing invites). */
  static campaignOf(payload: InvitePayload): string {
    return isValidAutomergeUrl(payload.campaign) ? parseAutomergeUrl(payload.campaign).documentId : bareId(payload.campaign);
  }
}
