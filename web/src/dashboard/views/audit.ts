// The audit log (issue 15; the server keeps it, server/src/api/audit.rs): every organizer and
// admin action with its time, actor (a device id and name, never a token), action, campaign,
// target ids and result. Filters by time (this browser's time zone), actor and action, and,
// for the admin, campaign (an organizer reads their own campaign's only). The admin's page also
// checks the chain of hashes (GET /api/v1/audit/verify) and says whether it holds, or which
// entry is the first broken one.

import { ApiError, get } from '../api';
import { field, h, replace, select, table } from '../dom';
import { fmtDateTimeLocal, fmtNumber, t } from '../i18n';
import { errorBox, type View } from '../main';
import type { AuditEntry, AuditVerify } from '../types';

/** The actions the server records (the OpenAPI document's enum; others seen are added). */
export const AUDIT_ACTIONS = [
  'campaign.create',
  'event.add',
  'invite.create',
  'device.enroll',
  'device.revoke',
  'review.strike',
  'review.unstrike',
  'review.sheet',
  'export.sealed',
  'export.keys',
  'record.erase',
  'signin.link',
  'server.start',
];

/** The most entries one page asks for (the API's own limit is 10,000). */
const LIMIT = 1000;

/** The query for the filters: `from`/`to` are `datetime-local` values in this browser's zone. */
export function auditQuery(f: { from: string; to: string; actor: string; action: string; campaign: string }): URLSearchParams {
  const q = new URLSearchParams({ limit: String(LIMIT) });
  const ms = (v: string) => String(new Date(v).getTime());
  if (f.from) q.set('from', ms(f.from));
  // "To" is inclusive of the minute typed.
  if (f.to) q.set('to', String(Number(ms(f.to)) + 60_000));
  if (f.actor.trim()) q.set('actor', f.actor.trim());
  if (f.action) q.set('action', f.action);
  if (f.campaign) q.set('campaign', f.campaign);
  return q;
}

export const auditView: View = {
  title: 'audit',
  perCampaign: false,
  async render(main, ctx) {
    const admin = ctx.me.role === 'admin';
    const from = h('input', { id: 'a-from', type: 'datetime-local' });
    const to = h('input', { id: 'a-to', type: 'datetime-local' });
    const actor = h('input', { id: 'a-actor', type: 'text', list: 'a-actors', autocomplete: 'off', spellcheck: 'false' });
    const actors = h('datalist', { id: 'a-actors' });
    const action = select({ id: 'a-action' }, [['', t('audit_any_action')], ...AUDIT_ACTIONS.map((a): [string, string] => [a, a])]);
    const campaign = admin ? select({ id: 'a-campaign' }, [['', t('audit_any_campaign')], ...ctx.campaigns.map((c): [string, string] => [c.campaign, c.title])]) : null;
    const button = h('button', { type: 'submit', class: 'primary' }, t('audit_show'));
    const verify = h('div', { id: 'audit-verify', role: 'status', 'data-ok': 'unknown' });
    const box = h('div', { id: 'audit' });
    const form = h(
      'form',
      { id: 'audit-form', class: 'card filters stack', 'aria-label': t('audit_filters') },
      h(
        'div',
        { class: 'row' },
        field(t('audit_from'), from),
        field(t('audit_to'), to),
        field(t('audit_actor'), actor, t('audit_actor_hint')),
        field(t('audit_action'), action),
        campaign ? field(t('campaign'), campaign) : null,
      ),
      actors,
      button,
    );
    const names = new Map<string, string>();
    const load = async () => {
      const q = auditQuery({ from: from.value, to: to.value, actor: actor.value, action: action.value, campaign: campaign?.value ?? '' });
      const entries = await get<AuditEntry[]>(`/api/v1/audit?${q}`);
      for (const e of entries) if (e.actor_name) names.set(e.actor_id, e.actor_name);
      replace(actors, [...names].map(([id, name]) => h('option', { value: id }, name)));
      for (const e of entries) {
        if (![...action.options].some((o) => o.value === e.action)) action.append(h('option', { value: e.action }, e.action));
      }
      // Newest first.
      const rows = [...entries].reverse().map((e) => [
        String(e.seq),
        fmtDateTimeLocal(e.at),
        h('span', {}, e.actor_name ? `${e.actor_name} ` : '', h('code', { class: 'id' }, e.actor_id)),
        h('code', { class: 'action' }, e.action),
        e.campaign ? h('code', {}, e.campaign) : '—',
        e.target || '—',
        h('span', { class: e.result === 'ok' ? 'ok' : 'refused' }, e.result),
        h('code', { title: e.hash }, e.hash.slice(0, 12)),
      ]);
      replace(
        box,
        rows.length
          ? table(
              t(entries.length >= LIMIT ? 'audit_caption_limited' : 'audit_caption', { n: fmtNumber(entries.length) }),
              [t('audit_seq'), t('when'), t('audit_actor'), t('audit_action'), t('campaign'), t('audit_target'), t('audit_result'), t('audit_hash')],
              rows,
              { id: 'audit-list', 'data-count': entries.length },
            )
          : h('p', { class: 'note', id: 'audit-empty' }, t('audit_empty')),
      );
    };
    const check = async () => {
      if (!admin) {
        verify.dataset.ok = 'unknown';
        replace(verify, h('p', { class: 'note' }, t('audit_verify_admin_only')));
        return;
      }
      try {
        const v = await get<AuditVerify>('/api/v1/audit/verify');
        verify.dataset.ok = String(v.ok);
        replace(
          verify,
          v.ok
            ? h('p', { class: 'success' }, t('audit_verified', { n: fmtNumber(v.entries) }))
            : h('p', { class: 'error', role: 'alert' }, t('audit_broken', { seq: v.broken_at, why: v.why })),
        );
      } catch (x) {
        verify.dataset.ok = 'unknown';
        replace(verify, x instanceof ApiError && x.status === 403 ? h('p', { class: 'note' }, t('audit_verify_admin_only')) : errorBox(x));
      }
    };
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      button.disabled = true;
      load()
        .catch((x: unknown) => replace(box, errorBox(x)))
        .finally(() => {
          button.disabled = false;
        });
    });
    main.append(h('p', { class: 'note' }, t(admin ? 'audit_intro_admin' : 'audit_intro_organizer')), verify, form, box);
    await Promise.all([load(), check()]);
  },
};
