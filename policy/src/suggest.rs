//! Suggests a dataset contract from a sample of records: a class and a type for each field,
//! from what its values are (card numbers, e-mail addresses, IP addresses, times, numbers)
//! and what its name says (`user_id`, `phone`, `cvv`), for an operator to review
//! (`warden datasets suggest FILE`).
//!
//! The suggestion names fields and counts values; it never repeats a value, so it can be
//! shared and committed whatever the sample held.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::contract::{valid_name, Contract, ContractError, DataClass, FieldType};
use crate::detect::{self, Detector};

/// Most records of a sample looked at.
pub const MAX_SAMPLE: usize = 10_000;
/// Share of a field's values that must agree for a class or type to be suggested.
const MOST: f64 = 0.9;

/// What the sample says of one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSuggestion {
    /// The field's name in the contract (`a-z0-9_`).
    pub name: String,
    /// The name in the sample, when it had to be rewritten.
    pub source: Option<String>,
    pub class: DataClass,
    pub ty: FieldType,
    pub required: bool,
    /// Why, in counts: "98 of 100 values are card numbers".
    pub evidence: String,
}

/// A suggested contract.
#[derive(Debug, Clone)]
pub struct Suggestion {
    pub fields: Vec<FieldSuggestion>,
    /// The contract as TOML, with the evidence as comments.
    pub toml: String,
    /// Why the TOML does not validate as it stands (what the operator must fill in).
    pub problem: Option<ContractError>,
}

#[derive(Debug, Default)]
struct Stats {
    present: usize,
    strings: usize,
    cards: usize,
    emails: usize,
    text_cards: usize,
    text_emails: usize,
    ips: usize,
    times: usize,
    integers: usize,
    numbers: usize,
    booleans: usize,
    distinct: HashSet<String>,
}

/// Field names that say what the field holds, matched on whole words of the name.
const SAD_WORDS: &[&str] = &[
    "cvv", "cvc", "cvv2", "cvc2", "cid", "pin", "track", "track1", "track2",
];
const DIRECT_WORDS: &[&str] = &[
    "email",
    "mail",
    "phone",
    "mobile",
    "tel",
    "name",
    "firstname",
    "lastname",
    "surname",
    "address",
    "street",
    "zip",
    "postcode",
    "postal",
    "birth",
    "birthday",
    "dob",
    "ssn",
    "iban",
    "passport",
    "license",
    "licence",
    "tax",
];
const SUBJECT_WORDS: &[&str] = &[
    "user", "customer", "client", "subject", "person", "member", "patient", "account", "holder",
    "employee",
];
const TIME_WORDS: &[&str] = &[
    "at",
    "time",
    "timestamp",
    "date",
    "ts",
    "created",
    "updated",
];

fn words(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

fn any_word(name: &str, list: &[&str]) -> bool {
    words(name).iter().any(|w| list.contains(&w.as_str()))
}

/// A contract field name for a sample's column name: lower case, `_` for anything else, a
/// letter first, at most 64 characters.
fn field_name(source: &str) -> String {
    let mut out: String = source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    while out.contains("__") {
        out = out.replace("__", "_");
    }
    let mut out = out.trim_matches('_').to_owned();
    if !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out.insert_str(0, "f_");
    }
    out.truncate(64);
    out
}

fn whole(text: &str, detector: Detector) -> bool {
    let t = text.trim();
    let found = detect::scan(t);
    found.len() == 1
        && found[0].detector == detector
        && found[0].start == 0
        && found[0].end == t.len()
}

impl Stats {
    fn add(&mut self, v: &Value, from_text: bool) {
        if v.is_null() {
            return;
        }
        self.present += 1;
        if self.distinct.len() <= MAX_SAMPLE {
            self.distinct.insert(v.to_string());
        }
        match v {
            Value::Bool(_) => self.booleans += 1,
            Value::Number(n) => {
                self.numbers += 1;
                if n.is_i64() || n.is_u64() {
                    self.integers += 1;
                }
            }
            Value::String(s) => {
                self.strings += 1;
                if whole(s, Detector::CardNumber) {
                    self.cards += 1;
                } else if whole(s, Detector::Email) {
                    self.emails += 1;
                } else {
                    let found = detect::scan(s);
                    self.text_cards +=
                        usize::from(found.iter().any(|f| f.detector == Detector::CardNumber));
                    self.text_emails +=
                        usize::from(found.iter().any(|f| f.detector == Detector::Email));
                }
                if s.trim().parse::<IpAddr>().is_ok() {
                    self.ips += 1;
                } else if crate::timefmt::parse_time(v).is_some() && s.parse::<f64>().is_err() {
                    self.times += 1;
                }
                if from_text {
                    let t = s.trim();
                    if t.parse::<i64>().is_ok() {
                        self.integers += 1;
                        self.numbers += 1;
                    } else if t.parse::<f64>().is_ok_and(f64::is_finite) {
                        self.numbers += 1;
                    } else if ["true", "false"].contains(&t.to_ascii_lowercase().as_str()) {
                        self.booleans += 1;
                    }
                }
            }
            Value::Null | Value::Array(_) | Value::Object(_) => {}
        }
    }

