//! The canonical byte encoding of an audit event, the input of the hash chain.
//!
//! A fixed binary form, so that the same event always hashes the same whatever produced it:
//! a domain tag, then every field in a fixed order. Integers are big-endian; strings are a
//! 4-byte big-endian length and their UTF-8 bytes; an optional string is a `0` byte when
//! absent or a `1` byte and the string. `details` is canonical JSON: object keys sorted by
//! their UTF-8 bytes, no insignificant whitespace, strings escaped as serde_json does, numbers
//! in serde_json's shortest round-trip form. The encoding is documented here and re-implemented
//! by nothing else; the offline verifier uses this same code.

use serde_json::Value;

use crate::event::EventBody;

/// Version tag mixed into every hash; bump it if the encoding ever changes.
const DOMAIN: &[u8] = b"warden.audit.v1\0";

/// The canonical bytes of an event with its sequence number.
pub fn encode(seq: u64, body: &EventBody) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.details.len());
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&body.ts.to_be_bytes());
    put_str(&mut out, &body.actor);
    put_str(&mut out, &body.actor_kind);
    put_str(&mut out, &body.action);
    put_str(&mut out, &body.resource);
    put_str(&mut out, body.decision.as_str());
    put_opt(&mut out, body.purpose.as_deref());
    put_opt(&mut out, body.request_id.as_deref());
    put_opt(&mut out, body.subject_ref.as_deref());
    put_str(&mut out, &body.details);
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Fields are bounded far below 4 GiB by the event constructor.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// Canonical JSON text of a value (sorted keys, compact).
pub fn json(value: &Value) -> String {
    let mut out = String::new();
    write_json(&mut out, value);
    out
}

fn write_json(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_scalar(out, &Value::String(k.clone()));
                out.push(':');
                write_json(out, v);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, v);
            }
            out.push(']');
        }
        scalar => write_scalar(out, scalar),
    }
}

fn write_scalar(out: &mut String, value: &Value) {
    // Serializing a scalar Value cannot fail.
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_depth() {
        let v = json!({"b": 1, "a": {"z": [3, {"y": true, "x": null}], "c": "é"}});
        assert_eq!(
            json(&v),
            r#"{"a":{"c":"é","z":[3,{"x":null,"y":true}]},"b":1}"#
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        // Parsing canonical text and encoding it again gives the same bytes: what is stored
        // is what was hashed.
        #[test]
        fn canonical_json_is_a_fixed_point(v in arb_json()) {
            let once = json(&v);
            let parsed: Value = serde_json::from_str(&once).unwrap();
            prop_assert_eq!(&parsed, &v);
            prop_assert_eq!(json(&parsed), once);
        }
    }
}
