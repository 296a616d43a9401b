// The form's rules and the normalizations behind the duplicate and attendee tokens, exactly as
// tally-core has them (crates/tally-core/src/form.rs, fields.rs, seal.rs; written down in
// docs/clients.md §4). A phone refuses exactly what the server would, and two phones make the
// same token for one signer: docs/clients-vectors.json, generated from tally-core, checks both
// (web/test/vectors.test.ts).
//
// Where JavaScript and Rust differ, Rust's meaning is rebuilt here:
// - white space is Unicode's White_Space property (Rust's `char::is_whitespace`, `str::trim`,
//   `split_whitespace`): JavaScript's `\s` and `trim()` also take U+FEFF and miss U+0085;
// - a control character is general category Cc (`char::is_control`);
// - lengths are UTF-8 bytes, as Rust's `str::len`.

/** Rust's `char::is_whitespace`: Unicode White_Space. */
const WS = '\\u0009-\\u000D\\u0020\\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000';
const IS_WS = new RegExp(`^[${WS}]$`, 'u');
const WS_RUN = new RegExp(`[${WS}]+`, 'u');
const TRIM = new RegExp(`^[${WS}]+|[${WS}]+$`, 'gu');
/** General category Cc (Rust's `char::is_control`). */
// eslint-disable-next-line no-control-regex -- exactly the characters the rule refuses
const CONTROL = /[\u0000-\u001F\u007F-\u009F]/u;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** Longest short text: names, cities, ridings, streets (`fields::MAX_SHORT_TEXT`). */
export const MAX_SHORT_TEXT = 200;
/** Longest postal code as typed (`form::MAX_POSTAL_CODE_INPUT`). */
export const MAX_POSTAL_CODE_INPUT = 16;
/** Longest phone number as typed (`form::MAX_PHONE_INPUT`). */
export const MAX_PHONE_INPUT = 40;

const encoder = new TextEncoder();

/** The UTF-8 length of `s`, as Rust's `str::len`. */
export function utf8Length(s: string): number {
  return encoder.encode(s).length;
}

/**
 * A JavaScript string as Rust would hold it: a lone surrogate (which no UTF-8 text can carry)
 * becomes U+FFFD, as `TextEncoder` would write it.
 */
export function wellFormed(s: string): string {
  return s.replace(LONE_SURROGATE, '\uFFFD');
}

/** Rust's `str::trim`. */
export function trim(s: string): string {
  return s.replace(TRIM, '');
}

/** Rust's `char::is_whitespace`, for one code point. */
export function isWhitespace(c: string): boolean {
  return IS_WS.test(c);
}

/**
 * `seal::normalize_name`: NFKC, lower case (Unicode's full mapping, not case folding: "ß" stays),
 * NFKC again, then split on white space and joined with single spaces.
 */
export function normalizeName(name: string): string {
  const folded = name.normalize('NFKC').toLowerCase().normalize('NFKC');
  return folded.split(WS_RUN).filter((w) => w.length > 0).join(' ');
}

/** `seal::normalize_postal`: NFKC, white space removed, upper case. */
export function normalizePostalForToken(code: string): string {
  return Array.from(code.normalize('NFKC'))
    .filter((c) => !isWhitespace(c))
    .map((c) => c.toUpperCase())
    .join('');
}

/** A refusal of the form, naming its field. `rule` and `args` pick the catalogue's words. */
export interface Refusal {
  field: string;
  rule:
    | 'required'
    | 'too_long'
    | 'control'
    | 'postal_too_long'
    | 'postal_first_letter'
    | 'postal_letter'
    | 'postal_shape'
    | 'email'
    | 'phone'
    | 'event';
  /** What the message names: the byte count, the letter, the known events... */
  args: Record<string, string | number>;
}

/** Thrown by the checks below; `refusal` says which field and why. */
export class FormRefused extends Error {
  constructor(readonly refusal: Refusal) {
    super(`${refusal.field}: ${refusal.rule}`);
  }
}

function refuse(field: string, rule: Refusal['rule'], args: Refusal['args'] = {}): never {
  throw new FormRefused({ field, rule, args });
}

/**
 * `form::text`: trimmed; at most 200 bytes; no control character; blank is `null` unless
 * required.
 */
export function text(field: string, value: string | null | undefined, required: boolean): string | null {
  const v = trim(wellFormed(value ?? ''));
  if (v === '') {
    if (required) refuse(field, 'required');
    return null;
  }
  const bytes = utf8Length(v);
  if (bytes > MAX_SHORT_TEXT) refuse(field, 'too_long', { max: MAX_SHORT_TEXT, bytes });
  if (CONTROL.test(v)) refuse(field, 'control');
  return v;
}

