//! What one sync message may ask of the side that receives it, checked before any of it is
//! paid for: pure functions over the decoded message and its change bytes.
//!
//! automerge 0.12 does work in proportion to what a sync message claims, not to its size on the
//! wire:
//! - answering a message tests every change since the last sync against every bloom filter in
//!   its `have` list (`get_hashes_to_send`), so a frame of millions of empty `have` entries holds
//!   a worker and the document for minutes;
//! - `changes` entries are loaded whole: a 5 KB document chunk of run-length encoded columns
//!   expands to millions of operations (hundreds of MB) before anyone judges it, and a
//!   compressed change chunk inflates without bound.
//!
//! A real peer sends far less (automerge's `generate_sync_message`): one `have` (the bloom
//! filter of the changes since the shared heads, 10 bits per entry, 7 probes), its heads, the
//! few hashes it misses, and change chunks (type 1), or in a v2 message one document chunk
//! (type 0: the first sync of a new document, or more than a third of it). So the bounds below
//! are generous for real peers and small for the work they allow: [`SyncBounds::check`]
//! refuses the message shape, [`inspect_changes`] walks the chunk headers and counts the
//! operations every column claims (summing run lengths, never expanding them) and inflates
//! compressed data only up to a bound.

use std::io::Read;

use automerge::sync;
use sha2::{Digest, Sha256};

/// Bounds on one sync message. The defaults fit what automerge peers send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncBounds {
    /// Most hashes in `heads` (a document's concurrent branches: a handful in practice).
    pub max_heads: usize,
    /// Most hashes in `need`.
    pub max_need: usize,
    /// Most entries in `have` (automerge sends 0 or 1).
    pub max_haves: usize,
    /// Most hashes in one `have`'s `last_sync` (the shared heads).
    pub max_last_sync: usize,
    /// Most entries one bloom filter may claim (the changes since the last sync).
    pub max_bloom_entries: u64,
    /// Most bits per bloom entry (automerge writes 10).
    pub max_bloom_bits_per_entry: u64,
    /// Most probes per bloom filter (automerge writes 7).
    pub max_bloom_probes: u64,
    /// Most chunks in `changes` (each a change, or one document chunk in a v2 message).
    pub max_chunks: usize,
    /// Most operations all the message's chunks claim together.
    pub max_ops: u64,
    /// Most bytes the message's compressed parts may inflate to, together.
    pub max_inflated_bytes: usize,
}

impl Default for SyncBounds {
    fn default() -> Self {
        SyncBounds {
            max_heads: 1_024,
            max_need: 1_024,
            max_haves: 4,
            max_last_sync: 1_024,
            max_bloom_entries: 1_000_000,
            max_bloom_bits_per_entry: 32,
            max_bloom_probes: 32,
            max_chunks: 100_000,
            max_ops: 1_000_000,
            max_inflated_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What a message's `changes` hold, read from the chunk headers and column lengths alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangesSummary {
    /// Chunks of each type: document (0), change (1), compressed change (2).
    pub documents: usize,
    pub changes: usize,
    pub compressed: usize,
    /// Operations the chunks claim (an upper bound: the longest column of each chunk).
    pub ops: u64,
    /// Bytes inflated to read compressed parts.
    pub inflated_bytes: usize,
    /// The hashes of the change chunks (type 1 and 2), as automerge computes them.
    pub change_hashes: Vec<automerge::ChangeHash>,
}

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

impl SyncBounds {
    /// Refuses a message whose shape asks for more than a real peer would, and the shapes that
    /// make automerge 0.12 panic later. The error says what was exceeded. The change bytes are
    /// the host's to inspect ([`inspect_changes`]), so that it can keep bad ones as evidence.
    pub fn check(&self, message: &sync::Message) -> Result<(), String> {
        let over = |what: &str, n: usize, max: usize| {
            format!(
                "{what}: {n}, more than the {max} a sync message may carry (automerge peers send far fewer); the message was not applied"
            )
        };
        if message.heads.len() > self.max_heads {
            return Err(over("heads", message.heads.len(), self.max_heads));
        }
        if message.need.len() > self.max_need {
            return Err(over("need hashes", message.need.len(), self.max_need));
        }
        if message.have.len() > self.max_haves {
            return Err(over("have entries", message.have.len(), self.max_haves));
        }
        let mut need = message.need.clone();
        need.sort_unstable();
        if let Some(pair) = need.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("need lists change {} twice", pair[0]));
        }
        for have in &message.have {
            if have.last_sync.len() > self.max_last_sync {
                return Err(over(
                    "last-sync hashes in a have entry",
                    have.last_sync.len(),
                    self.max_last_sync,
                ));
            }
            self.check_bloom(&have.bloom.to_bytes())?;
        }
        if message.changes.len() > self.max_chunks {
            return Err(over(
                "change chunks",
                message.changes.len(),
                self.max_chunks,
            ));
        }
        Ok(())
    }

