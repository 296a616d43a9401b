// The canvassers' app in a real browser (Debian's Chromium, driven by playwright-core) against a
// real `tally serve` and the real organizer API and commands (issue 16). The steps read as a
// canvasser's day; each is a test, in order, sharing one server, one phone (a browser context:
// its IndexedDB, its service worker) and one campaign:
//
//   1. enroll from the invite's link (the payload after #) and see the petition
//   2. offline for real (context.setOffline): the page is reloaded and still opens
//   3. offline: 6 signatures (two of one person, spelled differently), a refused form naming its
//      field, 2 check-ins (one a walk-in); the pending count says 8
//   4. the page closed and opened again, offline: all 8 are there
//   5. online: it syncs by itself, the pending count reaches 0; the server's key table holds
//      each signature's record key (sealed v2, issue 15), and the phone no longer does
//   6. the organizer API's totals are exact (6 signatures, 5 unique signers, 2 check-ins), and
//      `tally export` opens every name the phone took
//   7. after sync, IndexedDB holds no signer's name, email or phone in the clear
//   8. the same person signed by `tally-device` gets the app's duplicate token (same group, one
//      unique signer)
//   9. a record the server refuses (`TALLY_REFUSE_RECORDS`) is shown with the server's reason;
//      the phone's later signatures reach the server and count
//  10. the server killed during a sync: nothing is lost, the app syncs once it is back
//  11. a revoked phone says so (a browser cannot see the 401: it asks /api/v1/me), keeps what
//      it takes, and enrolls again from a new invite's link: what waited moves and counts
//  11b. a signature whose change the server acknowledged but whose key it does not hold (the
//      key upload refused) stays "not yet safe", and becomes safe once its key is stored
//  11c. a record an organizer erased before its key reached the server: the server refuses the
//      key ("erased"), the phone counts the record done (safe, shown erased), and no later sync
//      brings the key back
//  12. nothing came from another origin; no script error or CSP violation; the service worker's
//      scope is /app/
//  13. the screens in French
//
// Screenshots of every screen (phone-sized) go to $TALLY_WEB_OUT/screens; the figures (time to
// first paint offline, signing time) to $TALLY_WEB_OUT/figures.json. The fixtures are the
// dashboard's (harness.mjs) and the app's (app-harness.mjs). tests/e2e/app.rs runs it:
//
//   TALLY_BIN_DIR=target/debug node --test tests/web/app.test.mjs
//
// Nothing here sleeps to synchronize: every wait is for a condition, with a deadline.

import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { OUT, PHONE, Shots, World, launchWith } from './app-harness.mjs';
import { browser as launch, until } from './harness.mjs';

const world = new World();
const shots = new Shots();
const figures = {};
let browser;
let context;
let page;
let campaign;
let failed = false;
/** Every request the app's pages made, and every script error or CSP violation they reported. */
const requests = [];
const consoleErrors = [];

function watch(p) {
  p.on('request', (r) => requests.push(r.url()));
  p.on('console', (m) => {
    // Offline, the browser itself reports the connections it refused.
    if (process.env.APP_TEST_DEBUG && m.type() === 'error') console.error('[console]', m.text());
    if (m.type() === 'error' && !/Failed to load resource|ERR_INTERNET_DISCONNECTED|WebSocket connection to/.test(m.text())) consoleErrors.push(m.text());
  });
  p.on('pageerror', (e) => consoleErrors.push(e.message));
  return p;
}

/** Each step runs only if the ones before it passed (they build on each other). */
function step(name, body) {
  test(name, async (t) => {
    if (failed) return t.skip('an earlier step failed');
    try {
      await body(t);
    } catch (e) {
      failed = true;
      if (page && !page.isClosed()) await shots.take(page, `failed-${name.slice(0, 30).replace(/\W+/g, '-')}`).catch(() => undefined);
      throw e;
    }
  });
}

