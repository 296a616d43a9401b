// Export, in the browser: the organizer chooses their age identity file here; the sealed records
// and the campaign's wrapped record keys are fetched from the server and opened on this machine
// with it (the `age-encryption` package, and WebCrypto's AES-GCM for format v2,
// docs/clients.md §4.4 and §5b); a CSV with the same columns and rows as `tally export` is
// downloaded from memory. A v2 record opens with one of its record's keys (several may be
// uploaded under one record id, a hostile device's junk among them: AES-GCM's tag refuses a
// wrong key); a v1 record opens with the identity itself. An erased record, and one whose key
// the server does not hold yet, never fail the export: they are written as such. The identity
// is read into this page only: it is never sent anywhere, and is dropped when the export ends.

import { Decrypter } from 'age-encryption';
import { SealDamaged, openV2, sealedVersion, unwrapKey } from '../../app/core/seal';
import { get, seg } from '../api';
import { download, field, h, replace } from '../dom';
import { fmtNumber, t } from '../i18n';
import { announce, errorBox, type View } from '../main';
import type { KeysPage, SealedRecord } from '../types';

/** The export's columns, as `tally export` writes them (server/src/organizer_cli.rs, EXPORT_COLUMNS). */
export const EXPORT_COLUMNS =
  'id,collected_at,collected_by,event,city,fsa,riding,consent_contact,counted,withdrawn,name,email,phone,street,postal_code,duplicate_group';

/** The personal fields inside a sealed record (tally_core::seal::PersonalFields). */
interface PersonalFields {
  name: string;
  email?: string;
  phone?: string;
  street?: string;
  postal_code: string;
}

