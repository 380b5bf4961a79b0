//! Dataset contracts: what a dataset holds, whose data it is, and how each field is protected.
//!
//! A contract is TOML (`config/datasets/*.toml`). Loading validates it once into a
//! [`Contract`]; errors name the offending path (`fields.card_number.class`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a field is classified, and so protected on ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataClass {
    /// A card number (PCI DSS): vaulted, replaced by a token keeping the last four digits.
    #[serde(rename = "pci.pan")]
    PciPan,
    /// Sensitive authentication data (CVV, PIN block, track data): never stored (PCI DSS 3.3).
    #[serde(rename = "pci.sad")]
    PciSad,
    /// Directly identifying personal data: encrypted under the subject's key.
    #[serde(rename = "pii.direct")]
    PiiDirect,
    /// The subject's identifier: replaced by its keyed pseudonym, `subject_ref`.
    #[serde(rename = "pii.id")]
    PiiId,
    /// An IP address: truncated (/24, /48).
    #[serde(rename = "pii.network")]
    PiiNetwork,
    /// Not personal: validated and kept.
    #[serde(rename = "public")]
    Public,
}

/// The JSON type a field must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    String,
    Integer,
    Number,
    Boolean,
    /// RFC 3339 or epoch seconds/milliseconds.
    Timestamp,
    /// IPv4 or IPv6 address.
    Ip,
}

/// What to do with a record that carries sensitive authentication data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SadPolicy {
    /// Refuse the whole record (the default).
    #[default]
    Reject,
    /// Drop the field and keep the record.
    Strip,
}

/// What the edge does with a card number or an e-mail address found in the text of a field
/// the contract classifies `public`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectAction {
    /// Refuse the record (the default): the contract should classify the field.
    #[default]
    Refuse,
    /// Replace what was found: a card number by a vault token, an e-mail address by a keyed
    /// pseudonym (`em_` and 32 hex digits, the same for the same address in the dataset).
    Tokenize,
    /// Keep it as it is, counted.
    Allow,
}

impl DetectAction {
    /// The stricter of two actions: refuse, then tokenize, then allow.
    pub fn strictest(self, other: Self) -> Self {
        match (self, other) {
            (Self::Refuse, _) | (_, Self::Refuse) => Self::Refuse,
            (Self::Tokenize, _) | (_, Self::Tokenize) => Self::Tokenize,
            _ => Self::Allow,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refuse => "refuse",
            Self::Tokenize => "tokenize",
            Self::Allow => "allow",
        }
    }
}

/// The detectors of sensitive values in unclassified text (`[detectors]` of a contract).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detectors {
    #[serde(default)]
    pub card_number: DetectAction,
    #[serde(default)]
    pub email: DetectAction,
}

impl Detectors {
    /// The action for `detector`.
    pub fn action(&self, detector: crate::detect::Detector) -> DetectAction {
        match detector {
            crate::detect::Detector::CardNumber => self.card_number,
            crate::detect::Detector::Email => self.email,
        }
    }
}

/// One field of a contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub class: DataClass,
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// Whether every record must carry it.
    #[serde(default)]
    pub required: bool,
}

/// A contract as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContractFile {
    name: String,
    version: u32,
    subject_field: String,
    record_key: String,
    time_field: String,
    #[serde(with = "humantime_serde")]
    retention: Duration,
    purposes: Vec<String>,
    stream: String,
    lake_table: String,
    collection: String,
    #[serde(default)]
    sad: SadPolicy,
    #[serde(default)]
    detectors: Detectors,
    fields: BTreeMap<String, FieldSpec>,
}

/// A validated dataset contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    pub name: String,
    pub version: u32,
    pub subject_field: String,
    pub record_key: String,
    pub time_field: String,
    pub retention: Duration,
    pub purposes: Vec<String>,
    pub stream: String,
    pub lake_table: String,
    pub collection: String,
    pub sad: SadPolicy,
    pub detectors: Detectors,
    pub fields: BTreeMap<String, FieldSpec>,
}

/// A contract that does not validate: the path of the problem and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ContractError {
    pub path: String,
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ContractError {
    ContractError {
        path: path.into(),
        message: message.into(),
    }
}