// Six signatures: Amara twice (case, spacing, and the postal code's spelling differ).
const SIGNERS = [
  { name: 'Amara Okafor', postal_code: 'M5V 2T6', city: 'Toronto', email: 'amara@example.org', phone: '416 555 0199', consent: true },
  { name: '  amara   OKAFOR ', postal_code: 'm5v2t6', city: 'Toronto' },
  { name: 'Jean Tremblay', postal_code: 'H2X 1Y4', city: 'Montréal', phone: '+1 514 555 0101' },
  { name: 'José Álvarez', postal_code: 'K1A 0B1', city: 'Ottawa', email: 'jose.alvarez@example.org', street: '1 Wellington St' },
  { name: 'Nguyễn Thị Minh Khai', postal_code: 'V6B 1A1', city: 'Vancouver', riding: 'Vancouver Centre' },
  { name: 'Chloé Roy', postal_code: 'X0A 1H0', city: 'Iqaluit', event: 'rally' },
];
const ATTENDEES = [
  { name: 'Sam Lee', walkIn: false },
  { name: 'Priya Natarajan', walkIn: true },
];

/** The campaign's record keys on the server (the organizer's endpoint, every page): record id -> devices. */
async function serverKeys() {
  const out = new Map();
  let after = null;
  for (;;) {
    const page = await world.api(`/api/v1/campaigns/${campaign}/keys?limit=1000${after ? `&after=${after}` : ''}`);
    for (const k of page.keys) out.set(k.record, [...(out.get(k.record) ?? []), k.device]);
    if (!page.next || page.keys.length === 0) return out;
    after = page.next;
  }
}

/** The phone's receipts (IndexedDB), as stored. */
async function receiptsInDb() {
  return page.evaluate(async () => {
    const db = await new Promise((ok) => (indexedDB.open('tally-phone').onsuccess = (e) => ok(e.target.result)));
    return new Promise((ok) => (db.transaction('receipts').objectStore('receipts').getAll().onsuccess = (e) => ok(e.target.result.map((r) => ({ ...r, wrapped: r.wrapped ? r.wrapped.length : undefined, record: r.record ? { id: r.record.id, sealed: Array.from(r.record.sealed?.slice?.(0, 12) ?? []) } : undefined })))));
  });
}

async function pending() {
  return Number(await page.locator('#pending').getAttribute('data-pending'));
}

async function waitPending(n, timeout = 30_000) {
  await page.waitForFunction((want) => document.querySelector('#pending')?.getAttribute('data-pending') === String(want), n, { timeout });
}

async function home() {
  while (await page.locator('button.back').count()) {
    await page.locator('button.back').first().click();
  }
  await page.locator('#go-sign').waitFor();
}

async function sign(s) {
  await page.locator('#go-sign:not([disabled])').click();
  await fill(s);
  await page.locator('#save').click();
  await page.locator('#saved', { hasText: s.name.trim() }).waitFor({ timeout: 10_000 });
  await home();
}

async function fill(s) {
  await page.locator('#name').fill(s.name);
  await page.locator('#postal_code').fill(s.postal_code);
  await page.locator('#city').fill(s.city);
  for (const f of ['email', 'phone', 'street', 'riding']) await page.locator(`#${f}`).fill(s[f] ?? '');
  await page.locator('#event').selectOption(s.event ?? '');
  await page.locator('#consent_contact').setChecked(Boolean(s.consent));
}

async function checkin(a, shot) {
  await page.locator('#go-checkin:not([disabled])').click();
  await page.locator('#event').selectOption('rally');
  await page.locator('#name').fill(a.name);
  await page.locator('#walk_in').setChecked(a.walkIn);
  await page.locator('#save').click();
  await page.locator('#saved', { hasText: a.name }).waitFor({ timeout: 10_000 });
  if (shot) await shots.take(page, shot);
  await home();
}

/** Every value of every IndexedDB database of the page, as text (bytes as UTF-8 and Latin-1). */
async function indexedDbText() {
  return page.evaluate(async () => {
    const req = (r) => new Promise((ok, fail) => ((r.onsuccess = () => ok(r.result)), (r.onerror = () => fail(r.error))));
    const parts = [];
    const bytes = (b) => {
      const u = b instanceof Uint8Array ? b : new Uint8Array(b);
      return `${new TextDecoder('utf-8').decode(u)}\n${Array.from(u, (c) => String.fromCharCode(c)).join('')}`;
    };
    const show = (v) =>
      JSON.stringify(v, (_k, x) => (x instanceof Uint8Array || x instanceof ArrayBuffer ? bytes(x) : x));
    for (const { name } of await indexedDB.databases()) {
      const db = await req(indexedDB.open(name));
      for (const store of Array.from(db.objectStoreNames)) {
        const tx = db.transaction(store, 'readonly');
        const values = await req(tx.objectStore(store).getAll());
        const keys = await req(tx.objectStore(store).getAllKeys());
        parts.push(`# ${name}/${store}: ${values.length}`, ...values.map(show), ...keys.map(show));
      }
      db.close();
    }
    return parts.join('\n');
  });
}

