// One-time sign-in links (`tally dashboard` prints one): #signin=ID.SECRET. Not yet served:
// any other fragment is left alone.

/** Signs in from a sign-in link in the URL, if there is one; `undefined` when there is none. */
export function consumeSigninLink(): Promise<string | undefined> {
  return Promise.resolve(undefined);
}
