// A campaign's totals: filters (event, date range, city, FSA, riding, canvasser), the headline and goal, the
// breakdowns and the per-day chart, kept current by the live stream (see live.ts), with the
// time of the last update.

import { get, seg } from '../api';
import { field, h, replace, select } from '../dom';
import { fmtNumber, t } from '../i18n';
import { LiveTotals, type LiveState } from '../live';
import type { View } from '../main';
import { nextDay, zonedToUtc } from '../tz';
import type { CampaignSummary, Device, Totals } from '../types';
import { breakdownTable, checkinsTable, dayChart, goalBar, headline, stateText } from './totals-render';
import { fullScreen } from './wall';

let live: LiveTotals | null = null;
let resumeFn: (() => void) | null = null;

/** The query string of the filters (empty values left out). */
export function filterQuery(
  c: CampaignSummary,
  f: { event: string; from: string; to: string; city: string; fsa: string; riding?: string; canvasser?: string },
): URLSearchParams {
  const q = new URLSearchParams();
  if (f.event) q.set('event', f.event);
  if (f.from) q.set('from', new Date(zonedToUtc(f.from, c.timezone)).toISOString());
  if (f.to) q.set('to', new Date(zonedToUtc(nextDay(f.to), c.timezone)).toISOString());
  if (f.city.trim()) q.set('city', f.city.trim());
  if (f.fsa.trim()) q.set('fsa', f.fsa.trim().toUpperCase());
  if (f.riding?.trim()) q.set('riding', f.riding.trim());
  if (f.canvasser) q.set('canvasser', f.canvasser);
  return q;
}

/** Device names by id, for the admin (others cannot list devices: ids are shown). */
export async function deviceNames(role: string): Promise<Map<string, string>> {
  const names = new Map<string, string>();
  if (role !== 'admin') return names;
  try {
    for (const d of await get<Device[]>('/api/v1/devices')) names.set(d.device_id, d.name);
  } catch {
    // ids are shown instead
  }
  return names;
}