    fn most(&self, n: usize) -> bool {
        self.present > 0 && n as f64 >= MOST * self.present as f64
    }
}

/// A class and type for one field, with the evidence.
fn classify(source: &str, s: &Stats) -> (DataClass, FieldType, String) {
    let of = |n: usize, what: &str| format!("{n} of {} values {what}", s.present);
    if any_word(source, SAD_WORDS) {
        return (
            DataClass::PciSad,
            FieldType::String,
            "the name says sensitive authentication data (never stored)".to_owned(),
        );
    }
    if s.most(s.cards) {
        return (
            DataClass::PciPan,
            FieldType::String,
            of(s.cards, "are card numbers (Luhn, issuer prefix)"),
        );
    }
    if s.most(s.emails) {
        return (
            DataClass::PiiDirect,
            FieldType::String,
            of(s.emails, "are e-mail addresses"),
        );
    }
    if s.most(s.ips) {
        return (
            DataClass::PiiNetwork,
            FieldType::Ip,
            of(s.ips, "are IP addresses"),
        );
    }
    if s.strings > 0 && s.most(s.times) {
        return (
            DataClass::Public,
            FieldType::Timestamp,
            of(s.times, "are times"),
        );
    }
    if s.integers > 0
        && s.most(s.integers)
        && any_word(source, TIME_WORDS)
        && !any_word(source, &["id"])
    {
        return (
            DataClass::Public,
            FieldType::Timestamp,
            of(s.integers, "are integers under a time's name (epoch)"),
        );
    }
    if s.most(s.booleans) {
        return (
            DataClass::Public,
            FieldType::Boolean,
            of(s.booleans, "are booleans"),
        );
    }
    if s.most(s.integers) && !any_word(source, DIRECT_WORDS) {
        return (
            DataClass::Public,
            FieldType::Integer,
            of(s.integers, "are integers"),
        );
    }
    if s.most(s.numbers) && !any_word(source, DIRECT_WORDS) {
        return (
            DataClass::Public,
            FieldType::Number,
            of(s.numbers, "are numbers"),
        );
    }
    if any_word(source, DIRECT_WORDS) {
        return (
            DataClass::PiiDirect,
            FieldType::String,
            "the name says directly identifying personal data".to_owned(),
        );
    }
    let mut evidence = of(s.strings, "are text");
    if s.text_cards + s.text_emails > 0 {
        evidence.push_str(&format!(
            "; {} hold a card number and {} an e-mail address inside the text: classify the field, or the detectors refuse those records",
            s.text_cards, s.text_emails
        ));
    }
    (DataClass::Public, FieldType::String, evidence)
}

/// How strongly a field's name and values say it identifies the data subject.
fn subject_score(source: &str, s: &Stats, class: DataClass) -> u32 {
    let w = words(source);
    let named = w.iter().any(|x| SUBJECT_WORDS.contains(&x.as_str()));
    let id = w
        .iter()
        .any(|x| x == "id" || x == "ref" || x == "number" || x == "no");
    match (named, id, class) {
        (_, _, DataClass::PciPan | DataClass::PciSad | DataClass::PiiNetwork) => 0,
        (true, true, _) => 3,
        (true, false, DataClass::PiiDirect) => 2,
        (true, false, _) => 1,
        (false, _, DataClass::PiiDirect) if s.emails > 0 => 1,
        _ => 0,
    }
}

