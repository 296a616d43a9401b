// Review: strikes (a signature that must not count, with a reason; undone by revoking the
// strike) and the paper-sheet ledger (serial, signatures, riding, status). Both are written to
// the campaign's review document through the API, and the totals follow at once.

import { get, post, seg } from '../api';
import { field, h, replace, select, table } from '../dom';
import { fmtDateTime, fmtNumber, t, type Key } from '../i18n';
import { announce, errorBox, type View } from '../main';
import { SHEET_STATUSES, STRIKE_REASONS, type NewStrike, type Review, type SealedRecord, type Sheet, type SheetStatus, type Strike, type StrikeReason } from '../types';

const reasonLabel = (r: string) => t(`reason_${r}` as Key);
const statusLabel = (s: string) => t(`status_${s}` as Key);

export const reviewView: View = {
  title: 'review',
  perCampaign: true,
  async render(main, ctx) {
    const c = ctx.campaign;
    if (!c) return;
    const base = `/api/v1/campaigns/${seg(c.campaign)}`;
    const strikesBox = h('div', { id: 'strikes' });
    const sheetsBox = h('div', { id: 'sheets' });
    const message = h('div', { id: 'review-message', 'aria-live': 'polite' });
    const say = (text: string) => {
      replace(message, h('p', { class: 'success', role: 'status' }, text));
      announce(text);
    };
    const fail = (x: unknown) => replace(message, errorBox(x));

    const load = async () => {
      const review = await get<Review>(`${base}/review`);
      drawStrikes(review.strikes);
      drawSheets(review.sheets);
    };

    // ---- strikes
    const sig = h('input', { id: 's-signature', required: true, autocomplete: 'off', spellcheck: 'false' });
    const reason = select({ id: 's-reason' }, STRIKE_REASONS.map((r): [string, string] => [r, reasonLabel(r)]));
    const strikeButton = h('button', { type: 'submit', class: 'primary' }, t('strike'));
    const strikeForm = h(
      'form',
      { id: 'strike-form', class: 'card stack', 'aria-labelledby': 'strike-title' },
      h('h2', { id: 'strike-title' }, t('strike_title')),
      field(t('signature_id'), sig, t('signature_id_hint')),
      field(t('reason'), reason),
      strikeButton,
    );
    const sendStrike = (body: NewStrike) =>
      post<Strike>(`${base}/strikes`, body).then(async (s) => {
        say(s.revoked ? t('unstruck', { id: s.signature }) : t('struck_done', { id: s.signature, reason: reasonLabel(s.reason) }));
        await load();
      });
    strikeForm.addEventListener('submit', (e) => {
      e.preventDefault();
      strikeButton.disabled = true;
      sendStrike({ signature: sig.value.trim(), reason: reason.value as StrikeReason, revoked: false })
        .then(() => strikeForm.reset())
        .catch(fail)
        .finally(() => {
          strikeButton.disabled = false;
        });
    });
    const drawStrikes = (strikes: Strike[]) => {
      const rows = strikes
        .sort((a, b) => b.at - a.at)
        .map((s) => {
          const undo = h('button', { type: 'button', 'data-signature': s.signature }, s.revoked ? t('strike_again') : t('undo_strike'));
          undo.setAttribute('aria-label', `${s.revoked ? t('strike_again') : t('undo_strike')} ${s.signature}`);
          undo.addEventListener('click', () => {
            undo.disabled = true;
            sendStrike({ signature: s.signature, reason: s.reason, revoked: !s.revoked })
              .catch(fail)
              .finally(() => {
                undo.disabled = false;
              });
          });
          return [h('code', {}, s.signature), reasonLabel(s.reason), fmtDateTime(s.at, c.timezone), s.revoked ? t('strike_undone') : t('strike_active'), undo];
        });
      replace(strikesBox, rows.length ? table(t('strikes'), [t('signature_id'), t('reason'), t('when'), t('state'), t('actions')], rows, { id: 'strike-list' }) : h('p', { class: 'note' }, t('no_strikes')));
    };

    // ---- paper sheets
    const serial = h('input', { id: 'p-serial', required: true, autocomplete: 'off' });
    const count = h('input', { id: 'p-count', type: 'number', min: 0, max: 10000, step: 1, required: true, inputmode: 'numeric' });
    const riding = h('input', { id: 'p-riding' });
    const status = select({ id: 'p-status' }, SHEET_STATUSES.map((s): [string, string] => [s, statusLabel(s)]));
    const sheetButton = h('button', { type: 'submit', class: 'primary' }, t('save_sheet'));
    const sheetForm = h(
      'form',
      { id: 'sheet-form', class: 'card stack', 'aria-labelledby': 'sheet-title' },
      h('h2', { id: 'sheet-title' }, t('sheet_title')),
      h('p', { class: 'note' }, t('sheet_intro')),
      field(t('serial'), serial),
      field(t('sheet_count'), count),
      field(t('riding'), riding),
      field(t('status'), status),
      sheetButton,
    );
    const sendSheet = (s: Sheet) =>
      post<Sheet>(`${base}/sheets`, s).then(async (saved) => {
        say(t('sheet_saved', { serial: saved.serial, status: statusLabel(saved.status) }));
        await load();
      });
    sheetForm.addEventListener('submit', (e) => {
      e.preventDefault();
      sheetButton.disabled = true;
      sendSheet({ serial: serial.value.trim(), count: Number(count.value), riding: riding.value.trim() || null, status: status.value as SheetStatus })
        .then(() => sheetForm.reset())
        .catch(fail)
        .finally(() => {
          sheetButton.disabled = false;
        });
    });
    const drawSheets = (sheets: Sheet[]) => {
      const rows = sheets.map((s) => {
        const id = `sheet-status-${s.serial.replace(/[^A-Za-z0-9_-]/g, '_')}`;
        const sel = select({ id, 'data-serial': s.serial }, SHEET_STATUSES.map((v): [string, string] => [v, statusLabel(v)]), s.status);
        sel.setAttribute('aria-label', t('status_of', { serial: s.serial }));
        const save = h('button', { type: 'button', 'data-serial': s.serial }, t('save'));
        save.setAttribute('aria-label', t('save_status_of', { serial: s.serial }));
        save.addEventListener('click', () => {
          save.disabled = true;
          sendSheet({ ...s, status: sel.value as SheetStatus })
            .catch(fail)
            .finally(() => {
              save.disabled = false;
            });
        });
        return [s.serial, fmtNumber(s.count), s.riding ?? '—', h('span', { class: 'inline' }, sel, ' ', save)];
      });
      replace(sheetsBox, rows.length ? table(t('sheets'), [t('serial'), t('sheet_count'), t('riding'), t('status')], rows, { id: 'sheet-list' }) : h('p', { class: 'note' }, t('no_sheets')));
    };

    // ---- signatures to pick from (ids, times and places only: the personal fields stay sealed)
    const sigBox = h('div', { id: 'signatures' });
    const showSigs = h('button', { type: 'button', id: 'show-signatures' }, t('show_signatures'));
    showSigs.addEventListener('click', () => {
      showSigs.disabled = true;
      get<SealedRecord[]>(`${base}/sealed`)
        .then((records) => {
          const latest = records.slice(-200).reverse();
          const rows = latest.map((r) => {
            const pick = h('button', { type: 'button', 'data-signature': r.id }, t('strike_this'));
            pick.setAttribute('aria-label', `${t('strike_this')} ${r.id}`);
            pick.addEventListener('click', () => {
              sig.value = r.id;
              sig.focus();
            });
            const state = r.withdrawn ? t('withdrawn') : r.counted ? t('counted') : t('struck');
            return [h('code', {}, r.id), fmtDateTime(r.collected_at, c.timezone), r.city, r.fsa, state, pick];
          });
          replace(sigBox, table(t('signatures_latest', { n: latest.length, total: records.length }), [t('signature_id'), t('when'), t('city'), t('fsa'), t('state'), t('actions')], rows, { id: 'signature-list' }));
        })
        .catch(fail)
        .finally(() => {
          showSigs.disabled = false;
        });
    });

    main.append(
      h('p', { class: 'lede' }, c.title),
      message,
      strikeForm,
      h('section', { 'aria-labelledby': 'strikes-title' }, h('h2', { id: 'strikes-title' }, t('strikes')), strikesBox),
      h('section', { 'aria-labelledby': 'sigs-title' }, h('h2', { id: 'sigs-title' }, t('signatures')), h('p', { class: 'note' }, t('signatures_intro')), showSigs, sigBox),
      sheetForm,
      h('section', { 'aria-labelledby': 'sheets-title' }, h('h2', { id: 'sheets-title' }, t('sheets')), sheetsBox),
    );
    await load();
  },
};
