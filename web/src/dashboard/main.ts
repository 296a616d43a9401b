// The organizers' dashboard: a page of the tally server (served at /, same origin as the API).
// Sign-in keeps the token in this tab's session storage; every view calls the HTTP API with it.
// Views are chosen by the URL's fragment (#/campaign/ID/totals ...), so a reload or a shared
// link opens the same view, and the token is never in a URL.

import { ApiError, Unreachable, get, session } from './api';
import { append, h, replace, select } from './dom';
import { LANGS, lang, setLang, t, type Key } from './i18n';
import { consumeSigninLink } from './signin-link';
import type { CampaignSummary, Campaigns, Device } from './types';
import { auditView } from './views/audit';
import { campaignsView } from './views/campaigns';
import { devicesView } from './views/devices';
import { eventsView } from './views/events';
import { exportView } from './views/export';
import { invitesView } from './views/invites';
import { quarantineView } from './views/quarantine';
import { reviewView } from './views/review';
import { totalsView } from './views/totals';
import { wallView } from './views/wall';

/** What every view is given. */
export interface Ctx {
  me: Device;
  campaigns: CampaignSummary[];
  /** The campaign of the route, when the view is one campaign's. */
  campaign: CampaignSummary | undefined;
  /** Reloads the campaign list (after a campaign or an event was added). */
  refreshCampaigns(): Promise<void>;
  /** Goes to a route (re-rendering the page, its nav included). */
  go(route: string): void;
  /** Shows `el` at the top of the next view rendered (a result that outlives a re-render). */
  flash(el: HTMLElement): void;
}

export interface View {
  /** The nav's key, and the title's. */
  title: Key;
  /** Whether the view is one campaign's. */
  perCampaign: boolean;
  /** Only the admin token may use it (the API says 403 to others). */
  adminOnly?: boolean;
  render(main: HTMLElement, ctx: Ctx): void | Promise<void>;
  /** Called when the view is left (streams closed). */
  leave?(): void;
  /** Called after signing in again over this view (a refused token), to carry on. */
  resume?(): void;
}

const VIEWS: Record<string, View> = {
  campaigns: campaignsView,
  devices: devicesView,
  quarantine: quarantineView,
  totals: totalsView,
  wall: wallView,
  events: eventsView,
  invites: invitesView,
  review: reviewView,
  export: exportView,
  audit: auditView,
};
const CAMPAIGN_VIEWS = ['totals', 'wall', 'events', 'invites', 'review', 'export'];
const GLOBAL_VIEWS = ['campaigns', 'devices', 'quarantine', 'audit'];

let me: Device | null = null;
let campaigns: CampaignSummary[] = [];
let current: View | null = null;
let lastCampaign: string | null = null;
let flashed: HTMLElement | null = null;

const root = document.getElementById('app') as HTMLElement;

/** Parses the fragment: `#/campaign/ID/VIEW` or `#/VIEW`. */
function route(): { view: string; campaign?: string } {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'campaign' && parts[1]) return { view: parts[2] ?? 'totals', campaign: parts[1] };
  return { view: parts[0] ?? 'campaigns' };
}

function go(r: string): void {
  if (location.hash === r) void show();
  else location.hash = r;
}

// ---- the frame: header, nav, the connection banner, messages, main -------------------------

const banner = h('div', { id: 'connection', class: 'banner', role: 'alert', hidden: true });
const main = h('main', { id: 'main', tabindex: '-1' });

function langSwitch(): HTMLElement {
  const s = select({ id: 'lang', 'aria-label': 'Language / Langue' }, LANGS.map((l) => [l, l === 'en' ? 'English' : 'Français']), lang());
  s.addEventListener('change', () => {
    setLang(s.value as (typeof LANGS)[number]);
    // Re-rendered in the new language; what was typed is kept.
    const kept = keepInputs();
    void show().then(() => restoreInputs(kept));
  });
  return h('div', { class: 'lang' }, s);
}