/// Suggests a contract named `dataset` from `records` (the first [`MAX_SAMPLE`]);
/// `from_text` when every value came as text (CSV), so numbers and booleans are read from it.
pub fn suggest(dataset: &str, records: &[Map<String, Value>], from_text: bool) -> Suggestion {
    let sample = &records[..records.len().min(MAX_SAMPLE)];
    let mut stats: BTreeMap<&str, Stats> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for r in sample {
        for (k, v) in r {
            let s = stats.entry(k.as_str()).or_insert_with(|| {
                order.push(k.as_str());
                Stats::default()
            });
            s.add(v, from_text);
        }
    }
    let mut fields: Vec<FieldSuggestion> = Vec::new();
    let mut taken = HashSet::new();
    for source in &order {
        let s = &stats[source];
        let (class, ty, evidence) = classify(source, s);
        let mut name = field_name(source);
        while !taken.insert(name.clone()) {
            name.push('_');
        }
        fields.push(FieldSuggestion {
            source: (name != *source).then(|| (*source).to_owned()),
            name,
            class,
            ty,
            required: s.present == sample.len() && class != DataClass::PciSad,
            evidence,
        });
    }
    // Exactly one field identifies the subject: the best-named candidate.
    let subject = order
        .iter()
        .zip(&fields)
        .map(|(source, f)| {
            (
                subject_score(source, &stats[source], f.class),
                f.name.clone(),
            )
        })
        .filter(|(score, _)| *score > 0)
        .max_by_key(|(score, _)| *score)
        .map(|(_, name)| name);
    for f in &mut fields {
        if Some(&f.name) == subject.as_ref() {
            f.class = DataClass::PiiId;
            f.ty = FieldType::String;
            f.evidence
                .push_str("; the name says it identifies the data subject");
        }
    }
    // The record key: a public field whose values are all distinct, an `id` by name first.
    let record_key = order
        .iter()
        .zip(&fields)
        .filter(|(source, f)| {
            f.class == DataClass::Public
                && matches!(f.ty, FieldType::String | FieldType::Integer)
                && f.required
                && stats[*source].distinct.len() == stats[*source].present
        })
        .max_by_key(|(source, _)| any_word(source, &["id", "key", "ref", "uuid"]))
        .map(|(_, f)| f.name.clone());
    let time_field = fields
        .iter()
        .filter(|f| f.ty == FieldType::Timestamp)
        .max_by_key(|f| (f.required, any_word(&f.name, &["created", "at", "time"])))
        .map(|f| f.name.clone());
    let toml = render(
        dataset,
        &fields,
        subject.as_deref(),
        record_key.as_deref(),
        time_field.as_deref(),
        sample.len(),
    );
    let problem = Contract::from_toml(&toml).err();
    Suggestion {
        fields,
        toml,
        problem,
    }
}

fn class_name(c: DataClass) -> &'static str {
    match c {
        DataClass::PciPan => "pci.pan",
        DataClass::PciSad => "pci.sad",
        DataClass::PiiDirect => "pii.direct",
        DataClass::PiiId => "pii.id",
        DataClass::PiiNetwork => "pii.network",
        DataClass::Public => "public",
    }
}

fn type_name(t: FieldType) -> &'static str {
    match t {
        FieldType::String => "string",
        FieldType::Integer => "integer",
        FieldType::Number => "number",
        FieldType::Boolean => "boolean",
        FieldType::Timestamp => "timestamp",
        FieldType::Ip => "ip",
    }
}

fn render(
    dataset: &str,
    fields: &[FieldSuggestion],
    subject: Option<&str>,
    record_key: Option<&str>,
    time_field: Option<&str>,
    sampled: usize,
) -> String {
    let name = if valid_name(dataset) {
        dataset.to_owned()
    } else {
        field_name(dataset)
    };
    let todo = "TODO";
    let mut lines = vec![
        format!("# Suggested by `warden datasets suggest` from {sampled} records: review every"),
        "# class before use. Fields marked TODO could not be decided from the sample.".to_owned(),
        format!("name = \"{name}\""),
        "version = 1".to_owned(),
        format!("subject_field = \"{}\"", subject.unwrap_or(todo)),
        format!("record_key = \"{}\"", record_key.unwrap_or(todo)),
        format!("time_field = \"{}\"", time_field.unwrap_or(todo)),
        "retention = \"400days\"".to_owned(),
        "# The purposes of processing the dataset serves (GDPR Art. 5(1)(b)).".to_owned(),
        "purposes = [\"todo\"]".to_owned(),
        format!("stream = \"{name}\""),
        format!("lake_table = \"{name}\""),
        format!("collection = \"{name}\""),
        "sad = \"reject\"".to_owned(),
        String::new(),
        "[detectors]".to_owned(),
        "card_number = \"refuse\"".to_owned(),
        "email = \"refuse\"".to_owned(),
    ];
    for f in fields {
        lines.push(String::new());
        lines.push(format!("# {}", f.evidence));
        if let Some(source) = &f.source {
            // The column name is the sample's own text; written escaped, as TOML would.
            lines.push(format!("# from the column {}", toml_string(source)));
        }
        lines.push(format!("[fields.{}]", f.name));
        lines.push(format!("class = \"{}\"", class_name(f.class)));
        lines.push(format!("type = \"{}\"", type_name(f.ty)));
        if f.required {
            lines.push("required = true".to_owned());
        }
    }
    let mut t = lines.join("\n");
    t.push('\n');
    t
}

