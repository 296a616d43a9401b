// The phone's own records, in an IndexedDB database of their own ("tally-phone"), beside the
// automerge-repo storage that holds the documents ("tally-repo"):
//
// - `settings`: the enrollment (device id, token, the campaign's duplicate key: they never leave
//   the phone), the chain of collections, the language, and what the app shows before the
//   documents are loaded (the campaign's title and petition, the team's last totals);
// - `receipts`: one per record taken (signature or check-in): the record as written, sealed
//   (what moving it along the chain needs), its collection and change, whether the server holds
//   it yet, and, while it does not, the signer's name for the canvasser's list. Once the server
//   holds the record, the name and the record are dropped: a receipt then says only that a
//   record was taken and is safe.
//
// Every write is one transaction with `durability: 'strict'`: the browser reports it complete
// only once it is on disk, so "saved" means saved.

/** The invite's payload (docs/clients.md §1), as the QR code's link carries it. */
export interface InvitePayload {
  v: number;
  server: string;
  code: string;
  campaign: string;
  key: string;
}

/** What enrolling gave this phone. The token and the key never leave it. */
export interface Enrollment {
  server: string;
  device_id: string;
  token: string;
  role: string;
  /** The campaign id (bare). */
  campaign: string;
  campaign_url: string;
  totals_url: string;
  /** The campaign's duplicate key, 64 hex digits. */
  key: string;
  /** The phone's name, as organizers see it. */
  name: string;
  enrolled_at: number;
  /** Set when the server refused the token (revoked, expired): sync stops until enrolled again. */
  refused_at?: number;
}

/** One collection of the phone's chain (docs/documents.md, "A chain of collections"). */
export interface ChainLink {
  /** The bare document id. */
  id: string;
  /** Its place in the chain, from 0. */
  chain: number;
  /**
   * current: taking new records; closed: full, synced until all of it is safe; refused: the
   * server refused a change in it (never synced again); retired: its device was replaced.
   */
  state: 'current' | 'closed' | 'refused' | 'retired';
  /** The device that owns it. */
  owner: string;
  /** The server's words, when it refused it. */
  refusal?: string;
  at: number;
}

export type RecordKind = 'signature' | 'checkin';

/** A signature as written to a collection (`collection::Signature`), the sealed bytes included. */
export interface SignatureRecord {
  id: string;
  campaign: string;
  event: string | null;
  collected_at: number;
  collected_by: string;
  city: string;
  fsa: string;
  riding: string | null;
  consent_contact: boolean;
  dup: string;
  sealed: Uint8Array;
  withdrawn: boolean;
}

/** A check-in as written (`collection::Checkin`). */
export interface CheckinRecord {
  id: string;
  event: string;
  attendee: string;
  at: number;
  by: string;
  walk_in: boolean;
  withdrawn: boolean;
}

/** One record the phone took, and where it stands. */
export interface Receipt {
  /** `signature:<id>` or `checkin:<id>`. */
  key: string;
  kind: RecordKind;
  record_id: string;
  /** The collection holding its latest copy. */
  doc_id: string;
  /** The change that wrote it there (hex). */
  change: string;
  /**
   * pending: the server's heads do not cover its change yet; unkeyed: they do, but the server
   * has not stored its record key yet (a signature: docs/clients.md §5a); safe: both; refused:
   * set aside.
   */
  state: 'pending' | 'unkeyed' | 'safe' | 'refused';
  taken_at: number;
  safe_at?: number;
  /** The server's reason, when it refused it. */
  refusal?: string;
  /** While pending: the record as written (sealed), to write it again along the chain. */
  record?: SignatureRecord | CheckinRecord;
  /**
   * A signature's record key, wrapped with age to the campaign's recipients (never in a
   * document): kept until the record is safe, then dropped.
   */
  wrapped?: Uint8Array;
  /** The server answered that it holds the wrapped key (stored, already stored, or erased). */
  key_stored?: boolean;
  /** The server refused the key, in its words (kept, retried, shown). */
  key_refusal?: string;
  /** An organizer erased this record (the server said so when the key went up). */
  erased?: boolean;
  /** While pending: what the canvasser's list shows (the signer's name). Dropped once safe. */
  display?: { name: string; detail: string };
}

