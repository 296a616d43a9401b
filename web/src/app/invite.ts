// Reading an invite: the QR code's link is `{server}/app/#` + the URI-encoded payload JSON
// (docs/clients.md §1), so the payload never reaches a server's log. A canvasser may also paste
// the link or the payload's text.

import type { InvitePayload } from './store';

/** Why a text is not an invite. */
export class NotAnInvite extends Error {
  constructor(
    readonly detail: string,
    readonly version?: number,
  ) {
    super(detail);
  }
}

/** Parses an invite from a link, a fragment (`#...`) or the payload's JSON text. */
export function parseInvite(text: string): InvitePayload {
  let s = text.trim();
  const hash = s.indexOf('#');
  if (hash >= 0 && !s.startsWith('{')) s = s.slice(hash + 1);
  if (!s.startsWith('{')) {
    try {
      s = decodeURIComponent(s);
    } catch {
      throw new NotAnInvite('not decodable');
    }
  }
  let v: unknown;
  try {
    v = JSON.parse(s);
  } catch {
    throw new NotAnInvite('not JSON');
  }
  if (typeof v !== 'object' || v === null) throw new NotAnInvite('not an object');
  const o = v as Record<string, unknown>;
  if (o.v !== 1) throw new NotAnInvite(`version ${String(o.v)}`, typeof o.v === 'number' ? o.v : undefined);
  for (const k of ['server', 'code', 'campaign', 'key'] as const) {
    if (typeof o[k] !== 'string' || o[k] === '') throw new NotAnInvite(`no ${k}`);
  }
  const key = o.key as string;
  if (!/^[0-9a-fA-F]{64}$/.test(key.trim())) throw new NotAnInvite('the key is not 64 hex digits');
  if (!/^https?:\/\//.test(o.server as string)) throw new NotAnInvite('the server is not an http(s) address');
  if (!(o.campaign as string).startsWith('automerge:')) throw new NotAnInvite('the campaign is not an automerge: URL');
  return { v: 1, server: o.server as string, code: o.code as string, campaign: o.campaign as string, key: key.trim() };
}

/** The invite in this page's address, if there is one. */
export function inviteInLocation(): InvitePayload | NotAnInvite | undefined {
  const frag = location.hash.slice(1);
  if (frag === '') return undefined;
  try {
    return parseInvite(decodeURIComponent(frag));
  } catch (e) {
    return e instanceof NotAnInvite ? e : new NotAnInvite(String(e));
  }
}

/** Drops the invite from the address and the history (it carries a code and a key). */
export function forgetInviteInLocation(): void {
  if (location.hash !== '') history.replaceState(history.state, '', location.pathname + location.search);
}