fn toml_string(s: &str) -> String {
    let short: String = s.chars().take(64).filter(|c| !c.is_control()).collect();
    format!("{short:?}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn records(n: usize) -> Vec<Map<String, Value>> {
        (0..n)
            .map(|i| {
                let v = json!({
                    "Transaction ID": format!("t-{i}"),
                    "customer_id": format!("c-{}", i % 7),
                    "card": crate::pan::with_check_digit(&format!("411111111111{:03}", i % 1000)),
                    "cvv": "123",
                    "email": format!("user{i}@example.com"),
                    "client_ip": "198.51.100.7",
                    "amount": i as f64 + 0.5,
                    "quantity": i,
                    "paid": true,
                    "created_at": "2026-11-24T10:00:00Z",
                    "note": if i == 3 { "call 4111 1111 1111 1111".to_owned() } else { "ok".to_owned() },
                    "phone": "+33 1 23 45 67 89",
                });
                v.as_object().unwrap().clone()
            })
            .collect()
    }

    #[test]
    fn every_kind_of_field_is_classified_and_the_contract_validates() {
        let s = suggest("payments", &records(50), false);
        let by: BTreeMap<&str, (DataClass, FieldType, bool)> = s
            .fields
            .iter()
            .map(|f| (f.name.as_str(), (f.class, f.ty, f.required)))
            .collect();
        assert_eq!(
            by["transaction_id"],
            (DataClass::Public, FieldType::String, true)
        );
        assert_eq!(by["customer_id"].0, DataClass::PiiId);
        assert_eq!(by["card"].0, DataClass::PciPan);
        assert_eq!(by["cvv"], (DataClass::PciSad, FieldType::String, false));
        assert_eq!(by["email"].0, DataClass::PiiDirect);
        assert_eq!(
            by["client_ip"],
            (DataClass::PiiNetwork, FieldType::Ip, true)
        );
        assert_eq!(by["amount"].1, FieldType::Number);
        assert_eq!(by["quantity"].1, FieldType::Integer);
        assert_eq!(by["paid"].1, FieldType::Boolean);
        assert_eq!(by["created_at"].1, FieldType::Timestamp);
        assert_eq!(by["phone"].0, DataClass::PiiDirect);
        assert_eq!(by["note"].0, DataClass::Public);
        let note = s.fields.iter().find(|f| f.name == "note").unwrap();
        assert!(
            note.evidence.contains("1 hold a card number"),
            "{}",
            note.evidence
        );
        // Everything decided but the purposes: the contract validates as it stands.
        assert!(s.problem.is_none(), "{:?}\n{}", s.problem, s.toml);
        let c = Contract::from_toml(&s.toml).unwrap();
        assert_eq!(
            (
                c.subject_field.as_str(),
                c.record_key.as_str(),
                c.time_field.as_str()
            ),
            ("customer_id", "transaction_id", "created_at")
        );
        assert!(s.toml.contains("# from the column \"Transaction ID\""));
        // No value of the sample is repeated.
        for value in ["4111111111", "user3@", "198.51.100", "+33", "t-1\""] {
            assert!(!s.toml.contains(value), "{value} in\n{}", s.toml);
        }
    }

    #[test]
    fn csv_text_is_read_as_numbers_and_what_cannot_be_decided_is_todo() {
        let rows: Vec<Map<String, Value>> = (0..5)
            .map(|i| {
                json!({"amount": format!("{i}.25"), "count": i.to_string(), "label": "x"})
                    .as_object()
                    .unwrap()
                    .clone()
            })
            .collect();
        let s = suggest("Sales 2026!", &rows, true);
        let ty: BTreeMap<&str, FieldType> =
            s.fields.iter().map(|f| (f.name.as_str(), f.ty)).collect();
        assert_eq!(ty["amount"], FieldType::Number);
        assert_eq!(ty["count"], FieldType::Integer);
        assert!(s.toml.contains("name = \"sales_2026\""), "{}", s.toml);
        assert!(s.toml.contains("subject_field = \"TODO\""));
        assert!(
            s.problem.is_some(),
            "no subject, no time: the operator fills them in"
        );
    }
}