const FIRST_LETTERS = 'ABCEGHJKLMNPRSTVXY';
const LATER_LETTERS = 'ABCEGHJKLMNPRSTVWXYZ';
const POSTAL = /^[ABCEGHJKLMNPRSTVXY][0-9][ABCEGHJKLMNPRSTVWXYZ][0-9][ABCEGHJKLMNPRSTVWXYZ][0-9]$/;
const SHAPE = /^[A-Z][0-9][A-Z][0-9][A-Z][0-9]$/;

/** `fields::normalize_postal_code` after the form's checks ("m5v 2t6" -> "M5V2T6"). */
export function postalCode(value: string | null | undefined): string {
  const v = trim(wellFormed(value ?? ''));
  if (v === '') refuse('postal_code', 'required');
  const bytes = utf8Length(v);
  if (bytes > MAX_POSTAL_CODE_INPUT) refuse('postal_code', 'postal_too_long', { bytes });
  const code = Array.from(v)
    .filter((c) => !isWhitespace(c) && c !== '-')
    .map((c) => c.toUpperCase())
    .join('');
  if (POSTAL.test(code)) return code;
  if (SHAPE.test(code)) {
    const first = code.charAt(0);
    if (!FIRST_LETTERS.includes(first)) refuse('postal_code', 'postal_first_letter', { input: v, letter: first });
    const bad = [code.charAt(2), code.charAt(4)].find((l) => !LATER_LETTERS.includes(l));
    if (bad !== undefined) refuse('postal_code', 'postal_letter', { input: v, letter: bad });
  }
  refuse('postal_code', 'postal_shape', { input: v });
}

/** The FSA of a normalized postal code: its first three characters. */
export function fsaOf(postal: string): string {
  return postal.slice(0, 3);
}

/** `form::email`. */
export function email(value: string | null | undefined): string | null {
  const e = text('email', value, false);
  if (e === null) return null;
  const at = e.indexOf('@');
  const ok = at > 0 && e.slice(at + 1).includes('.') && !e.slice(at + 1).includes('@');
  if (!ok) refuse('email', 'email', { input: e });
  return e;
}

/** `form::phone`. */
export function phone(value: string | null | undefined): string | null {
  const p = text('phone', value, false);
  if (p === null) return null;
  const digits = Array.from(p).filter((c) => c >= '0' && c <= '9').length;
  if (digits < 7 || digits > 15 || utf8Length(p) > MAX_PHONE_INPUT) refuse('phone', 'phone', { input: p });
  return p;
}

/** `form::event`: required, one of the campaign's event ids. */
export function event(value: string | null | undefined, events: readonly string[]): string {
  const e = text('event', value, true) as string;
  if (!events.includes(e)) refuse('event', 'event', { input: e, known: events.length ? events.join(', ') : '-' });
  return e;
}

/** What a canvasser types for one signature (blank optional fields may be `null` or ''). */
export interface SignatureInput {
  name: string;
  postal_code: string;
  city: string;
  email?: string | null;
  phone?: string | null;
  street?: string | null;
  riding?: string | null;
  event?: string | null;
  consent_contact: boolean;
}

/** A form that passed every rule (`form::CheckedForm`). */
export interface CheckedForm {
  name: string;
  /** Normalized ("M5V2T6"). */
  postal_code: string;
  fsa: string;
  city: string;
  email: string | null;
  phone: string | null;
  street: string | null;
  riding: string | null;
  event: string | null;
  consent_contact: boolean;
}

/**
 * `SignatureForm::check`: every field in the form's order; the first refusal names its field
 * (thrown as {@link FormRefused}).
 */
export function checkSignature(input: SignatureInput, events: readonly string[]): CheckedForm {
  const name = text('name', input.name, true) as string;
  const postal = postalCode(input.postal_code);
  const city = text('city', input.city, true) as string;
  const mail = email(input.email);
  const tel = phone(input.phone);
  const street = text('street', input.street, false);
  const riding = text('riding', input.riding, false);
  const ev = text('event', input.event, false);
  return {
    name,
    postal_code: postal,
    fsa: fsaOf(postal),
    city,
    email: mail,
    phone: tel,
    street,
    riding,
    event: ev === null ? null : event(ev, events),
    consent_contact: input.consent_contact,
  };
}

/** `form::check_checkin`: the attendee's name, then the event. */
export function checkCheckin(eventId: string, name: string, events: readonly string[]): { event: string; name: string } {
  const n = text('name', name, true) as string;
  return { event: event(eventId, events), name: n };
}

/** A device's name at enrollment (`form::device_name`). */
export function deviceName(value: string): string {
  return text('name', value, true) as string;
}

/** An automerge-repo / tally record id: 24 random hex digits, as tally-device makes them. */
export function randomRecordId(): string {
  const b = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}