before(async () => {
  await world.start();
  const recipient = (await world.tally('keygen', '--out', 'organizer.age')).trim().split('\n').pop();
  const created = await world.tallyJson(
    'campaign', 'create', '--title', 'Status for All', '--goal', '1000',
    '--petition', 'We call on the Government of Canada to regularize all undocumented people.',
    '--addressee', 'the House of Commons', '--recipient', recipient,
  );
  campaign = created.campaign;
  await world.tally('event', 'add', '--campaign', campaign, '--id', 'rally', '--name', "Rally at Queen's Park", '--city', 'Toronto', '--starts-at', '2026-07-01T18:00:00-04:00', '--place', "Queen's Park");
  browser = await launch();
  context = await browser.newContext(PHONE);
  page = watch(await context.newPage());
});

after(async () => {
  mkdirSync(OUT, { recursive: true });
  writeFileSync(join(OUT, 'figures.json'), JSON.stringify({ ...figures, screenshots: shots.paths }, null, 2) + '\n');
  await browser?.close();
  await world.close();
});

step('1. the invite link opens the app, which enrolls and shows the petition', async () => {
  const invite = await world.tallyJson('invite', '--campaign', campaign);
  const link = invite.app_link ?? `${world.phoneUrl}/app/#${encodeURIComponent(JSON.stringify(invite.payload))}`;
  assert.ok(link.startsWith(`${world.phoneUrl}/app/#`), link);
  // The payload is after '#': it never reaches the server (a fragment is not sent).
  assert.equal(decodeURIComponent(new URL(link).hash.slice(1)), JSON.stringify(invite.payload));
  await page.goto(link);
  await page.locator('#phone-name').fill("Amina's phone");
  await shots.take(page, 'enroll');
  await page.locator('#enroll').click();
  await page.locator('#petition', { hasText: 'regularize all undocumented people' }).waitFor({ timeout: 20_000 });
  assert.equal(new URL(page.url()).hash, '', 'the invite is dropped from the address once used');
  await page.locator('#go-sign:not([disabled])').waitFor();
  // The service worker controls the page and holds the app's files before the signal goes.
  await page.waitForFunction(() => navigator.serviceWorker.controller !== null, null, { timeout: 20_000 });
  await page.evaluate(async () => {
    const cached = await Promise.all((await caches.keys()).map(async (k) => (await (await caches.open(k)).keys()).length));
    if (!cached.some((n) => n > 5)) throw new Error(`the app shell is not cached: ${cached}`);
  });
  await page.locator('#link[data-link="connected"]').waitFor();
  await until('the team total from the server', () => page.locator('#team-total', { hasText: '0 signatures' }).count());
  await shots.take(page, 'home');
});

step('2. offline for real, the page reloads and still opens', async () => {
  await context.setOffline(true);
  await page.reload();
  await page.locator('#petition', { hasText: 'regularize all undocumented people' }).waitFor();
  await page.locator('#go-sign:not([disabled])').waitFor();
  await page.locator('#link[data-link="offline"]').waitFor();
  figures.first_paint_offline_ms = await page.evaluate(() => performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null);
  figures.ready_to_sign_offline_ms = await page.evaluate(() => performance.now());
  assert.ok(await page.locator('#team-total').count(), 'the last team total is shown offline');
  await shots.take(page, 'home-offline');
});

