//! Built-in stages, run by each loader between the stream and its sink, in the order the
//! configuration lists them:
//!
//! - `normalize`: times to RFC 3339 UTC (from the forms [`warden_policy::timefmt`] reads),
//!   public strings trimmed, country fields (`country`, `*_country`, `country_code`) to
//!   ISO 3166-1 alpha-2 from alpha-2, alpha-3 or English names;
//! - `dedupe`: drops a record whose record key this loader has already written (a bounded
//!   memory of recent keys; sinks are idempotent by key besides);
//! - `geo_enrich`: runs at the edge instead, where the full address is still there (the
//!   protection engine's enrichment hook, see [`crate::geo`]); listed here so the graph is
//!   declared in one place.

use std::collections::hash_map::RandomState;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::str::FromStr;

use serde_json::Value;
use warden_policy::contract::{Contract, DataClass, FieldPositions, FieldType};
use warden_policy::timefmt::{parse_time, to_rfc3339};

use crate::StreamedRecord;

/// Keys a `dedupe` stage remembers, by default.
pub const DEDUPE_MEMORY: usize = 1_000_000;

/// A built-in stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    Dedupe,
    Normalize,
    GeoEnrich,
}

impl FromStr for StageKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dedupe" => Ok(Self::Dedupe),
            "normalize" => Ok(Self::Normalize),
            "geo_enrich" => Ok(Self::GeoEnrich),
            _ => Err(format!(
                "unknown stage {s:?}: the built-ins are dedupe, normalize and geo_enrich"
            )),
        }
    }
}

/// A record read from a stream, with where it was.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
    pub record: StreamedRecord,
}

/// A dataset's stages, as one loader runs them.
#[derive(Debug)]
pub struct Stages {
    kinds: Vec<StageKind>,
    seen: Option<Seen>,
}

/// A bounded memory of record keys, oldest forgotten first. A key is kept as a 128-bit
/// digest ([`Seen::digest`]): 16 bytes and no allocation a record, where the key's text
/// was copied twice (set and order) before.
#[derive(Debug, Default)]
struct Seen {
    keys: Digests,
    order: VecDeque<u128>,
    capacity: usize,
    /// Two SipHash keys, random for each process: an outsider cannot choose record keys
    /// that collide, and two distinct keys share a digest with a chance of about 2^-128.
    hashers: (RandomState, RandomState),
}

impl Seen {
    fn digest(&self, key: &str) -> u128 {
        (u128::from(self.hashers.0.hash_one(key)) << 64) | u128::from(self.hashers.1.hash_one(key))
    }

    fn remember(&mut self, key: u128) {
        if self.capacity == 0 || !self.keys.insert(key) {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }
}

/// Hashes a [`Seen::digest`] by its low 64 bits: it is a keyed random hash already, so
/// hashing it again (the standard set's SipHash, three times a record) buys nothing.
#[derive(Debug, Default, Clone, Copy)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used; any other input still hashes, by FNV-1a.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u128(&mut self, digest: u128) {
        let [low @ .., _, _, _, _, _, _, _, _] = digest.to_le_bytes();
        self.0 = u64::from_le_bytes(low);
    }
}

/// A set of key digests.
type Digests = HashSet<u128, BuildHasherDefault<DigestHasher>>;

/// The outcome of a batch: the records to write, and what `dedupe` must remember once they
/// are written.
#[derive(Debug, Default)]
pub struct Staged {
    pub records: Vec<Delivered>,
    pub dropped: usize,
    new_keys: Vec<u128>,
}

impl Stages {
    pub fn new(kinds: &[StageKind]) -> Self {
        Self::with_memory(kinds, DEDUPE_MEMORY)
    }

    /// As [`Stages::new`], with `dedupe` remembering `memory` keys.
    pub fn with_memory(kinds: &[StageKind], memory: usize) -> Self {
        Self {
            kinds: kinds.to_vec(),
            seen: kinds.contains(&StageKind::Dedupe).then(|| Seen {
                capacity: memory,
                ..Seen::default()
            }),
        }
    }

    /// Runs the stages over a batch. Nothing is remembered yet: call [`Stages::written`]
    /// once the sink confirmed, so a batch that failed and is read again is not dropped as
    /// a duplicate of itself.
    pub fn apply(&self, contract: &Contract, batch: Vec<Delivered>) -> Staged {
        let mut out = Staged::default();
        let mut records = batch;
        for kind in &self.kinds {
            match kind {
                StageKind::Normalize => {
                    let mut normalizer = Normalizer::new(contract);
                    for d in &mut records {
                        normalizer.apply(&mut d.record);
                    }
                }
                StageKind::Dedupe => {
                    // Present whenever `dedupe` is listed (see `with_memory`).
                    let Some(seen) = self.seen.as_ref() else {
                        continue;
                    };
                    let mut in_batch =
                        Digests::with_capacity_and_hasher(records.len(), Default::default());
                    records.retain(|d| match d.record.key_str(contract) {
                        None => true,
                        Some(key) => {
                            let k = seen.digest(&key);
                            let fresh = !seen.keys.contains(&k) && in_batch.insert(k);
                            if fresh {
                                out.new_keys.push(k);
                            } else {
                                out.dropped += 1;
                            }
                            fresh
                        }
                    });
                }
                StageKind::GeoEnrich => {}
            }
        }
        out.records = records;
        out
    }

