//! The signatures phones collect: who signs (a deterministic plan in which about 5% of the
//! signatures come from people who already signed on another phone), and the collection
//! documents built exactly as a phone builds them (`SignatureForm::prepare`, which seals the
//! personal fields and computes the duplicate token, then `collection::add_signature`: one
//! automerge change per signature, by the phone's own actor).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Result, anyhow};
use automerge::Automerge;
use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_core::campaign::Campaign;
use tally_core::collection::{self, Signature, SignatureForm, TakenBy};
use tally_core::fields::{fsa_of, normalize_postal_code};
use tally_core::seal::{self, DuplicateKey, PersonalFields};

/// Who signs on which phone: `slots[phone][i]` is the signer of the phone's i-th signature.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Signer indexes per phone.
    pub slots: Vec<Vec<u32>>,
    /// Distinct signers (what the totals' `unique_signers` must be).
    pub distinct: u64,
    /// Signatures (what the totals' `signatures` must be).
    pub total: u64,
    /// Signatures whose signer already signed on another phone.
    pub duplicates: u64,
}

impl Plan {
    /// `phones` x `per_phone` signatures; each is, with probability `dup_pct` %, a person who
    /// signs on another phone too, else a new person. Deterministic for a seed.
    pub fn new(phones: usize, per_phone: usize, dup_pct: f64, seed: u64) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let p = (dup_pct / 100.0).clamp(0.0, 1.0);
        let mut is_dup = vec![vec![false; per_phone]; phones];
        let mut next = 0u32;
        let mut ranges = Vec::with_capacity(phones);
        let mut slots: Vec<Vec<u32>> = Vec::with_capacity(phones);
        for dups in is_dup.iter_mut() {
            let start = next;
            let mut s = Vec::with_capacity(per_phone);
            for d in dups.iter_mut() {
                *d = phones > 1 && rng.gen_bool(p);
                if *d {
                    s.push(u32::MAX);
                } else {
                    s.push(next);
                    next += 1;
                }
            }
            ranges.push(start..next);
            slots.push(s);
        }
        let mut duplicates = 0;
        for (phone, s) in slots.iter_mut().enumerate() {
            for (i, slot) in s.iter_mut().enumerate() {
                if !is_dup[phone][i] {
                    continue;
                }
                // Someone who signs (or signed) on another phone.
                let pick = loop {
                    let other = rng.gen_range(0..phones);
                    if other != phone && !ranges[other].is_empty() {
                        break rng.gen_range(ranges[other].clone());
                    }
                    if ranges
                        .iter()
                        .enumerate()
                        .all(|(q, r)| q == phone || r.is_empty())
                    {
                        break u32::MAX;
                    }
                };
                if pick == u32::MAX {
                    // Nobody else signs anywhere: a new person after all.
                    *slot = next;
                    next += 1;
                } else {
                    *slot = pick;
                    duplicates += 1;
                }
            }
        }
        Plan {
            distinct: u64::from(next),
            total: (phones * per_phone) as u64,
            duplicates,
            slots,
        }
    }
}

const FIRST: &[&str] = &[
    "Amara", "Jose", "Mei", "Tomas", "Fatima", "Ravi", "Lucia", "Kwame", "Ana", "Dmitri", "Leila",
    "Chen", "Maria", "Samuel", "Nadia", "Arjun", "Grace", "Omar", "Sofia", "Emeka",
];
const LAST: &[&str] = &[
    "Okafor",
    "Silva",
    "Nguyen",
    "Haddad",
    "Santos",
    "Kowalski",
    "Mensah",
    "Reyes",
    "Ali",
    "Fernandes",
    "Osei",
    "Garcia",
    "Khan",
    "Tremblay",
    "Pereira",
    "Mwangi",
    "Cruz",
    "Rahman",
];
/// (FSA, city) pairs: real forward sortation areas.
const PLACES: &[(&str, &str)] = &[
    ("M5V", "Toronto"),
    ("M6K", "Toronto"),
    ("M4C", "Toronto"),
    ("M1B", "Toronto"),
    ("M9V", "Toronto"),
    ("L5B", "Mississauga"),
    ("K1N", "Ottawa"),
    ("H2X", "Montréal"),
    ("H3T", "Montréal"),
    ("V5K", "Vancouver"),
    ("T2P", "Calgary"),
    ("R3C", "Winnipeg"),
    ("B3H", "Halifax"),
];
const LDU_LETTERS: &[u8] = b"ABCEGHJKLMNPRSTVWXYZ";

