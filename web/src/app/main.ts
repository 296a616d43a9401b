// The canvassers' app, served by `tally serve` at /app/ and installable (manifest, service
// worker: it opens with no signal). One page; its screens are drawn from the phone's state:
// enrolling (from the invite's QR link), home (the petition, the team's last total, the two big
// buttons), a signature, a check-in, the records on this phone, settings. Every screen shows how
// many records are not yet safe on the server, and whether the phone is connected.

import { FormRefused } from './core/rules';
import type { Refusal } from './core/rules';
import { append, h, replace } from './dom';
import { LANGS, count, lang, setLang, t, when } from './i18n';
import type { Key } from './i18n';
import { NotAnInvite, forgetInviteInLocation, inviteInLocation, parseInvite } from './invite';
import { Phone, PhoneError } from './phone';
import type { InvitePayload, Receipt } from './store';

type Screen = 'home' | 'sign' | 'checkin' | 'records' | 'settings';

const root = document.getElementById('app') as HTMLElement;
let phone: Phone | undefined;
let screen: Screen = 'home';
/** What the last save said, shown on the form it came from. */
let flash: { screen: Screen; text: string; kind: 'ok' | 'error' } | undefined;
/** While the enrollment screen is up: its invite (redrawn in the other language). */
let enrolling: { invite: InvitePayload | NotAnInvite | undefined; again: boolean; ask?: boolean } | undefined;
const status = h('section', { class: 'status', id: 'status', 'aria-live': 'polite' });
const main = h('main', { id: 'main' });

const FIELD_LABEL: Record<string, Key> = {
  name: 'f_name',
  postal_code: 'f_postal_code',
  city: 'f_city',
  email: 'f_email',
  phone: 'f_phone',
  street: 'f_street',
  riding: 'f_riding',
  event: 'f_event',
};

function refusalText(r: Refusal): string {
  const label = t(FIELD_LABEL[r.field] ?? 'f_name');
  return t(`r_${r.rule}` as Key, { ...r.args, field: label });
}

function errorText(e: unknown): string {
  if (e instanceof FormRefused) return refusalText(e.refusal);
  if (e instanceof PhoneError) {
    const known: Partial<Record<string, Key>> = {
      enroll_offline: 'enroll_offline',
      enroll_refused: 'enroll_refused',
      enroll_wrong_campaign: 'enroll_wrong_campaign',
      other_campaign: 'other_campaign',
      not_enrolled: 'not_enrolled',
      loading: 'loading_docs',
      no_campaign: 'waiting_campaign',
      no_recipients: 'no_recipients',
      write_failed: 'write_failed',
    };
    const key = known[e.code];
    if (key) return t(key, { detail: e.detail });
  }
  return e instanceof Error ? e.message : String(e);
}

// ---- navigation

function go(to: Screen, push = true): void {
  if (push && to !== screen) history.pushState({ screen: to }, '');
  screen = to;
  draw();
  window.scrollTo(0, 0);
}

window.addEventListener('popstate', (e) => {
  const s = (e.state as { screen?: Screen } | null)?.screen ?? 'home';
  go(s, false);
});

// ---- the status bar, on every screen