step('3. offline: 6 signatures, a refused form, 2 check-ins; 8 not yet safe', async () => {
  // A form the rules refuse names its field and writes nothing.
  await page.locator('#go-sign').click();
  await shots.take(page, 'sign');
  await fill({ name: 'Test Refusal', postal_code: 'Z5V 2T6', city: 'Toronto' });
  await page.locator('#save').click();
  const error = page.locator('#form-error');
  await error.waitFor();
  assert.match(await error.innerText(), /^Postal code: “Z5V 2T6” starts with Z/);
  assert.equal(await page.locator('#postal_code').getAttribute('aria-invalid'), 'true');
  assert.equal(await page.locator('#error-postal_code').innerText(), await error.innerText(), 'said under the field too');
  await shots.take(page, 'sign-refused-field');
  await page.locator('#postal_code').fill('M5V 2T6');
  await page.locator('#email').fill('not-an-email');
  await page.locator('#save').click();
  await page.locator('#form-error', { hasText: /^Email \(optional\): “not-an-email” is not an email address/ }).waitFor();
  await home();
  assert.equal(await pending(), 0, 'a refused form writes nothing');

  for (const s of SIGNERS) await sign(s);
  for (const [i, a] of ATTENDEES.entries()) await checkin(a, i === 1 ? 'checkin' : undefined);
  await waitPending(8);
  // Sealed v2: each signature's copy starts "tally-seal-2", and its wrapped key waits on the phone.
  const taken = (await receiptsInDb()).filter((r) => r.kind === 'signature');
  assert.equal(taken.length, 6);
  for (const r of taken) {
    assert.equal(String.fromCharCode(...r.record.sealed), 'tally-seal-2', 'sealed v2');
    assert.ok(r.wrapped > 32, 'the wrapped key is kept until the server has it');
  }
  assert.match(await page.locator('#pending').innerText(), /8 not yet safe on the server\n6 signatures, 2 check-ins only on this phone/);
  await shots.take(page, 'home-pending');
  const measures = await page.evaluate(() => performance.getEntriesByName('tally-sign').map((m) => m.duration));
  figures.sign_ms = { runs: measures.length, median: measures.sort((a, b) => a - b)[Math.floor(measures.length / 2)], max: Math.max(...measures) };
});

step('4. the page closed and opened again offline: all 8 are there', async () => {
  await page.close();
  page = watch(await context.newPage());
  await page.goto(`${world.phoneUrl}/app/`);
  await page.locator('#petition').waitFor();
  await waitPending(8);
  await page.locator('#go-records').click();
  const items = page.locator('#records-pending li.receipt');
  await until('8 pending records listed', async () => (await items.count()) === 8);
  for (const s of SIGNERS) await page.locator('#records-pending li', { hasText: s.name.trim() }).first().waitFor();
  for (const a of ATTENDEES) await page.locator('#records-pending li', { hasText: a.name }).waitFor();
  await shots.take(page, 'records-pending');
  await home();
});

step('5. online again: the app syncs by itself, nothing pending', async () => {
  const started = Date.now();
  await context.setOffline(false);
  await waitPending(0);
  figures.sync_8_records_after_online_ms = Date.now() - started;
  // Both arrived: each signature's key is in the server's key table, uploaded by this phone; the
  // phone dropped its copy.
  const receipts = await receiptsInDb();
  const keys = await serverKeys();
  const mine = receipts.filter((r) => r.kind === 'signature');
  for (const r of mine) {
    assert.deepEqual(keys.get(r.record_id)?.length, 1, `the key of ${r.record_id} is on the server`);
    assert.equal(r.state, 'safe');
    assert.equal(r.wrapped, undefined, 'the phone dropped the key once safe');
  }
  assert.ok(receipts.filter((r) => r.kind === 'checkin').every((r) => !keys.has(r.record_id)), 'a check-in has no key');
  await page.locator('#link[data-link="connected"]').waitFor();
  await shots.take(page, 'home-synced');
  await page.locator('#go-records').click();
  await until('8 safe records', async () => (await page.locator('#records-safe li.receipt').count()) === 8);
  assert.equal(await page.locator('#records-pending li.receipt').count(), 0);
  await shots.take(page, 'records-safe');
  await home();
});

step('6. the organizer API counts exactly, and tally export opens every name', async () => {
  const totals = await until('the projection to count 6', async () => {
    const t = await world.api(`/api/v1/campaigns/${campaign}/totals`);
    return t.signatures === 6 ? t : undefined;
  });
  assert.equal(totals.signatures, 6);
  assert.equal(totals.unique_signers, 5);
  const rally = totals.checkins?.rally ?? totals.checkins?.find?.((c) => c.event === 'rally');
  assert.equal(rally?.unique, 2, JSON.stringify(totals.checkins));
  assert.equal(rally?.walk_in, 1, JSON.stringify(totals.checkins));
  await world.tally('export', '--campaign', campaign, '--identity', 'organizer.age', '--out', 'all.csv', '--all');
  const csv = world.read('all.csv');
  for (const s of SIGNERS) assert.ok(csv.includes(s.name.trim()), `${s.name.trim()} in the export:\n${csv}`);
  assert.ok(csv.includes('amara@example.org') && csv.includes('416 555 0199') && csv.includes('1 Wellington St'));
  assert.ok(csv.includes('M5V2T6') && csv.includes('K1A0B1'));
  // The team total comes back to the phone through the totals document.
  await page.locator('#team-total', { hasText: '6 signatures · 5 people' }).waitFor({ timeout: 20_000 });
});

