//! Receipts: what the phone tells the canvasser about each thing they entered. A receipt is
//! pending until the server's heads for the collection include its change (the server commits
//! before it sends those heads), then acknowledged: from then on the record is safe even if the
//! phone is lost, and the plaintext kept for display is dropped (a setting, on by default).

use serde::{Deserialize, Serialize};

/// What a local change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// A petition signature was taken.
    Signature,
    /// Someone was checked in to an event.
    Checkin,
    /// A signature was withdrawn.
    SignatureWithdrawal,
    /// A check-in was withdrawn.
    CheckinWithdrawal,
}

impl ReceiptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptKind::Signature => "signature",
            ReceiptKind::Checkin => "checkin",
            ReceiptKind::SignatureWithdrawal => "signature_withdrawal",
            ReceiptKind::CheckinWithdrawal => "checkin_withdrawal",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<ReceiptKind> {
        Some(match s {
            "signature" => ReceiptKind::Signature,
            "checkin" => ReceiptKind::Checkin,
            "signature_withdrawal" => ReceiptKind::SignatureWithdrawal,
            "checkin_withdrawal" => ReceiptKind::CheckinWithdrawal,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ReceiptKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReceiptKind::Signature => "signature",
            ReceiptKind::Checkin => "check-in",
            ReceiptKind::SignatureWithdrawal => "withdrawal of a signature",
            ReceiptKind::CheckinWithdrawal => "withdrawal of a check-in",
        })
    }
}

/// The plaintext kept on the phone so the canvasser can recognise a pending record. Personal
/// data: its Debug output is redacted, and it is dropped once the server acknowledges.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptDetails {
    /// The signer's or attendee's name.
    pub name: String,
    /// Normalized postal code (signatures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// City (signatures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// Email (signatures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Phone (signatures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Street address (signatures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub street: Option<String>,
    /// Riding (signatures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub riding: Option<String>,
    /// The event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// A walk-in (check-ins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub walk_in: Option<bool>,
}

impl std::fmt::Debug for ReceiptDetails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiptDetails(<redacted>)")
    }
}

/// One local change and whether the server has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The signature's or check-in's record id (for a withdrawal: the withdrawn record).
    pub record_id: String,
    /// What the change did.
    pub kind: ReceiptKind,
    /// When it was entered, ms since the epoch.
    pub collected_at: i64,
    /// The automerge change hash, hex.
    pub change_hash: String,
    /// The server has committed it.
    pub acknowledged: bool,
    /// When this phone learned that, ms since the epoch.
    pub acknowledged_at: Option<i64>,
    /// Plaintext for display; `None` once acknowledged (unless the phone keeps it).
    pub details: Option<ReceiptDetails>,
    /// The collection the change is in (its document id); a record moved along the phone's
    /// chain of collections names the collection it moved to.
    #[serde(default)]
    pub doc_id: Option<String>,
    /// When the server refused it (or it could not be moved to the next collection): the record
    /// is set aside, kept sealed on the phone, and not counted.
    #[serde(default)]
    pub refused_at: Option<i64>,
    /// Why, in the server's words.
    #[serde(default)]
    pub refusal: Option<String>,
}

/// What [`crate::Device::sign`] returns once the signature is committed on the phone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureReceipt {
    /// The new record's id.
    pub record_id: String,
    /// Its change hash, hex.
    pub change_hash: String,
    /// When it was taken, ms since the epoch.
    pub collected_at: i64,
    /// The signer's city as stored in the clear.
    pub city: String,
    /// The FSA stored in the clear ("M5V").
    pub fsa: String,
    /// The event, if any.
    pub event: Option<String>,
    /// Signatures on this phone not yet safe on the server, this one included.
    pub signatures_not_yet_safe: u64,
}

