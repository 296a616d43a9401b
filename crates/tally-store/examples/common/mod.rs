//! What the store's measuring examples (`filtered_totals`, `projector`) share: the campaign
//! they fill, its time zone and days, and a small deterministic generator, so runs are
//! comparable.

pub const CAMPAIGN: &str = "bench-campaign";
pub const TZ: &str = "America/Toronto";
/// 2025-06-01T04:00:00Z, midnight in Toronto.
pub const START: i64 = 1_748_750_400_000;
pub const DAY: i64 = 86_400_000;

/// A small deterministic generator (xorshift).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