step('7. after sync, IndexedDB holds no name, email or phone in the clear', async () => {
  const text = await indexedDbText();
  assert.match(text, /# tally-phone\/receipts: 8/);
  assert.match(text, /# tally-repo\/documents: /);
  const secrets = [
    ...SIGNERS.flatMap((s) => [s.name.trim(), s.name.trim().toLowerCase(), s.email, s.phone, s.street]),
    ...ATTENDEES.map((a) => a.name),
    'Okafor', 'OKAFOR', 'okafor', 'Tremblay', 'Álvarez', 'Nguyễn', 'Chloé', 'Natarajan',
  ].filter(Boolean);
  for (const s of secrets) assert.ok(!text.includes(s), `IndexedDB holds ${JSON.stringify(s)} in the clear`);
  // Nor the page's other storage.
  const other = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }));
  for (const s of secrets) assert.ok(!other.includes(s), `web storage holds ${JSON.stringify(s)}`);
});

step('8. the same person signed by tally-device gets the app\'s duplicate token', async () => {
  const invite = await world.tallyJson('invite', '--campaign', campaign);
  const payload = world.write('bo.json', JSON.stringify(invite.payload));
  const bo = world.device('bo');
  await bo.ok(['enroll', '--payload', `@${payload}`, '--name', "Bo's phone"]);
  await bo.ok(['sign', '--name', 'AMARA okafor', '--postal-code', 'M5V-2T6', '--city', 'Toronto']);
  await bo.ok(['sync']);
  const totals = await until('7 signatures', async () => {
    const t = await world.api(`/api/v1/campaigns/${campaign}/totals`);
    return t.signatures === 7 ? t : undefined;
  });
  assert.equal(totals.unique_signers, 5, 'the CLI phone\'s Amara is the app\'s Amara');
  const sealed = await world.api(`/api/v1/campaigns/${campaign}/sealed`);
  const records = sealed.records ?? sealed;
  const groups = new Map();
  for (const r of records) groups.set(r.duplicate_group, [...(groups.get(r.duplicate_group) ?? []), r.collected_by]);
  const amara = [...groups.values()].find((by) => by.length === 3);
  assert.ok(amara, `one duplicate group holds the app's two Amaras and tally-device's: ${JSON.stringify([...groups])}`);
  assert.equal(new Set(amara).size, 2, 'from two phones');
});

step('9. a record the server refuses is shown with its reason; later signatures still count', async () => {
  await context.setOffline(true);
  await page.locator('#link[data-link="offline"]').waitFor();
  await sign({ name: 'Refused Person', postal_code: 'M4C 1B5', city: 'Toronto' });
  await sign({ name: 'Kept Person', postal_code: 'M4C 1B6', city: 'Toronto' });
  await page.locator('#go-records').click();
  const refusedId = await page.locator('#records-pending li', { hasText: 'Refused Person' }).getAttribute('data-record');
  assert.match(refusedId ?? '', /^[0-9a-f]{24}$/);
  await home();
  // The operator refuses that record (a stand-in for any rule the server holds against it).
  await world.stop();
  await world.start({ TALLY_REFUSE_RECORDS: refusedId });
  await context.setOffline(false);
  await waitPending(0);
  await page.locator('#set-aside').waitFor();
  await page.locator('#go-records').click();
  const refused = page.locator('#records-refused li', { hasText: 'Refused Person' });
  await refused.waitFor();
  const reason = await refused.locator('.reason').innerText();
  assert.match(reason, new RegExp(`The server’s reason: .*this server refuses record "${refusedId}"`));
  await refused.scrollIntoViewIfNeeded();
  await shots.take(page, 'records-refused');
  await home();
  // Later signatures go through the next collection of the chain and count.
  await sign({ name: 'After Refusal', postal_code: 'M4C 1B7', city: 'Toronto' });
  await waitPending(0);
  const totals = await until('9 signatures', async () => {
    const t = await world.api(`/api/v1/campaigns/${campaign}/totals`);
    return t.signatures === 9 ? t : undefined;
  });
  assert.equal(totals.signatures, 9, '6 + tally-device\'s 1 + Kept Person + After Refusal; not the refused one');
  const chain = await page.evaluate(async () => {
    const db = await new Promise((ok) => (indexedDB.open('tally-phone').onsuccess = (e) => ok(e.target.result)));
    return new Promise((ok) => (db.transaction('settings').objectStore('settings').get('chain').onsuccess = (e) => ok(e.target.result)));
  });
  assert.deepEqual(chain.map((l) => l.state), ['refused', 'current'], JSON.stringify(chain));
});

