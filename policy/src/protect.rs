//! The protection engine: from a dataset contract, a purpose and raw records to protected
//! records — or precise rejections that name the record and field, never the value.
//!
//! | class | becomes |
//! |---|---|
//! | `pci.pan` | a vault token keeping the last four digits |
//! | `pci.sad` | nothing: the record is rejected, or the field stripped (PCI DSS 3.3) |
//! | `pii.direct` | `enc:v1:<base64>`: AES-256-GCM under the subject's key, bound to dataset, field and subject; plus `<field>__bidx`, a blind index (HMAC) for equality lookups |
//! | `pii.id` | `subject_ref`, the keyed pseudonym of the identifier |
//! | `pii.network` | the address truncated to /24 (IPv4) or /48 (IPv6) |
//! | `public` | itself, type-checked; a card number or e-mail address in its text refuses the record, or is tokenized or kept, as the contract's `[detectors]` say |
//!
//! Everything keyed is batched: one pseudonym key, one tokenization, one lookup of subject
//! keys per batch of records.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::contract::{Contract, DataClass, DetectAction, FieldPositions, FieldType, SadPolicy};
use crate::detect::{self, Detector, Finding};
use crate::keyring::{DataKey, KeyBatch, KeyRing, SCOPE_DATASET, SCOPE_SUBJECT};
use crate::keys::{seal, KeyProvider, LocalKeyFile};
use crate::pan::{parse_pan, Tokenizer};
use crate::{Error, Result};

/// Scope of the installation-wide pseudonym key.
pub const SCOPE_PSEUDONYM: &str = "pseudonym";
const PSEUDONYM_REF: &str = "subject_ref";
/// Suffix of the blind-index field written beside each `pii.direct` field.
pub const BLIND_INDEX_SUFFIX: &str = "__bidx";
const ENC_PREFIX: &str = "enc:v1:";
/// Prefix of the keyed pseudonym that replaces an e-mail address in unclassified text.
const EMAIL_TOKEN_PREFIX: &str = "em_";
/// The blind-index "field" whose key makes those pseudonyms.
const EMAIL_TOKEN_KEY: &str = "__text_email";
/// Longest accepted string value, in bytes.
pub const MAX_VALUE: usize = 4096;

/// A record ready for streams and stores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProtectedRecord {
    pub subject_ref: String,
    /// The contract version the record was protected under.
    pub contract_version: u32,
    pub fields: Map<String, Value>,
}

/// Why a record was refused: which record, which field, what is wrong — never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub index: usize,
    pub field: Option<String>,
    pub reason: String,
    /// A stable code, for refusals a client acts upon (`card_number_in_unclassified_field`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
}

/// The rejection code of a record whose subject is a pseudonym Warden did not issue.
pub const UNKNOWN_SUBJECT_REF: &str = "unknown_subject_ref";

/// The stable rejection code of a detector's refusal.
pub fn detection_code(detector: Detector) -> &'static str {
    match detector {
        Detector::CardNumber => "card_number_in_unclassified_field",
        Detector::Email => "email_in_unclassified_field",
    }
}

/// Findings in unclassified text, counted by detector and what was done
/// (`("card_number", "refuse")`); never the values.
pub type Detections = std::collections::BTreeMap<(&'static str, &'static str), u64>;

/// The outcome of one batch.
#[derive(Debug, Default)]
pub struct Protected {
    pub records: Vec<(usize, ProtectedRecord)>,
    pub rejections: Vec<Rejection>,
    /// Names of `pci.sad` fields stripped (under `sad = "strip"`), for the audit log.
    pub stripped: Vec<(usize, String)>,
    /// Card numbers and e-mail addresses found in `public` text, and what became of them.
    pub detections: Detections,
}

/// Applies contracts to records.
#[derive(Debug, Clone)]
pub struct Protector {
    keys: Arc<KeyRing>,
    tokenizer: Tokenizer,
    enricher: Option<Arc<dyn NetworkEnricher>>,
}

/// Reads a network address before it is truncated — geo-enrichment, for instance — and
/// returns fields to add to the record. Only `public` fields of the contract that the record
/// does not carry itself are added; anything else is dropped.
pub trait NetworkEnricher: Send + Sync + std::fmt::Debug {
    fn enrich(&self, dataset: &str, field: &str, ip: IpAddr) -> Map<String, Value>;
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Result<[u8; 32]> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| Error::Wrap)?;
    for p in parts {
        m.update(p);
    }
    Ok(m.finalize().into_bytes().into())
}