/** A CSV field as `tally export` quotes it. */
export function csvField(s: string): string {
  return /[,"\n\r]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

/** A time as chrono's `to_rfc3339()` writes a UTC time of whole ms: seconds, then .mmm if any. */
export function rfc3339(ms: number): string {
  const iso = new Date(ms).toISOString(); // 2026-07-01T22:00:00.123Z
  const frac = ms % 1000 === 0 ? '' : iso.slice(19, 23);
  return `${iso.slice(0, 19)}${frac}+00:00`;
}

function hexBytes(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** The identity line of an age identity file (comments skipped), as `tally` reads it. */
export function identityOf(text: string): string | null {
  return text.split(/\r?\n/).map((l) => l.trim()).find((l) => l.startsWith('AGE-SECRET-KEY-')) ?? null;
}

export interface ExportResult {
  csv: string;
  rows: number;
  signatures: number;
  unopened: number;
  /** Records an organizer erased (written as erased). */
  erased: number;
  /** v2 records whose key the server does not hold (yet): written as "key missing". */
  keyMissing: number;
}

/** What opening one record gave: its fields, or why not. */
type Opened = { fields: PersonalFields } | { status: 'erased' | 'key_missing' } | { status: 'unopened' };

/** The words a row carries in its name column for a record that cannot be opened for good reason. */
export const ROW_STATUS = { erased: 'erased', key_missing: 'key missing' } as const;

/** Every wrapped key of the campaign (GET /campaigns/{id}/keys, page by page), by record id. */
export async function fetchKeys(campaign: string): Promise<Map<string, { device: string; wrapped: string }[]>> {
  const out = new Map<string, { device: string; wrapped: string }[]>();
  let after: string | null = null;
  for (;;) {
    const q = new URLSearchParams({ limit: '1000' });
    if (after !== null) q.set('after', after);
    const page = await get<KeysPage>(`/api/v1/campaigns/${seg(campaign)}/keys?${q}`);
    for (const k of page.keys) {
      const list = out.get(k.record) ?? [];
      list.push({ device: k.device, wrapped: k.wrapped });
      out.set(k.record, list);
    }
    if (page.next === null || page.next === undefined || page.keys.length === 0) return out;
    after = page.next;
  }
}

function base64Bytes(b64: string): Uint8Array {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/**
 * Opens one record with the identity: v1 with age straight away; v2 with each candidate key of
 * its record id (the one its own phone uploaded first), until AES-GCM's tag accepts one.
 */
export async function openRecord(r: SealedRecord, d: Decrypter, keys: Map<string, { device: string; wrapped: string }[]>): Promise<Opened> {
  if (r.erased) return { status: 'erased' };
  const sealed = hexBytes(r.sealed);
  const version = sealedVersion(sealed);
  try {
    if (version === 1) return { fields: JSON.parse(await d.decrypt(sealed, 'text')) as PersonalFields };
    if (version !== 2) return { status: 'unopened' };
    const candidates = [...(keys.get(r.id) ?? [])].sort((a, b) => Number(b.device === r.collected_by) - Number(a.device === r.collected_by));
    if (candidates.length === 0) return { status: 'key_missing' };
    let unwrapped = false;
    for (const c of candidates) {
      let key: Uint8Array;
      try {
        key = await unwrapKey(d, base64Bytes(c.wrapped));
      } catch {
        continue; // sealed to other organizers, or junk
      }
      unwrapped = true;
      try {
        return { fields: JSON.parse(await openV2(key, r.id, sealed)) as PersonalFields };
      } catch (e) {
        if (!(e instanceof SealDamaged)) throw e;
      } finally {
        key.fill(0);
      }
    }
    // No key opened it: if none even unwrapped, it is sealed to other organizers; if some did,
    // every key the server holds for it is junk: the right one is missing.
    return unwrapped ? { status: 'key_missing' } : { status: 'unopened' };
  } catch {
    return { status: 'unopened' };
  }
}

/**
 * Opens the records and builds the CSV exactly as `tally export` does: without `every`, the
 * counted signatures, one row per duplicate group (its earliest signature); with `every`, every
 * signature (withdrawn and struck included).
 */
export async function buildExport(
  records: SealedRecord[],
  keys: Map<string, { device: string; wrapped: string }[]>,
  identity: string,
  every: boolean,
  progress: (done: number, of: number) => void,
): Promise<ExportResult> {
  const d = new Decrypter();
  d.addIdentity(identity);
  const wanted = records.filter((r) => every || r.counted);
  const opened: [SealedRecord, PersonalFields][] = [];
  let unopened = 0;
  let erased = 0;
  let keyMissing = 0;
  for (const [i, r] of wanted.entries()) {
    const got = await openRecord(r, d, keys);
    if ('fields' in got) opened.push([r, got.fields]);
    else if (got.status === 'unopened') unopened += 1;
    else {
      if (got.status === 'erased') erased += 1;
      else keyMissing += 1;
      // Written as such, never failing the export: the name column says why, the others are empty.
      opened.push([r, { name: ROW_STATUS[got.status], postal_code: '' }]);
    }
    if (i % 50 === 49) progress(i + 1, wanted.length);
  }
  progress(wanted.length, wanted.length);
  opened.sort(([a], [b]) => a.collected_at - b.collected_at || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const seen = new Set<string>();
  const lines = [EXPORT_COLUMNS];
  let rows = 0;
  for (const [r, p] of opened) {
    const group = r.duplicate_group ? r.duplicate_group : `record:${r.id}`;
    const first = !seen.has(group);
    seen.add(group);
    if (!first && !every) continue;
    const cols = [
      r.id,
      rfc3339(r.collected_at),
      r.collected_by,
      r.event ?? '',
      r.city,
      r.fsa,
      r.riding ?? '',
      String(r.consent_contact),
      String(r.counted),
      String(r.withdrawn),
      p.name,
      p.email ?? '',
      p.phone ?? '',
      p.street ?? '',
      p.postal_code,
      r.duplicate_group ?? '',
    ];
    lines.push(cols.map(csvField).join(','));
    rows += 1;
  }
  return { csv: `${lines.join('\n')}\n`, rows, signatures: opened.length - erased - keyMissing, unopened, erased, keyMissing };
}

export const exportView: View = {
  title: 'export',
  perCampaign: true,
  render(main, ctx) {
    const c = ctx.campaign;
    if (!c) return;
    const file = h('input', { id: 'x-identity', type: 'file', required: true });
    const every = h('input', { id: 'x-all', type: 'checkbox' });
    const button = h('button', { type: 'submit', class: 'primary' }, t('export_button'));
    const progress = h('p', { id: 'x-progress', role: 'status' });
    const out = h('div', { id: 'x-result', 'aria-live': 'polite' });
    const form = h(
      'form',
      { id: 'export-form', class: 'card stack', 'aria-labelledby': 'export-title' },
      h('h2', { id: 'export-title' }, t('export_title')),
      h('p', {}, t('export_intro')),
      field(t('identity_file'), file, t('identity_hint')),
      h('div', { class: 'check' }, every, h('label', { for: 'x-all' }, t('export_all'))),
      button,
      progress,
      out,
    );
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      out.replaceChildren();
      const f = file.files?.[0];
      if (!f) return;
      button.disabled = true;
      void (async () => {
        try {
          const identity = identityOf(await f.text());
          if (!identity) {
            replace(out, h('p', { class: 'error', role: 'alert' }, t('not_an_identity')));
            return;
          }
          progress.textContent = t('export_fetching');
          const records = await get<SealedRecord[]>(`/api/v1/campaigns/${seg(c.campaign)}/sealed`);
          const keys = await fetchKeys(c.campaign);
          const result = await buildExport(records, keys, identity, every.checked, (done, of) => {
            progress.textContent = t('export_opening', { done: fmtNumber(done), of: fmtNumber(of) });
          });
          if (result.signatures === 0 && result.erased === 0 && result.keyMissing === 0 && result.unopened > 0) {
            replace(out, h('p', { class: 'error', role: 'alert' }, t('export_none_opened', { n: fmtNumber(result.unopened) })));
            return;
          }
          const name = `signers-${c.campaign}.csv`;
          download(name, result.csv, 'text/csv');
          const done = t('export_done', { rows: fmtNumber(result.rows), name });
          replace(
            out,
            h('p', { class: 'success', role: 'status', id: 'x-done', 'data-rows': result.rows }, done),
            result.unopened > 0 ? h('p', { class: 'error', role: 'alert' }, t('export_some_unopened', { n: fmtNumber(result.unopened) })) : null,
            result.erased > 0 ? h('p', { class: 'note', id: 'x-erased', 'data-n': result.erased }, t('export_erased', { n: fmtNumber(result.erased) })) : null,
            result.keyMissing > 0 ? h('p', { class: 'error', role: 'alert', id: 'x-key-missing', 'data-n': result.keyMissing }, t('export_key_missing', { n: fmtNumber(result.keyMissing) })) : null,
          );
          announce(done);
        } catch (x) {
          replace(out, errorBox(x));
        } finally {
          button.disabled = false;
          file.value = '';
        }
      })();
    });
    main.append(h('p', { class: 'lede' }, c.title), form);
  },
};