step('10. the server killed during a sync: nothing is lost, the app syncs when it is back', async () => {
  await world.stop();
  await world.start();
  const receipts = () =>
    page.evaluate(async () => {
      const db = await new Promise((ok) => (indexedDB.open('tally-phone').onsuccess = (e) => ok(e.target.result)));
      return new Promise((ok) => (db.transaction('receipts').objectStore('receipts').count().onsuccess = (e) => ok(e.target.result)));
    });
  const signatures = async (n) =>
    until(`${n} signatures counted`, async () => {
      const t = await world.api(`/api/v1/campaigns/${campaign}/totals`);
      return t.signatures === n ? t : undefined;
    });
  const offlineSign = async (prefix, n) => {
    await context.setOffline(true);
    await page.locator('#link[data-link="offline"]').waitFor();
    for (let i = 0; i < n; i++) {
      await sign({ name: `${prefix} ${i}`, postal_code: 'T2P 1J9', city: 'Calgary', email: `${prefix.toLowerCase().replace(/\W/g, '')}${i}@example.org`, street: `${i} Stephen Ave` });
    }
    await waitPending(n);
  };

  // a. Killed once the server has committed the phone's changes, before the phone hears so
  //    (the proxy holds back the server's answers once the phone has sent its records).
  await offlineSign('After Commit', 8);
  world.proxy.holdAfter = 3000;
  await context.setOffline(false);
  await signatures(17);
  assert.equal(await pending(), 8, 'the phone has not heard the acknowledgement');
  assert.ok(world.proxy.held > 0, 'the proxy held back the server\'s answers');
  await world.kill();
  world.proxy.holdAfter = Infinity;
  await page.locator('#link[data-link="waiting"]').waitFor({ timeout: 20_000 });
  assert.equal(await pending(), 8);
  assert.equal(await receipts(), 8 + 3 + 8, 'every record still has its receipt');
  await shots.take(page, 'home-server-gone');
  await world.start();
  await waitPending(0, 60_000);
  assert.equal((await signatures(17)).signatures, 17, 'counted once, though sent twice');

  // b. Killed the moment the server greets the phone, as it starts to sync.
  await offlineSign('At Greeting', 3);
  const greeted = page.waitForFunction(() => document.querySelector('#link')?.getAttribute('data-link') === 'connected', null, { polling: 'raf', timeout: 20_000 });
  await context.setOffline(false);
  await greeted;
  await world.kill();
  await page.locator('#link[data-link="waiting"]').waitFor({ timeout: 20_000 });
  figures.pending_when_killed_at_greeting = await pending();
  assert.equal(await receipts(), 8 + 3 + 8 + 3);
  await world.start();
  await waitPending(0, 60_000);
  assert.equal((await signatures(20)).signatures, 20);
});