fn pii_aad(dataset: &str, field: &str, subject_ref: &str) -> Vec<u8> {
    let mut aad = Vec::new();
    write_pii_aad(&mut aad, dataset, field, subject_ref);
    aad
}

/// [`pii_aad`] into a buffer kept across records.
fn write_pii_aad(aad: &mut Vec<u8>, dataset: &str, field: &str, subject_ref: &str) {
    aad.clear();
    for part in [
        b"warden:pii:".as_slice(),
        dataset.as_bytes(),
        b":",
        field.as_bytes(),
        b":",
        subject_ref.as_bytes(),
    ] {
        aad.extend_from_slice(part);
    }
}

/// An HMAC-SHA-256 with its key (and a prefix) absorbed once: each value then costs a clone
/// of the state instead of the two key blocks again.
fn hmac_state(key: &[u8], prefix: &[u8]) -> Result<Hmac<Sha256>> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| Error::Wrap)?;
    m.update(prefix);
    Ok(m)
}

/// `prefix`, then `bytes` in lowercase hex, in one allocation (`hex::encode` collects its
/// digits a `char` at a time, a cost every record paid twice or more).
fn hex_after(prefix: &str, bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(prefix.len() + 2 * bytes.len());
    out.push_str(prefix);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// `sr_` and 32 hex digits of the pseudonym MAC (keyed, `warden:subject:` absorbed) of `id`.
fn subject_ref_with(keyed: &Hmac<Sha256>, id: &str) -> String {
    let mut m = keyed.clone();
    m.update(id.as_bytes());
    hex_after("sr_", &m.finalize().into_bytes()[..16])
}

/// The blind index of `value` under its field's keyed MAC state.
fn blind_index_from(field_mac: &Hmac<Sha256>, value: &str) -> String {
    let mut m = field_mac.clone();
    m.update(value.as_bytes());
    hex_after("", &m.finalize().into_bytes())
}

/// Whether `s` is a subject pseudonym: `sr_` and 32 lowercase hex digits.
pub fn is_subject_ref(s: &str) -> bool {
    s.len() == 35
        && s.starts_with("sr_")
        && s[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Truncates an address: /24 for IPv4, /48 for IPv6.
pub fn truncate_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            IpAddr::from([o[0], o[1], o[2], 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    }
}

fn type_ok(ty: FieldType, v: &Value) -> bool {
    match ty {
        FieldType::String => v.as_str().is_some(),
        FieldType::Integer => v.as_i64().is_some() || v.as_u64().is_some(),
        FieldType::Number => v.is_number(),
        FieldType::Boolean => v.is_boolean(),
        FieldType::Timestamp => crate::timefmt::parse_time(v).is_some(),
        FieldType::Ip => v.as_str().is_some_and(|s| s.parse::<IpAddr>().is_ok()),
    }
}

fn type_name(ty: FieldType) -> &'static str {
    match ty {
        FieldType::String => "a string",
        FieldType::Integer => "an integer",
        FieldType::Number => "a number",
        FieldType::Boolean => "true or false",
        FieldType::Timestamp => "a time (RFC 3339, RFC 2822, YYYY-MM-DD[ HH:MM:SS] or epoch)",
        FieldType::Ip => "an IP address",
    }
}

impl Protector {
    pub fn new(keys: Arc<KeyRing>, tokenizer: Tokenizer) -> Self {
        Self {
            keys,
            tokenizer,
            enricher: None,
        }
    }

    /// The same protector, with an enrichment hook that sees each address before truncation.
    #[must_use]
    pub fn with_enricher(mut self, enricher: Arc<dyn NetworkEnricher>) -> Self {
        self.enricher = Some(enricher);
        self
    }

    /// The keyed pseudonyms of subject identifiers: `sr_` and 32 hex digits of
    /// HMAC-SHA-256 under the installation's pseudonym key. The same identifier always gives
    /// the same `subject_ref`, in every dataset; without the key it cannot be computed.
    ///
    /// # Errors
    /// Key failures.
    pub async fn subject_refs(&self, ids: &[&str]) -> Result<Vec<String>> {
        let key = self
            .keys
            .data_key(SCOPE_PSEUDONYM, PSEUDONYM_REF, true)
            .await?;
        let keyed = hmac_state(key.expose(), b"warden:subject:")?;
        Ok(ids
            .iter()
            .map(|id| {
                // A pseudonym already (a stage writing derived records): kept, so the
                // subject stays one subject across datasets (and erasure finds it).
                if is_subject_ref(id) {
                    (*id).to_owned()
                } else {
                    subject_ref_with(&keyed, id)
                }
            })
            .collect())
    }

    /// Protects a batch for `purpose`.
    ///
    /// # Errors
    /// [`Error::PurposeNotAllowed`] when the contract does not list the purpose (GDPR
    /// Art. 5(1)(b)); key or vault failures. A bad record is a [`Rejection`], not an error.
    pub async fn protect(
        &self,
        contract: &Contract,
        purpose: &str,
        records: &[Map<String, Value>],
    ) -> Result<Protected> {
        if !contract.allows_purpose(purpose) {
            return Err(Error::PurposeNotAllowed);
        }
        self.protect_owned(contract, purpose, records.to_vec())
            .await
    }

    /// As [`Protector::protect`], taking the records: their field names and the values kept
    /// as they are (public fields) move into the protected records instead of being copied.
    ///
    /// # Errors
    /// As [`Protector::protect`].
    pub async fn protect_owned(
        &self,
        contract: &Contract,
        purpose: &str,
        mut records: Vec<Map<String, Value>>,
    ) -> Result<Protected> {
        if !contract.allows_purpose(purpose) {
            return Err(Error::PurposeNotAllowed);
        }
        let mut out = Protected::default();
        // 1. Validate every record; find its subject and card numbers.
        let mut accepted: Vec<(usize, &Map<String, Value>)> = Vec::new();
        let mut pans: Vec<String> = Vec::new();
        let mut pan_slots: Vec<(usize, String)> = Vec::new();
        // What to tokenize in `public` text, by (accepted slot, field position).
        let mut text_findings: HashMap<(usize, usize), Vec<Finding>> = HashMap::new();
        // The contract's fields are found in each record by position, not by name.
        let mut positions = FieldPositions::new(contract.fields.keys().map(String::as_str));
        let mut values: Vec<Option<&Value>> = vec![None; contract.fields.len()];
        'records: for (i, rec) in records.iter().enumerate() {
            let reject = |field: Option<&str>, reason: String| Rejection {
                index: i,
                field: field.map(str::to_owned),
                reason,
                code: None,
            };
            values.fill(None);
            for (k, (name, v)) in rec.iter().enumerate() {
                let Some(p) = positions.position(k, name) else {
                    // The key is the client's text — it could be a card number or an e-mail —
                    // so it is never repeated, not in the answer nor in the audit log.
                    out.rejections.push(reject(
                        None,
                        "carries a field the dataset's contract does not define".to_owned(),
                    ));
                    continue 'records;
                };
                values[p] = Some(v);
            }
            let mut record_pans = Vec::new();
            let mut record_texts = Vec::new();
            for (p, ((name, spec), value)) in contract.fields.iter().zip(&values).enumerate() {
                let value = value.filter(|v| !v.is_null());
                let Some(v) = value else {
                    if spec.required {
                        out.rejections
                            .push(reject(Some(name), "required field missing".to_owned()));
                        continue 'records;
                    }
                    continue;
                };
                if spec.class == DataClass::PciSad {
                    if contract.sad == SadPolicy::Reject {
                        out.rejections.push(reject(
                            Some(name),
                            "sensitive authentication data is never accepted (PCI DSS 3.3)"
                                .to_owned(),
                        ));
                        continue 'records;
                    }
                    continue;
                }
                if !type_ok(spec.ty, v) {
                    out.rejections.push(reject(
                        Some(name),
                        format!("must be {}", type_name(spec.ty)),
                    ));
                    continue 'records;
                }
                if v.as_str().is_some_and(|s| s.len() > MAX_VALUE) {
                    out.rejections
                        .push(reject(Some(name), format!("longer than {MAX_VALUE} bytes")));
                    continue 'records;
                }
                if spec.class == DataClass::PiiDirect && v.as_str().is_some_and(str::is_empty) {
                    out.rejections.push(reject(
                        Some(name),
                        "must not be empty (omit the field instead)".to_owned(),
                    ));
                    continue 'records;
                }
                if let (DataClass::Public, Some(text)) = (spec.class, v.as_str()) {
                    let found = detect::scan(text);
                    if let Some(refused) = detected(contract, text, &found, &mut out.detections) {
                        out.rejections.push(Rejection {
                            code: Some(detection_code(refused)),
                            ..reject(
                                Some(name),
                                format!(
                                    "carries {} in a field the contract does not classify (detectors.{} = \"refuse\")",
                                    match refused {
                                        Detector::CardNumber => "a card number",
                                        Detector::Email => "an e-mail address",
                                    },
                                    refused.as_str()
                                ),
                            )
                        });
                        continue 'records;
                    }
                    let tokenized: Vec<Finding> = found
                        .into_iter()
                        .filter(|f| finding_action(contract, text, f) == DetectAction::Tokenize)
                        .collect();
                    if !tokenized.is_empty() {
                        record_texts.push((p, tokenized));
                    }
                }
                if spec.class == DataClass::PciPan {
                    match parse_pan(v.as_str().unwrap_or_default()) {
                        Ok(pan) => record_pans.push((name.clone(), pan)),
                        Err(e) => {
                            out.rejections
                                .push(reject(Some(name), format!("not a card number: {e}")));
                            continue 'records;
                        }
                    }
                }
            }
            let subject = rec
                .get(&contract.subject_field)
                .and_then(Value::as_str)
                .unwrap_or_default();
            if subject.is_empty() {
                out.rejections.push(reject(
                    Some(&contract.subject_field),
                    "the subject identifier is empty".to_owned(),
                ));
                continue;
            }
            for (field, pan) in record_pans {
                pan_slots.push((accepted.len(), field));
                pans.push(pan);
            }
            for (p, found) in record_texts {
                text_findings.insert((accepted.len(), p), found);
            }
            accepted.push((i, rec));
        }
        if accepted.is_empty() {
            return Ok(out);
        }
        // 2. Keys and tokens, batched.
        let ids: Vec<&str> = accepted
            .iter()
            .map(|(_, r)| {
                r.get(&contract.subject_field)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            })
            .collect();
        let refs = self.subject_refs(&ids).await?;
        // From here on the records are taken one by one, by index.
        let accepted: Vec<usize> = accepted.into_iter().map(|(i, _)| i).collect();
        let direct_fields = contract
            .fields
            .values()
            .filter(|s| s.class == DataClass::PiiDirect)
            .count();
        let has_direct = direct_fields > 0;
        let given: Vec<bool> = ids.iter().map(|id| is_subject_ref(id)).collect();
        let subject_keys = self.subject_keys(&refs, &given).await?;
        // A pseudonym Warden did not issue (no key, live or destroyed, was ever made for it).
        let invented = |slot: usize| {
            given[slot]
                && !subject_keys.keys.contains_key(&refs[slot])
                && !subject_keys.destroyed.contains(&refs[slot])
        };
        // Erased or invented subjects first: nothing of theirs is taken, not even into the
        // vault.
        let erased = |slot: usize| subject_keys.destroyed.contains(&refs[slot]) || invented(slot);
        let (live_slots, live_pans): (Vec<&(usize, String)>, Vec<String>) = pan_slots
            .iter()
            .zip(pans)
            .filter(|((slot, _), _)| !erased(*slot))
            .unzip();
        let owners: Vec<&str> = live_slots
            .iter()
            .map(|(slot, _)| refs[*slot].as_str())
            .collect();
        let tokens = self
            .tokenizer
            .tokenize_for(&contract.name, &live_pans, &owners)
            .await?;
        let mut token_of: HashMap<(usize, &str), &str> = HashMap::new();
        for ((slot, field), token) in live_slots.into_iter().zip(&tokens) {
            token_of.insert((*slot, field.as_str()), token.as_str());
        }
        let text_tokens = self
            .text_card_tokens(
                contract,
                &records,
                &accepted,
                &refs,
                &text_findings,
                &erased,
            )
            .await?;
        let email_tokens = text_findings
            .values()
            .flatten()
            .any(|f| f.detector == Detector::Email);
        let dataset_key = if has_direct || email_tokens {
            Some(
                self.keys
                    .data_key(SCOPE_DATASET, &contract.name, true)
                    .await?,
            )
        } else {
            None
        };
        // 3. Build the protected records.
        let by_position: Vec<(&str, &crate::contract::FieldSpec)> = contract
            .fields
            .iter()
            .map(|(name, spec)| (name.as_str(), spec))
            .collect();
        let mut index_keys: HashMap<&str, Hmac<Sha256>> = HashMap::new();
        let email_mac = match (&dataset_key, email_tokens) {
            (Some(dk), true) => Some(hmac_state(&blind_index_key(dk, EMAIL_TOKEN_KEY)?, b"")?),
            _ => None,
        };
        let mut aad = Vec::new();
        'build: for (slot, (i, subject_ref)) in accepted.iter().zip(&refs).enumerate() {
            let rec = std::mem::take(&mut records[*i]);
            if invented(slot) {
                out.rejections.push(Rejection {
                    index: *i,
                    field: Some(contract.subject_field.clone()),
                    reason: "the subject is a pseudonym Warden did not issue: send the subject's identifier, or a subject_ref Warden gave out".to_owned(),
                    code: Some(UNKNOWN_SUBJECT_REF),
                });
                continue;
            }
            if erased(slot) {
                out.rejections.push(Rejection {
                    index: *i,
                    field: Some(contract.subject_field.clone()),
                    reason: "the subject was erased: no new data is accepted for it".to_owned(),
                    code: None,
                });
                continue;
            }
            let mut enriched = Map::new();
            // Sized once: growing an index map rehashes every key so far.
            let mut fields = Map::with_capacity(rec.len() + direct_fields);
            // Names the record gave as null: enrichment does not fill them either.
            let mut nulls: Vec<String> = Vec::new();
            for (k, (name, v)) in rec.into_iter().enumerate() {
                if v.is_null() {
                    nulls.push(name);
                    continue;
                }
                // Every field of an accepted record is the contract's (checked above).
                let Some((p, (field, spec))) = positions
                    .position(k, &name)
                    .and_then(|p| by_position.get(p).map(|f| (p, *f)))
                else {
                    return Err(Error::Store(
                        "a field outside the contract passed validation".to_owned(),
                    ));
                };
                let protected = match spec.class {
                    DataClass::PciSad => {
                        out.stripped.push((*i, name));
                        continue;
                    }
                    DataClass::PciPan => Value::String(
                        token_of
                            .get(&(slot, name.as_str()))
                            .copied()
                            .unwrap_or_default()
                            .to_owned(),
                    ),
                    DataClass::PiiId => Value::String(subject_ref.clone()),
                    DataClass::PiiNetwork => {
                        let ip: IpAddr = v
                            .as_str()
                            .unwrap_or_default()
                            .parse()
                            .map_err(|_| Error::Store("ip checked above".to_owned()))?;
                        if let Some(e) = &self.enricher {
                            enriched.extend(e.enrich(&contract.name, field, ip));
                        }
                        Value::String(truncate_ip(ip).to_string())
                    }
                    DataClass::Public => match text_findings.get(&(slot, p)) {
                        Some(found) => Value::String(tokenized_text(
                            v.as_str().unwrap_or_default(),
                            found,
                            |k| text_tokens.get(&(slot, p, k)).map(String::as_str),
                            email_mac.as_ref(),
                        )?),
                        None => v,
                    },
                    DataClass::PiiDirect => {
                        let keys = &subject_keys;
                        let Some(key) = keys.keys.get(subject_ref) else {
                            out.rejections.push(Rejection {
                                index: *i,
                                field: Some(name.clone()),
                                reason: "the subject was erased: no new personal data is accepted for it".to_owned(),
                                code: None,
                            });
                            continue 'build;
                        };
                        let clear = v.as_str().unwrap_or_default();
                        write_pii_aad(&mut aad, &contract.name, field, subject_ref);
                        let ct = seal(key.expose(), clear.as_bytes(), &aad)?;
                        let dk = dataset_key.as_ref().ok_or(Error::Wrap)?;
                        let field_mac = match index_keys.entry(field) {
                            Entry::Occupied(e) => e.into_mut(),
                            Entry::Vacant(e) => {
                                e.insert(hmac_state(&blind_index_key(dk, field)?, b"")?)
                            }
                        };
                        fields.insert(
                            format!("{field}{BLIND_INDEX_SUFFIX}"),
                            Value::String(blind_index_from(field_mac, clear)),
                        );
                        let mut enc = String::with_capacity(
                            ENC_PREFIX.len() + base64::encoded_len(ct.len(), true).unwrap_or(0),
                        );
                        enc.push_str(ENC_PREFIX);
                        STANDARD.encode_string(ct, &mut enc);
                        Value::String(enc)
                    }
                };
                fields.insert(name, protected);
            }
            for (name, v) in enriched {
                let public = contract
                    .fields
                    .get(&name)
                    .is_some_and(|f| f.class == DataClass::Public);
                if public && !fields.contains_key(&name) && !nulls.contains(&name) {
                    fields.insert(name, v);
                }
            }
            out.records.push((
                *i,
                ProtectedRecord {
                    subject_ref: subject_ref.clone(),
                    contract_version: contract.version,
                    fields,
                },
            ));
        }
        out.rejections.sort_by_key(|r| r.index);
        Ok(out)
    }

    /// The keys of a batch's subjects. A subject pseudonymized here gets its key on first
    /// sight — so its records can be crypto-shredded, and its pseudonym recognized when a
    /// stage sends it back; a pseudonym sent as such (`given`) is only looked up, so one
    /// nobody issued has no key.
    async fn subject_keys(&self, refs: &[String], given: &[bool]) -> Result<KeyBatch> {
        let (mut named, mut issued) = (Vec::new(), Vec::new());
        for (r, g) in refs.iter().zip(given) {
            if *g { &mut named } else { &mut issued }.push(r.clone());
        }
        let mut batch = self.keys.data_keys(SCOPE_SUBJECT, &issued, true).await?;
        if !named.is_empty() {
            let known = self.keys.data_keys(SCOPE_SUBJECT, &named, false).await?;
            batch.keys.extend(known.keys);
            batch.destroyed.extend(known.destroyed);
        }
        Ok(batch)
    }

    /// Vault tokens for the card numbers to tokenize in `public` text, by (accepted slot,
    /// field position, finding), for the subjects not erased.
    async fn text_card_tokens(
        &self,
        contract: &Contract,
        records: &[Map<String, Value>],
        accepted: &[usize],
        refs: &[String],
        text_findings: &HashMap<(usize, usize), Vec<Finding>>,
        erased: &impl Fn(usize) -> bool,
    ) -> Result<HashMap<(usize, usize, usize), String>> {
        let names: Vec<&str> = contract.fields.keys().map(String::as_str).collect();
        let (mut at, mut pans, mut owners) = (Vec::new(), Vec::new(), Vec::new());
        for (&(slot, p), found) in text_findings {
            if erased(slot) {
                continue;
            }
            let Some(text) = records[accepted[slot]]
                .get(names[p])
                .and_then(Value::as_str)
            else {
                continue;
            };
            for (k, f) in found.iter().enumerate() {
                if f.detector == Detector::CardNumber {
                    at.push((slot, p, k));
                    pans.push(detect::card_digits(text, f));
                    owners.push(refs[slot].as_str());
                }
            }
        }
        if pans.is_empty() {
            return Ok(HashMap::new());
        }
        let tokens = self
            .tokenizer
            .tokenize_for(&contract.name, &pans, &owners)
            .await?;
        Ok(at.into_iter().zip(tokens).collect())
    }

    /// The blind index of `value` for `field` of `dataset` (to search protected records).
    ///
    /// # Errors
    /// Key failures.
    pub async fn blind_index(&self, dataset: &str, field: &str, value: &str) -> Result<String> {
        blind_index(
            &self.keys.data_key(SCOPE_DATASET, dataset, true).await?,
            field,
            value,
        )
    }

    /// Decrypts a `pii.direct` value of `subject_ref` for `field` of `dataset`.
    ///
    /// # Errors
    /// [`Error::KeyDestroyed`] once the subject was crypto-shredded; [`Error::Unwrap`] when the
    /// value belongs to another subject, field or dataset, or was altered.
    pub async fn reveal(
        &self,
        dataset: &str,
        field: &str,
        subject_ref: &str,
        value: &str,
    ) -> Result<String> {
        let ct = value
            .strip_prefix(ENC_PREFIX)
            .and_then(|b| STANDARD.decode(b).ok())
            .ok_or(Error::Unwrap)?;
        let key = self
            .keys
            .data_key(SCOPE_SUBJECT, subject_ref, false)
            .await?;
        let clear = LocalKeyFile::from_key(key.expose())
            .unwrap(&ct, &pii_aad(dataset, field, subject_ref))
            .await?;
        String::from_utf8(clear.expose().to_vec()).map_err(|_| Error::Unwrap)
    }
}

