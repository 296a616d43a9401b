// Export, in the browser: the organizer chooses their age identity file here; the sealed records
// are fetched from the server and opened on this machine with it (the `age-encryption`
// package); a CSV with the same columns and rows as `tally export` is downloaded from memory.
// The identity is read into this page only: it is never sent anywhere, and is dropped when the
// export ends.

import { Decrypter } from 'age-encryption';
import { get, seg } from '../api';
import { download, field, h, replace } from '../dom';
import { fmtNumber, t } from '../i18n';
import { announce, errorBox, type View } from '../main';
import type { SealedRecord } from '../types';

/** The export's columns, as `tally export` writes them (server/src/client.rs, EXPORT_COLUMNS). */
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
}

/**
 * Opens the records and builds the CSV exactly as `tally export` does: without `every`, the
 * counted signatures, one row per duplicate group (its earliest signature); with `every`, every
 * signature (withdrawn and struck included).
 */
export async function buildExport(records: SealedRecord[], identity: string, every: boolean, progress: (done: number, of: number) => void): Promise<ExportResult> {
  const d = new Decrypter();
  d.addIdentity(identity);
  const wanted = records.filter((r) => every || r.counted);
  const opened: [SealedRecord, PersonalFields][] = [];
  let unopened = 0;
  for (const [i, r] of wanted.entries()) {
    try {
      const text = await d.decrypt(hexBytes(r.sealed), 'text');
      opened.push([r, JSON.parse(text) as PersonalFields]);
    } catch {
      unopened += 1;
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
  return { csv: `${lines.join('\n')}\n`, rows, signatures: opened.length, unopened };
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
          const result = await buildExport(records, identity, every.checked, (done, of) => {
            progress.textContent = t('export_opening', { done: fmtNumber(done), of: fmtNumber(of) });
          });
          if (result.signatures === 0 && result.unopened > 0) {
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