    /// Remembers the keys of a batch the sink confirmed.
    pub fn written(&mut self, staged: Staged) {
        if let Some(seen) = &mut self.seen {
            for k in staged.new_keys {
                seen.remember(k);
            }
        }
    }
}

fn is_country_field(name: &str) -> bool {
    name == "country" || name == "country_code" || name.ends_with("_country")
}

/// ISO 3166-1 alpha-2 of a country given as alpha-2, alpha-3 or English short name.
pub fn country_code(s: &str) -> Option<&'static str> {
    use isocountry::CountryCode;
    let s = s.trim();
    let code = match s.len() {
        2 => CountryCode::for_alpha2_caseless(s).ok(),
        3 => CountryCode::for_alpha3_caseless(s).ok(),
        _ => None,
    }
    .or_else(|| {
        CountryCode::iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
            .copied()
    })?;
    Some(code.alpha2())
}

/// Whether `s` has exactly the shape `normalize` writes for a whole second in UTC,
/// `YYYY-MM-DDTHH:MM:SSZ` (most times arrive so): parsing it and writing it again gives it
/// back when it is a valid time, and leaves it as it is when not, so it can stay untouched.
fn whole_second_utc(s: &str) -> bool {
    const SHAPE: &[u8; 20] = b"dddd-dd-ddTdd:dd:ddZ";
    s.len() == SHAPE.len()
        && s.bytes().zip(SHAPE).all(|(b, &want)| match want {
            b'd' => b.is_ascii_digit(),
            _ => b == want,
        })
}

/// Normalizes a record's public fields in place.
pub fn normalize(contract: &Contract, record: &mut StreamedRecord) {
    Normalizer::new(contract).apply(record);
}

/// [`normalize`] over a run of records: the contract's public fields are found in each
/// record by position ([`FieldPositions`]), not looked up by name.
struct Normalizer<'a> {
    /// By contract field: its type when it is public (the fields normalized), else `None`.
    /// Every field is listed, so a protected one is found at its guessed place too rather
    /// than searched for in vain.
    types: Vec<Option<FieldType>>,
    positions: FieldPositions<'a>,
}

impl<'a> Normalizer<'a> {
    fn new(contract: &'a Contract) -> Self {
        Self {
            types: contract
                .fields
                .values()
                .map(|spec| (spec.class == DataClass::Public).then_some(spec.ty))
                .collect(),
            positions: FieldPositions::new(contract.fields.keys().map(String::as_str)),
        }
    }

    fn apply(&mut self, record: &mut StreamedRecord) {
        for (k, (name, v)) in record.fields.iter_mut().enumerate() {
            let ty = self
                .positions
                .position(k, name)
                .and_then(|p| self.types.get(p));
            if let Some(Some(ty)) = ty {
                normalize_value(name, *ty, v);
            }
        }
    }
}

