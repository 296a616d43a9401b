// Sealing a signer's details on the phone, as tally-core does (`seal::seal_v2`, docs/clients.md
// §4.4): the JSON {"name", "email"?, "phone"?, "street"?, "postal_code"} (absent fields left out,
// in this order, as serde writes `PersonalFields`) is encrypted with AES-256-GCM (WebCrypto)
// under a key of the record's own, with the record id as associated data, into
// "tally-seal-2" || nonce (12 bytes) || ciphertext and tag. That key is wrapped with age
// (binary, X25519) to every recipient of the campaign: the wrapped key goes to the server's key
// table, never into a document, so deleting it there erases the record for good
// (crypto-shredding, docs/security.md "Erasure"). Format v1 (age straight to the recipients) is
// still opened (`openSealed`), never written. The plaintext is never written to a document.

import { Decrypter, Encrypter } from 'age-encryption';

import type { CheckedForm } from './rules';

/** The first 12 bytes of a v2 blob. */
export const SEAL2_MAGIC = new TextEncoder().encode('tally-seal-2');
/** AES-GCM's nonce and tag lengths in a v2 blob. */
export const SEAL2_NONCE_LEN = 12;
export const SEAL2_TAG_LEN = 16;
/** age's binary header: a v1 blob starts with it. */
const AGE_MAGIC = new TextEncoder().encode('age-encryption.org/v1\n');

/** The JSON inside the seal, exactly as `serde_json::to_vec(&PersonalFields)` writes it. */
export function personalJson(form: Pick<CheckedForm, 'name' | 'email' | 'phone' | 'street' | 'postal_code'>): string {
  const fields: Record<string, string> = { name: form.name };
  if (form.email !== null) fields.email = form.email;
  if (form.phone !== null) fields.phone = form.phone;
  if (form.street !== null) fields.street = form.street;
  fields.postal_code = form.postal_code;
  return JSON.stringify(fields);
}

/** Thrown when the campaign gives nothing to seal to, or a recipient that is not age X25519. */
export class SealRefused extends Error {}

/** Thrown when a blob does not open: `wrong_key` (AES-GCM's tag refused the key), or damaged. */
export class SealDamaged extends Error {
  constructor(
    readonly why: 'wrong_key' | 'damaged' | 'unknown_format',
    message: string,
  ) {
    super(message);
  }
}

function startsWith(bytes: Uint8Array, prefix: Uint8Array): boolean {
  return bytes.length >= prefix.length && prefix.every((b, i) => bytes[i] === b);
}

/** Which format a sealed blob is in: 1 (age), 2 (tally-seal-2), or null. */
export function sealedVersion(sealed: Uint8Array): 1 | 2 | null {
  if (startsWith(sealed, AGE_MAGIC)) return 1;
  if (startsWith(sealed, SEAL2_MAGIC) && sealed.length >= SEAL2_MAGIC.length + SEAL2_NONCE_LEN + SEAL2_TAG_LEN) return 2;
  return null;
}

/** A new record key: 32 random bytes. */
export function newRecordKey(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(32));
}

function checkedRecipients(recipients: readonly string[]): Encrypter {
  if (recipients.length === 0) throw new SealRefused('no recipients');
  const e = new Encrypter();
  for (const r of recipients) {
    if (!/^age1[02-9ac-hj-np-z]+$/.test(r) || r.startsWith('age1pq1') || r.startsWith('age1tag')) {
      throw new SealRefused(`not an age X25519 recipient: ${r}`);
    }
    e.addRecipient(r);
  }
  return e;
}

/** The record key sealed with age (binary) to every recipient: what the server's key table keeps. */
export async function wrapKey(recipients: readonly string[], key: Uint8Array): Promise<Uint8Array> {
  return checkedRecipients(recipients).encrypt(key);
}

/**
 * Opens a wrapped record key with an organizer's identity (AGE-SECRET-KEY-1...), or with a
 * Decrypter that holds it (reused over many keys).
 */
export async function unwrapKey(identity: string | Decrypter, wrapped: Uint8Array): Promise<Uint8Array> {
  let d = identity;
  if (typeof d === 'string') {
    d = new Decrypter();
    d.addIdentity(identity as string);
  }
  const key = await d.decrypt(wrapped);
  if (key.length !== 32) throw new SealDamaged('damaged', `a wrapped record key holds 32 bytes, got ${key.length}`);
  return key;
}

async function aesKey(key: Uint8Array, use: 'encrypt' | 'decrypt'): Promise<CryptoKey> {
  if (key.length !== 32) throw new SealDamaged('damaged', `a record key is 32 bytes, got ${key.length}`);
  return crypto.subtle.importKey('raw', key as BufferSource, 'AES-GCM', false, [use]);
}

/** Seals the JSON `plaintext` in format v2 under `key`, bound to `recordId` (a random nonce unless given). */
export async function sealV2(key: Uint8Array, recordId: string, plaintext: string, nonce: Uint8Array = crypto.getRandomValues(new Uint8Array(SEAL2_NONCE_LEN))): Promise<Uint8Array> {
  if (nonce.length !== SEAL2_NONCE_LEN) throw new Error(`a nonce is ${SEAL2_NONCE_LEN} bytes`);
  const ct = new Uint8Array(
    await crypto.subtle.encrypt(
      { name: 'AES-GCM', iv: nonce as BufferSource, additionalData: new TextEncoder().encode(recordId), tagLength: 128 },
      await aesKey(key, 'encrypt'),
      new TextEncoder().encode(plaintext),
    ),
  );
  const out = new Uint8Array(SEAL2_MAGIC.length + SEAL2_NONCE_LEN + ct.length);
  out.set(SEAL2_MAGIC, 0);
  out.set(nonce, SEAL2_MAGIC.length);
  out.set(ct, SEAL2_MAGIC.length + SEAL2_NONCE_LEN);
  return out;
}

/** Opens a v2 blob with `key`; the JSON text. Throws SealDamaged('wrong_key') if the tag refuses it. */
export async function openV2(key: Uint8Array, recordId: string, sealed: Uint8Array): Promise<string> {
  if (sealedVersion(sealed) !== 2) throw new SealDamaged('unknown_format', 'not a tally-seal-2 blob');
  const nonce = sealed.subarray(SEAL2_MAGIC.length, SEAL2_MAGIC.length + SEAL2_NONCE_LEN);
  const ct = sealed.subarray(SEAL2_MAGIC.length + SEAL2_NONCE_LEN);
  let plain: ArrayBuffer;
  try {
    plain = await crypto.subtle.decrypt(
      { name: 'AES-GCM', iv: nonce as BufferSource, additionalData: new TextEncoder().encode(recordId), tagLength: 128 },
      await aesKey(key, 'decrypt'),
      ct as BufferSource,
    );
  } catch {
    throw new SealDamaged('wrong_key', 'this record key does not open the sealed details (the key of another record, or damaged bytes)');
  }
  return new TextDecoder('utf-8', { fatal: true }).decode(plain);
}

/** A record sealed on the phone: the blob for the document, and the wrapped key for the server. */
export interface Sealed {
  sealed: Uint8Array;
  wrapped: Uint8Array;
}

/** Seals the personal fields of record `recordId` (v2) and wraps its new key to every recipient. */
export async function seal(recipients: readonly string[], recordId: string, form: Parameters<typeof personalJson>[0]): Promise<Sealed> {
  const key = newRecordKey();
  const wrapped = await wrapKey(recipients, key);
  const sealed = await sealV2(key, recordId, personalJson(form));
  key.fill(0);
  return { sealed, wrapped };
}