export interface Counts {
  /** Not yet safe: the change or the key is not on the server yet (`unkeyed` included). */
  pending: number;
  /** Of those, the ones whose change the server holds but not yet their key. */
  unkeyed: number;
  pendingSignatures: number;
  pendingCheckins: number;
  safe: number;
  refused: number;
  signatures: number;
  checkins: number;
}

const DB = 'tally-phone';
const VERSION = 1;
const STRICT: IDBTransactionOptions = { durability: 'strict' };

function request<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error ?? new Error('IndexedDB request failed'));
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error ?? new Error('IndexedDB transaction failed'));
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted (is the phone out of space?)'));
  });
}

/** The phone's store. */
export class PhoneStore {
  private constructor(private readonly db: IDBDatabase) {}

  static async open(): Promise<PhoneStore> {
    const req = indexedDB.open(DB, VERSION);
    req.onupgradeneeded = () => {
      const db = req.result;
      if (!db.objectStoreNames.contains('settings')) db.createObjectStore('settings');
      if (!db.objectStoreNames.contains('receipts')) {
        const r = db.createObjectStore('receipts', { keyPath: 'key' });
        r.createIndex('state', 'state');
        r.createIndex('state_kind', ['state', 'kind']);
      }
    };
    return new PhoneStore(await request(req));
  }

  async get<T>(key: string): Promise<T | undefined> {
    const tx = this.db.transaction('settings', 'readonly');
    return (await request(tx.objectStore('settings').get(key))) as T | undefined;
  }

  /** Writes settings and receipts in one durable transaction. */
  async write(settings: Record<string, unknown>, receipts: Receipt[] = [], remove: string[] = []): Promise<void> {
    const tx = this.db.transaction(['settings', 'receipts'], 'readwrite', STRICT);
    const s = tx.objectStore('settings');
    for (const [k, v] of Object.entries(settings)) s.put(v, k);
    const r = tx.objectStore('receipts');
    for (const receipt of receipts) r.put(receipt);
    for (const k of remove) r.delete(k);
    await done(tx);
  }

  async receipts(state?: Receipt['state']): Promise<Receipt[]> {
    const tx = this.db.transaction('receipts', 'readonly');
    const store = tx.objectStore('receipts');
    const all = state === undefined ? store.getAll() : store.index('state').getAll(state);
    return (await request(all)) as Receipt[];
  }

  async receipt(key: string): Promise<Receipt | undefined> {
    const tx = this.db.transaction('receipts', 'readonly');
    return (await request(tx.objectStore('receipts').get(key))) as Receipt | undefined;
  }

  /** The counts, from the index (no receipt is read). */
  async counts(): Promise<Counts> {
    const tx = this.db.transaction('receipts', 'readonly');
    const index = tx.objectStore('receipts').index('state_kind');
    const n = (state: Receipt['state'], kind: RecordKind) => request(index.count([state, kind]));
    const [ps, pc, us, ss, sc, rs, rc] = await Promise.all([
      n('pending', 'signature'),
      n('pending', 'checkin'),
      n('unkeyed', 'signature'),
      n('safe', 'signature'),
      n('safe', 'checkin'),
      n('refused', 'signature'),
      n('refused', 'checkin'),
    ]);
    return {
      pending: ps + pc + us,
      unkeyed: us,
      pendingSignatures: ps + us,
      pendingCheckins: pc,
      safe: ss + sc,
      refused: rs + rc,
      signatures: ps + us + ss + rs,
      checkins: pc + sc + rc,
    };
  }

  close(): void {
    this.db.close();
  }
}
