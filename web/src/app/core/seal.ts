// Sealing a signer's details on the phone, as tally-core does (`seal::seal`, docs/clients.md
// §4.4): the JSON {"name", "email"?, "phone"?, "street"?, "postal_code"} (absent fields left out,
// in this order, as serde writes `PersonalFields`), encrypted with age, binary, to every
// recipient of the campaign. Only an organizer's identity opens it; the plaintext is never
// written to a document.

import { Encrypter } from 'age-encryption';

import type { CheckedForm } from './rules';

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

/** Seals the personal fields to every recipient (`age1...`). */
export async function seal(recipients: readonly string[], form: Parameters<typeof personalJson>[0]): Promise<Uint8Array> {
  if (recipients.length === 0) throw new SealRefused('no recipients');
  const e = new Encrypter();
  for (const r of recipients) {
    if (!/^age1[02-9ac-hj-np-z]+$/.test(r) || r.startsWith('age1pq1') || r.startsWith('age1tag')) {
      throw new SealRefused(`not an age X25519 recipient: ${r}`);
    }
    e.addRecipient(r);
  }
  return e.encrypt(new TextEncoder().encode(personalJson(form)));
}