/// How many records are pending, acknowledged and refused, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub signatures_pending: u64,
    pub signatures_acknowledged: u64,
    pub checkins_pending: u64,
    pub checkins_acknowledged: u64,
    pub withdrawals_pending: u64,
    pub withdrawals_acknowledged: u64,
    /// Set aside: the server refused them (`tally-device status` shows why).
    #[serde(default)]
    pub signatures_refused: u64,
    #[serde(default)]
    pub checkins_refused: u64,
    #[serde(default)]
    pub withdrawals_refused: u64,
    /// Signatures whose change the server acknowledged but whose record key (sealed v2) it has
    /// not stored yet: not safe until it has (docs/clients.md 5). Those with a pending change
    /// are counted in `signatures_pending` already.
    #[serde(default)]
    pub keys_not_on_server: u64,
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl Counts {
    /// Everything not yet on the server.
    pub fn pending_total(&self) -> u64 {
        self.signatures_pending + self.checkins_pending + self.withdrawals_pending
    }

    /// Everything the server refused, set aside on the phone.
    pub fn refused_total(&self) -> u64 {
        self.signatures_refused + self.checkins_refused + self.withdrawals_refused
    }

    /// The line a canvasser sees, e.g. "12 signatures not yet safe" or "all 40 signatures safe",
    /// with what the server refused after it.
    pub fn summary(&self) -> String {
        let line = self.pending_summary();
        if self.refused_total() == 0 {
            return line;
        }
        let mut parts = Vec::new();
        if self.signatures_refused > 0 {
            parts.push(plural(self.signatures_refused, "signature", "signatures"));
        }
        if self.checkins_refused > 0 {
            parts.push(plural(self.checkins_refused, "check-in", "check-ins"));
        }
        if self.withdrawals_refused > 0 {
            parts.push(plural(
                self.withdrawals_refused,
                "withdrawal",
                "withdrawals",
            ));
        }
        format!(
            "{line}; {} refused by the server and set aside (tally-device status shows why; show an organizer)",
            parts.join(", ")
        )
    }

    fn pending_summary(&self) -> String {
        let line = self.records_summary();
        if self.keys_not_on_server == 0 {
            return line;
        }
        let keys = format!(
            "{} not yet safe: key not yet on the server (sync when you have signal)",
            plural(self.keys_not_on_server, "signature", "signatures")
        );
        if self.pending_total() == 0 {
            keys
        } else {
            format!("{line}; {keys}")
        }
    }

    fn records_summary(&self) -> String {
        if self.pending_total() == 0 {
            return format!(
                "all safe on the server ({}, {})",
                plural(self.signatures_acknowledged, "signature", "signatures"),
                plural(self.checkins_acknowledged, "check-in", "check-ins")
            );
        }
        let mut parts = vec![plural(self.signatures_pending, "signature", "signatures")];
        if self.checkins_pending > 0 {
            parts.push(plural(self.checkins_pending, "check-in", "check-ins"));
        }
        if self.withdrawals_pending > 0 {
            parts.push(plural(
                self.withdrawals_pending,
                "withdrawal",
                "withdrawals",
            ));
        }
        format!(
            "{} not yet safe: sync when you have signal",
            parts.join(", ")
        )
    }
}

/// Records newly acknowledged, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckCounts {
    pub signatures: u64,
    pub checkins: u64,
    pub withdrawals: u64,
}

impl AckCounts {
    pub fn total(&self) -> u64 {
        self.signatures + self.checkins + self.withdrawals
    }

    /// E.g. "1 signature, 2 check-ins" (kinds with none left out; "nothing" when empty).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.signatures > 0 {
            parts.push(plural(self.signatures, "signature", "signatures"));
        }
        if self.checkins > 0 {
            parts.push(plural(self.checkins, "check-in", "check-ins"));
        }
        if self.withdrawals > 0 {
            parts.push(plural(self.withdrawals, "withdrawal", "withdrawals"));
        }
        if parts.is_empty() {
            "nothing".to_string()
        } else {
            parts.join(", ")
        }
    }

    pub(crate) fn add(&mut self, other: AckCounts) {
        self.signatures += other.signatures;
        self.checkins += other.checkins;
        self.withdrawals += other.withdrawals;
    }
}