    /// The same counts as [`SyncBounds::check`], read from the encoded message before
    /// automerge decodes it: decoding allocates per entry (a frame of millions of empty `have`
    /// entries or empty change chunks costs hundreds of MB to decode), so the counts are
    /// refused first. Malformed input is left to automerge's decoder to name.
    pub fn precheck(&self, data: &[u8]) -> Result<(), String> {
        let over = |what: &str, n: u64, max: usize| {
            format!(
                "{what}: {n}, more than the {max} a sync message may carry (automerge peers send far fewer); the message was not applied"
            )
        };
        let mut rest = data.get(1..).unwrap_or_default();
        let Some(heads) = read_uleb(&mut rest) else {
            return Ok(());
        };
        if heads > self.max_heads as u64 {
            return Err(over("heads", heads, self.max_heads));
        }
        if skip(&mut rest, heads * 32, "heads").is_err() {
            return Ok(());
        }
        let Some(need) = read_uleb(&mut rest) else {
            return Ok(());
        };
        if need > self.max_need as u64 {
            return Err(over("need hashes", need, self.max_need));
        }
        if skip(&mut rest, need * 32, "need").is_err() {
            return Ok(());
        }
        let Some(haves) = read_uleb(&mut rest) else {
            return Ok(());
        };
        if haves > self.max_haves as u64 {
            return Err(over("have entries", haves, self.max_haves));
        }
        for _ in 0..haves {
            let Some(last_sync) = read_uleb(&mut rest) else {
                return Ok(());
            };
            if last_sync > self.max_last_sync as u64 {
                return Err(over(
                    "last-sync hashes in a have entry",
                    last_sync,
                    self.max_last_sync,
                ));
            }
            if skip(&mut rest, last_sync * 32, "last sync").is_err() {
                return Ok(());
            }
            let Some(len) = read_uleb(&mut rest) else {
                return Ok(());
            };
            if skip(&mut rest, len, "bloom").is_err() {
                return Ok(());
            }
        }
        if let Some(chunks) = read_uleb(&mut rest)
            && chunks > self.max_chunks as u64
        {
            return Err(over("change chunks", chunks, self.max_chunks));
        }
        Ok(())
    }

    fn check_bloom(&self, bytes: &[u8]) -> Result<(), String> {
        let mut rest = bytes;
        if rest.is_empty() {
            return Ok(());
        }
        let (Some(entries), Some(bits_per_entry), Some(probes)) = (
            read_uleb(&mut rest),
            read_uleb(&mut rest),
            read_uleb(&mut rest),
        ) else {
            return Err("bloom filter header is truncated".to_owned());
        };
        if entries > 0 && bits_per_entry == 0 {
            return Err(format!(
                "bloom filter has {entries} entries but 0 bits per entry"
            ));
        }
        if probes > self.max_bloom_probes {
            return Err(format!(
                "bloom filter asks for {probes} probes; at most {} are accepted (automerge uses 7)",
                self.max_bloom_probes
            ));
        }
        if bits_per_entry > self.max_bloom_bits_per_entry {
            return Err(format!(
                "bloom filter has {bits_per_entry} bits per entry; at most {} are accepted (automerge uses 10)",
                self.max_bloom_bits_per_entry
            ));
        }
        if entries > self.max_bloom_entries {
            return Err(format!(
                "bloom filter claims {entries} entries; at most {} are accepted: sync in smaller steps",
                self.max_bloom_entries
            ));
        }
        Ok(())
    }
}

