// The API's request and response bodies as the page reads and sends them. They mirror
// server/src/api/types.rs and carry the OpenAPI document's schema names
// (GET /api/v1/openapi.json, server/src/openapi.rs).

export type Role = 'admin' | 'organizer' | 'canvasser';

export interface Device {
  device_id: string;
  name: string;
  role: Role;
  campaign: string | null;
  created_at: number;
  revoked_at: number | null;
  last_seen: number | null;
  replaces?: string | null;
  lineage?: string;
}

export interface Event {
  id: string;
  name: string;
  city: string;
  starts_at: number;
  place: string;
}

export interface CampaignSummary {
  addressee: string;
  campaign: string;
  events: Event[];
  goal: number;
  title: string;
  timezone: string;
}

export interface Campaigns {
  campaigns: CampaignSummary[];
}

export interface NewCampaign {
  title: string;
  petition: string;
  addressee: string;
  goal: number;
  timezone: string;
  recipients: string[];
}

export interface CreatedCampaign {
  campaign: string;
  campaign_url: string;
  review_url: string;
  totals_url: string;
}

export interface NewEvent {
  id?: string;
  name: string;
  city: string;
  starts_at: number | string;
  place: string;
}

export interface NewInvite {
  campaign: string;
  role: 'canvasser' | 'organizer';
}

export interface Invite {
  app_url: string;
  campaign: string;
  code: string;
  expires_at: number;
  role: string;
  server: string;
}

export interface Revoked {
  connections_closed: number;
  revoked: string;
}

export interface Cell {
  signatures: number;
  unique: number;
}

export interface CheckinCell {
  unique: number;
  pre_registered: number;
  walk_in: number;
}

export interface PaperCell {
  sheets: number;
  signatures: number;
}

export interface PaperTotals {
  sheets: number;
  signatures: number;
  by_status: Record<string, PaperCell>;
}

export interface Filters {
  event?: string | null;
  from?: string | null;
  to?: string | null;
  city?: string | null;
  fsa?: string | null;
  riding?: string | null;
  canvasser?: string | null;
}

export interface Suppression {
  applied: boolean;
  threshold: number;
  hidden_cells: number;
  hidden: Record<string, number>;
  /** Per breakdown with hidden cells: their signatures together. */
  other?: Record<string, number>;
  /** Breakdowns wholly hidden, their number of cells not said. */
  withheld?: string[];
  headline_hidden: boolean;
  note?: string | null;
}

/** The breakdowns of a totals answer, by their field names. */
export const BREAKDOWNS = ['by_event', 'by_city', 'by_fsa', 'by_riding', 'by_day', 'by_canvasser'] as const;
export type Breakdown = (typeof BREAKDOWNS)[number];

export interface Totals {
  campaign: string;
  signatures: number | null;
  unique_signers: number | null;
  struck: number | null;
  withdrawn: number | null;
  by_event: Record<string, Cell>;
  by_city: Record<string, Cell>;
  by_fsa: Record<string, Cell>;
  by_riding: Record<string, Cell>;
  by_day: Record<string, Cell>;
  by_canvasser: Record<string, Cell>;
  checkins: Record<string, CheckinCell>;
  paper: PaperTotals;
  filters: Filters;
  suppression: Suppression;
  /** How far the answer is behind what the server acknowledged (absent from older servers). */
  projection?: ProjectionLag;
}

/** Records acknowledged and not counted yet, and how long the oldest has waited. */
export interface ProjectionLag {
  pending_records: number;
  lag_ms: number;
}

/** `erased` is written by the erase endpoint only, and is final. */
export type StrikeReason = 'duplicate' | 'invalid' | 'withdrawn_consent' | 'test_entry' | 'erased';
export const STRIKE_REASONS: StrikeReason[] = ['duplicate', 'invalid', 'withdrawn_consent', 'test_entry'];

export interface NewStrike {
  signature: string;
  reason: StrikeReason;
  revoked: boolean;
}

export interface Strike {
  signature: string;
  reason: StrikeReason;
  by: string;
  at: number;
  revoked: boolean;
}

export type SheetStatus = 'collected' | 'counted' | 'delivered';
export const SHEET_STATUSES: SheetStatus[] = ['collected', 'counted', 'delivered'];

export interface Sheet {
  serial: string;
  count: number;
  riding?: string | null;
  status: SheetStatus;
}

export interface Review {
  strikes: Strike[];
  sheets: Sheet[];
}

export interface SealedRecord {
  id: string;
  collected_at: number;
  collected_by: string;
  event: string | null;
  city: string;
  fsa: string;
  riding: string | null;
  consent_contact: boolean;
  counted: boolean;
  withdrawn: boolean;
  sealed: string;
  duplicate_group?: string;
  /** An organizer erased it: no sealed bytes are given (`sealed` is ""). */
  erased?: boolean;
}

export interface Quarantined {
  id: number;
  device_id: string;
  doc_id: string;
  at: number;
  reason: string;
  rule: string | null;
  size: number;
  repeats: number;
}

export interface QuarantineList {
  entries: Quarantined[];
  next_after: number | null;
}

export interface SealedToken {
  sealed: string;
}

/** One entry of the audit log (`GET /api/v1/audit`). */
export interface AuditEntry {
  seq: number;
  at: number;
  actor_id: string;
  actor_name: string;
  action: string;
  campaign?: string | null;
  target: string;
  result: string;
  prev_hash: string;
  hash: string;
}

/** `GET /api/v1/audit/verify`'s answer (an inline schema of the OpenAPI document). */
export type AuditVerify = { ok: true; entries: number } | { ok: false; broken_at: number; why: string };

/** One wrapped record key (an item of `KeysPage`, inline in the OpenAPI document). */
export type RecordKey = {
  record: string;
  /** The device that uploaded it (the record's own phone is `collected_by`). */
  device: string;
  /** The key wrapped with age, standard base64. */
  wrapped: string;
};

/** A page of a campaign's record keys (`GET /api/v1/campaigns/{id}/keys`). */
export interface KeysPage {
  keys: RecordKey[];
  next: string | null;
}

/** What `POST /api/v1/campaigns/{id}/erase` did. */
export interface Erased {
  erased: string[];
  keys_deleted: number;
  v1: string[];
}