function drawStatus(): void {
  const p = phone;
  if (!p?.enrollment) {
    replace(status);
    status.hidden = true;
    return;
  }
  status.hidden = false;
  const c = p.counts;
  const banner = h(
    'div',
    { class: c.pending > 0 ? 'banner pending' : 'banner safe', id: 'pending', 'data-pending': c.pending, role: 'status' },
    h('strong', {}, c.pending > 0 ? t('not_safe', { n: count(c.pending) }) : t('all_safe')),
    h(
      'span',
      {},
      c.pending > 0
        ? [
            c.pending > c.unkeyed ? t('not_safe_detail', { signatures: plural(c.pendingSignatures - c.unkeyed, 'n_signatures'), checkins: plural(c.pendingCheckins, 'n_checkins') }) : '',
            c.unkeyed > 0 ? t('not_safe_unkeyed', { signatures: plural(c.unkeyed, 'n_signatures') }) : '',
          ]
            .filter(Boolean)
            .join(' ')
        : t('all_safe_detail', { signatures: plural(c.signatures, 'n_signatures'), checkins: plural(c.checkins, 'n_checkins') }),
    ),
  );
  const linkWords: Record<string, string> = {
    offline: t('link_offline'),
    connecting: t('link_connecting'),
    connected: t('link_connected'),
    waiting: t('link_waiting', { s: Math.max(1, Math.round((p.retryIn ?? 1000) / 1000)) }),
    stopped: t('link_stopped'),
  };
  const line = h(
    'div',
    { class: 'link', id: 'link', 'data-link': p.link },
    h('span', {}, linkWords[p.link] ?? p.link, p.lastAckAt ? ` ${t('last_safe', { when: when(p.lastAckAt) })}` : ''),
    p.enrollment.refused_at === undefined ? h('button', { type: 'button', class: 'small', id: 'sync-now', onclick: () => p.syncNow() }, t('sync_now')) : null,
  );
  const alert =
    p.enrollment.refused_at !== undefined
      ? h(
          'div',
          { class: 'alert', role: 'alert', id: 'token-refused' },
          h('p', {}, t('token_refused', { n: count(c.pending) })),
          h('button', { type: 'button', class: 'small', onclick: () => go('settings') }, t('reenroll_title')),
        )
      : null;
  replace(status, banner, line, alert);
}

/** What the phone wants the canvasser to know (on the home screen). */
function notes(p: Phone): HTMLElement[] {
  const out: HTMLElement[] = [];
  if (p.counts.refused > 0) {
    out.push(h('p', { class: 'alert', id: 'set-aside' }, h('a', { href: '#', onclick: (e) => (e.preventDefault(), go('records')) }, t(p.counts.refused === 1 ? 'set_aside_count_one' : 'set_aside_count', { n: count(p.counts.refused) }))));
  }
  for (const e of p.errors.slice(-1)) out.push(h('p', { class: 'note', id: 'server-error' }, t('server_error', { detail: e })));
  if (p.keyError) out.push(h('p', { class: 'note', id: 'key-error' }, t('key_upload_failed', { detail: p.keyError })));
  if (p.persisted === false) out.push(h('p', { class: 'note', id: 'not-persisted' }, t('not_persisted')));
  return out;
}

/** "1 signature", "2 signatures": `key` has an `_one` form. */
function plural(n: number, key: 'n_signatures' | 'n_checkins'): string {
  return t(n === 1 ? `${key}_one` : key, { n: count(n) });
}

// ---- screens

function header(title: string, back: boolean): HTMLElement {
  return h(
    'header',
    { class: 'bar' },
    back ? h('button', { type: 'button', class: 'back', onclick: () => history.back() }, `← ${t('back')}`) : null,
    h('h1', {}, title),
    h('button', { type: 'button', class: 'small lang', id: 'lang', onclick: () => toggleLang() }, t('language')),
  );
}

function toggleLang(): void {
  setLang(lang() === 'en' ? 'fr' : 'en');
  draw();
}

function draw(): void {
  drawStatus();
  const p = phone;
  if (!p) {
    replace(main, h('p', { class: 'center' }, t('loading')));
    return;
  }
  if (!p.enrollment || enrolling) {
    if (enrolling?.ask && enrolling.invite !== undefined && !(enrolling.invite instanceof NotAnInvite)) drawAlreadyEnrolled(p, enrolling.invite);
    else drawEnroll(p, enrolling?.invite, enrolling?.again ?? false);
    return;
  }
  switch (screen) {
    case 'home':
      return drawHome(p);
    case 'sign':
      return drawSign(p);
    case 'checkin':
      return drawCheckin(p);
    case 'records':
      void drawRecords(p);
      return;
    case 'settings':
      return drawSettings(p);
  }
}

function blockerText(p: Phone): string | undefined {
  const b = p.blocker();
  if (b === undefined || b === 'loading') return undefined;
  if (b === 'no_campaign') return p.state.unavailable.includes('campaign') ? t('campaign_unavailable') : t('waiting_campaign');
  if (b === 'no_recipients') return t('no_recipients');
  return undefined;
}

