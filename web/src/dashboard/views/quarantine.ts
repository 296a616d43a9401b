// Quarantine (admin): the changes the server refused, with the device, the document, the time
// and the reason. The API never gives the refused bytes, and neither does this page.

import { get } from '../api';
import { h, replace, table } from '../dom';
import { fmtDateTimeLocal, fmtNumber, t } from '../i18n';
import { errorBox, type View } from '../main';
import type { Device, Quarantined, QuarantineList } from '../types';

export const quarantineView: View = {
  title: 'quarantine',
  perCampaign: false,
  adminOnly: true,
  async render(main) {
    const names = new Map<string, string>();
    for (const d of await get<Device[]>('/api/v1/devices')) names.set(d.device_id, d.name);
    const entries: Quarantined[] = [];
    const box = h('div', { id: 'quarantine' });
    const more = h('button', { type: 'button', id: 'quarantine-more', hidden: true }, t('load_more'));
    let after: number | null = null;
    const draw = () => {
      const rows = entries.map((q) => [
        fmtDateTimeLocal(q.at),
        names.get(q.device_id) ?? q.device_id,
        h('code', {}, q.doc_id),
        q.reason,
        q.rule ?? '—',
        fmtNumber(q.size),
        fmtNumber(q.repeats),
      ]);
      replace(
        box,
        rows.length
          ? table(t('quarantine_caption', { n: entries.length }), [t('when'), t('device_name'), t('document'), t('reason'), t('rule'), t('bytes'), t('repeats')], rows, { id: 'quarantine-list' })
          : h('p', { class: 'note', id: 'quarantine-empty' }, t('quarantine_empty')),
      );
    };
    const page = async () => {
      const q = new URLSearchParams({ limit: '200' });
      if (after !== null) q.set('after', String(after));
      const list = await get<QuarantineList>(`/api/v1/quarantine?${q}`);
      entries.push(...list.entries);
      after = list.next_after;
      more.hidden = after === null;
      draw();
    };
    more.addEventListener('click', () => {
      more.disabled = true;
      page()
        .catch((x: unknown) => box.append(errorBox(x)))
        .finally(() => {
          more.disabled = false;
        });
    });
    main.append(h('p', { class: 'note' }, t('quarantine_intro')), box, more);
    await page();
  },
};