step('11. a revoked phone says so, keeps what it takes, and enrolls again with a new invite', async () => {
  const enrollment = await page.evaluate(async () => {
    const db = await new Promise((ok) => (indexedDB.open('tally-phone').onsuccess = (e) => ok(e.target.result)));
    return new Promise((ok) => (db.transaction('settings').objectStore('settings').get('enrollment').onsuccess = (e) => ok(e.target.result)));
  });
  await context.setOffline(true);
  await page.locator('#link[data-link="offline"]').waitFor();
  await sign({ name: 'Waiting One', postal_code: 'R3C 4T3', city: 'Winnipeg' });
  await sign({ name: 'Waiting Two', postal_code: 'R3C 4T4', city: 'Winnipeg' });
  const [status] = await world.server.api('POST', `/api/v1/devices/${enrollment.device_id}/revoke`, world.server.adminToken);
  assert.equal(status, 200);
  await context.setOffline(false);
  // A browser cannot see the upgrade's 401: the app asks /api/v1/me with its token.
  const refused = page.locator('#token-refused');
  await refused.waitFor({ timeout: 30_000 });
  assert.match(await refused.innerText(), /2 records are waiting: enroll again with a new invite/);
  assert.equal(await pending(), 2);
  await shots.take(page, 'token-refused');
  // Still collecting: it waits with the others.
  await sign({ name: 'Waiting Three', postal_code: 'R3C 4T5', city: 'Winnipeg' });
  await waitPending(3);
  const invite = await world.tallyJson('invite', '--campaign', campaign);
  await page.goto(invite.app_link);
  await page.locator('#enroll-again').click();
  await page.locator('#enroll').click();
  await page.locator('#petition').waitFor({ timeout: 20_000 });
  await waitPending(0);
  const totals = await until('23 signatures', async () => {
    const t = await world.api(`/api/v1/campaigns/${campaign}/totals`);
    return t.signatures === 23 ? t : undefined;
  });
  assert.equal(totals.signatures, 23);
  const after = await page.evaluate(async () => {
    const db = await new Promise((ok) => (indexedDB.open('tally-phone').onsuccess = (e) => ok(e.target.result)));
    const get = (k) => new Promise((ok) => (db.transaction('settings').objectStore('settings').get(k).onsuccess = (e) => ok(e.target.result)));
    return { chain: await get('chain'), enrollment: await get('enrollment') };
  });
  assert.notEqual(after.enrollment.device_id, enrollment.device_id);
  assert.equal(after.enrollment.refused_at, undefined);
  assert.deepEqual(after.chain.map((l) => l.state), ['refused', 'retired', 'current'], JSON.stringify(after.chain));
  assert.equal(after.chain[2].owner, after.enrollment.device_id);
});

step('11b. a record whose key the server does not hold yet is not safe, until it does', async () => {
  world.proxy.refuse = /^PUT \/api\/v1\/keys /;
  let recordId;
  try {
    await sign({ name: 'Key Later', postal_code: 'M6H 1A1', city: 'Toronto' });
    // The server acknowledges the change (it counts the signature), but the key was refused.
    await until('24 signatures', async () => (await world.api(`/api/v1/campaigns/${campaign}/totals`)).signatures === 24);
    await page.locator('#go-records').click();
    const item = page.locator('#records-pending li[data-state=unkeyed]', { hasText: 'Key Later' });
    await item.waitFor({ timeout: 20_000 });
    assert.match(await item.innerText(), /its key \(which lets organizers open it\) is not yet/);
    recordId = await item.getAttribute('data-record');
    await shots.take(page, 'records-key-waiting');
    await home();
    assert.equal(await pending(), 1, 'not safe without its key');
    assert.match(await page.locator('#pending').innerText(), /1 not yet safe on the server\nOn the server but not yet their keys \(which let organizers open them\): 1 signature\./);
    const receipt = (await receiptsInDb()).find((r) => r.record_id === recordId);
    assert.equal(receipt.state, 'unkeyed');
    assert.ok(receipt.wrapped > 32, 'the key is kept');
    assert.ok(!(await serverKeys()).has(recordId));
    assert.ok(world.proxy.refused > 0, 'the proxy refused the key upload');
  } finally {
    world.proxy.refuse = null;
  }
  // The upload is tried again (here at once, with the sync button): safe, its key on the server.
  await page.locator('#sync-now').click();
  await waitPending(0);
  const receipt = (await receiptsInDb()).find((r) => r.record_id === recordId);
  assert.equal(receipt.state, 'safe');
  assert.equal(receipt.wrapped, undefined, 'the phone dropped the key');
  assert.deepEqual((await serverKeys()).get(recordId)?.length, 1, 'its key is on the server now');
});