/// What a reader may see of protected records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewRights {
    /// `pii.direct` in clear (else masked).
    pub pii_read: bool,
    /// Card numbers as first six and last four (PCI DSS 3.4.1; else `****1234`).
    pub pan_bin: bool,
}

/// A masked `pii.direct` value.
pub const MASKED: &str = "****";

impl Protector {
    /// Protected records as a reader with `rights` sees them: card numbers masked (never in
    /// clear here — that is detokenization, with its own permission and second factor),
    /// personal data decrypted or masked, blind indexes and fields the contract no longer
    /// lists dropped. Values of erased subjects
    /// read as `null`.
    ///
    /// # Errors
    /// Key or vault failures.
    pub async fn view(
        &self,
        contract: &Contract,
        rights: ViewRights,
        records: &[ProtectedRecord],
    ) -> Result<Vec<Map<String, Value>>> {
        let pan_fields: Vec<&String> = contract
            .fields
            .iter()
            .filter(|(_, s)| s.class == DataClass::PciPan)
            .map(|(n, _)| n)
            .collect();
        let mut bins: HashMap<String, String> = HashMap::new();
        if rights.pan_bin && !pan_fields.is_empty() {
            let tokens: Vec<String> = records
                .iter()
                .flat_map(|r| {
                    pan_fields
                        .iter()
                        .filter_map(|f| r.fields.get(*f).and_then(Value::as_str).map(str::to_owned))
                })
                .collect();
            let pans = self.tokenizer.detokenize(&contract.name, &tokens).await?;
            for (t, p) in tokens.into_iter().zip(pans) {
                if let Some(p) = p {
                    bins.insert(t, crate::pan::mask_pan(&p));
                }
            }
        }
        let subject_keys = if rights.pii_read {
            let refs: Vec<String> = records.iter().map(|r| r.subject_ref.clone()).collect();
            Some(self.keys.data_keys(SCOPE_SUBJECT, &refs, false).await?)
        } else {
            None
        };
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let mut view = Map::new();
            for (name, v) in &r.fields {
                if name.ends_with(BLIND_INDEX_SUFFIX) {
                    continue;
                }
                // A field the contract in force does not list (a later version dropped it) is
                // not shown: classes never change across versions, so the contract in force
                // classifies every field it lists, and anything else is denied by default.
                let Some(class) = contract.fields.get(name).map(|s| s.class) else {
                    continue;
                };
                let shown = match class {
                    DataClass::PciPan => {
                        let token = v.as_str().unwrap_or_default();
                        Value::String(
                            bins.get(token)
                                .cloned()
                                .unwrap_or_else(|| crate::pan::mask_token(token)),
                        )
                    }
                    DataClass::PiiDirect => match &subject_keys {
                        None => Value::String(MASKED.to_owned()),
                        Some(keys) => match keys.keys.get(&r.subject_ref) {
                            None => Value::Null,
                            Some(key) => {
                                let ct = v
                                    .as_str()
                                    .and_then(|s| s.strip_prefix(ENC_PREFIX))
                                    .and_then(|b| STANDARD.decode(b).ok());
                                let clear = match ct {
                                    Some(ct) => {
                                        LocalKeyFile::from_key(key.expose())
                                            .unwrap(
                                                &ct,
                                                &pii_aad(&contract.name, name, &r.subject_ref),
                                            )
                                            .await?
                                    }
                                    None => return Err(Error::Unwrap),
                                };
                                Value::String(
                                    String::from_utf8(clear.expose().to_vec())
                                        .map_err(|_| Error::Unwrap)?,
                                )
                            }
                        },
                    },
                    _ => v.clone(),
                };
                view.insert(name.clone(), shown);
            }
            out.push(view);
        }
        Ok(out)
    }
}

