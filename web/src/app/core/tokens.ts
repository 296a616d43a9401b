// The duplicate and attendee tokens, byte for byte as tally-core makes them
// (`seal::DuplicateKey::duplicate_token` / `attendee_token`, docs/clients.md §4.3):
//   hex(HMAC-SHA256(key, "signer" || 0x00 || normalize_name(name) || 0x00 || normalize_postal(code)))
//   hex(HMAC-SHA256(key, "attendee" || 0x00 || normalize_name(name)))
// with WebCrypto. The key is the campaign's duplicate key from the invite: it stays on the phone.

import { normalizeName, normalizePostalForToken } from './rules';

const encoder = new TextEncoder();

/** Parses the invite's key: 64 hex digits, 32 bytes. */
export function keyFromHex(hex: string): Uint8Array<ArrayBuffer> {
  const h = hex.trim();
  if (!/^[0-9a-fA-F]{64}$/.test(h)) throw new Error('the campaign key is not 64 hex digits');
  const out = new Uint8Array(32);
  for (let i = 0; i < 32; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The campaign's duplicate key, ready for HMAC (not extractable). */
export class DuplicateKey {
  private constructor(private readonly key: CryptoKey) {}

  static async fromHex(hex: string): Promise<DuplicateKey> {
    const key = await crypto.subtle.importKey('raw', keyFromHex(hex), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
    return new DuplicateKey(key);
  }

  private async mac(parts: string[]): Promise<string> {
    const chunks = parts.map((p) => encoder.encode(p));
    const length = chunks.reduce((n, c) => n + c.length, 0) + parts.length - 1;
    const message = new Uint8Array(length);
    let at = 0;
    chunks.forEach((c, i) => {
      if (i > 0) message[at++] = 0;
      message.set(c, at);
      at += c.length;
    });
    const sig = await crypto.subtle.sign('HMAC', this.key, message);
    return toHex(new Uint8Array(sig));
  }

  /** The duplicate token of a signer: one per person, however their name and code are spelled. */
  duplicateToken(name: string, postalCode: string): Promise<string> {
    return this.mac(['signer', normalizeName(name), normalizePostalForToken(postalCode)]);
  }

  /** The attendee token of a person checked in to an event. */
  attendeeToken(name: string): Promise<string> {
    return this.mac(['attendee', normalizeName(name)]);
  }
}