function drawHome(p: Phone): void {
  const c = p.campaign;
  const tot = p.totals;
  const blocked = p.blocker();
  const petition = c
    ? h(
        'section',
        { class: 'card petition', id: 'petition' },
        h('h2', {}, c.title),
        h('p', { class: 'addressee' }, t('addressee', { who: c.addressee })),
        h('details', { open: true }, h('summary', {}, t('petition')), h('p', { class: 'petition-text' }, c.petition)),
      )
    : h('p', { class: 'note' }, blockerText(p) ?? t('waiting_campaign'));
  const team = h(
    'section',
    { class: 'card', id: 'team-total' },
    h('h2', {}, t('team_total')),
    tot
      ? h(
          'p',
          {},
          t('team_total_line', { signatures: plural(tot.signatures, 'n_signatures'), unique: count(tot.unique_signers), goal: count(c?.goal ?? 0) }),
          tot.computed_at ? h('small', {}, ` ${t('team_total_as_of', { when: when(tot.computed_at) })}`) : null,
        )
      : h('p', {}, t('team_total_none')),
  );
  const disabled = blocked !== undefined;
  const why = blockerText(p);
  replace(
    main,
    header(t('app_name'), false),
    h(
      'nav',
      { class: 'actions' },
      h('button', { type: 'button', class: 'big', id: 'go-sign', disabled, onclick: () => go('sign') }, blocked === 'loading' ? t('loading') : t('take_signature')),
      h('button', { type: 'button', class: 'big', id: 'go-checkin', disabled, onclick: () => go('checkin') }, blocked === 'loading' ? t('loading') : t('check_in')),
    ),
    why ? h('p', { class: 'alert' }, why) : null,
    ...notes(p),
    petition,
    team,
    h(
      'nav',
      { class: 'links' },
      h('button', { type: 'button', id: 'go-records', onclick: () => go('records') }, t('records')),
      h('button', { type: 'button', id: 'go-settings', onclick: () => go('settings') }, t('settings')),
    ),
  );
}

function input(id: string, label: Key, attrs: Record<string, string | boolean> = {}): HTMLElement {
  return h(
    'label',
    { class: 'field', for: id },
    h('span', {}, t(label)),
    h('input', { id, name: id, autocomplete: 'off', autocapitalize: 'words', spellcheck: 'false', ...attrs }),
  );
}

function value(form: HTMLFormElement, id: string): string {
  return (form.elements.namedItem(id) as HTMLInputElement | HTMLSelectElement | null)?.value ?? '';
}

function flashFor(s: Screen): HTMLElement | null {
  if (!flash || flash.screen !== s) return null;
  const f = flash;
  flash = undefined;
  return h('p', { class: f.kind === 'ok' ? 'saved' : 'alert', id: f.kind === 'ok' ? 'saved' : 'form-error', role: f.kind === 'ok' ? 'status' : 'alert' }, f.text);
}

/** Marks the refused field, says why (above the form and under the field), and puts the cursor there. */
function showRefusal(form: HTMLFormElement, message: HTMLElement, e: unknown): void {
  for (const el of Array.from(form.querySelectorAll('[aria-invalid]'))) {
    el.removeAttribute('aria-invalid');
    el.removeAttribute('aria-describedby');
  }
  for (const el of Array.from(form.querySelectorAll('.field-error'))) el.remove();
  const text = errorText(e);
  replace(message, h('span', { id: 'form-error', role: 'alert' }, text));
  message.className = 'alert';
  if (e instanceof FormRefused) {
    const field = form.elements.namedItem(e.refusal.field) as HTMLElement | null;
    if (field) {
      const id = `error-${e.refusal.field}`;
      field.insertAdjacentElement('afterend', h('span', { class: 'field-error', id }, text));
      field.setAttribute('aria-invalid', 'true');
      field.setAttribute('aria-describedby', id);
      field.focus();
    }
  }
}

function eventOptions(p: Phone, none: boolean, selected: string): HTMLSelectElement {
  const select = h('select', { id: 'event', name: 'event' });
  if (none) select.append(h('option', { value: '' }, t('f_no_event')));
  for (const ev of p.campaign?.events ?? []) {
    select.append(h('option', { value: ev.id, selected: ev.id === selected }, `${ev.name} · ${ev.city}${ev.starts_at ? ` · ${when(ev.starts_at)}` : ''}`));
  }
  return select;
}