/// Names of datasets, fields, purposes, streams, tables: 1 to 64 of `[a-z0-9_]`, starting
/// with a letter.
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Contract {
    /// Parses and validates TOML.
    ///
    /// # Errors
    /// A [`ContractError`] naming the path of the first problem.
    pub fn from_toml(text: &str) -> Result<Self, ContractError> {
        let file: ContractFile = toml::from_str(text).map_err(|e| {
            // toml's message names the key; keep it, it holds no record data.
            err("contract", e.message().to_owned())
        })?;
        Self::validate(file)
    }

    fn validate(f: ContractFile) -> Result<Self, ContractError> {
        for (path, v) in [
            ("name", &f.name),
            ("stream", &f.stream),
            ("lake_table", &f.lake_table),
            ("collection", &f.collection),
        ] {
            if !valid_name(v) {
                return Err(err(
                    path,
                    "must be 1 to 64 of a-z, 0-9 and _, starting with a letter",
                ));
            }
        }
        if f.version == 0 {
            return Err(err("version", "must be 1 or more"));
        }
        if f.fields.is_empty() || f.fields.len() > 512 {
            return Err(err("fields", "a contract has 1 to 512 fields"));
        }
        for name in f.fields.keys() {
            if !valid_name(name) || name.ends_with(crate::protect::BLIND_INDEX_SUFFIX) {
                return Err(err(
                    format!("fields.{name}"),
                    "field names are 1 to 64 of a-z, 0-9 and _, starting with a letter",
                ));
            }
        }
        let field = |path: &str, name: &str| -> Result<&FieldSpec, ContractError> {
            f.fields
                .get(name)
                .ok_or_else(|| err(path, format!("names no field of the contract ({name:?})")))
        };
        let subject = field("subject_field", &f.subject_field)?;
        if subject.class != DataClass::PiiId {
            return Err(err(
                format!("fields.{}.class", f.subject_field),
                "the subject field must be pii.id",
            ));
        }
        let ids = f
            .fields
            .values()
            .filter(|s| s.class == DataClass::PiiId)
            .count();
        if ids != 1 {
            return Err(err(
                "fields",
                "exactly one field is pii.id: the subject field",
            ));
        }
        let key = field("record_key", &f.record_key)?;
        if key.class != DataClass::Public {
            return Err(err(
                format!("fields.{}.class", f.record_key),
                "the record key must be public (it is indexed and shown)",
            ));
        }
        let time = field("time_field", &f.time_field)?;
        if time.ty != FieldType::Timestamp {
            return Err(err(
                format!("fields.{}.type", f.time_field),
                "the time field must be a timestamp",
            ));
        }
        for (name, spec) in &f.fields {
            let ok = match spec.class {
                DataClass::PciPan | DataClass::PciSad | DataClass::PiiDirect | DataClass::PiiId => {
                    spec.ty == FieldType::String
                }
                DataClass::PiiNetwork => spec.ty == FieldType::Ip,
                DataClass::Public => spec.ty != FieldType::Ip,
            };
            if !ok {
                return Err(err(
                    format!("fields.{name}.type"),
                    "this type does not fit the field's class",
                ));
            }
            if spec.class == DataClass::PciSad && spec.required {
                return Err(err(
                    format!("fields.{name}.required"),
                    "sensitive authentication data is never required: it is never stored",
                ));
            }
        }
        if f.purposes.is_empty() {
            return Err(err(
                "purposes",
                "list at least one purpose (GDPR Art. 5(1)(b))",
            ));
        }
        for (i, p) in f.purposes.iter().enumerate() {
            if !valid_name(p) {
                return Err(err(
                    format!("purposes[{i}]"),
                    "purposes are 1 to 64 of a-z, 0-9 and _",
                ));
            }
        }
        if f.retention.is_zero() {
            return Err(err("retention", "must be positive"));
        }
        Ok(Self {
            name: f.name,
            version: f.version,
            subject_field: f.subject_field,
            record_key: f.record_key,
            time_field: f.time_field,
            retention: f.retention,
            purposes: f.purposes,
            stream: f.stream,
            lake_table: f.lake_table,
            collection: f.collection,
            sad: f.sad,
            detectors: f.detectors,
            fields: f.fields,
        })
    }

    /// Parses and validates JSON (the API's form).
    ///
    /// # Errors
    /// As [`from_toml`](Self::from_toml).
    pub fn from_json(text: &str) -> Result<Self, ContractError> {
        let file: ContractFile = serde_json::from_str(text).map_err(|e| {
            // serde_json quotes values only for type errors; keep just the category and place.
            let msg = e.to_string();
            let kept = ["unknown field", "missing field", "unknown variant"]
                .iter()
                .find_map(|m| {
                    msg.find(m)
                        .map(|i| msg[i..].split(',').next().unwrap_or(m).to_owned())
                })
                .unwrap_or_else(|| {
                    format!(
                        "invalid contract at line {} column {}",
                        e.line(),
                        e.column()
                    )
                });
            err("contract", kept)
        })?;
        Self::validate(file)
    }

    /// The contract as JSON (what the API returns and the store keeps).
    pub fn to_json(&self) -> String {
        let file = ContractFile {
            name: self.name.clone(),
            version: self.version,
            subject_field: self.subject_field.clone(),
            record_key: self.record_key.clone(),
            time_field: self.time_field.clone(),
            retention: self.retention,
            purposes: self.purposes.clone(),
            stream: self.stream.clone(),
            lake_table: self.lake_table.clone(),
            collection: self.collection.clone(),
            sad: self.sad,
            detectors: self.detectors,
            fields: self.fields.clone(),
        };
        serde_json::to_string(&file).unwrap_or_default()
    }

    /// Whether the contract allows processing for `purpose`.
    pub fn allows_purpose(&self, purpose: &str) -> bool {
        self.purposes.iter().any(|p| p == purpose)
    }
}