/// The form a canvasser fills in for signer `i` (deterministic).
pub fn form(i: u32, event: Option<&str>) -> SignatureForm {
    let i = i as usize;
    let (fsa, city) = PLACES[(i * 7 + i / 13) % PLACES.len()];
    let postal = format!(
        "{fsa} {}{}{}",
        i % 10,
        LDU_LETTERS[(i / 10) % LDU_LETTERS.len()] as char,
        (i / 200) % 10
    );
    SignatureForm {
        name: format!(
            "{} {} {i}",
            FIRST[i % FIRST.len()],
            LAST[(i / FIRST.len()) % LAST.len()]
        ),
        postal_code: postal,
        city: city.to_string(),
        email: i
            .is_multiple_of(3)
            .then(|| format!("signer{i}@example.org")),
        phone: i
            .is_multiple_of(4)
            .then(|| format!("416-555-{:04}", i % 10_000)),
        street: i
            .is_multiple_of(5)
            .then(|| format!("{} Queen St W", 1 + i % 900)),
        consent_contact: i.is_multiple_of(2),
        event: event.map(str::to_string),
        riding: None,
    }
}

/// How the personal fields are sealed.
pub enum Sealing<'a> {
    /// Each signature sealed with age to the campaign's recipients, as the phone does.
    Real,
    /// Sealed blobs taken in turn from a pool (real age files to the same recipients): the
    /// server only stores these bytes, so this changes no server work, only the time to build
    /// a large store.
    Pool(&'a [Vec<u8>]),
}

/// Time spent building, summed over threads, in nanoseconds.
#[derive(Default, Debug)]
pub struct BuildTime {
    /// Preparing records (`SignatureForm::prepare`: sealing, duplicate token, checks).
    pub prepare_ns: AtomicU64,
    /// Writing them (`collection::add_signature`: one automerge change each).
    pub add_ns: AtomicU64,
    /// Signatures built.
    pub count: AtomicU64,
}

impl BuildTime {
    /// (prepare, add) in µs per signature.
    pub fn per_signature_us(&self) -> (Option<f64>, Option<f64>) {
        let n = self.count.load(Ordering::Relaxed);
        let per =
            |ns: &AtomicU64| (n > 0).then(|| ns.load(Ordering::Relaxed) as f64 / n as f64 / 1000.0);
        (per(&self.prepare_ns), per(&self.add_ns))
    }
}

/// What the documents are built for.
pub struct Builder<'a> {
    /// The campaign, read from its document.
    pub campaign: &'a Campaign,
    /// The campaign's duplicate key.
    pub key: &'a DuplicateKey,
    /// The event signatures are collected at (every other signature).
    pub event: &'a str,
    /// How personal fields are sealed.
    pub sealing: Sealing<'a>,
    /// Time of the first signature, ms since the epoch (later ones follow, one per second).
    pub start_ms: i64,
    /// Where the time goes.
    pub time: BuildTime,
}

