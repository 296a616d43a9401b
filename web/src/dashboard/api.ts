// Calls to the server's HTTP API (/api/v1, same origin). The token is read from the tab's
// session storage and sent in the Authorization header of every request, never in a URL or a
// cookie. Failures come back as ApiError (the server answered, with its message) or
// Unreachable (no answer), and are also announced as window events so that the page can show
// the server's state in one place:
//   'tally:unauthorized' (detail: the server's message): the token was refused (401);
//   'tally:unreachable' / 'tally:reachable': the server stopped / started answering.

const TOKEN_KEY = 'tally.token';

/** The signed-in token of this tab (session storage: gone when the tab closes). */
export const session = {
  token(): string | null {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set(token: string): void {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear(): void {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

/** The server answered with an error status; `message` is its own words. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** The server could not be reached (down, or the network is). */
export class Unreachable extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'Unreachable';
  }
}

function announce(name: string, detail?: string): void {
  window.dispatchEvent(new CustomEvent(name, { detail }));
}

/** The server's error message of a failed response. */
export async function errorMessage(res: Response): Promise<string> {
  const text = await res.text().catch(() => '');
  try {
    const v = JSON.parse(text) as { error?: unknown };
    if (typeof v.error === 'string') return v.error;
  } catch {
    // not JSON: the text itself
  }
  return text.trim() || `${res.status} ${res.statusText}`;
}

/** The Authorization header for `token` (default: the session's). */
export function authHeaders(token?: string): Record<string, string> {
  const t = token ?? session.token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

/** One API call: JSON in, JSON out. */
export async function call<T>(
  method: 'GET' | 'POST',
  path: string,
  body?: unknown,
  opts: { token?: string; signal?: AbortSignal } = {},
): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json', ...authHeaders(opts.token) };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? null : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
      signal: opts.signal ?? null,
    });
  } catch (e) {
    if (e instanceof DOMException && e.name === 'AbortError') throw e;
    announce('tally:unreachable');
    throw new Unreachable(e instanceof Error ? e.message : String(e));
  }
  announce('tally:reachable');
  if (!res.ok) {
    const message = await errorMessage(res);
    if (res.status === 401 && opts.token === undefined) announce('tally:unauthorized', message);
    throw new ApiError(res.status, message);
  }
  return (await res.json()) as T;
}

export const get = <T>(path: string, opts?: { token?: string; signal?: AbortSignal }): Promise<T> =>
  call<T>('GET', path, undefined, opts);
export const post = <T>(path: string, body: unknown): Promise<T> => call<T>('POST', path, body);

/** A path segment, escaped. */
export const seg = (s: string): string => encodeURIComponent(s);
