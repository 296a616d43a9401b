// One-time sign-in links: `tally dashboard` prints SERVER/#signin=ID.SECRET, where SECRET is a
// throwaway age identity and the server holds, under ID, the organizer's token sealed to it
// (server/src/api/signin.rs). The fragment never goes to the server. Here the fragment is
// removed from the address bar at once (so the token's key is not in the history or a
// bookmark), the sealed token is taken (once: the link then stops working), opened with the
// secret, checked, and kept in this tab's session storage.

import { Decrypter } from 'age-encryption';
import { ApiError, get, post, seg, session } from './api';
import { t } from './i18n';
import type { Device, SealedToken } from './types';

function hexBytes(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/**
 * Signs in from a sign-in link in the URL, if there is one: resolves to the token, or
 * `undefined` when the URL holds no link; rejects with a message when the link does not work.
 */
export async function consumeSigninLink(): Promise<string | undefined> {
  const m = /^#signin=([0-9a-f]{32})\.(AGE-SECRET-KEY-1[0-9A-Z]+)$/.exec(location.hash);
  if (!location.hash.startsWith('#signin=')) return undefined;
  history.replaceState(null, '', location.pathname + location.search);
  if (!m?.[1] || !m[2]) throw new Error(t('signin_link_bad'));
  let sealed: SealedToken;
  try {
    sealed = await post<SealedToken>(`/api/v1/signin-links/${seg(m[1])}/redeem`, {});
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) throw new Error(t('signin_link_used'), { cause: e });
    throw e;
  }
  const d = new Decrypter();
  d.addIdentity(m[2]);
  let token: string;
  try {
    token = (await d.decrypt(hexBytes(sealed.sealed), 'text')).trim();
  } catch (e) {
    throw new Error(t('signin_link_bad'), { cause: e });
  }
  await get<Device>('/api/v1/me', { token });
  session.set(token);
  return token;
}