function header(): HTMLElement {
  const campaignId = route().campaign ?? lastCampaign ?? campaigns[0]?.campaign;
  const campaign = campaigns.find((c) => c.campaign === campaignId);
  const view = route().view;
  const nav = h('nav', { 'aria-label': t('nav_label') });
  const list = h('ul', {});
  const link = (href: string, key: Key, active: boolean) =>
    h('li', {}, h('a', { href, 'aria-current': active ? 'page' : false }, t(key)));
  for (const v of GLOBAL_VIEWS) {
    const vw = VIEWS[v];
    if (!vw || (vw.adminOnly && me?.role !== 'admin')) continue;
    list.append(link(`#/${v}`, vw.title, view === v));
  }
  nav.append(list);
  if (campaign) {
    const sub = h('ul', { class: 'campaign-nav' });
    for (const v of CAMPAIGN_VIEWS) {
      const vw = VIEWS[v];
      if (!vw) continue;
      sub.append(link(`#/campaign/${encodeURIComponent(campaign.campaign)}/${v}`, vw.title, view === v && route().campaign === campaign.campaign));
    }
    nav.append(sub);
  }
  const picker =
    campaigns.length > 0
      ? select(
          { id: 'campaign-picker', 'aria-label': t('campaign_picker') },
          campaigns.map((c) => [c.campaign, c.title]),
          campaign?.campaign,
        )
      : null;
  picker?.addEventListener('change', () => {
    const v = CAMPAIGN_VIEWS.includes(view) ? view : 'totals';
    go(`#/campaign/${encodeURIComponent(picker.value)}/${v}`);
  });
  const signOut = h('button', { type: 'button', id: 'sign-out' }, t('sign_out'));
  signOut.addEventListener('click', () => {
    session.clear();
    me = null;
    current?.leave?.();
    current = null;
    location.hash = '';
    void start();
  });
  const who = me ? h('span', { class: 'who' }, t('signed_in_as', { name: me.name, role: t(`role_${me.role}` as Key) })) : null;
  return h(
    'header',
    { class: 'top' },
    h('a', { href: '#main', class: 'skip' }, t('skip_to_content')),
    h('div', { class: 'brand' }, 'tally'),
    picker ? h('div', { class: 'picker' }, picker) : null,
    nav,
    h('div', { class: 'tools' }, who, langSwitch(), signOut),
  );
}

/** Shows the view of the current route. */
async function show(): Promise<void> {
  if (!me) return;
  current?.leave?.();
  const r = route();
  const view = VIEWS[r.view] ?? campaignsView;
  current = view;
  if (r.campaign) lastCampaign = r.campaign;
  const campaign = campaigns.find((c) => c.campaign === r.campaign);
  document.documentElement.lang = lang();
  document.body.classList.toggle('wall-mode', view === wallView);
  replace(root, header(), banner, main);
  main.replaceChildren();
  const heading = h('h1', { id: 'view-title', tabindex: '-1' }, t(view.title));
  main.append(heading);
  if (flashed) main.append(flashed);
  flashed = null;
  document.title = `${t(view.title)} · tally`;
  if (view.perCampaign && !campaign) {
    main.append(
      h('p', { role: 'alert', class: 'error' }, r.campaign ? t('no_such_campaign', { id: r.campaign }) : t('choose_campaign')),
      h('p', {}, h('a', { href: '#/campaigns' }, t('campaigns'))),
    );
    return;
  }
  if (view.adminOnly && me.role !== 'admin') {
    main.append(h('p', { class: 'note' }, t('admin_only')));
    return;
  }
  const ctx: Ctx = {
    me,
    campaigns,
    campaign,
    refreshCampaigns,
    go,
    flash: (el) => {
      flashed = el;
    },
  };
  try {
    await view.render(main, ctx);
  } catch (e) {
    main.append(errorBox(e));
  }
}

/** A failure in words: the server's own message, or that it cannot be reached. */
export function describe(e: unknown): string {
  if (e instanceof ApiError) {
    return e.status === 401 ? t('refused_token', { message: e.message }) : t('server_said', { status: e.status, message: e.message });
  }
  if (e instanceof Unreachable) return t('unreachable_kept');
  return e instanceof Error ? e.message : String(e);
}

/** An alert box for a failure. */
export function errorBox(e: unknown): HTMLElement {
  return h('p', { class: 'error', role: 'alert' }, describe(e));
}

async function refreshCampaigns(): Promise<void> {
  campaigns = (await get<Campaigns>('/api/v1/campaigns')).campaigns;
}

// ---- keeping what was typed across a re-render ---------------------------------------------

function keepInputs(): Map<string, string> {
  const kept = new Map<string, string>();
  for (const el of main.querySelectorAll<HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement>('input[id], textarea[id], select[id]')) {
    if (el instanceof HTMLInputElement && (el.type === 'file' || el.type === 'password')) continue;
    kept.set(el.id, el instanceof HTMLInputElement && el.type === 'checkbox' ? String(el.checked) : el.value);
  }
  return kept;
}

function restoreInputs(kept: Map<string, string>): void {
  for (const [id, v] of kept) {
    const el = document.getElementById(id);
    if (el instanceof HTMLInputElement && el.type === 'checkbox') el.checked = v === 'true';
    else if (el instanceof HTMLInputElement || el instanceof HTMLTextAreaElement || el instanceof HTMLSelectElement) el.value = v;
  }
}

// ---- the server's state: unreachable, and a refused token ----------------------------------