/// Counts what the scan of one `public` value found; the first detector whose action is to
/// refuse, if any.
fn detected(
    contract: &Contract,
    text: &str,
    found: &[Finding],
    counts: &mut Detections,
) -> Option<Detector> {
    let mut refused = None;
    for f in found {
        let action = finding_action(contract, text, f);
        *counts
            .entry((f.detector.as_str(), action.as_str()))
            .or_default() += 1;
        if action == DetectAction::Refuse && refused.is_none() {
            // Refused for the card number an address hid, the refusal names the card.
            refused = Some(if action == contract.detectors.action(f.detector) {
                f.detector
            } else {
                Detector::CardNumber
            });
        }
    }
    refused
}

/// What the contract does with a finding: its detector's action, or the card detector's
/// when that is stricter and a card number hides inside an e-mail address.
fn finding_action(contract: &Contract, text: &str, f: &Finding) -> DetectAction {
    let action = contract.detectors.action(f.detector);
    if f.detector == Detector::Email
        && detect::has_card(text.get(f.start..f.end).unwrap_or_default())
    {
        action.strictest(contract.detectors.card_number)
    } else {
        action
    }
}

/// `text` with each finding replaced: a card number by its vault token (`card_token(k)` for
/// the `k`-th finding), an e-mail address by its keyed pseudonym.
fn tokenized_text<'t>(
    text: &str,
    found: &[Finding],
    card_token: impl Fn(usize) -> Option<&'t str>,
    email_mac: Option<&Hmac<Sha256>>,
) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (k, f) in found.iter().enumerate() {
        out.push_str(text.get(at..f.start).unwrap_or_default());
        match f.detector {
            Detector::CardNumber => {
                out.push_str(card_token(k).ok_or_else(|| {
                    Error::Store("a card number in text was not tokenized".into())
                })?)
            }
            Detector::Email => {
                let mac = email_mac.ok_or(Error::Wrap)?;
                let index = blind_index_from(mac, text.get(f.start..f.end).unwrap_or_default());
                out.push_str(EMAIL_TOKEN_PREFIX);
                out.push_str(index.get(..32).unwrap_or_default());
            }
        }
        at = f.end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    Ok(out)
}