/// Walks the chunks of a message's `changes` (each entry may hold several chunks back to back,
/// as a v2 message does) and refuses what the receiver must not load: chunk types other than
/// document (0), change (1) and compressed change (2), malformed headers, more operations than
/// `bounds.max_ops`, more inflated bytes than `bounds.max_inflated_bytes`.
pub fn inspect_changes<'a>(
    entries: impl Iterator<Item = &'a [u8]>,
    bounds: &SyncBounds,
) -> Result<ChangesSummary, String> {
    let mut summary = ChangesSummary::default();
    for entry in entries {
        let mut rest = entry;
        while !rest.is_empty() {
            let (chunk_type, body, after) = split_chunk(rest)?;
            rest = after;
            match chunk_type {
                0 => {
                    summary.documents += 1;
                    let ops = document_ops(body, bounds, &mut summary.inflated_bytes)?;
                    summary.ops = summary.ops.saturating_add(ops);
                }
                1 => {
                    summary.changes += 1;
                    summary.ops = summary.ops.saturating_add(change_ops(body)?);
                    summary.change_hashes.push(change_hash(body));
                }
                2 => {
                    summary.compressed += 1;
                    let room = bounds
                        .max_inflated_bytes
                        .saturating_sub(summary.inflated_bytes);
                    let inflated = inflate(body, room)?;
                    summary.inflated_bytes += inflated.len();
                    summary.ops = summary.ops.saturating_add(change_ops(&inflated)?);
                    summary.change_hashes.push(change_hash(&inflated));
                }
                other => {
                    return Err(format!(
                        "a chunk of type {other} is not a change: a sync message carries change chunks (type 1 or 2) or one document chunk (type 0)"
                    ));
                }
            }
            if summary.ops > bounds.max_ops {
                return Err(format!(
                    "the changes claim {} or more operations, more than the {} one sync message may carry; split the changes over several messages (sync more often)",
                    summary.ops, bounds.max_ops
                ));
            }
        }
    }
    Ok(summary)
}

fn change_hash(body: &[u8]) -> automerge::ChangeHash {
    let mut header = vec![1u8];
    write_uleb(&mut header, body.len() as u64);
    let mut hasher = Sha256::new();
    hasher.update(&header);
    hasher.update(body);
    automerge::ChangeHash(hasher.finalize().into())
}

/// The words for bytes automerge could not load either (the same as the server's own refusal
/// of corrupted changes).
fn malformed(why: &str) -> String {
    format!(
        "the changes could not be applied (a chunk is malformed: {why}); the sending app must resend them intact"
    )
}

/// (chunk type, body, the bytes after the chunk).
fn split_chunk(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let bad = |why: &str| malformed(why);
    if input.len() < 9 {
        return Err(bad("shorter than a chunk header"));
    }
    if input[..4] != MAGIC {
        return Err(bad("no automerge magic bytes"));
    }
    let chunk_type = input[8];
    let mut rest = &input[9..];
    let len = read_uleb(&mut rest).ok_or_else(|| bad("truncated length"))?;
    let len = usize::try_from(len).map_err(|_| bad("length too large"))?;
    if len > rest.len() {
        return Err(bad("length past the end of the data"));
    }
    Ok((chunk_type, &rest[..len], &rest[len..]))
}

/// Inflates `data`, refusing to produce more than `max` bytes.
fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::DeflateDecoder::new(data).take((max as u64).saturating_add(1));
    decoder
        .read_to_end(&mut out)
        .map_err(|e| malformed(&format!("a compressed chunk does not inflate: {e}")))?;
    if out.len() > max {
        return Err(format!(
            "compressed data inflates past {max} bytes, more than one sync message may expand to; split the changes over several messages"
        ));
    }
    Ok(out)
}

fn skip(rest: &mut &[u8], n: u64, what: &str) -> Result<(), String> {
    let n = usize::try_from(n).ok().filter(|n| *n <= rest.len());
    let Some(n) = n else {
        return Err(malformed(&format!("truncated {what}")));
    };
    *rest = &rest[n..];
    Ok(())
}

fn uleb(rest: &mut &[u8], what: &str) -> Result<u64, String> {
    read_uleb(rest).ok_or_else(|| malformed(&format!("truncated {what}")))
}