/** What the sign form keeps between two signatures at one place: the city, riding and event. */
const sticky = { city: '', riding: '', event: '', checkinEvent: '' };
/** Cities typed on this page, for the list the city field offers. */
const typedCities: string[] = [];

/** Event cities, then typed ones; each once, whatever its case, spacing and accents. */
function cities(p: Phone): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const c of [...(p.campaign?.events ?? []).map((e) => e.city), ...typedCities]) {
    const folded = c.normalize('NFKD').replace(/\p{M}/gu, '').toLowerCase().replace(/\s+/g, ' ').trim();
    if (folded === '' || seen.has(folded)) continue;
    seen.add(folded);
    out.push(c.trim());
  }
  return out;
}

function drawSign(p: Phone): void {
  const message = h('div', { id: 'form-message', 'aria-live': 'assertive' });
  const saved = flashFor('sign');
  if (saved) message.append(saved);
  const form = h(
    'form',
    { id: 'sign-form', class: 'form', autocomplete: 'off', novalidate: true },
    input('name', 'f_name', { required: true }),
    input('postal_code', 'f_postal_code', { required: true, autocapitalize: 'characters', inputmode: 'text' }),
    input('city', 'f_city', { required: true, value: sticky.city, list: 'cities' }),
    // The cities to offer: the campaign's event cities and those typed here (one spelling each,
    // as `tally-device cities` offers them).
    h('datalist', { id: 'cities' }, ...cities(p).map((c) => h('option', { value: c }))),
    input('riding', 'f_riding', { value: sticky.riding }),
    input('email', 'f_email', { type: 'email', inputmode: 'email', autocapitalize: 'none' }),
    input('phone', 'f_phone', { type: 'tel', inputmode: 'tel' }),
    input('street', 'f_street'),
    h('label', { class: 'field', for: 'event' }, h('span', {}, t('f_event')), eventOptions(p, true, sticky.event)),
    h('label', { class: 'check', for: 'consent_contact' }, h('input', { type: 'checkbox', id: 'consent_contact', name: 'consent_contact' }), h('span', {}, t('f_consent'))),
    h('p', { class: 'small-print' }, t('sealed_note')),
    h('button', { type: 'submit', class: 'big', id: 'save' }, t('save_signature')),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const button = form.querySelector('#save') as HTMLButtonElement;
    if (button.disabled) return;
    button.disabled = true;
    button.textContent = t('saving');
    const input = {
      name: value(form, 'name'),
      postal_code: value(form, 'postal_code'),
      city: value(form, 'city'),
      riding: value(form, 'riding'),
      email: value(form, 'email'),
      phone: value(form, 'phone'),
      street: value(form, 'street'),
      event: value(form, 'event'),
      consent_contact: (form.elements.namedItem('consent_contact') as HTMLInputElement).checked,
    };
    const started = performance.now();
    p.sign(input)
      .then(() => {
        performance.measure('tally-sign', { start: started, end: performance.now() });
        Object.assign(sticky, { city: input.city, riding: input.riding, event: input.event });
        if (!typedCities.includes(input.city.trim())) typedCities.push(input.city.trim());
        flash = { screen: 'sign', text: t('saved_signature', { name: input.name.trim() }), kind: 'ok' };
        if (screen === 'sign') drawSign(p);
        (document.getElementById('name') as HTMLInputElement | null)?.focus();
      })
      .catch((e: unknown) => {
        button.disabled = false;
        button.textContent = t('save_signature');
        if (e instanceof FormRefused) showRefusal(form, message, e);
        else showRefusal(form, message, new Error(t('save_failed', { detail: errorText(e) })));
      });
  });
  replace(main, header(t('sign_title'), true), message, form);
  (form.querySelector('#name') as HTMLInputElement).focus();
}

