// A campaign's events (rallies, office visits, marches): the list, and a new one (or a
// correction: the same id). Times are entered and shown in the campaign's time zone.

import { post, seg } from '../api';
import { field, h, table } from '../dom';
import { fmtDateTime, t } from '../i18n';
import { announce, errorBox, type View } from '../main';
import { zonedToUtc } from '../tz';
import type { Event, NewEvent } from '../types';

export const eventsView: View = {
  title: 'events',
  perCampaign: true,
  render(main, ctx) {
    const c = ctx.campaign;
    if (!c) return;
    const events = [...c.events].sort((a, b) => a.starts_at - b.starts_at);
    main.append(
      h('p', { class: 'lede' }, c.title),
      events.length === 0
        ? h('p', { class: 'note', id: 'no-events' }, t('no_events'))
        : table(
            t('events'),
            [t('event_name'), t('city'), t('starts_at'), t('place'), t('event_id')],
            events.map((e) => [e.name, e.city, fmtDateTime(e.starts_at, c.timezone), e.place, h('code', {}, e.id)]),
            { id: 'event-list' },
          ),
    );
    const id = h('input', { id: 'e-id', pattern: '[A-Za-z0-9_\\-]{1,64}', autocomplete: 'off', spellcheck: 'false' });
    const name = h('input', { id: 'e-name', required: true });
    const city = h('input', { id: 'e-city', required: true });
    const starts = h('input', { id: 'e-starts', type: 'datetime-local', required: true });
    const place = h('input', { id: 'e-place' });
    const button = h('button', { type: 'submit', class: 'primary' }, t('add_event'));
    const out = h('div', { 'aria-live': 'polite' });
    const form = h(
      'form',
      { id: 'new-event', class: 'card stack', 'aria-labelledby': 'new-event-title' },
      h('h2', { id: 'new-event-title' }, t('new_event')),
      field(t('event_name'), name),
      field(t('city'), city),
      field(t('starts_at'), starts, t('starts_at_hint', { tz: c.timezone })),
      field(t('place'), place),
      field(t('event_id_optional'), id, t('event_id_hint')),
      button,
      out,
    );
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      out.replaceChildren();
      const at = zonedToUtc(starts.value, c.timezone);
      if (Number.isNaN(at)) {
        out.append(h('p', { class: 'error', role: 'alert' }, t('bad_time')));
        return;
      }
      const body: NewEvent = { name: name.value.trim(), city: city.value.trim(), starts_at: at, place: place.value.trim() };
      if (id.value.trim()) body.id = id.value.trim();
      button.disabled = true;
      post<Event>(`/api/v1/campaigns/${seg(c.campaign)}/events`, body)
        .then(async (ev) => {
          await ctx.refreshCampaigns();
          announce(t('event_added', { name: ev.name }));
          ctx.go(`#/campaign/${encodeURIComponent(c.campaign)}/events`);
        })
        .catch((x: unknown) => out.append(errorBox(x)))
        .finally(() => {
          button.disabled = false;
        });
    });
    main.append(form);
  },
};