export const totalsView: View = {
  title: 'totals',
  perCampaign: true,
  leave() {
    live?.stop();
    live = null;
    resumeFn = null;
  },
  resume() {
    resumeFn?.();
  },
  async render(main, ctx) {
    const c = ctx.campaign;
    if (!c) return;
    const names = await deviceNames(ctx.me.role);
    const events = new Map(c.events.map((e) => [e.id, e.name]));
    const eventSel = select({ id: 'f-event' }, [['', t('all_events')], ...c.events.map((e): [string, string] => [e.id, e.name])]);
    const from = h('input', { id: 'f-from', type: 'date' });
    const to = h('input', { id: 'f-to', type: 'date' });
    const city = h('input', { id: 'f-city', list: 'f-city-list', autocomplete: 'off' });
    const cities = h('datalist', { id: 'f-city-list' });
    const fsa = h('input', { id: 'f-fsa', maxlength: 3, autocomplete: 'off', spellcheck: 'false', pattern: '[A-Za-z][0-9][A-Za-z]' });
    const riding = h('input', { id: 'f-riding', list: 'f-riding-list', autocomplete: 'off' });
    const ridings = h('datalist', { id: 'f-riding-list' });
    const canvasserSel = select({ id: 'f-canvasser' }, [['', t('all_canvassers')]]);
    const apply = h('button', { type: 'submit', class: 'primary' }, t('apply_filters'));
    const clear = h('button', { type: 'button', id: 'f-clear' }, t('clear_filters'));
    const filterError = h('div', { id: 'filter-error', 'aria-live': 'assertive' });
    const form = h(
      'form',
      { id: 'filters', class: 'filters card', 'aria-labelledby': 'filters-title' },
      h('h2', { id: 'filters-title' }, t('filters')),
      h(
        'div',
        { class: 'row' },
        field(t('event'), eventSel),
        field(t('from_day'), from),
        field(t('to_day'), to),
        field(t('city'), city),
        field(t('fsa'), fsa, t('fsa_hint')),
        field(t('riding'), riding),
        field(t('key_by_canvasser'), canvasserSel),
      ),
      cities,
      ridings,
      h('div', { class: 'actions' }, apply, clear),
      filterError,
    );
    const status = h('p', { id: 'live-status', class: 'live-status', role: 'status', 'data-state': 'connecting' }, t('connecting'));
    const results = h('div', { id: 'results', 'aria-busy': 'true' });
    const wall = h('button', { type: 'button', id: 'open-wall', class: 'wall-button' }, t('open_wall'));
    wall.addEventListener('click', () => {
      fullScreen();
      ctx.go(`#/campaign/${encodeURIComponent(c.campaign)}/wall`);
    });
    main.append(h('p', { class: 'lede' }, c.title, ' ', wall), form, status, results);

    let last: number | null = null;
    let state: LiveState = { kind: 'connecting' };
    const showState = () => {
      const s = stateText(state, last);
      status.textContent = s.text;
      status.dataset.state = state.kind;
      status.classList.toggle('stale', s.stale);
      results.classList.toggle('stale', s.stale);
    };
    const draw = (tot: Totals) => {
      const eventName = (id: string) => events.get(id) ?? id;
      const who = (id: string) => names.get(id) ?? `${id.slice(0, 8)}…`;
      const filtered = Object.values(tot.filters).some((v) => v !== null && v !== undefined);
      replace(
        results,
        filtered ? h('p', { class: 'note', id: 'filters-applied' }, t('filtered')) : null,
        headline(tot),
        goalBar(tot, c, 'goal-bar'),
        tot.suppression.note ? h('p', { class: 'note', id: 'suppression-note' }, t('suppression_note', { th: tot.suppression.threshold })) : null,
        (tot.projection?.pending_records ?? 0) > 0
          ? h(
              'p',
              { class: 'note', id: 'projection-lag' },
              t('not_counted_yet', { n: fmtNumber(tot.projection?.pending_records ?? 0), secs: ((tot.projection?.lag_ms ?? 0) / 1000).toFixed(1) }),
            )
          : null,
        dayChart(tot),
        h(
          'div',
          { class: 'grid' },
          breakdownTable(tot, 'by_event', eventName),
          breakdownTable(tot, 'by_city', (k) => k),
          breakdownTable(tot, 'by_fsa', (k) => k),
          breakdownTable(tot, 'by_riding', (k) => k),
          breakdownTable(tot, 'by_day', (k) => k),
          breakdownTable(tot, 'by_canvasser', who),
          checkinsTable(tot, eventName),
        ),
      );
      results.setAttribute('aria-busy', 'false');
      results.dataset.updated = String(last ?? 0);
      if (!filtered) {
        for (const k of Object.keys(tot.by_city)) {
          if (!cities.querySelector(`option[value="${CSS.escape(k)}"]`)) cities.append(h('option', { value: k }));
        }
        for (const k of Object.keys(tot.by_riding)) {
          if (!ridings.querySelector(`option[value="${CSS.escape(k)}"]`)) ridings.append(h('option', { value: k }));
        }
        for (const k of Object.keys(tot.by_canvasser)) {
          if (!canvasserSel.querySelector(`option[value="${CSS.escape(k)}"]`)) canvasserSel.append(h('option', { value: k }, who(k)));
        }
      }
    };
    const open = () => {
      live?.stop();
      filterError.replaceChildren();
      const q = filterQuery(c, {
        event: eventSel.value,
        from: from.value,
        to: to.value,
        city: city.value,
        fsa: fsa.value,
        riding: riding.value,
        canvasser: canvasserSel.value,
      });
      const url = `/api/v1/campaigns/${seg(c.campaign)}/totals/stream${q.size ? `?${q}` : ''}`;
      results.setAttribute('aria-busy', 'true');
      live = new LiveTotals(url, {
        totals(tot, at) {
          last = at;
          draw(tot);
          showState();
        },
        state(s) {
          state = s;
          showState();
          if (s.kind === 'refused' && s.status === 400) {
            filterError.replaceChildren(h('p', { class: 'error', role: 'alert' }, t('server_said', { status: s.status, message: s.message })));
          }
        },
      });
      live.start();
    };
    resumeFn = open;
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      open();
    });
    clear.addEventListener('click', () => {
      form.reset();
      open();
    });
    // The stale time ticks on while disconnected.
    const tick = window.setInterval(() => {
      if (!status.isConnected) window.clearInterval(tick);
      else if (state.kind !== 'live') showState();
    }, 1000);
    open();
  },
};