function drawCheckin(p: Phone): void {
  const events = p.campaign?.events ?? [];
  const message = h('div', { id: 'form-message', 'aria-live': 'assertive' });
  const saved = flashFor('checkin');
  if (saved) message.append(saved);
  if (events.length === 0) {
    replace(main, header(t('checkin_title'), true), h('p', { class: 'alert' }, t('checkin_no_events')));
    return;
  }
  const form = h(
    'form',
    { id: 'checkin-form', class: 'form', autocomplete: 'off', novalidate: true },
    h('label', { class: 'field', for: 'event' }, h('span', {}, t('f_event')), eventOptions(p, false, sticky.checkinEvent)),
    input('name', 'f_name', { required: true }),
    h('label', { class: 'check', for: 'walk_in' }, h('input', { type: 'checkbox', id: 'walk_in', name: 'walk_in' }), h('span', {}, t('f_walk_in'))),
    h('button', { type: 'submit', class: 'big', id: 'save' }, t('save_checkin')),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const button = form.querySelector('#save') as HTMLButtonElement;
    if (button.disabled) return;
    button.disabled = true;
    button.textContent = t('saving');
    const eventId = value(form, 'event');
    const name = value(form, 'name');
    const walkIn = (form.elements.namedItem('walk_in') as HTMLInputElement).checked;
    p.checkin(eventId, name, walkIn)
      .then(() => {
        sticky.checkinEvent = eventId;
        const evName = events.find((e) => e.id === eventId)?.name ?? eventId;
        flash = { screen: 'checkin', text: t('saved_checkin', { name: name.trim(), event: evName }), kind: 'ok' };
        if (screen === 'checkin') drawCheckin(p);
      })
      .catch((e: unknown) => {
        button.disabled = false;
        button.textContent = t('save_checkin');
        if (e instanceof FormRefused) showRefusal(form, message, e);
        else showRefusal(form, message, new Error(t('save_failed', { detail: errorText(e) })));
      });
  });
  replace(main, header(t('checkin_title'), true), message, form);
  (form.querySelector('#name') as HTMLInputElement).focus();
}

function receiptItem(p: Phone, r: Receipt): HTMLElement {
  const kind = t(r.kind === 'signature' ? 'kind_signature' : 'kind_checkin');
  const li = h(
    'li',
    { class: `receipt ${r.state}`, 'data-record': r.record_id, 'data-state': r.state, 'data-kind': r.kind },
    h('strong', {}, r.display ? r.display.name : kind),
    h('span', {}, `${r.display ? ` · ${kind} · ${r.display.detail}` : ''} · ${t('taken_at', { when: when(r.taken_at) })}`),
  );
  if (r.state === 'unkeyed') append(li, h('p', { class: 'small-print key-waiting' }, t('key_waiting')));
  if (r.key_refusal && (r.state === 'pending' || r.state === 'unkeyed')) append(li, h('p', { class: 'reason key-refused' }, t('key_refused', { reason: r.key_refusal })));
  if (r.state === 'safe' && r.erased) append(li, h('p', { class: 'small-print' }, t('record_erased')));
  if (r.state === 'refused') {
    append(li, h('p', { class: 'reason' }, t('refused_reason', { reason: r.refusal ?? '' })), h('p', { class: 'small-print' }, t('refused_note')));
    if (r.display) append(li, h('button', { type: 'button', class: 'small', onclick: () => void p.forgetName(r.key) }, t('forget_name')));
  }
  return li;
}

async function drawRecords(p: Phone): Promise<void> {
  const all = await p.list();
  if (screen !== 'records') return;
  const groups: [Receipt['state'], Key][] = [
    ['pending', 'records_pending'],
    ['refused', 'records_refused'],
    ['safe', 'records_safe'],
  ];
  const sections = groups.map(([state, title]) => {
    const items = all.filter((r) => r.state === state || (state === 'pending' && r.state === 'unkeyed'));
    const shown = state === 'safe' ? items.slice(0, 50) : items;
    return h(
      'section',
      { class: 'card', id: `records-${state}` },
      h('h2', {}, `${t(title)} (${count(items.length)})`),
      state === 'safe' && items.length > 0 ? h('p', { class: 'small-print' }, t('safe_no_name')) : null,
      items.length === 0 ? h('p', {}, t('records_none')) : h('ul', { class: 'receipts' }, ...shown.map((r) => receiptItem(p, r))),
      items.length > shown.length ? h('p', {}, t('safe_more', { n: count(items.length - shown.length) })) : null,
    );
  });
  const chain = h(
    'details',
    { class: 'card', id: 'chain' },
    h('summary', {}, t('chain_title')),
    h(
      'ol',
      {},
      ...p.chain.map((l) =>
        h('li', { 'data-state': l.state }, `automerge:${l.id} · ${t(`chain_state_${l.state}` as Key)}${l.refusal ? ` · ${l.refusal}` : ''}`),
      ),
    ),
  );
  replace(main, header(t('records'), true), ...sections, chain);
}

