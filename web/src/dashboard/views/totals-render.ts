// Drawing a totals answer: the headline, the goal bar, the breakdowns (small cells shown as
// suppressed, never as a number), the per-day chart. Shared by the totals view and the wall.

import { h, svg, table } from '../dom';
import { fmtNumber, fmtTime, t, type Key } from '../i18n';
import type { LiveState } from '../live';
import type { Breakdown, CampaignSummary, Cell, Totals } from '../types';

/** A headline number: `null` is a suppressed count ("< 5"). */
export function count(v: number | null, threshold: number): string {
  return v === null ? `< ${threshold}` : fmtNumber(v);
}

/** Digital and paper signatures together, toward the goal; `null` when the headline is hidden. */
export function towardGoal(tot: Totals): number | null {
  return tot.signatures === null ? null : tot.signatures + tot.paper.signatures;
}

/** The goal bar: a labelled <progress>, or nothing without a goal. */
export function goalBar(tot: Totals, c: CampaignSummary, id: string): HTMLElement | null {
  if (c.goal <= 0) return null;
  const n = towardGoal(tot);
  const value = Math.min(n ?? 0, c.goal);
  const label = n === null ? t('goal_hidden', { goal: fmtNumber(c.goal) }) : t('goal_progress', { n: fmtNumber(n), goal: fmtNumber(c.goal), pct: Math.floor((100 * (n ?? 0)) / c.goal) });
  return h(
    'div',
    { class: 'goal' },
    h('label', { for: id }, label),
    h('progress', { id, max: c.goal, value, 'aria-valuetext': label }),
  );
}

/** The headline: counted signatures, unique signers, struck, withdrawn, paper. */
export function headline(tot: Totals): HTMLElement {
  const th = tot.suppression.threshold;
  const item = (key: Key, field: string, v: number | null) =>
    h(
      'div',
      { class: v === null ? 'stat suppressed' : 'stat', 'data-field': field },
      h('dt', {}, t(key)),
      h('dd', {}, count(v, th)),
    );
  return h(
    'dl',
    { class: 'stats', id: 'headline' },
    item('signatures', 'signatures', tot.signatures),
    item('unique_signers', 'unique_signers', tot.unique_signers),
    item('struck', 'struck', tot.struck),
    item('withdrawn', 'withdrawn', tot.withdrawn),
    item('paper_sheets', 'paper_sheets', tot.paper.sheets),
    item('paper_signatures', 'paper_signatures', tot.paper.signatures),
  );
}

const TITLES: Record<Breakdown, Key> = {
  by_event: 'by_event',
  by_city: 'by_city',
  by_fsa: 'by_fsa',
  by_riding: 'by_riding',
  by_day: 'by_day',
  by_canvasser: 'by_canvasser',
};

/** One breakdown as a table; hidden cells as one suppressed row, never as numbers. */
export function breakdownTable(tot: Totals, which: Breakdown, name: (key: string) => string): HTMLElement {
  const cells = tot[which];
  const keys = Object.keys(cells);
  if (which === 'by_day') keys.sort();
  else keys.sort((a, b) => (cells[b]?.signatures ?? 0) - (cells[a]?.signatures ?? 0) || a.localeCompare(b));
  const rows: (string | Node)[][] = keys.map((k) => {
    const c = cells[k] as Cell;
    return [name(k), fmtNumber(c.signatures), fmtNumber(c.unique)];
  });
  const hidden = tot.suppression.hidden[which] ?? 0;
  const th = tot.suppression.threshold;
  if (hidden > 0) {
    rows.push([
      h('span', { class: 'suppressed-label' }, t('hidden_cells', { n: hidden })),
      h('span', { class: 'suppressed', title: t('suppressed_title', { th }) }, `< ${th}`),
      h('span', { class: 'suppressed', title: t('suppressed_title', { th }) }, `< ${th}`),
    ]);
  }
  const withheld = tot.suppression.withheld?.includes(which) ?? false;
  if (withheld) rows.push([h('span', { class: 'suppressed-label' }, t('withheld', { th })), '', '']);
  else if (rows.length === 0) rows.push([t('none_yet'), '', '']);
  const wrap = table(t(TITLES[which]), [t(('key_' + which) as Key), t('signatures'), t('unique_signers')], rows, { id: which, class: 'breakdown' });
  const tbody = wrap.querySelector('tbody');
  if (tbody) {
    keys.forEach((k, i) => tbody.children[i]?.setAttribute('data-key', k));
    if (hidden > 0) tbody.children[keys.length]?.setAttribute('data-suppressed', String(hidden));
    if (withheld) tbody.children[keys.length]?.setAttribute('data-withheld', 'true');
  }
  const other = tot.suppression.other?.[which];
  if (hidden > 0 && other !== undefined) {
    wrap.querySelector('table')?.append(h('tfoot', {}, h('tr', {}, h('td', { colspan: 3, class: 'note other', 'data-other': other }, t('hidden_together', { n: hidden, sigs: fmtNumber(other) })))));
  }
  return wrap;
}

