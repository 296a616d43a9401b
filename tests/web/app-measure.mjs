// The canvassers' app's figures (issue 16), measured in Debian's Chromium against a real
// `tally serve`; not a test (tests/web/app.test.mjs is). Prints JSON:
//
// - first paint offline: the app reloaded with the network off, served by its service worker
//   (first-contentful-paint), and when the sign button is ready (the documents opened), median
//   of 5 reloads;
// - signing on the page: from the press of "Save" to "saved" (sealed, the token made, the change
//   and the receipt written with strict durability), for N signatures typed into the form;
// - IndexedDB per 1,000 signatures: the bytes of every value and key in the page's databases
//   (automerge-repo's documents, the receipts) while all N wait, and after they are synced (the
//   receipts keep no copy then), and the origin's usage (navigator.storage.estimate) besides.
//
//   TALLY_BIN_DIR=target/debug node tests/web/app-measure.mjs [N=1000]

import { join } from 'node:path';

import { PHONE, World } from './app-harness.mjs';
import { browser as launch } from './harness.mjs';

const N = Number(process.argv[2] ?? 1000);
const world = new World();
await world.start();
const recipient = (await world.tally('keygen', '--out', join(world.dir, 'organizer.age'))).trim().split('\n').pop();
const { campaign } = await world.tallyJson('campaign', 'create', '--title', 'Measure', '--goal', '1000', '--petition', 'P', '--addressee', 'A', '--recipient', recipient);
const invite = await world.tallyJson('invite', '--campaign', campaign);
const b = await launch();
const context = await b.newContext(PHONE);
let page = await context.newPage();
await page.goto(invite.app_link);
await page.locator('#phone-name').fill('Measuring phone');
await page.locator('#enroll').click();
await page.locator('#go-sign:not([disabled])').waitFor({ timeout: 30_000 });
await page.waitForFunction(() => navigator.serviceWorker.controller !== null);

const idbBytes = () =>
  page.evaluate(async () => {
    const req = (r) => new Promise((ok, fail) => ((r.onsuccess = () => ok(r.result)), (r.onerror = () => fail(r.error))));
    const size = (v) => {
      if (v instanceof Uint8Array || v instanceof ArrayBuffer) return v.byteLength;
      if (v === null || typeof v !== 'object') return JSON.stringify(v ?? null).length;
      let n = 0;
      for (const [k, x] of Object.entries(v)) n += k.length + size(x);
      return n;
    };
    let total = 0;
    for (const { name } of await indexedDB.databases()) {
      const db = await req(indexedDB.open(name));
      for (const store of Array.from(db.objectStoreNames)) {
        const tx = db.transaction(store, 'readonly');
        for (const v of await req(tx.objectStore(store).getAll())) total += size(v);
        for (const k of await req(tx.objectStore(store).getAllKeys())) total += size(k);
      }
      db.close();
    }
    const { usage } = await navigator.storage.estimate();
    return { values: total, usage };
  });

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const before = await idbBytes();
await context.setOffline(true);
await page.locator('#link[data-link="offline"]').waitFor();
await page.locator('#go-sign').click();
await page.locator('#city').fill('Toronto');
const started = Date.now();
for (let i = 0; i < N; i++) {
  await page.locator('#name').fill(`Signer Number ${i}`);
  await page.locator('#postal_code').fill('M5V 2T6');
  await page.locator('#save').click();
  await page.locator('#saved', { hasText: `Signer Number ${i}.` }).waitFor();
}
const wall = Date.now() - started;
const signMs = await page.evaluate(() => performance.getEntriesByName('tally-sign').map((m) => m.duration));
await page.locator('button.back').click();
const pending = await idbBytes();

const paint = [];
const ready = [];
for (let i = 0; i < 5; i++) {
  await page.reload();
  await page.locator('#go-sign:not([disabled])').waitFor();
  paint.push(await page.evaluate(() => performance.getEntriesByName('first-contentful-paint')[0]?.startTime));
  ready.push(await page.evaluate(() => performance.now()));
}

const syncStarted = Date.now();
await context.setOffline(false);
await page.waitForFunction(() => document.querySelector('#pending')?.getAttribute('data-pending') === '0', null, { timeout: 300_000 });
const syncMs = Date.now() - syncStarted;
const synced = await idbBytes();
const per1000 = (x) => Math.round(((x - before.values) * 1000) / N);

console.log(
  JSON.stringify(
    {
      signatures: N,
      first_paint_offline_ms: { median: median(paint), runs: paint },
      ready_to_sign_offline_ms: { median: median(ready), runs: ready.map(Math.round) },
      sign_on_page_ms: { median: median(signMs), p90: [...signMs].sort((a, b) => a - b)[Math.floor(signMs.length * 0.9)], max: Math.max(...signMs) },
      form_loop_wall_ms_per_signature: Math.round(wall / N),
      indexeddb_bytes_per_1000_signatures: { pending: per1000(pending.values), synced: per1000(synced.values) },
      origin_usage_bytes: { before: before.usage, pending: pending.usage, synced: synced.usage },
      sync_all_after_online_ms: syncMs,
    },
    null,
    2,
  ),
);
await b.close();
await world.close();
