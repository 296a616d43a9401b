// The organizers' dashboard in a real browser (Debian's Chromium, headless, through
// playwright-core) against a real `tally serve` on 127.0.0.1 and real phones (`tally-device`
// processes). The steps run in order, as an organizer would: each `it` is one check of issue 14,
// and one screenshot per main view is written to $TALLY_WEB_OUT/screenshots/.
//
//   TALLY_BIN_DIR=target/debug node --test tests/web/dashboard.test.mjs
//
// Nothing here sleeps to synchronize: every wait is for a condition (`until`, Playwright's
// auto-waiting locators), with a deadline.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import jsQR from 'jsqr';
import { PNG } from 'pngjs';
import { Phone, Server, browser, scratch, screenshot, tally, until, writeOut } from './harness.mjs';

const dir = scratch();
const server = new Server(join(dir, 'data'));
const org = join(dir, 'organizer');
const shots = [];
let b;
let admin; // the admin's browser context and page
let page;
let recipient;
let campaign; // id
let identityFile;
const requests = []; // every request any page made: {url, method, body, page}
const consoleErrors = [];
const amina = new Phone(join(dir, 'amina'));
const bo = new Phone(join(dir, 'bo'));
let organizerToken;
let organizerDevice;
let orgPage;
let bosRefused;

async function shot(p, name) {
  shots.push(await screenshot(p, name));
}

/** A page that records its requests and console errors. */
async function newPage(label, opts = {}) {
  const context = await b.newContext({ viewport: { width: 1280, height: 900 }, locale: 'en-CA', acceptDownloads: true, ...opts });
  const p = await context.newPage();
  p.setDefaultTimeout(10_000);
  p.on('request', (r) => requests.push({ url: r.url(), method: r.method(), body: r.postData() ?? '', headers: r.headers(), page: label }));
  p.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) consoleErrors.push(`${label}: ${m.text()}`);
  });
  p.on('pageerror', (e) => consoleErrors.push(`${label}: ${e.message}`));
  return p;
}

async function signIn(p, token) {
  await p.goto(`${server.url}/`);
  await p.locator('#token').fill(token);
  await p.locator('form.signin button[type=submit]').click();
  await p.locator('#view-title').waitFor();
}

const nav = (p, view) => p.locator(`nav a[href="#/campaign/${campaign}/${view}"]`).click();