step('11c. a record erased before its key reached the server: the key is refused as erased, the record is done', async () => {
  world.proxy.refuse = /^PUT \/api\/v1\/keys /;
  let recordId;
  try {
    await sign({ name: 'Erase Me', postal_code: 'M6H 1A2', city: 'Toronto' });
    await until('25 signatures', async () => (await world.api(`/api/v1/campaigns/${campaign}/totals`)).signatures === 25);
    recordId = (await receiptsInDb()).find((r) => r.display?.name === 'Erase Me')?.record_id;
    assert.ok(recordId);
    await until('the record acknowledged, its key refused', async () => (await receiptsInDb()).find((r) => r.record_id === recordId)?.state === 'unkeyed');
    // The signer asks to be erased (the organizer's erase endpoint, by record id).
    const [st, erased] = await world.server.api('POST', `/api/v1/campaigns/${campaign}/erase`, world.server.adminToken, { records: [recordId] });
    assert.equal(st, 200, JSON.stringify(erased));
    assert.deepEqual(erased.erased, [recordId]);
    assert.equal(erased.keys_deleted, 0, 'no key was there');
    assert.deepEqual(erased.v1, [], 'sealed v2: erasable');
  } finally {
    world.proxy.refuse = null;
  }
  await page.locator('#sync-now').click();
  await waitPending(0);
  const receipt = (await receiptsInDb()).find((r) => r.record_id === recordId);
  assert.equal(receipt.state, 'safe');
  assert.equal(receipt.erased, true);
  assert.equal(receipt.wrapped, undefined, 'the phone dropped the key');
  assert.ok(!(await serverKeys()).has(recordId), 'the key never came back');
  const totals = await until('the erased signature no longer counted', async () => {
    const t = await world.api(`/api/v1/campaigns/${campaign}/totals`);
    return t.signatures === 24 ? t : undefined;
  });
  assert.equal(totals.signatures, 24);
  await page.locator('#go-records').click();
  await page.locator(`#records-safe li[data-record="${recordId}"]`, { hasText: 'Erased by an organizer' }).waitFor();
  await home();
  // Syncing again brings nothing back.
  await page.locator('#sync-now').click();
  await page.locator('#link[data-link="connected"]').waitFor();
  assert.ok(!(await serverKeys()).has(recordId));
});

step('12. nothing from another origin, no script error, no CSP violation', async () => {
  const origins = new Set(requests.map((u) => new URL(u).origin));
  assert.deepEqual([...origins], [world.phoneUrl], `requests went to ${[...origins].join(', ')}`);
  assert.ok(requests.some((u) => u.endsWith('/app/automerge.wasm')), 'the WebAssembly came from the server');
  assert.deepEqual(consoleErrors, []);
  const res = await fetch(`${world.url}/app/sw.js`);
  assert.equal(res.headers.get('content-type'), 'text/javascript; charset=utf-8');
  assert.match(res.headers.get('content-security-policy'), /script-src 'self' 'wasm-unsafe-eval';/);
  const scope = await page.evaluate(async () => (await navigator.serviceWorker.getRegistration())?.scope);
  assert.equal(scope, `${world.phoneUrl}/app/`);
  // Over plain http from another name than localhost (no secure context: no WebCrypto, no
  // service worker), the app says why it cannot work instead of failing half-way.
  const lan = await launchWith(['--host-resolver-rules=MAP tally-lan.test 127.0.0.1']);
  try {
    const p = await (await lan.newContext(PHONE)).newPage();
    await p.goto(`http://tally-lan.test:${world.proxy.port}/app/`);
    await p.locator('#insecure', { hasText: 'only over https' }).waitFor();
    await shots.take(p, 'insecure-http');
  } finally {
    await lan.close();
  }
});

step('13. every screen, in French too', async () => {
  await page.locator('#go-settings').click();
  await shots.take(page, 'settings');
  await page.locator('#lang').click();
  await page.locator('h1', { hasText: 'Réglages' }).waitFor();
  await home();
  await page.locator('#go-sign', { hasText: 'Recueillir une signature' }).waitFor();
  await shots.take(page, 'home-fr');
  await page.locator('#go-sign').click();
  await page.locator('#save').click();
  await page.locator('#form-error', { hasText: 'Nom complet : ce champ est obligatoire.' }).waitFor();
  await shots.take(page, 'sign-fr-refused');
  await home();
  await page.locator('#lang').click();
  await page.locator('#go-sign', { hasText: 'Take a signature' }).waitFor();
});