function drawSettings(p: Phone): void {
  const e = p.enrollment;
  const langs = h(
    'div',
    { class: 'choices' },
    ...LANGS.map((l) =>
      h(
        'button',
        {
          type: 'button',
          class: l === lang() ? 'small chosen' : 'small',
          'aria-pressed': l === lang() ? 'true' : 'false',
          onclick: () => {
            setLang(l);
            draw();
          },
        },
        l === 'en' ? 'English' : 'Français',
      ),
    ),
  );
  const paste = h('textarea', { id: 'reenroll-text', rows: 3, spellcheck: 'false', autocomplete: 'off' });
  const pasteError = h('p', { class: 'alert', hidden: true });
  replace(
    main,
    header(t('settings'), true),
    h('section', { class: 'card' }, h('h2', {}, t('language_label')), langs),
    h('section', { class: 'card' }, h('h2', {}, t('device')), h('p', {}, e ? t('device_line', { name: e.name, id: e.device_id }) : '')),
    h(
      'section',
      { class: 'card', id: 'storage' },
      h('h2', {}, t('storage')),
      h('p', {}, p.persisted ? t('persisted') : t('not_persisted')),
      p.persisted ? null : h('button', { type: 'button', onclick: () => void p.askPersistence().then(() => draw()) }, t('ask_persist')),
      h('p', { class: 'small-print' }, t('install_hint')),
    ),
    h(
      'section',
      { class: 'card' },
      h('h2', {}, t('reenroll_title')),
      h('p', {}, t('reenroll_hint')),
      paste,
      pasteError,
      h(
        'button',
        {
          type: 'button',
          onclick: () => {
            try {
              drawAlreadyEnrolled(p, parseInvite(paste.value));
            } catch (x) {
              pasteError.hidden = false;
              pasteError.textContent = t('enroll_bad_invite', { detail: x instanceof Error ? x.message : String(x) });
            }
          },
        },
        t('enroll_read'),
      ),
    ),
  );
}

// ---- enrolling

function drawEnroll(p: Phone, invite: InvitePayload | NotAnInvite | undefined, again: boolean): void {
  enrolling = { invite, again };
  status.hidden = true;
  const message = h('div', { id: 'form-message', 'aria-live': 'assertive' });
  if (invite === undefined || invite instanceof NotAnInvite) {
    const paste = h('textarea', { id: 'invite-text', rows: 4, spellcheck: 'false', autocomplete: 'off' });
    if (invite instanceof NotAnInvite) {
      message.className = 'alert';
      message.textContent = invite.version !== undefined && invite.version > 1 ? t('enroll_old_invite', { v: invite.version }) : t('enroll_bad_invite', { detail: invite.detail });
    }
    replace(
      main,
      header(t('enroll_title'), false),
      h('p', {}, t('enroll_intro')),
      h('p', {}, t('enroll_no_invite')),
      message,
      h('label', { class: 'field', for: 'invite-text' }, h('span', {}, t('enroll_paste')), paste),
      h(
        'button',
        {
          type: 'button',
          class: 'big',
          id: 'read-invite',
          onclick: () => {
            try {
              drawEnroll(p, parseInvite(paste.value), again);
            } catch (x) {
              drawEnroll(p, x instanceof NotAnInvite ? x : new NotAnInvite(String(x)), again);
            }
          },
        },
        t('enroll_read'),
      ),
    );
    return;
  }
  const otherServer = new URL(invite.server).origin !== location.origin;
  const nameInput = h('input', { id: 'phone-name', name: 'phone-name', autocomplete: 'off', required: true, placeholder: t('phone_name_hint'), value: p.enrollment?.name ?? '' });
  const button = h('button', { type: 'submit', class: 'big', id: 'enroll' }, again ? t('enroll_again') : t('enroll_button'));
  const form = h(
    'form',
    { id: 'enroll-form', class: 'form', novalidate: true },
    h('dl', {}, h('dt', {}, t('enroll_code')), h('dd', {}, invite.code), h('dt', {}, t('enroll_server')), h('dd', {}, invite.server)),
    otherServer ? h('p', { class: 'note' }, t('enroll_other_server', { server: invite.server, here: location.origin })) : null,
    h('label', { class: 'field', for: 'phone-name' }, h('span', {}, t('phone_name')), nameInput),
    button,
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    button.disabled = true;
    button.textContent = t('enrolling');
    p.enroll(invite, nameInput.value)
      .then(async () => {
        forgetInviteInLocation();
        enrolling = undefined;
        if (again) {
          // The new token is in the store: start again with it.
          location.reload();
          return;
        }
        await p.askPersistence();
        screen = 'home';
        history.replaceState({ screen: 'home' }, '');
        draw();
        await p.start();
      })
      .catch((e: unknown) => {
        button.disabled = false;
        button.textContent = again ? t('enroll_again') : t('enroll_button');
        message.className = 'alert';
        replace(message, h('span', { id: 'form-error', role: 'alert' }, errorText(e)));
      });
  });
  replace(main, header(t('enroll_title'), false), h('p', {}, t('enroll_intro')), message, form);
}

