// Invites: a one-time code for a phone (canvasser) or an organizer, shown as a QR code for the
// phone's camera and as the payload's text to copy, with its expiry. The payload carries the
// campaign's duplicate key, which this browser holds (keys.ts) and the server never sees: it
// goes from this page to the phone through the QR code only.

import QRCode from 'qrcode';
import { post } from '../api';
import { download, field, h, replace, select } from '../dom';
import { fmtDateTimeLocal, t } from '../i18n';
import { getKey, keyFile, parseKey, setKey } from '../keys';
import { announce, errorBox, type View } from '../main';
import type { Invite, NewInvite } from '../types';

/** The invite payload a phone reads (`tally-device enroll --payload`), as `tally invite` prints it. */
export function payload(inv: Invite, key: string): string {
  return JSON.stringify({ campaign: inv.campaign, code: inv.code, key, server: inv.server, v: 1 });
}

/**
 * What the QR code holds: the canvassers' app with the payload after `#` (docs/clients.md §1),
 * so a phone's camera opens the app, and the fragment never reaches a server.
 */
export function appLink(inv: Invite, text: string): string {
  return `${inv.app_url}#${encodeURIComponent(text)}`;
}

export const invitesView: View = {
  title: 'invites',
  perCampaign: true,
  render(main, ctx) {
    const c = ctx.campaign;
    if (!c) return;
    const keyBox = h('div', { id: 'key-status', class: 'card' });
    const drawKey = () => {
      const key = getKey(c.campaign);
      const file = h('input', { id: 'key-file', type: 'file', accept: '.key,text/plain' });
      const err = h('div', { 'aria-live': 'assertive' });
      file.addEventListener('change', () => {
        const f = file.files?.[0];
        if (!f) return;
        void f.text().then((text) => {
          const hex = parseKey(text);
          if (!hex) {
            replace(err, h('p', { class: 'error', role: 'alert' }, t('bad_key_file')));
            return;
          }
          setKey(c.campaign, hex);
          announce(t('key_imported'));
          drawKey();
        });
      });
      if (key) {
        const save = h('button', { type: 'button', id: 'download-key' }, t('download_key'));
        save.addEventListener('click', () => download(`${c.campaign}.key`, keyFile(key), 'text/plain'));
        replace(keyBox, h('p', { class: 'ok' }, t('key_held')), save, field(t('import_key_replace'), file), err);
      } else {
        replace(keyBox, h('p', { class: 'error', role: 'alert' }, t('key_missing', { id: c.campaign })), field(t('import_key'), file, t('import_key_hint', { id: c.campaign })), err);
      }
    };
    drawKey();
    const role = select({ id: 'i-role' }, [
      ['canvasser', t('role_canvasser')],
      ['organizer', t('role_organizer')],
    ]);
    const button = h('button', { type: 'submit', class: 'primary' }, t('create_invite'));
    const out = h('div', { id: 'invite', 'aria-live': 'polite' });
    const form = h(
      'form',
      { id: 'new-invite', class: 'card stack', 'aria-labelledby': 'new-invite-title' },
      h('h2', { id: 'new-invite-title' }, t('new_invite')),
      h('p', {}, t('invite_intro')),
      field(t('role'), role),
      button,
    );
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      out.replaceChildren();
      const key = getKey(c.campaign);
      if (!key) {
        out.append(h('p', { class: 'error', role: 'alert' }, t('key_missing', { id: c.campaign })));
        return;
      }
      button.disabled = true;
      const body: NewInvite = { campaign: c.campaign, role: role.value as NewInvite['role'] };
      post<Invite>('/api/v1/invites', body)
        .then(async (inv) => {
          const text = payload(inv, key);
          const canvas = h('canvas', { id: 'invite-qr', role: 'img', 'aria-label': t('qr_label') });
          await QRCode.toCanvas(canvas, appLink(inv, text), { errorCorrectionLevel: 'M', margin: 4, scale: 5 });
          const area = h('textarea', { id: 'invite-payload', readonly: true, rows: 4, spellcheck: 'false' });
          area.value = text;
          const copy = h('button', { type: 'button', id: 'copy-payload' }, t('copy'));
          copy.addEventListener('click', () => {
            area.select();
            navigator.clipboard
              ?.writeText(text)
              .then(() => announce(t('copied')))
              .catch(() => announce(t('copy_select')));
          });
          const hours = Math.round((inv.expires_at - Date.now()) / 3_600_000);
          replace(
            out,
            h(
              'section',
              { class: 'card invite', 'aria-labelledby': 'invite-title' },
              h('h2', { id: 'invite-title' }, t('invite_for', { role: t(inv.role === 'organizer' ? 'role_organizer' : 'role_canvasser') })),
              h('div', { class: 'qr' }, canvas),
              h('p', {}, t('invite_code'), ' ', h('code', { id: 'invite-code' }, inv.code)),
              h('p', { id: 'invite-expiry' }, t('invite_expires', { when: fmtDateTimeLocal(inv.expires_at), hours })),
              field(t('payload'), area, t('payload_hint')),
              copy,
            ),
          );
          announce(t('invite_created'));
        })
        .catch((x: unknown) => out.append(errorBox(x)))
        .finally(() => {
          button.disabled = false;
        });
    });
    main.append(h('p', { class: 'lede' }, c.title), keyBox, form, out);
  },
};
