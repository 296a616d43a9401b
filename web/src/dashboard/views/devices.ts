// Devices (admin): every enrolled phone and organizer with its role, campaign, enrollment, last
// sync and state; the refusals the server holds for it in quarantine (what it knows of a
// phone's records that wait); and revocation, after a confirmation.

import { get, post, seg } from '../api';
import { h, table } from '../dom';
import { fmtDateTimeLocal, fmtNumber, t, type Key } from '../i18n';
import { announce, errorBox, type View } from '../main';
import type { Device, QuarantineList, Revoked } from '../types';

/** Asks before a revocation, in a modal dialog; resolves to the answer. */
function confirmRevoke(d: Device): Promise<boolean> {
  return new Promise((resolve) => {
    const yes = h('button', { type: 'button', class: 'danger', id: 'confirm-revoke' }, t('revoke'));
    const no = h('button', { type: 'button', id: 'cancel-revoke' }, t('cancel'));
    const dialog = h(
      'dialog',
      { id: 'revoke-dialog', 'aria-labelledby': 'revoke-title', 'aria-describedby': 'revoke-text' },
      h('h2', { id: 'revoke-title' }, t('revoke_title', { name: d.name })),
      h('p', { id: 'revoke-text' }, t('revoke_text')),
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

export const devicesView: View = {
  title: 'devices',
  perCampaign: false,
  adminOnly: true,
  async render(main, ctx) {
    const [devices, quarantine] = await Promise.all([
      get<Device[]>('/api/v1/devices'),
      get<QuarantineList>('/api/v1/quarantine?limit=1000').catch(() => ({ entries: [], next_after: null })),
    ]);
    const refusals = new Map<string, number>();
    for (const q of quarantine.entries) refusals.set(q.device_id, (refusals.get(q.device_id) ?? 0) + 1 + q.repeats);
    const titles = new Map(ctx.campaigns.map((c) => [c.campaign, c.title]));
    const out = h('div', { 'aria-live': 'polite', id: 'devices-message' });
    const rows = devices.map((d) => {
      const revoke = h('button', { type: 'button', class: 'danger', 'data-device': d.device_id }, t('revoke'));
      revoke.setAttribute('aria-label', t('revoke_named', { name: d.name }));
      revoke.addEventListener('click', () => {
        void confirmRevoke(d).then((ok) => {
          if (!ok) {
            revoke.focus();
            return;
          }
          post<Revoked>(`/api/v1/devices/${seg(d.device_id)}/revoke`, {})
            .then(async (r) => {
              const msg = t('revoked_done', { name: d.name, n: r.connections_closed });
              await devicesView.render(fresh(main), ctx);
              document.getElementById('devices-message')?.append(h('p', { class: 'success', role: 'status' }, msg));
              announce(msg);
            })
            .catch((x: unknown) => out.replaceChildren(errorBox(x)));
        });
      });
      const state = d.revoked_at ? t('revoked_at', { when: fmtDateTimeLocal(d.revoked_at) }) : t('active');
      return [
        d.name,
        t(`role_${d.role}` as Key),
        d.campaign ? (titles.get(d.campaign) ?? d.campaign) : '—',
        fmtDateTimeLocal(d.created_at),
        d.last_seen ? fmtDateTimeLocal(d.last_seen) : t('never'),
        state,
        fmtNumber(refusals.get(d.device_id) ?? 0),
        d.revoked_at || d.device_id === ctx.me.device_id ? '' : revoke,
      ];
    });
    main.append(
      h('p', { class: 'note' }, t('devices_intro')),
      out,
      table(t('devices'), [t('device_name'), t('role'), t('campaign'), t('enrolled'), t('last_sync'), t('state'), t('refusals'), t('actions')], rows, { id: 'device-list' }),
    );
    const tbody = main.querySelector('#device-list tbody');
    devices.forEach((d, i) => tbody?.children[i]?.setAttribute('data-device', d.device_id));
  },
};

/** Empties `main` down to its heading, for a re-render in place. */
function fresh(main: HTMLElement): HTMLElement {
  const heading = main.querySelector('#view-title');
  main.replaceChildren();
  if (heading) main.append(heading);
  return main;
}
