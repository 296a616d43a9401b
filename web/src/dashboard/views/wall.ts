// The wall screen, for a projector at a rally: the big number (digital and paper signatures
// together), the goal bar, today's count and the last hour's, updated live from the totals
// stream within a second of a phone's sync. It reconnects by itself and says plainly, in large
// type, when what it shows is stale.

import { seg } from '../api';
import { h, replace } from '../dom';
import { fmtNumber, fmtTime, t } from '../i18n';
import { LiveTotals, type LiveState } from '../live';
import type { View } from '../main';
import { dayOf } from '../tz';
import type { Totals } from '../types';
import { count, goalBar, stateText, towardGoal } from './totals-render';

const HOUR = 3_600_000;
let live: LiveTotals | null = null;
let resumeFn: (() => void) | null = null;

/** Requests full screen (from a click); a browser that refuses leaves the page as it is. */
export function fullScreen(): void {
  if (!document.fullscreenElement) document.documentElement.requestFullscreen?.().catch(() => undefined);
}

export const wallView: View = {
  title: 'wall',
  perCampaign: true,
  leave() {
    live?.stop();
    live = null;
    resumeFn = null;
    if (document.fullscreenElement) void document.exitFullscreen().catch(() => undefined);
  },
  resume() {
    resumeFn?.();
  },
  render(main, ctx) {
    const c = ctx.campaign;
    if (!c) return;
    main.querySelector('#view-title')?.classList.add('visually-hidden');
    const big = h('p', { id: 'wall-total', class: 'wall-total', 'aria-live': 'polite' }, '…');
    const goal = h('div', { id: 'wall-goal' });
    const today = h('dd', { id: 'wall-today' }, '…');
    const hour = h('dd', { id: 'wall-hour' }, '…');
    const hourLabel = h('dt', { id: 'wall-hour-label' }, t('last_hour'));
    const split = h('p', { id: 'wall-split', class: 'wall-split' });
    const status = h('p', { id: 'wall-status', class: 'wall-status', role: 'status', 'data-state': 'connecting' }, t('connecting'));
    const full = h('button', { type: 'button', id: 'wall-fullscreen' }, t('full_screen'));
    full.addEventListener('click', fullScreen);
    const back = h('a', { href: `#/campaign/${encodeURIComponent(c.campaign)}/totals`, class: 'wall-back' }, t('back_to_totals'));
    main.append(
      h(
        'section',
        { class: 'wall', 'aria-labelledby': 'wall-title' },
        h('h2', { id: 'wall-title', class: 'wall-title' }, c.title),
        big,
        h('p', { class: 'wall-caption' }, t('wall_caption')),
        split,
        goal,
        h('dl', { class: 'wall-small' }, h('div', {}, h('dt', {}, t('today')), today), h('div', {}, hourLabel, hour)),
        status,
        h('div', { class: 'wall-tools' }, full, ' ', back),
      ),
    );

    const opened = Date.now();
    // (time, digital + paper) as heard, to count the last hour's signatures on any token (an
    // organizer's time filters are whole days).
    const samples: [number, number][] = [];
    let last: number | null = null;
    let state: LiveState = { kind: 'connecting' };
    const showState = () => {
      const s = stateText(state, last);
      status.textContent = s.text;
      status.dataset.state = s.stale ? 'stale' : state.kind;
      status.classList.toggle('stale', s.stale);
      big.classList.toggle('stale', s.stale);
    };
    const draw = (tot: Totals, at: number) => {
      const th = tot.suppression.threshold;
      const n = towardGoal(tot);
      big.textContent = n === null ? `< ${th}` : fmtNumber(n);
      split.textContent = t('wall_split', { digital: count(tot.signatures, th), paper: fmtNumber(tot.paper.signatures) });
      replace(goal, goalBar(tot, c, 'wall-goal-bar'));
      const day = tot.by_day[dayOf(at, c.timezone)];
      today.textContent = day ? fmtNumber(day.signatures) : (tot.suppression.hidden.by_day ?? 0) > 0 ? `< ${th}` : '0';
      if (n !== null) {
        samples.push([at, n]);
        while (samples.length > 1 && (samples[1]?.[0] ?? at) <= at - HOUR) samples.shift();
        const base = samples[0]?.[0] !== undefined && samples[0][0] <= at - HOUR ? samples[0][1] : (samples[0]?.[1] ?? n);
        hour.textContent = `+${fmtNumber(Math.max(0, n - base))}`;
        hourLabel.textContent = at - opened < HOUR ? t('since_opened', { time: fmtTime(opened) }) : t('last_hour');
      }
    };
    const open = () => {
      live?.stop();
      live = new LiveTotals(`/api/v1/campaigns/${seg(c.campaign)}/totals/stream`, {
        totals(tot, at) {
          last = at;
          draw(tot, at);
          showState();
        },
        state(s) {
          state = s;
          showState();
        },
      });
      live.start();
    };
    resumeFn = open;
    const tick = window.setInterval(() => {
      if (!status.isConnected) window.clearInterval(tick);
      else if (state.kind !== 'live') showState();
    }, 1000);
    open();
  },
};