/** Every control of the page has an accessible name (a label, aria-label or text). */
async function assertLabelled(p, where) {
  const unlabelled = await p.evaluate(() =>
    [...document.querySelectorAll('input, select, textarea, button')]
      .filter((el) => !el.closest('[hidden]') && el.type !== 'hidden')
      .filter((el) => {
        if (el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')) return false;
        if (el.tagName === 'BUTTON') return !el.textContent.trim();
        return !(el.labels && el.labels.length > 0);
      })
      .map((el) => el.outerHTML.slice(0, 120)),
  );
  assert.deepEqual(unlabelled, [], `unlabelled controls on ${where}`);
}

/** What the totals view shows: headline numbers (null for "< N") and each breakdown's rows. */
async function shownTotals(p) {
  return p.evaluate(() => {
    const num = (s) => {
      const text = s.trim();
      if (text.startsWith('<')) return null;
      return Number(text.replace(/[^\d]/g, ''));
    };
    const head = {};
    for (const el of document.querySelectorAll('#headline [data-field]')) head[el.dataset.field] = num(el.querySelector('dd').textContent);
    const breakdowns = {};
    for (const t of document.querySelectorAll('table.breakdown')) {
      const rows = {};
      let suppressed = 0;
      for (const tr of t.querySelectorAll('tbody tr')) {
        const cells = [...tr.children].map((c) => c.textContent);
        if (tr.dataset.key !== undefined) rows[tr.dataset.key] = { signatures: num(cells[1]), unique: num(cells[2]) };
        if (tr.dataset.suppressed) {
          suppressed = Number(tr.dataset.suppressed);
          if (cells.slice(1).some((c) => /\d/.test(c) && !c.trim().startsWith('<'))) rows['!a hidden cell showed a number'] = cells;
        }
      }
      breakdowns[t.id] = { rows, suppressed };
    }
    return { head, breakdowns };
  });
}

/** The API's answer as the page would show it. */
function expected(api) {
  const b = {};
  for (const k of ['by_event', 'by_city', 'by_fsa', 'by_riding', 'by_day', 'by_canvasser']) {
    b[k] = { rows: api[k], suppressed: api.suppression.hidden[k] ?? 0 };
  }
  return {
    head: {
      signatures: api.signatures,
      unique_signers: api.unique_signers,
      struck: api.struck,
      withdrawn: api.withdrawn,
      paper_sheets: api.paper.sheets,
      paper_signatures: api.paper.signatures,
    },
    breakdowns: b,
  };
}

/** Waits until the totals view shows what the API answers to `query` for `token`. */
async function totalsMatchApi(p, token, query = '') {
  let api;
  await until(`the page's totals to equal GET /totals${query}`, async () => {
    const [st, v] = await server.api('GET', `/api/v1/campaigns/${campaign}/totals${query}`, token);
    assert.equal(st, 200, JSON.stringify(v));
    api = v;
    const shown = await shownTotals(p);
    const want = expected(v);
    delete shown.breakdowns.checkins;
    try {
      assert.deepEqual(shown, want);
      return true;
    } catch {
      return false;
    }
  });
  return api;
}

async function sign(phone, name, postal, city, extra = []) {
  const r = await phone.ok(['sign', '--name', name, '--postal-code', postal, '--city', city, ...extra]);
  return r.signature.record_id;
}

describe('the organizers dashboard in a real browser', { concurrency: false }, () => {
  before(async () => {
    await server.start();
    recipient = (await tally(server, dir, ['keygen', '--out', join(org, 'organizer.age')]).catch(async () => {
      const { mkdirSync } = await import('node:fs');
      mkdirSync(org, { recursive: true });
      return tally(server, dir, ['keygen', '--out', join(org, 'organizer.age')]);
    }))
      .trim()
      .split('\n')
      .pop()
      .trim();
    identityFile = join(org, 'organizer.age');
    assert.match(recipient, /^age1/);
    b = await browser();
    page = await newPage('admin');
    admin = page;
  });

  after(async () => {
    await b?.close();
    await server.stop();
    writeOut('screenshots.txt', `${shots.join('\n')}\n`);
    writeOut('server.log', server.log);
  });

  it('signs in: a wrong token gets the server message, the admin token opens the dashboard, kept in session storage only', async () => {
    await page.goto(`${server.url}/`);
    await shot(page, '01-sign-in');
    await page.locator('#token').fill('tly_not-a-real-token');
    await page.locator('form.signin button[type=submit]').click();
    await page.locator('#signin-error:not([hidden])').waitFor();
    assert.match(await page.locator('#signin-error').textContent(), /refused the token: unknown token/);
    await page.locator('#token').fill(server.adminToken);
    await page.locator('form.signin button[type=submit]').click();
    await page.locator('#new-campaign').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('tally.token')), server.adminToken);
    assert.equal(await page.evaluate(() => localStorage.getItem('tally.token')), null);
    assert.ok(!page.url().includes(server.adminToken), page.url());
    await assertLabelled(page, 'campaigns');
  });

  it('signs in from the one-time link `tally dashboard` prints, which then stops working', async () => {
    const out = JSON.parse(await tally(server, dir, ['dashboard', '--json']));
    assert.ok(out.link.startsWith(`${server.url}/#signin=`), out.link);
    assert.ok(out.expires_at > Date.now());
    const viaLink = await newPage('link');
    await viaLink.goto(out.link);
    await viaLink.locator('#view-title').waitFor();
    assert.equal(new URL(viaLink.url()).hash, '', 'the link is gone from the address bar');
    assert.equal(await viaLink.evaluate(() => sessionStorage.getItem('tally.token')), server.adminToken);
    // The secret in the fragment never reached the server: only the link's id did.
    const secret = out.link.split('.').pop();
    assert.ok(!requests.some((r) => r.url.includes(secret) || r.body.includes(secret)));
    await viaLink.context().close();
    const again = await newPage('link-again');
    await again.goto(out.link);
    await again.locator('#signin-error:not([hidden])').waitFor();
    assert.match(await again.locator('#signin-error').textContent(), /used already or has expired/);
    await again.context().close();
  });

  it('creates a campaign and an event from the page', async () => {
    await page.locator('#c-title').fill('Status for All');
    await page.locator('#c-petition').fill('We call on the Government of Canada to regularize all undocumented people.');
    await page.locator('#c-goal').fill('40');
    await page.locator('#c-recipients').fill(recipient);
    await page.locator('#new-campaign button[type=submit]').click();
    await page.locator('#c-created').waitFor();
    const [, list] = await server.api('GET', '/api/v1/campaigns', server.adminToken);
    assert.equal(list.campaigns.length, 1);
    const c = list.campaigns[0];
    campaign = c.campaign;
    assert.deepEqual([c.title, c.goal, c.timezone, c.addressee], ['Status for All', 40, 'America/Toronto', 'the House of Commons']);
    assert.match(await page.evaluate((id) => localStorage.getItem(`tally.key.${id}`), campaign), /^[0-9a-f]{64}$/);
    await page.locator('#campaign-list').getByText('Status for All').waitFor();
    await shot(page, '02-campaigns');

    await page.locator('#c-go-events').click();
    await page.locator('#new-event').waitFor();
    await page.locator('#e-name').fill("Rally at Queen's Park");
    await page.locator('#e-city').fill('Toronto');
    await page.locator('#e-starts').fill('2026-07-01T18:00');
    await page.locator('#e-place').fill("Queen's Park");
    await page.locator('#e-id').fill('rally');
    await page.locator('#new-event button[type=submit]').click();
    await page.locator('#event-list').getByText("Rally at Queen's Park").waitFor();
    const [, after] = await server.api('GET', '/api/v1/campaigns', server.adminToken);
    assert.deepEqual(after.campaigns[0].events, [
      { id: 'rally', name: "Rally at Queen's Park", city: 'Toronto', starts_at: Date.parse('2026-07-01T18:00:00-04:00'), place: "Queen's Park" },
    ]);
    await assertLabelled(page, 'events');
    await shot(page, '03-events');
  });

  it('creates an invite whose QR code, decoded from a screenshot, enrolls a tally-device', async () => {
    await nav(page, 'invites');
    await page.locator('#key-status .ok').waitFor();
    await page.locator('#new-invite button[type=submit]').click();
    const qr = page.locator('#invite-qr');
    await qr.waitFor();
    const png = PNG.sync.read(await qr.screenshot());
    const decoded = jsQR(new Uint8ClampedArray(png.data), png.width, png.height);
    assert.ok(decoded, 'the QR code decodes');
    const text = await page.locator('#invite-payload').inputValue();
    // The QR code opens the canvassers' app with the payload after '#' (never sent to a server).
    assert.equal(decoded.data, `${server.url}/app/#${encodeURIComponent(text)}`, 'the QR code holds the app link with the payload shown as text');
    const payload = JSON.parse(text);
    assert.equal(payload.v, 1);
    assert.equal(payload.server, server.url);
    assert.equal(payload.campaign, `automerge:${campaign}`);
    assert.equal(payload.key, await page.evaluate((id) => localStorage.getItem(`tally.key.${id}`), campaign));
    assert.match(await page.locator('#invite-expiry').textContent(), /72 h/);
    await assertLabelled(page, 'invites');
    await shot(page, '04-invite');
    const file = join(dir, 'amina.json');
    writeFileSync(file, decoded.data); // tally-device reads the link as the camera did
    const enrolled = await amina.ok(['enroll', '--payload', `@${file}`, '--name', "Amina's phone"]);
    assert.equal(enrolled.campaign_received, true);
    // The key never went to the server: no request the page made carried it.
    assert.ok(!requests.some((r) => r.url.includes(payload.key) || r.body.includes(payload.key)));
  });

  it("shows the exact totals after the phone signs offline and syncs", async () => {
    await nav(page, 'totals');
    await page.locator('#live-status[data-state=live]').waitFor();
    assert.equal((await shownTotals(page)).head.signatures, 0);
    // Offline: signing needs no server.
    await sign(amina, 'Amara Okafor', 'M5V 2T6', 'Toronto', ['--event', 'rally', '--consent', '--email', 'amara@example.org']);
    const toronto = ['Jean Dupuis', 'Li Wei', 'Fatima Haidari', 'Carlos Mendes', 'Nadia Haddad'];
    for (const [i, n] of toronto.entries()) await sign(amina, n, `M5V 1A${i}`, 'Toronto', ['--event', 'rally']);
    await sign(amina, 'amara  OKAFOR', 'm5v2t6', 'Toronto', ['--event', 'rally']); // the same signer again
    for (const [i, n] of ['Ana Lima', 'Omar Said', 'Grace Mensah', 'Tomás Ruiz', 'Yuki Sato'].entries()) {
      await sign(amina, n, `K1A 0B${i}`, 'Ottawa', ['--street', `${i + 1} Wellington St`]);
    }
    await sign(amina, 'Jean Tremblay', 'H2X 1Y4', 'Montréal', ['--phone', '514-555-0100']);
    assert.equal((await shownTotals(page)).head.signatures, 0, 'nothing synced yet');
    await amina.ok(['sync']);
    const api = await totalsMatchApi(page, server.adminToken);
    assert.equal(api.signatures, 13);
    assert.equal(api.unique_signers, 12);
    assert.equal((await shownTotals(page)).head.signatures, 13);
    await page.locator('#day-chart rect.bar').first().waitFor();
    await assertLabelled(page, 'totals');
    await shot(page, '05-totals');
  });

  it('updates the wall screen within 2 s of a second sync, without a reload', async () => {
    await page.locator('#open-wall').click();
    await until('the wall to show 13', async () => (await page.locator('#wall-total').textContent()) === '13');
    await page.evaluate(() => {
      window.__sameDocument = true;
    });
    await sign(amina, 'Sara Haile', 'M5V 3C1', 'Toronto');
    await sign(amina, 'Ivan Petrov', 'M5V 3C2', 'Toronto');
    const syncStarted = Date.now();
    await amina.ok(['sync']);
    const synced = Date.now();
    await until('the wall to show 15', async () => (await page.locator('#wall-total').textContent()) === '15', { timeout: 5000, every: 25 });
    const ms = Date.now() - synced;
    const fromStart = Date.now() - syncStarted;
    assert.ok(ms <= 2000, `the wall took ${ms} ms after the sync`);
    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no reload');
    assert.equal(await page.locator('#wall-status').getAttribute('data-state'), 'live');
    await assertLabelled(page, 'wall');
    writeOut('wall-latency.txt', `the wall screen showed the new number ${ms} ms after \`tally-device sync\` returned (${fromStart} ms after it started)\n`);
    await shot(page, '06-wall');
  });

  it("filters and breakdowns equal the API's answers", async () => {
    await page.locator('.wall-back').click();
    await page.locator('#live-status[data-state=live]').waitFor();
    await totalsMatchApi(page, server.adminToken);
    const today = new Intl.DateTimeFormat('en-CA', { timeZone: 'America/Toronto' }).format(Date.now());
    await page.locator('#f-event').selectOption('rally');
    await page.locator('#f-city').fill('Toronto');
    await page.locator('#f-from').fill(today);
    await page.locator('#f-to').fill(today);
    await page.locator('#filters button[type=submit]').click();
    await page.locator('#filters-applied').waitFor();
    // The query the page sent, asked again of the API.
    const sent = requests.filter((r) => r.page === 'admin' && r.url.includes('/totals/stream?')).pop();
    const query = new URL(sent.url).search;
    assert.match(query, /event=rally/);
    assert.match(query, /city=Toronto/);
    const api = await totalsMatchApi(page, server.adminToken, query);
    assert.equal(api.filters.event, 'rally');
    assert.equal(api.signatures, 7);
    await page.locator('#f-fsa').fill('k1a');
    await page.locator('#f-city').fill('');
    await page.locator('#f-event').selectOption('');
    await page.locator('#filters button[type=submit]').click();
    await until('the FSA filter', async () => (await shownTotals(page)).head.signatures === 5);
    await totalsMatchApi(page, server.adminToken, '?fsa=K1A&from=' + encodeURIComponent(new URL(requests.filter((r) => r.url.includes('fsa=K1A')).pop().url).searchParams.get('from')) + '&to=' + encodeURIComponent(new URL(requests.filter((r) => r.url.includes('fsa=K1A')).pop().url).searchParams.get('to')));
    // The canvasser (chosen from those who collected) with a city, then a riding (issue 18).
    await page.locator('#f-fsa').fill('');
    await page.locator('#f-from').fill('');
    await page.locator('#f-to').fill('');
    const canvasser = await page.locator('#f-canvasser option').nth(1).getAttribute('value');
    assert.ok(canvasser, 'the canvasser list holds who collected');
    await page.locator('#f-canvasser').selectOption(canvasser);
    await page.locator('#f-city').fill('ottawa');
    await page.locator('#filters button[type=submit]').click();
    await until('the canvasser and city filters', async () => (await shownTotals(page)).head.signatures === 5);
    const byCanvasser = new URL(requests.filter((r) => r.page === 'admin' && r.url.includes('canvasser=')).pop().url).search;
    assert.match(byCanvasser, /city=ottawa/);
    const apiCanvasser = await totalsMatchApi(page, server.adminToken, byCanvasser);
    assert.equal(apiCanvasser.filters.canvasser, canvasser);
    assert.deepEqual(Object.keys(apiCanvasser.by_canvasser), [canvasser]);
    await page.locator('#f-city').fill('');
    await page.locator('#f-canvasser').selectOption('');
    await page.locator('#f-riding').fill('Nowhere Riding');
    await page.locator('#filters button[type=submit]').click();
    await until('the riding filter', async () => (await shownTotals(page)).head.signatures === 0);
    const apiRiding = await totalsMatchApi(page, server.adminToken, '?riding=Nowhere%20Riding');
    assert.equal(apiRiding.filters.riding, 'Nowhere Riding');
    await page.locator('#f-clear').click();
    await until('the filters cleared', async () => (await shownTotals(page)).head.signatures === 15);
  });

  it('shows small cells to an organizer as suppressed, never as numbers', async () => {
    await nav(page, 'invites');
    await page.locator('#i-role').selectOption('organizer');
    await page.locator('#new-invite button[type=submit]').click();
    await page.locator('#invite-payload').waitFor();
    const payload = JSON.parse(await page.locator('#invite-payload').inputValue());
    const res = await fetch(`${server.url}/api/v1/enroll`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ code: payload.code, name: "Noor's laptop" }) });
    const enrolled = await res.json();
    assert.equal(enrolled.role, 'organizer');
    organizerToken = enrolled.token;
    organizerDevice = enrolled.device_id;
    orgPage = await newPage('organizer');
    await signIn(orgPage, organizerToken);
    await orgPage.locator(`a[href="#/campaign/${campaign}/totals"]`).first().click();
    await orgPage.locator('#live-status[data-state=live]').waitFor();
    const api = await totalsMatchApi(orgPage, organizerToken);
    assert.equal(api.suppression.applied, true);
    assert.equal(api.suppression.hidden.by_city, 2, 'Montréal (1 signer) and, to protect it, Ottawa');
    const cities = await orgPage.locator('#by_city').textContent();
    assert.ok(!cities.includes('Montréal') && !cities.includes('Ottawa'), cities);
    assert.match(cities, /2 small cells, hidden\s*< 5\s*< 5/);
    assert.equal(Number(await orgPage.locator('#by_city .other').getAttribute('data-other')), api.suppression.other.by_city);
    assert.equal(await orgPage.locator('#by_city tr[data-suppressed="2"] .suppressed').first().textContent(), '< 5');
    assert.ok((await orgPage.locator('#suppression-note').textContent()).includes('fewer than 5'));
    await shot(orgPage, '07-totals-organizer');
  });

  it('strikes, undoes the strike and records a paper sheet from the page: the totals change as the API says', async () => {
    await nav(page, 'review');
    await page.locator('#show-signatures').click();
    const pick = page.locator('#signature-list button[data-signature]').first();
    const id = await pick.getAttribute('data-signature');
    await pick.click();
    assert.equal(await page.locator('#s-signature').inputValue(), id);
    await page.locator('#s-reason').selectOption('invalid');
    await page.locator('#strike-form button[type=submit]').click();
    await page.locator(`#strike-list button[data-signature="${id}"]`).waitFor();
    let [, tot] = await server.api('GET', `/api/v1/campaigns/${campaign}/totals`, server.adminToken);
    assert.deepEqual([tot.signatures, tot.struck], [14, 1]);
    await shot(page, '08-review');
    await nav(page, 'totals');
    await totalsMatchApi(page, server.adminToken);
    assert.equal((await shownTotals(page)).head.struck, 1);

    await nav(page, 'review');
    await page.locator(`#strike-list button[data-signature="${id}"]`).click();
    await page.locator('#strike-list').getByText('undone').waitFor();
    [, tot] = await server.api('GET', `/api/v1/campaigns/${campaign}/totals`, server.adminToken);
    assert.deepEqual([tot.signatures, tot.struck], [15, 0]);

    await page.locator('#p-serial').fill('S-0001');
    await page.locator('#p-count').fill('25');
    await page.locator('#p-riding').fill('Spadina—Harbourfront');
    await page.locator('#sheet-form button[type=submit]').click();
    await page.locator('#sheet-list').getByText('S-0001').waitFor();
    await page.locator('#sheet-list select[data-serial="S-0001"]').selectOption('counted');
    await page.locator('#sheet-list button[data-serial="S-0001"]').click();
    await until('the sheet counted', async () => {
      const [, r] = await server.api('GET', `/api/v1/campaigns/${campaign}/review`, server.adminToken);
      return r.sheets[0]?.status === 'counted';
    });
    await assertLabelled(page, 'review');
    [, tot] = await server.api('GET', `/api/v1/campaigns/${campaign}/totals`, server.adminToken);
    assert.deepEqual([tot.paper.sheets, tot.paper.signatures, tot.paper.by_status.counted?.signatures], [1, 25, 25]);
    await nav(page, 'totals');
    await totalsMatchApi(page, server.adminToken);
    assert.match(await page.locator('.goal label').textContent(), /40 of 40/);
  });

  it('revokes the phone from the page after a confirmation; its next sync is refused', async () => {
    await page.locator('nav a[href="#/devices"]').click();
    const row = page.locator('#device-list tr', { hasText: "Amina's phone" });
    await row.locator('button.danger').click();
    await page.locator('#revoke-dialog').waitFor();
    await shot(page, '09-devices-confirm');
    await page.locator('#cancel-revoke').click();
    let [, devices] = await server.api('GET', '/api/v1/devices', server.adminToken);
    assert.equal(devices.find((d) => d.name === "Amina's phone").revoked_at, null, 'cancel revokes nothing');
    await row.locator('button.danger').click();
    await page.locator('#confirm-revoke').click();
    await page.locator('#device-list tr', { hasText: "Amina's phone" }).getByText('revoked').waitFor();
    [, devices] = await server.api('GET', '/api/v1/devices', server.adminToken);
    assert.ok(devices.find((d) => d.name === "Amina's phone").revoked_at > 0);
    await sign(amina, 'After Revocation', 'M5V 9Z9', 'Toronto');
    const r = await amina.run(['sync', '--timeout', '10']);
    assert.notEqual(r.code, 0, 'a revoked phone cannot sync');
    assert.match(r.stdout + r.stderr, /revoked/);
    await assertLabelled(page, 'devices');
    await shot(page, '09-devices');
  });

  it('says so clearly when the server goes down mid-session, keeps what was typed, and carries on when it is back', async () => {
    // A second phone, enrolled with a fresh invite's text, signs a record the restarted server
    // will refuse (refuse_records), so that the quarantine has an entry.
    await nav(page, 'invites');
    await page.locator('#i-role').selectOption('canvasser');
    await page.locator('#new-invite button[type=submit]').click();
    await page.locator('#invite-payload').waitFor();
    writeFileSync(join(dir, 'bo.json'), await page.locator('#invite-payload').inputValue());
    await bo.ok(['enroll', '--payload', `@${join(dir, 'bo.json')}`, '--name', "Bo's phone"]);
    bosRefused = await sign(bo, 'Refused Record', 'M4C 1A1', 'Toronto');

    const wall = await newPage('wall');
    await signIn(wall, server.adminToken);
    await wall.goto(`${server.url}/#/campaign/${campaign}/wall`);
    await wall.locator('#wall-status[data-state=live]').waitFor();

    await nav(page, 'review');
    await page.locator('#s-signature').fill('typed-before-the-outage');
    await server.kill();
    await page.locator('#strike-form button[type=submit]').click();
    await page.locator('#review-message').getByText('The server cannot be reached. Nothing you typed is lost').waitFor();
    await page.locator('#connection:not([hidden])').waitFor();
    assert.equal(await page.locator('#s-signature').inputValue(), 'typed-before-the-outage');
    await wall.locator('#wall-status[data-state=stale]').waitFor({ timeout: 10_000 });
    assert.match(await wall.locator('#wall-status').textContent(), /Not live \(updated at .*\)\. Reconnecting/);
    await shot(page, '10-server-down');
    await shot(wall, '10-wall-stale');

    await server.start({ TALLY_REFUSE_RECORDS: bosRefused });
    await page.locator('#connection').waitFor({ state: 'hidden', timeout: 10_000 });
    await wall.locator('#wall-status[data-state=live]').waitFor({ timeout: 15_000 });
    await page.locator('#strike-form button[type=submit]').click();
    await page.getByText('no signature "typed-before-the-outage"').waitFor();
    await wall.context().close();
  });

  it('lists the quarantine with device, time and reason, never the refused data', async () => {
    const r = await bo.run(['--json', 'sync', '--timeout', '10']);
    assert.ok(r.stdout.includes(bosRefused), r.stdout + r.stderr);
    await page.locator('nav a[href="#/quarantine"]').click();
    const row = page.locator('#quarantine-list tbody tr', { hasText: "Bo's phone" }).first();
    await row.waitFor();
    assert.match(await row.textContent(), new RegExp(bosRefused));
    const [, q] = await server.api('GET', '/api/v1/quarantine', server.adminToken);
    assert.ok(q.entries.length >= 1);
    assert.ok(q.entries.every((e) => !('bytes' in e)));
    const text = await page.locator('main').textContent();
    assert.ok(!text.includes('Refused Record'), 'no signer data on the page');
    await assertLabelled(page, 'quarantine');
    await shot(page, '11-quarantine');
  });

  it('says how many synced records are not counted yet, and drops the note once they are', async () => {
    // The projector held back a minute: the phone hears "acknowledged", the totals do not
    // count its record yet, and the page says so.
    await server.stop();
    await server.start({ TALLY_REFUSE_RECORDS: bosRefused, TALLY_PROJECTION_DELAY_MS: '60000' });
    const [, before] = await server.api('GET', `/api/v1/campaigns/${campaign}/totals?wait=false`, server.adminToken);
    await sign(bo, 'Counted Later', 'M5V 4B1', 'Toronto');
    await bo.ok(['sync']);
    const [, pending] = await server.api('GET', `/api/v1/campaigns/${campaign}/totals?wait=false`, server.adminToken);
    assert.equal(pending.projection.pending_records, 1);
    assert.equal(pending.signatures, before.signatures, 'not counted yet');
    await nav(page, 'totals');
    const note = page.locator('#projection-lag');
    await note.waitFor();
    assert.match(await note.textContent(), /Not counted yet: 1 · synced in the last \d+\.\d s/);
    await shot(page, '11b-still-counting');
    // A clean stop counts what is queued; the page reconnects to counted totals.
    await server.stop();
    await server.start({ TALLY_REFUSE_RECORDS: bosRefused });
    await note.waitFor({ state: 'detached', timeout: 15_000 });
    const [, counted] = await server.api('GET', `/api/v1/campaigns/${campaign}/totals?wait=false`, server.adminToken);
    assert.equal(counted.projection.pending_records, 0);
    assert.equal(counted.signatures, before.signatures + 1);
  });

  it("exports in the browser with the identity file: the CSV equals `tally export`'s, and the identity is never sent", async () => {
    const secret = readFileSync(identityFile, 'utf8').split('\n').find((l) => l.startsWith('AGE-SECRET-KEY-'));
    assert.ok(secret);
    for (const every of [false, true]) {
      await nav(page, 'export');
      await page.locator('#x-identity').setInputFiles(identityFile);
      if (every) await page.locator('#x-all').check();
      const download = page.waitForEvent('download');
      await page.locator('#export-form button[type=submit]').click();
      const file = join(dir, every ? 'page-all.csv' : 'page.csv');
      await (await download).saveAs(file);
      const cli = join(dir, every ? 'cli-all.csv' : 'cli.csv');
      await tally(server, org, ['export', '--campaign', campaign, '--identity', identityFile, '--out', cli, ...(every ? ['--all'] : [])]);
      const want = readFileSync(cli, 'utf8');
      const got = readFileSync(file, 'utf8');
      assert.equal(got, want, `the page's CSV${every ? ' (every signature)' : ''} equals tally export's`);
      assert.match(got, /Amara Okafor/);
      await page.locator('#x-done').waitFor();
      assert.equal(await page.locator('#x-identity').inputValue(), '', 'the identity is dropped');
    }
    await assertLabelled(page, 'export');
    await shot(page, '12-export');
    const leaked = requests.filter((r) => r.url.includes('AGE-SECRET') || r.body.includes('AGE-SECRET') || r.body.includes(secret) || Object.values(r.headers).some((h) => h.includes('AGE-SECRET')));
    assert.deepEqual(leaked, [], 'the identity was never sent');
    writeOut('network-log.json', JSON.stringify(requests.map(({ url, method, body, page: p }) => ({ page: p, method, url, body: body.slice(0, 200) })), null, 1));
  });

  it('exports sealed v2 with keys from the server, v1 as before, an erased record as erased and a key the server lacks as "key missing"; a hostile junk key changes nothing', async () => {
    const web = join(import.meta.dirname, '../../web');
    const js = join(import.meta.dirname, '../js');
    const canvasser = async (name) => {
      const [st, inv] = await server.api('POST', '/api/v1/invites', server.adminToken, { campaign, role: 'canvasser' });
      assert.equal(st, 200, JSON.stringify(inv));
      const res = await fetch(`${server.url}/api/v1/enroll`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ code: inv.code, name }) });
      assert.equal(res.status, 200);
      return res.json();
    };
    // A collection of one record, written by node apart from any of our clients and pushed by the
    // JavaScript automerge-repo client; its wrapped key (v2) is returned, not uploaded.
    const push = (device, format, id, name, postal) => {
      const out = JSON.parse(execFileSync('node', ['test/fixtures/collection.mjs', format, campaign, device.device_id, recipient, id, name, postal, 'Toronto'], { cwd: web, encoding: 'utf8' }));
      execFileSync('node', ['client.mjs', `ws://${server.listen}/sync?token=${encodeURIComponent(device.token)}`, 'push-collection', out.doc], { cwd: js, encoding: 'utf8' });
      return out.wrapped;
    };
    const putKeys = async (device, keys) => {
      const res = await fetch(`${server.url}/api/v1/keys`, { method: 'PUT', headers: { Authorization: `Bearer ${device.token}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ keys }) });
      assert.equal(res.status, 200);
      return (await res.json()).results;
    };
    const exportCsv = async (name) => {
      await nav(page, 'export');
      await page.locator('#x-identity').setInputFiles(identityFile);
      await page.locator('#x-all').check();
      const download = page.waitForEvent('download');
      await page.locator('#export-form button[type=submit]').click();
      const file = join(dir, `${name}.csv`);
      await (await download).saveAs(file);
      await page.locator('#x-done').waitFor();
      const cli = join(dir, `${name}-cli.csv`);
      await tally(server, org, ['export', '--campaign', campaign, '--identity', identityFile, '--out', cli, '--all']);
      const got = readFileSync(file, 'utf8');
      assert.equal(got, readFileSync(cli, 'utf8'), "the page's CSV equals tally export's");
      return got.trim().split('\n').slice(1).map((l) => l.split(','));
    };
    const row = (rows, id) => rows.find((r) => r[0] === id);
    const NAME = 10;

    // The phones' own records are v2, their keys on the server.
    const [, sealed] = await server.api('GET', `/api/v1/campaigns/${campaign}/sealed`, server.adminToken);
    const aminas = sealed.filter((r) => r.collected_by !== undefined && Buffer.from(r.sealed.slice(0, 24), 'hex').toString('latin1') === 'tally-seal-2');
    assert.ok(aminas.length >= 2, 'the phones sealed v2');

    const vera = await canvasser("Vera's old phone");
    const mallory = await canvasser("Mallory's phone");
    const v1 = `v1${Date.now().toString(16)}`;
    const late = `late${Date.now().toString(16)}`;
    push(vera, 'v1', v1, 'Vera Oldformat', 'M4C1B5');
    const lateKey = push(vera, 'v2', late, 'Lena Latekey', 'M4C1B6');
    // A hostile device uploads junk (a key that unwraps, but is not the record's) under Vera's
    // record id before her phone does.
    const junk = execFileSync('node', ['-e', `import('age-encryption').then(async ({Encrypter}) => { const e = new Encrypter(); e.addRecipient(${JSON.stringify(recipient)}); process.stdout.write(Buffer.from(await e.encrypt(crypto.getRandomValues(new Uint8Array(32)))).toString('base64')); })`], { cwd: web, encoding: 'utf8' });
    const [junkResult] = await putKeys(mallory, [{ record: late, wrapped: junk }]);
    assert.equal(junkResult.record, late);

    // Erase from the review page: one record by its id (picked in the list), after a confirmation.
    // Amara signed twice (two spellings): the one group of two.
    const groups = new Map();
    for (const r of sealed) groups.set(r.duplicate_group, [...(groups.get(r.duplicate_group) ?? []), r]);
    const pairs = [...groups.values()].filter((g) => g.length === 2);
    assert.equal(pairs.length, 1, 'one signer signed twice');
    const amaras = pairs[0].map((r) => r.id).sort();
    const victim = aminas.find((r) => !amaras.includes(r.id)).id;
    await nav(page, 'review');
    await page.locator('#show-signatures').click();
    await page.locator(`#signature-list button[data-erase="${victim}"]`).click();
    assert.equal(await page.locator('#e-records').inputValue(), victim);
    await page.locator('#erase-form button[type=submit]').click();
    await page.locator('#erase-dialog').waitFor();
    await assertLabelled(page, 'the erase dialog');
    await page.locator('#cancel-erase').click();
    await page.locator('#erase-dialog').waitFor({ state: 'detached' });
    assert.equal((await server.api('GET', `/api/v1/campaigns/${campaign}/sealed`, server.adminToken))[1].find((r) => r.id === victim).erased, false, 'cancelled: nothing erased');
    await page.locator('#erase-form button[type=submit]').click();
    await page.locator('#confirm-erase').click();
    await page.locator('#erase-done', { hasText: '1 signature(s) erased; 1 key(s) deleted' }).waitFor();
    assert.equal(await page.locator('#erase-done').getAttribute('data-erased'), victim);
    // And one person by name and postal code, spelled otherwise: the token is computed in the
    // browser (the name is never sent), and every signature of theirs goes, no other.
    await page.locator('#e-name').fill('  AMARA okafor ');
    await page.locator('#e-postal').fill('m5v-2t6');
    const before = requests.length;
    await page.locator('#erase-form button[type=submit]').click();
    await page.locator('#confirm-erase').click();
    await page.locator('#erase-done', { hasText: '2 signature(s) erased' }).waitFor();
    assert.deepEqual((await page.locator('#erase-done').getAttribute('data-erased')).split(' ').sort(), amaras);
    const sent = requests.slice(before);
    assert.ok(sent.some((r) => r.url.endsWith('/erase') && /"duplicate_token":"[0-9a-f]{64}"/.test(r.body)));
    assert.ok(sent.every((r) => !/amara|okafor|m5v/i.test(r.url + r.body)), 'the name and postal code never left the browser');
    await page.locator('#signature-list tr', { hasText: victim }).filter({ hasText: 'erased' }).waitFor();
    assert.equal(await page.locator(`#signature-list button[data-erase="${victim}"]`).count(), 0, 'an erased record offers nothing more');
    await assertLabelled(page, 'review with erasure');
    await shot(page, '12a-erase');
    const [, afterErase] = await server.api('GET', `/api/v1/campaigns/${campaign}/sealed`, server.adminToken);
    assert.deepEqual(afterErase.filter((r) => r.erased).map((r) => r.id).sort(), [...amaras, victim].sort(), 'those three and no other');
    assert.ok(afterErase.filter((r) => r.erased).every((r) => r.sealed === '' && !r.counted));
    await until('the v1 and v2 records on the server', async () => {
      const [, all] = await server.api('GET', `/api/v1/campaigns/${campaign}/sealed`, server.adminToken);
      return all.some((r) => r.id === v1) && all.some((r) => r.id === late);
    });

    let rows = await exportCsv('v2-before-key');
    assert.equal(row(rows, v1)?.[NAME], 'Vera Oldformat', 'a v1 record still opens');
    for (const id of [victim, ...amaras]) assert.equal(row(rows, id)?.[NAME], 'erased');
    assert.equal(row(rows, late)?.[NAME], 'key missing', "the junk key does not open it, and the export goes on");
    assert.equal(Number(await page.locator('#x-erased').getAttribute('data-n')), 3);
    assert.equal(Number(await page.locator('#x-key-missing').getAttribute('data-n')), 1);
    for (const r of aminas.filter((x) => x.id !== victim && !amaras.includes(x.id))) {
      assert.ok(row(rows, r.id)?.[NAME] && !['erased', 'key missing'].includes(row(rows, r.id)[NAME]), 'the other v2 records open');
    }
    await shot(page, '12a-export-erased');

    // Vera's phone uploads the right key: the record opens, the junk beside it notwithstanding.
    const [stored] = await putKeys(vera, [{ record: late, wrapped: lateKey }]);
    assert.equal(stored.status, 'stored', JSON.stringify(stored));
    rows = await exportCsv('v2-after-key');
    assert.equal(row(rows, late)?.[NAME], 'Lena Latekey');
    assert.equal(await page.locator('#x-key-missing').count(), 0);
    // An erased record's key cannot come back.
    const [again] = await putKeys(mallory, [{ record: victim, wrapped: junk }]);
    assert.equal(again.status, 'refused');
    assert.equal(again.reason, 'erased');
  });

  it('shows the audit log with its filters, and whether its chain of hashes verifies (a row edited in the database is named)', async () => {
    // The cells of each row of the page's audit table: seq, when, actor, action, campaign, ...
    const rows = async (p) =>
      p.locator('#audit-list tbody tr').evaluateAll((trs) => trs.map((tr) => [...tr.children].map((c) => c.textContent)));
    // The form disables its button until the entries are drawn.
    const show = async (p) => {
      await p.locator('#audit-form button[type=submit]').click();
      await p.locator('#audit-form button[type=submit]:not([disabled])').waitFor();
    };
    // A hostile phone's name is markup: the page shows it as text, and runs nothing.
    const evil = '<img src=x onerror="window.__pwned=1">';
    const [ist, inv] = await server.api('POST', '/api/v1/invites', server.adminToken, { campaign, role: 'canvasser' });
    assert.equal(ist, 200);
    const enrolled = await fetch(`${server.url}/api/v1/enroll`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ code: inv.code, name: evil }) });
    assert.equal(enrolled.status, 200);
    await page.locator('nav a[href="#/audit"]').click();
    await page.locator('#audit-list').waitFor();
    await page.locator('#audit-verify[data-ok=true]').waitFor();
    await page.locator('#audit-list tbody tr', { hasText: evil }).first().waitFor();
    assert.equal(await page.locator('#audit-list img').count(), 0, 'no markup from a device name');
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    const [, all] = await server.api('GET', '/api/v1/audit', server.adminToken);
    assert.match(await page.locator('#audit-verify').textContent(), new RegExp(`The chain verifies: ${all.length} entries`));
    const shown = await rows(page);
    assert.equal(shown.length, all.length, 'every entry is shown');
    assert.deepEqual(shown.map((r) => Number(r[0])), all.map((e) => e.seq).reverse(), 'newest first');
    for (const a of ['campaign.create', 'event.add', 'invite.create', 'device.enroll', 'review.strike', 'export.sealed', 'export.keys', 'record.erase']) {
      assert.ok(shown.some((r) => r[3] === a), `an ${a} entry is shown`);
    }
    const text = await page.locator('main').textContent();
    for (const secret of [server.adminToken, organizerToken, 'Amara Okafor', 'AMARA', 'okafor']) assert.ok(!text.includes(secret), 'no token or signer on the audit page');
    // The erasures are there by record id: the one by name names the records, not the person.
    const erasures = all.filter((e) => e.action === 'record.erase');
    assert.equal(erasures.length, 2, JSON.stringify(erasures));
    await assertLabelled(page, 'audit');
    await shot(page, '12b-audit');

    // The filters: an action, an actor, a time.
    await page.locator('#a-action').selectOption('export.sealed');
    await show(page);
    const exports = all.filter((e) => e.action === 'export.sealed');
    await until('the export entries only', async () => (await rows(page)).length === exports.length);
    assert.ok(exports.length >= 4, 'two exports on the page, two by tally export');
    assert.ok((await rows(page)).every((r) => r[3] === 'export.sealed'));
    await page.locator('#a-action').selectOption('');
    await page.locator('#a-actor').fill(organizerDevice);
    await show(page);
    const noor = all.filter((e) => e.actor_id === organizerDevice);
    assert.ok(noor.length >= 1, 'the organizer enrolled');
    await until("the organizer's entries only", async () => (await rows(page)).length === noor.length);
    assert.ok((await rows(page)).every((r) => r[2].includes(organizerDevice) && r[2].includes("Noor's laptop")));
    await page.locator('#a-actor').fill('');
    await page.locator('#a-from').fill('2099-01-01T00:00');
    await show(page);
    await page.locator('#audit-empty').waitFor();
    await page.locator('#a-from').fill('');
    await page.locator('#a-to').fill('2020-01-01T00:00');
    await show(page);
    await page.locator('#audit-empty').waitFor();
    await page.locator('#a-to').fill('');

    // An organizer reads their campaign's entries only, and cannot verify the chain.
    await orgPage.locator('nav a[href="#/audit"]').click();
    await orgPage.locator('#audit-list').waitFor();
    const [, mine] = await server.api('GET', '/api/v1/audit', organizerToken);
    assert.ok(mine.length >= 1 && mine.length < all.length);
    const orgRows = await rows(orgPage);
    assert.equal(orgRows.length, mine.length);
    assert.ok(orgRows.every((r) => r[4] === campaign), "the organizer's page shows their campaign's entries only");
    assert.equal(await orgPage.locator('#a-campaign').count(), 0, 'no campaign filter for an organizer');
    await orgPage.locator('#audit-verify', { hasText: 'Only the admin token checks the chain' }).waitFor();

    // One row edited in the database: the page says the chain is broken, and where.
    const victim = exports[0];
    const db = join(server.data, 'tally.db');
    const sql = (q) => execFileSync('python3', ['-c', 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()', db, q]);
    sql(`UPDATE audit SET target = 'tampered' WHERE seq = ${victim.seq}`);
    try {
      await page.reload();
      await page.locator('#audit-verify[data-ok=false]').waitFor();
      assert.match(await page.locator('#audit-verify').textContent(), new RegExp(`The chain is broken at entry #${victim.seq}: `));
      await shot(page, '12c-audit-broken');
    } finally {
      sql(`UPDATE audit SET target = '${victim.target.replaceAll("'", "''")}' WHERE seq = ${victim.seq}`);
    }
    await page.reload();
    await page.locator('#audit-verify[data-ok=true]').waitFor();
  });

  it('a revoked token gets a clear message over the page, and what was typed stays', async () => {
    await orgPage.locator(`nav a[href="#/campaign/${campaign}/totals"]`).click();
    await orgPage.locator('#live-status[data-state=live]').waitFor();
    await orgPage.locator('#f-city').fill('Toronto');
    const [st] = await server.api('POST', `/api/v1/devices/${organizerDevice}/revoke`, server.adminToken, {});
    assert.equal(st, 200);
    // The server closes the revoked device's stream; the page reconnects and is refused.
    await orgPage.locator('#reauth').waitFor({ timeout: 15_000 });
    assert.match(await orgPage.locator('#reauth .error').textContent(), /refused the token: this device was revoked/);
    assert.equal(await orgPage.locator('#f-city').inputValue(), 'Toronto');
    await shot(orgPage, '13-revoked-token');
    // The right token again: the dialog closes and the view carries on.
    await orgPage.locator('#reauth-token').fill(server.adminToken);
    await orgPage.locator('#reauth button[type=submit]').click();
    await orgPage.locator('#reauth').waitFor({ state: 'detached' });
    await orgPage.locator('#live-status[data-state=live]').waitFor();
  });

  it('speaks French from the same catalogue, fits a phone screen, and works from the keyboard', async () => {
    await nav(page, 'totals');
    await page.locator('#f-city').fill('Toronto');
    await page.locator('#lang').selectOption('fr');
    await page.locator('#view-title', { hasText: 'Totaux' }).waitFor();
    assert.equal(await page.evaluate(() => document.documentElement.lang), 'fr');
    assert.equal(await page.locator('#f-city').inputValue(), 'Toronto', 'the switch keeps what was typed');
    await page.locator('nav a', { hasText: 'Campagnes' }).waitFor();
    await page.locator('#live-status[data-state=live]').waitFor();
    await assertLabelled(page, 'totals (fr)');
    await shot(page, '14-french');
    await page.locator('#lang').selectOption('en');
    await page.locator('#view-title', { hasText: 'Totals' }).waitFor();
    // A browser that prefers French gets French without the switch.
    const french = await newPage('french', { locale: 'fr-CA' });
    await french.goto(`${server.url}/`);
    await french.locator('#signin-title', { hasText: 'Connexion à tally' }).waitFor();
    assert.equal(await french.evaluate(() => document.documentElement.lang), 'fr');
    await french.context().close();

    const phone = await newPage('phone', { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    await signIn(phone, server.adminToken);
    for (const view of ['totals', 'invites', 'review', 'export']) {
      await phone.goto(`${server.url}/#/campaign/${campaign}/${view}`);
      await phone.locator('#view-title').waitFor();
      const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 0, `${view} is ${overflow}px wider than a phone`);
    }
    await phone.goto(`${server.url}/#/campaign/${campaign}/totals`);
    await phone.locator('#live-status[data-state=live]').waitFor();
    await shot(phone, '15-phone-totals');

    // The keyboard: the first Tab reaches the skip link, which moves focus to the content;
    // every nav link and the filters are reachable with Tab.
    await page.goto(`${server.url}/#/campaign/${campaign}/totals`);
    await page.locator('#live-status[data-state=live]').waitFor();
    await page.locator('body').focus();
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement.className), 'skip');
    const reached = new Set();
    for (let i = 0; i < 48; i++) {
      await page.keyboard.press('Tab');
      reached.add(await page.evaluate(() => document.activeElement.id || document.activeElement.getAttribute('href') || document.activeElement.tagName));
    }
    for (const want of ['#/campaigns', '#/devices', '#/quarantine', `#/campaign/${campaign}/review`, 'f-event', 'f-city', 'f-fsa', 'f-riding', 'f-canvasser', 'lang']) {
      assert.ok(reached.has(want), `Tab reaches ${want} (reached: ${[...reached].join(', ')})`);
    }
    await page.keyboard.press('Shift+Tab');
    await page.keyboard.press('Enter');
  });

  it("speaks the API's types: each body type of the page has exactly the fields the OpenAPI document gives it", async () => {
    const doc = await (await fetch(`${server.url}/api/v1/openapi.json`)).json();
    const schemas = doc.components.schemas;
    const source = readFileSync(join(import.meta.dirname, '../../web/src/dashboard/types.ts'), 'utf8');
    const interfaces = new Map();
    for (const m of source.matchAll(/export interface (\w+) \{([^}]*)\}/g)) {
      const fields = [...m[2].matchAll(/^\s+(\w+)\??:/gm)].map((f) => f[1]);
      interfaces.set(m[1], fields.sort());
    }
    // The page's name for a schema the document writes inline.
    const named = { ...schemas, CampaignSummary: schemas.Campaigns.properties.campaigns.items };
    let checked = 0;
    for (const [name, fields] of interfaces) {
      const schema = named[name];
      assert.ok(schema, `types.ts's ${name} is no schema of the OpenAPI document`);
      assert.deepEqual(fields, Object.keys(schema.properties).sort(), `the fields of ${name}`);
      checked += 1;
    }
    assert.ok(checked >= 20, `${checked} types checked`);
  });

  it('keeps to its own origin: a strict CSP, no CORS for other origins, nothing loaded from elsewhere', async () => {
    const res = await fetch(`${server.url}/`);
    const csp = res.headers.get('content-security-policy');
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'self'/);
    assert.match(csp, /connect-src 'self'/);
    assert.doesNotMatch(csp, /unsafe/);
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
    for (const [method, path] of [
      ['GET', '/api/v1/campaigns'],
      ['OPTIONS', '/api/v1/campaigns'],
      ['GET', '/'],
    ]) {
      const r = await fetch(`${server.url}${path}`, { method, headers: { Origin: 'https://evil.example', 'Access-Control-Request-Method': 'POST', Authorization: `Bearer ${server.adminToken}` } });
      assert.equal(r.headers.get('access-control-allow-origin'), null, `${method} ${path}`);
    }
    // A write with no token is refused, whatever the page's cookies (there are none).
    const [st] = await server.api('POST', '/api/v1/invites', '', { campaign, role: 'canvasser' });
    assert.equal(st, 401);
    const origins = new Set(requests.map((r) => new URL(r.url).origin));
    origins.delete('null');
    for (const o of origins) assert.ok(o === server.url || o === 'blob:' || o.startsWith('blob'), `a request to ${o}`);
    assert.deepEqual(consoleErrors, [], 'no script errors and no CSP violations');
    // No token in the server's log, ever.
    for (const token of [server.adminToken, organizerToken]) assert.ok(!server.log.includes(token), 'a token in the log');
  });
});