/// Normalizes the value of the public field `name`, of type `ty`.
fn normalize_value(name: &str, ty: FieldType, v: &mut Value) {
    match ty {
        FieldType::Timestamp => {
            if v.as_str().is_some_and(whole_second_utc) {
                // Canonical already when valid, and kept as it is when not.
                return;
            }
            if let Some(t) = parse_time(v) {
                let canonical = to_rfc3339(t);
                if v.as_str() != Some(canonical.as_str()) {
                    *v = Value::String(canonical);
                }
            }
        }
        FieldType::String => {
            if let Value::String(s) = v {
                // Written only when it changes: most values arrive clean.
                let trimmed = s.trim();
                let new = if is_country_field(name) {
                    country_code(trimmed).unwrap_or(trimmed)
                } else {
                    trimmed
                };
                if new != s.as_str() {
                    *s = new.to_owned();
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    fn contract() -> Contract {
        Contract::from_toml(include_str!("../../config/datasets/payments.toml")).unwrap()
    }

    fn delivered(offset: i64, fields: Value) -> Delivered {
        let Value::Object(fields) = fields else {
            panic!("an object")
        };
        Delivered {
            partition: 0,
            offset,
            record: StreamedRecord {
                dataset: "payments".into(),
                subject_ref: "sr_00000000000000000000000000000001".into(),
                contract_version: 1,
                fields,
            },
        }
    }

    #[test]
    fn normalize_times_strings_and_countries() {
        let c = contract();
        let mut d = delivered(
            0,
            json!({"transaction_id": "  t-1 ", "created_at": 1_795_514_400_000_i64,
                   "country": " deu", "amount": 5, "email": " enc:v1:abc ",
                   "card_number": "tok_x"}),
        );
        normalize(&c, &mut d.record);
        let f: &Map<String, Value> = &d.record.fields;
        assert_eq!(f["transaction_id"], "t-1");
        assert_eq!(f["created_at"], "2026-11-24T10:00:00Z");
        assert_eq!(f["country"], "DE");
        assert_eq!(f["amount"], 5);
        assert_eq!(
            f["email"], " enc:v1:abc ",
            "protected values are not touched"
        );
        for (given, code) in [
            ("fr", "FR"),
            ("FRA", "FR"),
            ("France", "FR"),
            ("germany", "DE"),
        ] {
            assert_eq!(country_code(given), Some(code), "{given}");
        }
        assert_eq!(country_code("Atlantis"), None);
        let mut odd = delivered(1, json!({"country": "Atlantis", "created_at": "someday"}));
        normalize(&c, &mut odd.record);
        assert_eq!(
            odd.record.fields["country"], "Atlantis",
            "unknown values are kept"
        );
        assert_eq!(odd.record.fields["created_at"], "someday");
    }

    #[test]
    fn whole_seconds_in_utc_are_left_as_the_slow_path_would_leave_them() {
        for s in [
            "2026-11-24T10:00:00Z",
            "2016-12-31T23:59:60Z",
            "2026-13-45T25:61:61Z",
            "0000-00-00T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2024-02-29T12:00:00Z",
            "2023-02-29T12:00:00Z",
        ] {
            assert!(whole_second_utc(s), "{s}");
            let slow = parse_time(&Value::String(s.to_owned())).map(to_rfc3339);
            assert!(
                slow.is_none() || slow.as_deref() == Some(s),
                "{s}: {slow:?}"
            );
        }
        for s in [
            "2026-11-24T10:00:00+00:00",
            "2026-11-24T10:00:00.5Z",
            " 2026-11-24T10:00:00Z",
            "2026-11-24 10:00:00Z",
            "2026-11-24T10:00:00z",
            "２026-11-24T10:00:00Z",
        ] {
            assert!(!whole_second_utc(s), "{s}");
        }
        let c = contract();
        let mut d = delivered(0, json!({"created_at": "2026-11-24T11:00:00+01:00"}));
        normalize(&c, &mut d.record);
        assert_eq!(d.record.fields["created_at"], "2026-11-24T10:00:00Z");
    }

    #[test]
    fn digests_hash_by_their_low_bits() {
        let mut h = DigestHasher::default();
        h.write_u128((7_u128 << 64) | 0x1234);
        assert_eq!(h.finish(), 0x1234);
        let mut set = Digests::default();
        assert!(set.insert(1) && set.insert(1 << 64) && !set.insert(1));
    }

    #[test]
    fn dedupe_remembers_only_what_was_written() {
        let c = contract();
        let mut stages = Stages::with_memory(&[StageKind::Normalize, StageKind::Dedupe], 2);
        let batch = || {
            vec![
                delivered(0, json!({"transaction_id": "a"})),
                delivered(1, json!({"transaction_id": " a "})),
                delivered(2, json!({"transaction_id": "b"})),
            ]
        };
        // Normalized first, so " a " is a duplicate of "a" within the batch.
        let staged = stages.apply(&c, batch());
        assert_eq!(staged.records.len(), 2);
        assert_eq!(staged.dropped, 1);
        // Not written: the same batch read again passes again.
        let staged = stages.apply(&c, batch());
        assert_eq!(staged.records.len(), 2);
        stages.written(staged);
        let staged = stages.apply(&c, batch());
        assert!(staged.records.is_empty(), "written keys are duplicates now");
        // The memory is bounded: the oldest key is forgotten.
        let staged = stages.apply(&c, vec![delivered(3, json!({"transaction_id": "c"}))]);
        stages.written(staged);
        let again = stages.apply(&c, batch());
        assert_eq!(again.records.len(), 1, "a was forgotten, b is remembered");
        assert_eq!(again.records[0].record.fields["transaction_id"], "a");
        // Without dedupe nothing is dropped.
        let plain = Stages::new(&[]);
        assert_eq!(plain.apply(&c, batch()).records.len(), 3);
        assert!("shuffle".parse::<StageKind>().is_err());
    }
}