function drawAlreadyEnrolled(p: Phone, invite: InvitePayload): void {
  const e = p.enrollment;
  if (!e) return drawEnroll(p, invite, false);
  enrolling = { invite, again: false, ask: true };
  status.hidden = true;
  replace(
    main,
    header(t('enroll_title'), false),
    h('p', { class: 'note' }, t('already_enrolled', { name: e.name })),
    h('button', { type: 'button', class: 'big', id: 'enroll-again', onclick: () => drawEnroll(p, invite, true) }, t('enroll_again')),
    h(
      'button',
      {
        type: 'button',
        id: 'keep-enrollment',
        onclick: () => {
          forgetInviteInLocation();
          enrolling = undefined;
          go('home', false);
        },
      },
      t('keep_enrollment'),
    ),
  );
}

// ---- start

function registerServiceWorker(): void {
  if (!('serviceWorker' in navigator)) return;
  navigator.serviceWorker.register(new URL('sw.js', import.meta.url), { scope: './', type: 'module' }).catch(() => {
    // Without it the app still works online; offline opening needs it.
  });
}

async function run(): Promise<void> {
  setLang(lang());
  append(root, status, main);
  draw();
  const p = await Phone.open();
  phone = p;
  p.addEventListener('change', () => {
    if (enrolling) return;
    drawStatus();
    if (screen === 'home') drawHome(p);
  });
  const invite = inviteInLocation();
  if (!p.enrollment) {
    drawEnroll(p, invite, false);
    return;
  }
  history.replaceState({ screen: 'home' }, '');
  // An invite opened while the app is open (its QR code scanned again, a new one).
  window.addEventListener('hashchange', () => {
    const again = inviteInLocation();
    if (again instanceof NotAnInvite) forgetInviteInLocation();
    else if (again !== undefined) drawAlreadyEnrolled(p, again);
  });
  if (invite instanceof NotAnInvite) forgetInviteInLocation();
  if (invite !== undefined && !(invite instanceof NotAnInvite)) drawAlreadyEnrolled(p, invite);
  else draw();
  await p.start();
}

/** One tab at a time holds the phone: two would write the same collection from two repos. */
async function boot(): Promise<void> {
  if (!window.isSecureContext || !crypto.subtle) {
    // No WebCrypto, no service worker, no persistent storage: nothing safe to do here.
    setLang(lang());
    append(root, h('p', { class: 'alert', role: 'alert', id: 'insecure' }, t('insecure')));
    return;
  }
  registerServiceWorker();
  if (!navigator.locks) return run();
  await navigator.locks.request('tally-phone', { ifAvailable: true }, async (held) => {
    if (!held) {
      setLang(lang());
      append(root, h('p', { class: 'alert', id: 'other-tab' }, t('other_tab')));
      void navigator.locks.request('tally-phone', () => location.reload());
      return;
    }
    await run();
    // Held for as long as the page lives.
    await new Promise<never>(() => undefined);
  });
}

void boot().catch((e: unknown) => {
  replace(root, h('p', { class: 'alert', role: 'alert' }, e instanceof Error ? e.message : String(e)));
});