/** The per-day chart: a bar per day the answer shows (hidden days are not drawn as zero). */
export function dayChart(tot: Totals): HTMLElement {
  const days = Object.keys(tot.by_day).sort();
  const max = Math.max(1, ...days.map((d) => tot.by_day[d]?.signatures ?? 0));
  const bw = 36;
  const gap = 8;
  const H = 160;
  const width = Math.max(320, days.length * (bw + gap) + gap);
  const chart = svg('svg', {
    viewBox: `0 0 ${width} ${H + 40}`,
    class: 'chart',
    role: 'img',
    'aria-labelledby': 'day-chart-title',
    preserveAspectRatio: 'xMinYMin meet',
  });
  const title = svg('title', { id: 'day-chart-title' });
  title.textContent = t('chart_title', { n: days.length });
  chart.append(title);
  days.forEach((d, i) => {
    const v = tot.by_day[d]?.signatures ?? 0;
    const bh = Math.round((v / max) * H);
    const x = gap + i * (bw + gap);
    chart.append(svg('rect', { x, y: H - bh + 16, width: bw, height: bh, class: 'bar', 'data-day': d }));
    const label = svg('text', { x: x + bw / 2, y: H - bh + 12, class: 'bar-value', 'text-anchor': 'middle' });
    label.textContent = fmtNumber(v);
    const day = svg('text', { x: x + bw / 2, y: H + 32, class: 'bar-day', 'text-anchor': 'middle' });
    day.textContent = d.slice(5);
    chart.append(label, day);
  });
  const hidden = tot.suppression.hidden.by_day ?? 0;
  return h(
    'figure',
    { class: 'day-chart', id: 'day-chart' },
    h('figcaption', {}, t('chart_caption'), hidden > 0 ? ` ${t('chart_hidden', { n: hidden, th: tot.suppression.threshold })}` : ''),
    days.length ? chart : h('p', { class: 'note' }, t('none_yet')),
  );
}

/** Check-ins per event. */
export function checkinsTable(tot: Totals, eventName: (id: string) => string): HTMLElement {
  const keys = Object.keys(tot.checkins).sort();
  const rows: (string | Node)[][] = keys.map((k) => {
    const c = tot.checkins[k];
    return [eventName(k), fmtNumber(c?.unique ?? 0), fmtNumber(c?.pre_registered ?? 0), fmtNumber(c?.walk_in ?? 0)];
  });
  const hidden = tot.suppression.hidden.checkins ?? 0;
  if (hidden > 0) rows.push([t('hidden_cells', { n: hidden }), `< ${tot.suppression.threshold}`, '', '']);
  if (rows.length === 0) rows.push([t('none_yet'), '', '', '']);
  return table(t('checkins'), [t('event_name'), t('attendees'), t('pre_registered'), t('walk_in')], rows, { id: 'checkins', class: 'breakdown' });
}

/** Words for a live stream's state, and whether the figures shown are stale. */
export function stateText(s: LiveState, last: number | null): { text: string; stale: boolean } {
  const since = last ? t('last_update', { time: fmtTime(last) }) : t('no_update_yet');
  switch (s.kind) {
    case 'live':
      return { text: `${t('live')} · ${since}`, stale: false };
    case 'connecting':
      return { text: `${t('connecting')} · ${since}`, stale: last !== null };
    case 'reconnecting':
      return { text: t('stale', { since, reason: s.reason }), stale: true };
    case 'refused':
      return { text: t('stream_refused', { message: s.message }), stale: true };
  }
}