fn blind_index(dataset_key: &DataKey, field: &str, value: &str) -> Result<String> {
    Ok(blind_index_from(
        &hmac_state(&blind_index_key(dataset_key, field)?, b"")?,
        value,
    ))
}

/// The key of a field's blind index (derived once per batch and field).
fn blind_index_key(dataset_key: &DataKey, field: &str) -> Result<[u8; 32]> {
    hmac(
        dataset_key.expose(),
        &[b"warden:blind-index:", field.as_bytes()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation() {
        assert_eq!(
            truncate_ip("203.0.113.77".parse().unwrap()).to_string(),
            "203.0.113.0"
        );
        assert_eq!(
            truncate_ip("2001:db8:abcd:12:1::7".parse().unwrap()).to_string(),
            "2001:db8:abcd::"
        );
    }

    #[test]
    fn precomputed_macs_and_buffers_give_the_reference_values() {
        let key = [7u8; 32];
        let keyed = hmac_state(&key, b"warden:subject:").unwrap();
        for id in [
            "",
            "customer-1",
            "ü-longer-than-one-block-".repeat(5).as_str(),
        ] {
            let fast = subject_ref_with(&keyed, id);
            let reference = hmac(&key, &[b"warden:subject:", id.as_bytes()]).unwrap();
            assert_eq!(
                fast,
                format!("sr_{}", hex::encode(&reference[..16])),
                "{id}"
            );
            assert!(is_subject_ref(&fast));
        }
        let index = blind_index_from(&hmac_state(&key, b"").unwrap(), "a@example.org");
        let reference = hmac(&key, &[b"a@example.org"]).unwrap();
        assert_eq!(index, hex::encode(reference));
        let every_byte: Vec<u8> = (0..=255).collect();
        assert_eq!(
            hex_after("x_", &every_byte),
            format!("x_{}", hex::encode(&every_byte))
        );
        let mut aad = b"left over".to_vec();
        write_pii_aad(&mut aad, "payments", "email", "sr_1");
        assert_eq!(aad, b"warden:pii:payments:email:sr_1");
        assert_eq!(pii_aad("payments", "email", "sr_1"), aad);
    }
}