impl Builder<'_> {
    /// The signature record for signer `i`, taken by `owner` at `at`.
    pub fn signature(&self, owner: &str, i: u32, at: i64) -> Result<Signature> {
        let event = i.is_multiple_of(2).then_some(self.event);
        let form = form(i, event);
        match self.sealing {
            Sealing::Real => form
                .prepare(&TakenBy {
                    campaign: self.campaign,
                    key: self.key,
                    canvasser: owner,
                    now: at,
                    id: collection::random_id(),
                })
                .map_err(|e| anyhow!("signature {i}: {e}")),
            Sealing::Pool(pool) => {
                // What `prepare` computes, with the sealed blob from the pool.
                let postal = normalize_postal_code(&form.postal_code).map_err(|e| anyhow!(e))?;
                Ok(Signature {
                    id: collection::random_id(),
                    campaign: self.campaign.id.clone(),
                    event: form.event.clone(),
                    collected_at: at,
                    collected_by: owner.to_string(),
                    city: form.city.clone(),
                    fsa: fsa_of(&postal),
                    riding: None,
                    consent_contact: form.consent_contact,
                    dup: self.key.duplicate_token(form.name.trim(), &postal),
                    sealed: pool[i as usize % pool.len()].clone(),
                    withdrawn: false,
                })
            }
        }
    }

    /// Adds the signatures of `signers` to a phone's collection document, one change each.
    /// `progress` counts signatures as they are added.
    pub fn add_all(
        &self,
        doc: &mut Automerge,
        owner: &str,
        signers: &[u32],
        progress: &ProgressBar,
    ) -> Result<()> {
        for (n, &i) in signers.iter().enumerate() {
            let t = Instant::now();
            let sig = self.signature(owner, i, self.start_ms + n as i64 * 1000)?;
            let prepared = t.elapsed();
            collection::add_signature(doc, &sig, self.campaign)
                .map_err(|e| anyhow!("adding signature {i}: {e}"))?;
            let added = t.elapsed() - prepared;
            self.time
                .prepare_ns
                .fetch_add(prepared.as_nanos() as u64, Ordering::Relaxed);
            self.time
                .add_ns
                .fetch_add(added.as_nanos() as u64, Ordering::Relaxed);
            self.time.count.fetch_add(1, Ordering::Relaxed);
            progress.inc(1);
        }
        Ok(())
    }
}

/// `n` real sealed blobs (age files to the campaign's recipients) of synthetic signers.
pub fn seal_pool(campaign: &Campaign, n: usize) -> Result<Vec<Vec<u8>>> {
    (0..n)
        .map(|i| {
            let f = form(i as u32, None);
            let postal = normalize_postal_code(&f.postal_code).map_err(|e| anyhow!(e))?;
            seal::seal(
                &campaign.recipients,
                &PersonalFields {
                    name: f.name,
                    email: f.email,
                    phone: f.phone,
                    street: f.street,
                    postal_code: postal,
                },
            )
            .map_err(|e| anyhow!("sealing: {e}"))
        })
        .collect()
}

/// Runs `f` on every item, spread over `threads` threads (the order of items is kept).
pub fn par_for_each<T: Send>(
    items: &mut [T],
    threads: usize,
    f: impl Fn(usize, &mut T) -> Result<()> + Sync,
) -> Result<()> {
    let threads = threads.max(1);
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks_mut(chunk)
            .enumerate()
            .map(|(c, part)| {
                let f = &f;
                s.spawn(move || {
                    for (j, item) in part.iter_mut().enumerate() {
                        f(c * chunk + j, item)?;
                    }
                    Ok::<(), anyhow::Error>(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow!("a worker thread panicked"))??;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn plan_counts_distinct_signers() {
        let plan = Plan::new(20, 50, 5.0, 7);
        assert_eq!(plan.total, 1000);
        let all: HashSet<u32> = plan.slots.iter().flatten().copied().collect();
        assert_eq!(all.len() as u64, plan.distinct);
        assert_eq!(plan.distinct + plan.duplicates, plan.total);
        assert!(
            plan.duplicates > 20 && plan.duplicates < 90,
            "{}",
            plan.duplicates
        );
        // Duplicates come from other phones.
        for (p, s) in plan.slots.iter().enumerate() {
            let own: HashSet<u32> = s.iter().copied().collect();
            for (q, t) in plan.slots.iter().enumerate() {
                if p != q {
                    // A signer may appear on two phones, never as two originals.
                    let shared = t.iter().filter(|i| own.contains(i)).count();
                    assert!(shared <= s.len());
                }
            }
        }
    }

    #[test]
    fn forms_are_valid() {
        for i in (0..5000).step_by(7) {
            let f = form(i, Some("e"));
            assert!(
                normalize_postal_code(&f.postal_code).is_ok(),
                "{}",
                f.postal_code
            );
        }
    }
}