/// Skips a length-prefixed list of length-prefixed byte strings (actor ids).
fn skip_actors(rest: &mut &[u8]) -> Result<(), String> {
    let n = uleb(rest, "actor count")?;
    for _ in 0..n {
        let len = uleb(rest, "actor id")?;
        skip(rest, len, "actor id")?;
    }
    Ok(())
}

/// A column list: (spec, length) pairs.
fn columns(rest: &mut &[u8]) -> Result<Vec<(u64, u64)>, String> {
    let n = uleb(rest, "column count")?;
    let mut cols = Vec::new();
    for _ in 0..n {
        let spec = uleb(rest, "column spec")?;
        let len = uleb(rest, "column length")?;
        cols.push((spec, len));
        if cols.len() > 1_024 {
            return Err(malformed("more than 1,024 columns"));
        }
    }
    Ok(cols)
}

/// The operations a change chunk's body claims: the longest of its op columns.
fn change_ops(body: &[u8]) -> Result<u64, String> {
    let mut rest = body;
    let deps = uleb(&mut rest, "dependencies")?;
    skip(&mut rest, deps.saturating_mul(32), "dependencies")?;
    let actor = uleb(&mut rest, "actor")?;
    skip(&mut rest, actor, "actor")?;
    uleb(&mut rest, "seq")?;
    uleb(&mut rest, "start op")?;
    uleb(&mut rest, "time")?; // signed LEB128: same byte structure
    let message = uleb(&mut rest, "message")?;
    skip(&mut rest, message, "message")?;
    skip_actors(&mut rest)?;
    let cols = columns(&mut rest)?;
    let mut unused = 0;
    // automerge refuses deflated columns in change chunks: allow none to inflate.
    rows_of_columns(&cols, &mut rest, 0, &mut unused)
}

/// The operations a document chunk's body claims: the longest of its op columns (its change
/// columns are walked too, to reach the op data, and count as well).
fn document_ops(body: &[u8], bounds: &SyncBounds, inflated: &mut usize) -> Result<u64, String> {
    let mut rest = body;
    skip_actors(&mut rest)?;
    let heads = uleb(&mut rest, "heads")?;
    skip(&mut rest, heads.saturating_mul(32), "heads")?;
    let change_cols = columns(&mut rest)?;
    let op_cols = columns(&mut rest)?;
    let room = bounds.max_inflated_bytes;
    let changes = rows_of_columns(&change_cols, &mut rest, room, inflated)?;
    let ops = rows_of_columns(&op_cols, &mut rest, room, inflated)?;
    Ok(ops.max(changes))
}

/// The longest of these columns, in rows, consuming their data from `rest`; deflated columns
/// are inflated within `max_inflated` bytes in all (counted in `inflated`).
fn rows_of_columns(
    cols: &[(u64, u64)],
    rest: &mut &[u8],
    max_inflated: usize,
    inflated: &mut usize,
) -> Result<u64, String> {
    let mut rows = 0u64;
    for &(spec, len) in cols {
        let before = *rest;
        skip(rest, len, "column data")?;
        let data = &before[..len as usize];
        let col_type = spec & 0b111;
        let deflated = spec & 0b1000 != 0;
        let owned;
        let data = if deflated {
            owned = inflate(data, max_inflated.saturating_sub(*inflated))?;
            *inflated += owned.len();
            owned.as_slice()
        } else {
            data
        };
        rows = rows.max(column_rows(col_type, data)?);
    }
    Ok(rows)
}

/// How many rows one column's data encodes, summing run lengths without expanding them.
fn column_rows(col_type: u64, data: &[u8]) -> Result<u64, String> {
    let bad = || malformed("a column's runs are truncated");
    let mut rest = data;
    let mut rows = 0u64;
    match col_type {
        // Boolean: alternating run lengths.
        4 => {
            while !rest.is_empty() {
                rows = rows.saturating_add(read_uleb(&mut rest).ok_or_else(bad)?);
            }
        }
        // Raw values: their count comes from the value-metadata column.
        7 => {}
        // Run-length encoded: group, actor, integer, delta, string, value metadata.
        _ => {
            while !rest.is_empty() {
                let n = read_sleb(&mut rest).ok_or_else(bad)?;
                let value = |rest: &mut &[u8]| -> Result<(), String> {
                    if col_type == 5 {
                        let len = read_uleb(rest).ok_or_else(bad)?;
                        skip(rest, len, "string")
                    } else {
                        read_uleb(rest).map(|_| ()).ok_or_else(bad)
                    }
                };
                match n {
                    0 => rows = rows.saturating_add(read_uleb(&mut rest).ok_or_else(bad)?),
                    n if n > 0 => {
                        value(&mut rest)?;
                        rows = rows.saturating_add(n as u64);
                    }
                    n => {
                        let count = n.unsigned_abs();
                        for _ in 0..count {
                            value(&mut rest)?;
                        }
                        rows = rows.saturating_add(count);
                    }
                }
            }
        }
    }
    Ok(rows)
}

