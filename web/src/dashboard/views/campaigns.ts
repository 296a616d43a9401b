// Campaigns: the list the token may see, and (admin) a new campaign. A new campaign's duplicate
// key is made here, in the browser, and kept in it (see keys.ts): the server never sees it.

import { post } from '../api';
import { download, field, h, table } from '../dom';
import { fmtNumber, t } from '../i18n';
import { keyFile, newKey, setKey } from '../keys';
import { announce, errorBox, type View } from '../main';
import { knownZone } from '../tz';
import type { CreatedCampaign, NewCampaign } from '../types';

const ZONES = [
  'America/Toronto',
  'America/Montreal',
  'America/Halifax',
  'America/St_Johns',
  'America/Winnipeg',
  'America/Regina',
  'America/Edmonton',
  'America/Vancouver',
  'America/Whitehorse',
];

export const campaignsView: View = {
  title: 'campaigns',
  perCampaign: false,
  render(main, ctx) {
    const list =
      ctx.campaigns.length === 0
        ? h('p', { class: 'note', id: 'no-campaigns' }, t('no_campaigns'))
        : table(
            t('campaigns'),
            [t('title'), t('goal'), t('timezone'), t('events'), t('campaign_id')],
            ctx.campaigns.map((c) => [
              h('a', { href: `#/campaign/${encodeURIComponent(c.campaign)}/totals` }, c.title),
              c.goal > 0 ? fmtNumber(c.goal) : '—',
              c.timezone,
              h('a', { href: `#/campaign/${encodeURIComponent(c.campaign)}/events` }, fmtNumber(c.events.length)),
              h('code', {}, c.campaign),
            ]),
            { id: 'campaign-list' },
          );
    main.append(list);
    if (ctx.me.role !== 'admin') {
      main.append(h('p', { class: 'note' }, t('create_campaign_admin_only')));
      return;
    }
    const title = h('input', { id: 'c-title', required: true, maxlength: 200 });
    const petition = h('textarea', { id: 'c-petition', required: true, rows: 4 });
    const addressee = h('input', { id: 'c-addressee', required: true, value: t('default_addressee') });
    const goal = h('input', { id: 'c-goal', type: 'number', min: 0, step: 1, value: 0, inputmode: 'numeric' });
    const tz = h('input', { id: 'c-tz', required: true, list: 'c-tz-list', value: 'America/Toronto', autocomplete: 'off' });
    const zones = h('datalist', { id: 'c-tz-list' }, ZONES.map((z) => h('option', { value: z })));
    const recipients = h('textarea', { id: 'c-recipients', required: true, rows: 3, spellcheck: 'false', autocomplete: 'off' });
    const out = h('div', { id: 'c-result', 'aria-live': 'polite' });
    const button = h('button', { type: 'submit', class: 'primary' }, t('create_campaign'));
    const form = h(
      'form',
      { id: 'new-campaign', class: 'card stack', 'aria-labelledby': 'new-campaign-title' },
      h('h2', { id: 'new-campaign-title' }, t('new_campaign')),
      field(t('title'), title),
      field(t('petition'), petition, t('petition_hint')),
      field(t('addressee'), addressee),
      field(t('goal'), goal, t('goal_hint')),
      field(t('timezone'), tz, t('timezone_hint')),
      zones,
      field(t('recipients'), recipients, t('recipients_hint')),
      button,
      out,
    );
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      out.replaceChildren();
      const recips = recipients.value.split(/\s+/).filter(Boolean);
      const bad = recips.find((r) => !/^age1[0-9a-z]+$/.test(r));
      if (bad !== undefined || recips.length === 0) {
        out.append(h('p', { class: 'error', role: 'alert' }, t('bad_recipient', { r: bad ?? '' })));
        recipients.focus();
        return;
      }
      if (!knownZone(tz.value.trim())) {
        out.append(h('p', { class: 'error', role: 'alert' }, t('bad_timezone', { tz: tz.value })));
        tz.focus();
        return;
      }
      const body: NewCampaign = {
        title: title.value.trim(),
        petition: petition.value.trim(),
        addressee: addressee.value.trim(),
        goal: Number(goal.value || 0),
        timezone: tz.value.trim(),
        recipients: recips,
      };
      button.disabled = true;
      post<CreatedCampaign>('/api/v1/campaigns', body)
        .then(async (created) => {
          const key = newKey();
          setKey(created.campaign, key);
          await ctx.refreshCampaigns();
          const save = h('button', { type: 'button', id: 'c-download-key' }, t('download_key'));
          save.addEventListener('click', () => download(`${created.campaign}.key`, keyFile(key), 'text/plain'));
          const done = h(
            'div',
            { class: 'success', role: 'status', id: 'c-created' },
            h('p', {}, t('campaign_created', { title: body.title, id: created.campaign })),
            h('p', {}, t('key_kept_here')),
            save,
            ' ',
            h('a', { href: `#/campaign/${encodeURIComponent(created.campaign)}/events`, id: 'c-go-events' }, t('add_events')),
          );
          ctx.flash(done);
          ctx.go('#/campaigns');
          announce(t('campaign_created', { title: body.title, id: created.campaign }));
        })
        .catch((x: unknown) => {
          out.append(errorBox(x));
        })
        .finally(() => {
          button.disabled = false;
        });
    });
    main.append(form);
  },
};
