// Review: strikes (a signature that must not count, with a reason; undone by revoking the
// strike), erasure (issue 15: a signer removed for good, by record id or by name and postal
// code; the duplicate token is computed here with the campaign's key from this browser, so the
// server never sees the name), and the paper-sheet ledger (serial, signatures, riding, status).
// All are written to the campaign's review document through the API, and the totals follow at
// once.

import { FormRefused, postalCode } from '../../app/core/rules';
import { DuplicateKey } from '../../app/core/tokens';
import { get, post, seg } from '../api';
import { field, h, replace, select, table } from '../dom';
import { fmtDateTime, fmtNumber, t, type Key } from '../i18n';
import { announce, errorBox, type View } from '../main';
import { getKey } from '../keys';
import { SHEET_STATUSES, STRIKE_REASONS, type Erased, type NewStrike, type Review, type SealedRecord, type Sheet, type SheetStatus, type Strike, type StrikeReason } from '../types';

const reasonLabel = (r: string) => t(`reason_${r}` as Key);
const statusLabel = (s: string) => t(`status_${s}` as Key);

/** Asks before an erasure, in a modal dialog; resolves to the answer. */
function confirmErase(what: string): Promise<boolean> {
  return new Promise((resolve) => {
    const yes = h('button', { type: 'button', class: 'danger', id: 'confirm-erase' }, t('erase'));
    const no = h('button', { type: 'button', id: 'cancel-erase' }, t('cancel'));
    const dialog = h(
      'dialog',
      { id: 'erase-dialog', 'aria-labelledby': 'erase-dialog-title', 'aria-describedby': 'erase-dialog-text' },
      h('h2', { id: 'erase-dialog-title' }, t('erase_confirm_title', { what })),
      h('p', { id: 'erase-dialog-text' }, t('erase_confirm_text')),
      h('div', { class: 'actions' }, yes, no),
    );
    const done = (v: boolean) => {
      dialog.close();
      dialog.remove();
      resolve(v);
    };
    yes.addEventListener('click', () => done(true));
    no.addEventListener('click', () => done(false));
    dialog.addEventListener('cancel', () => done(false));
    document.body.append(dialog);
    dialog.showModal();
    no.focus();
  });
}

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
          // An erasure is final: nothing to undo.
          if (s.reason === 'erased') return [h('code', {}, s.signature), reasonLabel(s.reason), fmtDateTime(s.at, c.timezone), t('strike_active'), '—'];
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

    // ---- erasure (for good: the record's keys are deleted on the server)
    const eraseIds = h('textarea', { id: 'e-records', rows: 2, autocomplete: 'off', spellcheck: 'false' });
    const eraseName = h('input', { id: 'e-name', autocomplete: 'off' });
    const erasePostal = h('input', { id: 'e-postal', autocomplete: 'off' });
    const eraseButton = h('button', { type: 'submit', class: 'danger' }, t('erase_button'));
    const eraseResult = h('div', { id: 'erase-result', 'aria-live': 'polite' });
    const eraseForm = h(
      'form',
      { id: 'erase-form', class: 'card stack', 'aria-labelledby': 'erase-title' },
      h('h2', { id: 'erase-title' }, t('erase_title')),
      h('p', { class: 'note' }, t('erase_intro')),
      field(t('erase_records'), eraseIds, t('erase_records_hint')),
      h('p', {}, t('erase_or')),
      h('div', { class: 'row' }, field(t('erase_name'), eraseName), field(t('erase_postal'), erasePostal)),
      h('p', { class: 'hint' }, t('erase_person_hint')),
      eraseButton,
      eraseResult,
    );
    /** The erase request of the form, and how the confirmation names it; or an error for the page. */
    const eraseRequest = async (): Promise<{ body: { records: string[] } | { duplicate_token: string }; what: string } | string> => {
      const ids = eraseIds.value.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);
      const name = eraseName.value.trim();
      const postal = erasePostal.value.trim();
      if (ids.length > 0 && (name || postal)) return t('erase_one_way');
      if (ids.length > 0) return { body: { records: [...new Set(ids)] }, what: t('erase_what_records', { n: new Set(ids).size }) };
      if (!name || !postal) return t('erase_nothing');
      const hex = getKey(c.campaign);
      if (!hex) return t('erase_no_key');
      let code = postal;
      try {
        code = postalCode(postal);
      } catch (e) {
        if (!(e instanceof FormRefused)) throw e;
      }
      const key = await DuplicateKey.fromHex(hex);
      return { body: { duplicate_token: await key.duplicateToken(name, code) }, what: t('erase_what_person', { name }) };
    };
    eraseForm.addEventListener('submit', (e) => {
      e.preventDefault();
      eraseButton.disabled = true;
      eraseResult.replaceChildren();
      void (async () => {
        try {
          const req = await eraseRequest();
          if (typeof req === 'string') {
            replace(eraseResult, h('p', { class: 'error', role: 'alert' }, req));
            return;
          }
          if (!(await confirmErase(req.what))) return;
          const done = await post<Erased>(`${base}/erase`, req.body);
          const text = t('erased_done', { n: fmtNumber(done.erased.length), keys: fmtNumber(done.keys_deleted) });
          replace(
            eraseResult,
            h('p', { class: 'success', role: 'status', id: 'erase-done', 'data-erased': done.erased.join(' ') }, text),
            done.v1.length > 0 ? h('p', { class: 'error', role: 'alert', id: 'erase-v1' }, t('erased_v1', { n: fmtNumber(done.v1.length), ids: done.v1.join(', ') })) : null,
          );
          announce(text);
          eraseForm.reset();
          await load();
          // The list, if shown, says which are erased now.
          if (sigBox.firstChild) await loadSigs();
        } catch (x) {
          replace(eraseResult, errorBox(x));
        } finally {
          eraseButton.disabled = false;
        }
      })();
    });

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
    const loadSigs = () => {
      showSigs.disabled = true;
      return get<SealedRecord[]>(`${base}/sealed`)
        .then((records) => {
          const latest = records.slice(-200).reverse();
          const rows = latest.map((r) => {
            const pick = h('button', { type: 'button', 'data-signature': r.id }, t('strike_this'));
            pick.setAttribute('aria-label', `${t('strike_this')} ${r.id}`);
            pick.addEventListener('click', () => {
              sig.value = r.id;
              sig.focus();
            });
            const erase = h('button', { type: 'button', class: 'danger', 'data-erase': r.id }, t('erase_this'));
            erase.setAttribute('aria-label', `${t('erase_this')} ${r.id}`);
            erase.addEventListener('click', () => {
              eraseIds.value = eraseIds.value.trim() ? `${eraseIds.value.trim()}\n${r.id}` : r.id;
              eraseIds.focus();
            });
            const state = r.erased ? t('erased_state') : r.withdrawn ? t('withdrawn') : r.counted ? t('counted') : t('struck');
            return [h('code', {}, r.id), fmtDateTime(r.collected_at, c.timezone), r.city, r.fsa, state, r.erased ? '—' : h('span', { class: 'inline' }, pick, ' ', erase)];
          });
          replace(sigBox, table(t('signatures_latest', { n: latest.length, total: records.length }), [t('signature_id'), t('when'), t('city'), t('fsa'), t('state'), t('actions')], rows, { id: 'signature-list' }));
        })
        .catch(fail)
        .finally(() => {
          showSigs.disabled = false;
        });
    };
    showSigs.addEventListener('click', () => void loadSigs());

    main.append(
      h('p', { class: 'lede' }, c.title),
      message,
      strikeForm,
      h('section', { 'aria-labelledby': 'strikes-title' }, h('h2', { id: 'strikes-title' }, t('strikes')), strikesBox),
      h('section', { 'aria-labelledby': 'sigs-title' }, h('h2', { id: 'sigs-title' }, t('signatures')), h('p', { class: 'note' }, t('signatures_intro')), showSigs, sigBox),
      eraseForm,
      sheetForm,
      h('section', { 'aria-labelledby': 'sheets-title' }, h('h2', { id: 'sheets-title' }, t('sheets')), sheetsBox),
    );
    await load();
  },
};
