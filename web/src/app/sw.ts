// The app's service worker (scope /app/): the app shell from its cache, so the app opens with no
// signal. The build (web/app-build.mjs) gives it the list of the app's files and a version
// made from their bytes: a new build is a new cache, installed in the background and used from
// the next page load; the old cache is then dropped.
//
// Only GET requests for the app's own files are answered here. The API, /sync and everything
// else go to the network as if there were no service worker.

/// <reference lib="webworker" />

declare const TALLY_PRECACHE: string[];
declare const TALLY_VERSION: string;

const sw = self as unknown as ServiceWorkerGlobalScope;
const CACHE = `tally-app-${TALLY_VERSION}`;
/** The app's files, as URLs under this worker's scope. */
const FILES = TALLY_PRECACHE.map((f) => new URL(f, sw.registration.scope).href);
const SHELL = new URL('index.html', sw.registration.scope).href;

sw.addEventListener('install', (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(CACHE);
      // `no-cache`: revalidated with the server, never an older copy from the HTTP cache.
      await cache.addAll(FILES.map((url) => new Request(url, { cache: 'no-cache' })));
      await sw.skipWaiting();
    })(),
  );
});

sw.addEventListener('activate', (event) => {
  event.waitUntil(
    (async () => {
      for (const name of await caches.keys()) {
        if (name.startsWith('tally-app-') && name !== CACHE) await caches.delete(name);
      }
      await sw.clients.claim();
    })(),
  );
});

sw.addEventListener('fetch', (event) => {
  const req = event.request;
  if (req.method !== 'GET') return;
  const url = new URL(req.url);
  if (url.origin !== location.origin || !url.href.startsWith(sw.registration.scope)) return;
  if (req.mode === 'navigate') {
    // Every page of the app is the shell (its screens are drawn by the script).
    event.respondWith(fromCache(SHELL, req));
    return;
  }
  const file = url.origin + url.pathname;
  if (FILES.includes(file)) event.respondWith(fromCache(file, req));
});

/** The cached copy, else the network (a file the cache lost, or a first visit mid-install). */
async function fromCache(key: string, req: Request): Promise<Response> {
  const cache = await caches.open(CACHE);
  const hit = await cache.match(key);
  if (hit) return hit;
  return fetch(req);
}