/// Reads an unsigned LEB128 number (at most 64 bits).
pub(crate) fn read_uleb(input: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn read_sleb(input: &mut &[u8]) -> Option<i64> {
    let mut value: i64 = 0;
    let mut shift = 0;
    loop {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        if shift < 64 {
            value |= i64::from(byte & 0x7f) << shift;
        }
        shift += 7;
        if byte & 0x80 == 0 {
            if shift < 64 && byte & 0x40 != 0 {
                value |= -1i64 << shift;
            }
            return Some(value);
        }
        if shift > 70 {
            return None;
        }
    }
}

/// Appends `n` as unsigned LEB128, the integer encoding of automerge's chunks and sync
/// messages (also what tests use to build hostile ones).
pub fn write_uleb(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A token bucket of frames per connection, with the time passed in: `burst` frames at once,
/// refilled at `per_second`. Pure, so it is tested without sockets or clocks.
#[derive(Clone, Debug)]
pub struct FrameBudget {
    per_second: u32,
    burst: u32,
    /// Tokens, in thousandths of a frame.
    milli_tokens: u64,
    last_ms: Option<u64>,
}

impl FrameBudget {
    /// A full bucket. `per_second == 0` turns the budget off.
    pub fn new(per_second: u32, burst: u32) -> FrameBudget {
        FrameBudget {
            per_second,
            burst,
            milli_tokens: u64::from(burst) * 1000,
            last_ms: None,
        }
    }

    /// Takes one frame's token at `now_ms`; false when the bucket is empty.
    pub fn take(&mut self, now_ms: u64) -> bool {
        if self.per_second == 0 {
            return true;
        }
        if let Some(last) = self.last_ms {
            let elapsed = now_ms.saturating_sub(last);
            let refill = elapsed.saturating_mul(u64::from(self.per_second));
            self.milli_tokens = self
                .milli_tokens
                .saturating_add(refill)
                .min(u64::from(self.burst) * 1000);
        }
        self.last_ms = Some(self.last_ms.map_or(now_ms, |l| l.max(now_ms)));
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }

    /// Frames per second refilled.
    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Frames allowed at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::sync::SyncDoc;
    use automerge::transaction::Transactable;
    use automerge::{Automerge, ROOT};

    fn doc_with(n: usize) -> Automerge {
        let mut doc = Automerge::new();
        for i in 0..n {
            let mut tx = doc.transaction();
            tx.put(ROOT, format!("k{i}"), i as i64).unwrap();
            tx.commit();
        }
        doc
    }

    #[test]
    fn leb128_reads_what_automerge_writes() {
        let mut input: &[u8] = &[0xe5, 0x8e, 0x26, 0x07];
        assert_eq!(read_uleb(&mut input), Some(624_485));
        assert_eq!(read_uleb(&mut input), Some(7));
        assert_eq!(read_uleb(&mut input), None);
        let mut endless: &[u8] = &[0xff; 20];
        assert_eq!(read_uleb(&mut endless), None);
        let mut neg: &[u8] = &[0x7f, 0x80, 0x7f];
        assert_eq!(read_sleb(&mut neg), Some(-1));
        assert_eq!(read_sleb(&mut neg), Some(-128));
    }

    #[test]
    fn real_changes_and_documents_are_counted_not_refused() {
        let doc = doc_with(50);
        let bounds = SyncBounds::default();
        let changes: Vec<Vec<u8>> = doc
            .get_changes(&[])
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        let s = inspect_changes(changes.iter().map(Vec::as_slice), &bounds).unwrap();
        assert_eq!((s.changes, s.documents, s.ops), (50, 0, 50));
        let hashes: Vec<_> = doc.get_changes(&[]).iter().map(|c| c.hash()).collect();
        assert_eq!(s.change_hashes, hashes);
        let saved = doc.save();
        let s = inspect_changes(std::iter::once(saved.as_slice()), &bounds).unwrap();
        assert_eq!(s.documents, 1);
        assert!(s.ops >= 50 && s.ops <= 60, "{s:?}");
        // A compressed change (automerge compresses changes of 256 bytes and more).
        let mut big = Automerge::new();
        let mut tx = big.transaction();
        for i in 0..200 {
            tx.put(ROOT, format!("key number {i}"), format!("value {i}"))
                .unwrap();
        }
        tx.commit();
        let mut change = big.get_changes(&[])[0].clone();
        let compressed = change.bytes().to_vec();
        assert_eq!(compressed[8], 2, "automerge compressed the change");
        let s = inspect_changes(std::iter::once(compressed.as_slice()), &bounds).unwrap();
        assert_eq!((s.compressed, s.ops), (1, 200));
        assert_eq!(s.change_hashes, vec![change.hash()]);
        // Several chunks back to back in one entry (a v2 message).
        let joined: Vec<u8> = changes.concat();
        let s = inspect_changes(std::iter::once(joined.as_slice()), &bounds).unwrap();
        assert_eq!(s.changes, 50);
    }

    /// A document of `n` list insertions is a few bytes of runs; it must be counted as `n`.
    #[test]
    fn a_small_document_claiming_many_ops_is_refused() {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        let list = tx.put_object(ROOT, "l", automerge::ObjType::List).unwrap();
        for i in 0..20_000 {
            tx.insert(&list, i, 1i64).unwrap();
        }
        tx.commit();
        let saved = doc.save();
        assert!(saved.len() < 2_000, "runs compress: {}", saved.len());
        let bounds = SyncBounds {
            max_ops: 10_000,
            ..SyncBounds::default()
        };
        let err = inspect_changes(std::iter::once(saved.as_slice()), &bounds).unwrap_err();
        assert!(err.contains("more than the 10000"), "{err}");
        let change = doc.get_changes(&[])[0].raw_bytes().to_vec();
        let err = inspect_changes(std::iter::once(change.as_slice()), &bounds).unwrap_err();
        assert!(err.contains("operations"), "{err}");
        // The same within the bound passes, with every op counted.
        let s = inspect_changes(std::iter::once(saved.as_slice()), &SyncBounds::default()).unwrap();
        assert!(s.ops >= 20_000, "{s:?}");
    }

    #[test]
    fn other_chunk_types_and_garbage_are_refused() {
        let doc = doc_with(1);
        let mut change = doc.get_changes(&[])[0].raw_bytes().to_vec();
        let bounds = SyncBounds::default();
        for t in [3u8, 4, 0xff] {
            change[8] = t;
            let err = inspect_changes(std::iter::once(change.as_slice()), &bounds).unwrap_err();
            assert!(err.contains(&format!("type {t}")), "{err}");
        }
        for garbage in [
            &b""[..],
            b"\x85\x6f\x4a\x83",
            b"not a chunk at all",
            &[
                0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0x7f,
            ],
        ] {
            if garbage.is_empty() {
                continue;
            }
            assert!(inspect_changes(std::iter::once(garbage), &bounds).is_err());
        }
        // A compressed chunk that inflates past the bound.
        let zeros = vec![0u8; 1 << 20];
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
        let deflated = enc.finish().unwrap();
        let mut chunk = MAGIC.to_vec();
        chunk.extend([0, 0, 0, 0, 2]);
        write_uleb(&mut chunk, deflated.len() as u64);
        chunk.extend(&deflated);
        let small = SyncBounds {
            max_inflated_bytes: 64 * 1024,
            ..SyncBounds::default()
        };
        let err = inspect_changes(std::iter::once(chunk.as_slice()), &small).unwrap_err();
        assert!(err.contains("inflates past 65536"), "{err}");
    }

    #[test]
    fn message_shapes_beyond_a_real_peer_are_refused() {
        let doc = doc_with(3);
        let mut state = sync::State::new();
        let real = doc.generate_sync_message(&mut state).unwrap();
        let bounds = SyncBounds::default();
        bounds.check(&real).unwrap();
        let hash = doc.get_heads()[0];
        let mut m = real.clone();
        m.have = vec![sync::Have::default(); 5];
        assert!(bounds.check(&m).unwrap_err().contains("have entries: 5"));
        let mut m = real.clone();
        m.heads = vec![hash; 1_025];
        assert!(bounds.check(&m).unwrap_err().contains("heads: 1025"));
        let mut m = real.clone();
        m.need = (0..1_025u32)
            .map(|i| {
                let mut h = [0u8; 32];
                h[..4].copy_from_slice(&i.to_le_bytes());
                automerge::ChangeHash(h)
            })
            .collect();
        assert!(bounds.check(&m).unwrap_err().contains("need hashes: 1025"));
        let mut m = real.clone();
        m.have[0].last_sync = vec![hash; 1_025];
        assert!(bounds.check(&m).unwrap_err().contains("last-sync"));
        let mut m = real;
        m.need = vec![hash, hash];
        assert!(bounds.check(&m).unwrap_err().contains("twice"));
    }

    #[test]
    fn counts_are_refused_before_decoding() {
        let b = SyncBounds::default();
        let mut m = vec![0x42, 0, 0];
        write_uleb(&mut m, 5_000_000);
        m.extend(std::iter::repeat_n(0u8, 10_000_000));
        assert!(
            b.precheck(&m)
                .unwrap_err()
                .contains("have entries: 5000000")
        );
        let mut m = vec![0x42, 0, 0, 0];
        write_uleb(&mut m, 200_000);
        assert!(
            b.precheck(&m)
                .unwrap_err()
                .contains("change chunks: 200000")
        );
        let doc = doc_with(3);
        let real = doc.generate_sync_message(&mut sync::State::new()).unwrap();
        assert!(b.precheck(&real.encode()).is_ok());
        for short in [&[][..], &[0x42], &[0x42, 5], &[0x42, 0, 0, 1, 3]] {
            assert!(b.precheck(short).is_ok(), "left to automerge's decoder");
        }
    }

    #[test]
    fn bloom_filters_beyond_a_real_peer_are_refused() {
        let b = SyncBounds::default();
        let bloom = |entries: u64, bits: u64, probes: u64| {
            let mut v = Vec::new();
            write_uleb(&mut v, entries);
            write_uleb(&mut v, bits);
            write_uleb(&mut v, probes);
            v
        };
        assert!(b.check_bloom(&bloom(10, 10, 7)).is_ok());
        assert!(
            b.check_bloom(&bloom(10, 0, 7))
                .unwrap_err()
                .contains("0 bits")
        );
        assert!(
            b.check_bloom(&bloom(10, 10, 33))
                .unwrap_err()
                .contains("33 probes")
        );
        assert!(
            b.check_bloom(&bloom(10, 33, 7))
                .unwrap_err()
                .contains("33 bits")
        );
        assert!(
            b.check_bloom(&bloom(1_000_001, 10, 7))
                .unwrap_err()
                .contains("1000001 entries")
        );
        assert!(b.check_bloom(&[0x80]).unwrap_err().contains("truncated"));
    }

    #[test]
    fn the_frame_budget_allows_a_burst_then_its_rate() {
        let mut b = FrameBudget::new(100, 10);
        assert!((0..10).all(|_| b.take(1_000)));
        assert!(!b.take(1_000), "the burst is spent");
        assert!(!b.take(1_009), "9 ms refill less than one frame");
        assert!(b.take(1_010), "10 ms at 100/s is one frame");
        assert!(!b.take(1_010));
        // A long pause refills at most the burst.
        assert_eq!((0..20).filter(|_| b.take(100_000)).count(), 10);
        // A clock going backwards refills nothing.
        assert!(!b.take(50_000));
        // Off.
        let mut off = FrameBudget::new(0, 0);
        assert!((0..10_000).all(|_| off.take(0)));
        // A steady honest rate below the budget is never refused.
        let mut b = FrameBudget::new(100, 10);
        assert!((0..10_000u64).all(|i| b.take(i * 20)));
    }
}
