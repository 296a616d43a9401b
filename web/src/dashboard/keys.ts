// Campaign duplicate keys. A phone computes each signer's duplicate token under its campaign's
// key, which it gets in the invite's payload; the server never sees it. The `tally` command line
// keeps the keys in ./tally-keys; this page keeps them in the browser's local storage (on the
// organizer's machine only), can download one as a key file in the same format, and can import
// one from `tally-keys/CAMPAIGN.key`.

const PREFIX = 'tally.key.';

/** The campaign's key (64 hex digits), if this browser holds it. */
export function getKey(campaign: string): string | null {
  return localStorage.getItem(PREFIX + campaign);
}

/** Keeps a campaign's key in this browser. */
export function setKey(campaign: string, hex: string): void {
  localStorage.setItem(PREFIX + campaign, hex);
}

/** A new random key, as lower-case hex (what `tally campaign create` writes). */
export function newKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Reads a key file's text; `null` unless it holds 64 hex digits. */
export function parseKey(text: string): string | null {
  const hex = text.trim().toLowerCase();
  return /^[0-9a-f]{64}$/.test(hex) ? hex : null;
}

/** A key file's text, as `tally` writes it. */
export const keyFile = (hex: string): string => `${hex}\n`;