let polling: number | undefined;
window.addEventListener('tally:unreachable', () => {
  banner.hidden = false;
  replace(banner, t('banner_unreachable'));
  // Find out when it is back, without waiting for the next click.
  if (polling === undefined) {
    polling = window.setInterval(() => {
      fetch('/healthz', { cache: 'no-store' })
        .then((r) => {
          if (r.ok) window.dispatchEvent(new CustomEvent('tally:reachable'));
        })
        .catch(() => undefined);
    }, 2000);
  }
});
window.addEventListener('tally:reachable', () => {
  if (banner.hidden) return;
  banner.hidden = true;
  banner.replaceChildren();
  window.clearInterval(polling);
  polling = undefined;
  announce(t('banner_back'));
});

/** A polite announcement for screen readers and eyes. */
export function announce(text: string): void {
  const live = document.getElementById('announce');
  if (live) live.textContent = text;
}

let reauth: HTMLDialogElement | null = null;
window.addEventListener('tally:unauthorized', (ev) => {
  const message = (ev as CustomEvent<string>).detail;
  if (!me) return;
  showReauth(message);
});

/** Asks for a token again over the page, which stays as it is (what was typed is kept). */
function showReauth(message: string): void {
  if (reauth?.open) {
    const p = reauth.querySelector('.error');
    if (p) p.textContent = t('refused_token', { message });
    return;
  }
  const input = h('input', { id: 'reauth-token', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true });
  const err = h('p', { class: 'error', role: 'alert' }, t('refused_token', { message }));
  const form = h(
    'form',
    { method: 'dialog', class: 'stack' },
    h('h2', {}, t('reauth_title')),
    err,
    h('p', {}, t('reauth_kept')),
    h('div', { class: 'field' }, h('label', { for: 'reauth-token' }, t('token')), input),
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'submit', class: 'primary' }, t('sign_in')),
      h('button', { type: 'button', id: 'reauth-sign-out' }, t('sign_out')),
    ),
  );
  const dialog = h('dialog', { id: 'reauth', 'aria-labelledby': 'reauth-title' }, form);
  form.querySelector('h2')?.setAttribute('id', 'reauth-title');
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const token = input.value.trim();
    get<Device>('/api/v1/me', { token })
      .then((d) => {
        session.set(token);
        me = d;
        dialog.close();
        dialog.remove();
        reauth = null;
        current?.resume?.();
      })
      .catch((x: unknown) => {
        err.textContent = describe(x);
      });
  });
  form.querySelector('#reauth-sign-out')?.addEventListener('click', () => {
    dialog.close();
    dialog.remove();
    reauth = null;
    session.clear();
    me = null;
    current?.leave?.();
    void start();
  });
  document.body.append(dialog);
  reauth = dialog;
  dialog.showModal();
  input.focus();
}

// ---- sign-in -------------------------------------------------------------------------------

function signInPage(message?: string): void {
  document.body.classList.remove('wall-mode');
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true, 'aria-describedby': 'token-hint' });
  const err = h('p', { class: 'error', role: 'alert', id: 'signin-error', hidden: !message }, message ?? '');
  const button = h('button', { type: 'submit', class: 'primary' }, t('sign_in'));
  const form = h(
    'form',
    { class: 'signin stack', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, t('signin_title')),
    h('p', {}, t('signin_intro')),
    h('div', { class: 'field' }, h('label', { for: 'token' }, t('token')), input, h('p', { class: 'hint', id: 'token-hint' }, t('token_hint'))),
    err,
    button,
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    button.disabled = true;
    err.hidden = true;
    get<Device>('/api/v1/me', { token })
      .then(async (d) => {
        session.set(token);
        me = d;
        await enter();
      })
      .catch((x: unknown) => {
        err.hidden = false;
        err.textContent = describe(x);
        button.disabled = false;
        input.focus();
      });
  });
  replace(root, h('header', { class: 'top' }, h('div', { class: 'brand' }, 'tally'), h('div', { class: 'tools' }, langSwitch())), banner, h('main', { id: 'main' }, form));
  document.documentElement.lang = lang();
  document.title = `${t('signin_title')} · tally`;
  input.focus();
}

async function enter(): Promise<void> {
  try {
    await refreshCampaigns();
  } catch (e) {
    signInPage(describe(e));
    return;
  }
  await show();
}

async function start(): Promise<void> {
  const fromLink = await consumeSigninLink().catch((e: unknown) => {
    signInPage(describe(e));
    return undefined;
  });
  if (fromLink === undefined && !session.token()) {
    if (!root.querySelector('form.signin')) signInPage();
    return;
  }
  try {
    me = await get<Device>('/api/v1/me', { token: session.token() ?? '' });
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) session.clear();
    signInPage(describe(e));
    return;
  }
  await enter();
}

window.addEventListener('hashchange', () => {
  if (me) void show();
});
document.body.append(h('div', { id: 'announce', class: 'visually-hidden', role: 'status', 'aria-live': 'polite' }));
append(document.body);
void start();