/// Finds the fields of a run of records among a fixed list of names, by position, without
/// hashing: records of one source carry their fields in one order, so the position the
/// previous record's `k`-th field had is tried first (one comparison of short strings), and
/// the list is searched only when that misses — every time for a name the list does not
/// hold, so lists should name every field a record may carry. Looking each name up in each
/// record's map instead hashed it every time (SipHash, the index maps of `serde_json`), for
/// every field of every record, in each loader.
#[derive(Debug)]
pub struct FieldPositions<'a> {
    names: Vec<&'a str>,
    /// By a field's place in its record: the position its name had last time.
    guess: Vec<Option<usize>>,
}

impl<'a> FieldPositions<'a> {
    pub fn new(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            names: names.into_iter().collect(),
            guess: Vec::new(),
        }
    }

    /// The position of `name`, a record's `k`-th field, in the list; `None` when the list
    /// does not hold it.
    pub fn position(&mut self, k: usize, name: &str) -> Option<usize> {
        if let Some(Some(g)) = self.guess.get(k) {
            if self.names.get(*g) == Some(&name) {
                return Some(*g);
            }
        }
        let found = self.names.iter().position(|n| *n == name);
        if self.guess.len() <= k {
            // Bounded by the record's own field count: the record is in memory already.
            self.guess.resize(k + 1, None);
        }
        self.guess[k] = found;
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const PAYMENTS: &str = include_str!("../../config/datasets/payments.toml");

    #[test]
    fn shipped_contract_validates() {
        let c = Contract::from_toml(PAYMENTS).unwrap();
        assert_eq!(c.name, "payments");
        assert_eq!(c.fields["card_number"].class, DataClass::PciPan);
        assert!(c.allows_purpose("fraud_detection"));
        assert!(!c.allows_purpose("marketing"));
    }

    #[test]
    fn json_round_trip() {
        let c = Contract::from_toml(PAYMENTS).unwrap();
        assert_eq!(Contract::from_json(&c.to_json()).unwrap(), c);
        let e =
            Contract::from_json(&c.to_json().replace("\"purposes\"", "\"porpoises\"")).unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn errors_name_the_path() {
        for (from, to, path) in [
            ("class = \"pci.pan\"", "class = \"pci.panda\"", "contract"),
            (
                "subject_field = \"user_id\"",
                "subject_field = \"nobody\"",
                "subject_field",
            ),
            (
                "time_field = \"created_at\"",
                "time_field = \"amount\"",
                "fields.amount.type",
            ),
            (
                "record_key = \"transaction_id\"",
                "record_key = \"email\"",
                "fields.email.class",
            ),
            (
                "purposes = [\"payment_processing\", \"fraud_detection\"]",
                "purposes = []",
                "purposes",
            ),
            (
                "[fields.ip]\nclass = \"pii.network\"\ntype = \"ip\"",
                "[fields.ip]\nclass = \"pii.network\"\ntype = \"string\"",
                "fields.ip.type",
            ),
            (
                "[fields.cvv]\nclass = \"pci.sad\"\ntype = \"string\"",
                "[fields.cvv]\nclass = \"pci.sad\"\ntype = \"string\"\nrequired = true",
                "fields.cvv.required",
            ),
        ] {
            assert!(PAYMENTS.contains(from), "{from}");
            let e = Contract::from_toml(&PAYMENTS.replace(from, to)).unwrap_err();
            assert_eq!(e.path, path, "{to}: {e}");
        }
        let e =
            Contract::from_toml(&PAYMENTS.replace("[fields.email]", "[fields.Email]")).unwrap_err();
        assert_eq!(e.path, "fields.Email");
    }

    #[test]
    fn positions_follow_the_names_whatever_the_order() {
        let mut p = FieldPositions::new(["a", "b", "c"]);
        // A first record, the order of the list; a second, another order; a third with a
        // name the list lacks; then the first order again.
        let records: [&[&str]; 4] = [
            &["a", "b", "c"],
            &["c", "a"],
            &["b", "x", "a"],
            &["a", "b", "c"],
        ];
        for fields in records {
            for (k, name) in fields.iter().enumerate() {
                let want = ["a", "b", "c"].iter().position(|n| n == name);
                assert_eq!(p.position(k, name), want, "{name} at {k}");
            }
        }
        assert_eq!(FieldPositions::new([]).position(3, "a"), None);
    }
}
