//! The form of a protected record on a stream: JSON, keyed by `subject_ref`, with headers
//! naming the dataset, the contract version and the request that produced it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use warden_policy::contract::Contract;

use crate::stream::{Message, OutRecord};
use crate::{Error, Result};

/// Header naming the dataset of a record.
pub const H_DATASET: &str = "warden-dataset";
/// Header naming the contract version a record was protected under.
pub const H_CONTRACT_VERSION: &str = "warden-contract-version";
/// Header naming the request (or stage run) that produced the record.
pub const H_REQUEST_ID: &str = "warden-request-id";

/// A protected record as streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamedRecord {
    pub dataset: String,
    pub subject_ref: String,
    pub contract_version: u32,
    #[serde(deserialize_with = "sized_fields")]
    pub fields: Map<String, Value>,
}

/// Fields a record's map is sized for before its first field is read.
const FIELDS_HINT: usize = 16;
/// The most fields a map is sized for in advance, whatever a deserializer's hint says.
const MAX_FIELDS_HINT: usize = 256;

/// A record's fields, read into a map sized up front: serde_json's own starts empty and
/// rehashes every key as it grows (its maps are index maps here, `bson` asks for insertion
/// order), and each loader reads every record.
fn sized_fields<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Map<String, Value>, D::Error> {
    struct Fields;
    impl<'de> serde::de::Visitor<'de> for Fields {
        type Value = Map<String, Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of fields")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut access: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            // A hint is the input's word (serde_json gives none): bounded like any input.
            let hint = access.size_hint().unwrap_or(FIELDS_HINT);
            let mut fields = Map::with_capacity(hint.min(MAX_FIELDS_HINT));
            // As serde_json's own map: a repeated name keeps its last value.
            while let Some((name, value)) = access.next_entry::<String, Value>()? {
                fields.insert(name, value);
            }
            Ok(fields)
        }
    }
    deserializer.deserialize_map(Fields)
}

impl StreamedRecord {
    /// The stream form: keyed by `subject_ref` (so one subject's records stay in order, in one
    /// partition), with the dataset, contract version and request id as headers.
    pub fn to_out(&self, request_id: &str) -> OutRecord {
        StreamedRef {
            dataset: &self.dataset,
            subject_ref: &self.subject_ref,
            contract_version: self.contract_version,
            fields: &self.fields,
        }
        .to_out(request_id)
    }

    /// Reads a streamed record back. `Ok(None)` for a tombstone.
    ///
    /// # Errors
    /// A value that is not a streamed record.
    pub fn from_message(m: &Message) -> Result<Option<Self>> {
        match &m.value {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v).map(Some).map_err(|e| {
                Error::Invalid(format!(
                    "record at {}/{}/{} is not a Warden record: {}",
                    m.topic,
                    m.partition,
                    m.offset,
                    e.classify_name()
                ))
            }),
        }
    }

    /// The record key's value (the contract's `record_key` field) as text.
    pub fn key(&self, contract: &Contract) -> Option<String> {
        self.key_str(contract).map(std::borrow::Cow::into_owned)
    }

    /// As [`StreamedRecord::key`], borrowed where the key is a string already.
    pub fn key_str(&self, contract: &Contract) -> Option<std::borrow::Cow<'_, str>> {
        match self.fields.get(&contract.record_key)? {
            Value::String(s) => Some(std::borrow::Cow::Borrowed(s)),
            Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
            _ => None,
        }
    }

    /// The record's time (the contract's `time_field`) in Unix microseconds.
    pub fn time_micros(&self, contract: &Contract) -> Option<i64> {
        time_micros(self.fields.get(&contract.time_field)?)
    }
}

/// A streamed record borrowed from its parts (the ingest path publishes without copying
/// the fields); the same stream form as [`StreamedRecord`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StreamedRef<'a> {
    pub dataset: &'a str,
    pub subject_ref: &'a str,
    pub contract_version: u32,
    pub fields: &'a Map<String, Value>,
}

impl StreamedRef<'_> {
    /// See [`StreamedRecord::to_out`].
    pub fn to_out(&self, request_id: &str) -> OutRecord {
        OutRecord {
            key: self.subject_ref.to_owned(),
            value: Some(serde_json::to_vec(self).unwrap_or_default()),
            headers: vec![
                (H_DATASET.to_owned(), self.dataset.to_owned()),
                (
                    H_CONTRACT_VERSION.to_owned(),
                    self.contract_version.to_string(),
                ),
                (H_REQUEST_ID.to_owned(), request_id.to_owned()),
            ],
        }
    }
}

/// Unix microseconds of a time value (see [`warden_policy::timefmt`]).
pub fn time_micros(v: &Value) -> Option<i64> {
    warden_policy::timefmt::time_micros(v)
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    /// The kind of a JSON error only: serde's messages can quote the input.
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io error",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "wrong shape",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}
