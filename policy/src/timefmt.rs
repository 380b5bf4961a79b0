//! Times as records carry them: RFC 3339, RFC 2822, a few unambiguous common forms, or epoch
//! values (seconds, milliseconds, microseconds or nanoseconds, told apart by magnitude). One
//! parser for the edge (type checks), the `normalize` stage and the sinks, so they agree.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde_json::Value;

/// Forms without a zone, read as UTC.
const NAIVE_DATETIMES: &[&str] = &[
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%Y/%m/%d %H:%M:%S%.f",
    "%d.%m.%Y %H:%M:%S%.f",
    "%Y%m%dT%H%M%SZ",
];
const NAIVE_DATES: &[&str] = &["%Y-%m-%d", "%Y/%m/%d", "%d.%m.%Y", "%Y%m%d"];

/// An epoch value of unknown unit, by magnitude: below 10^11 seconds (until year 5138),
/// below 10^14 milliseconds, below 10^17 microseconds, else nanoseconds.
fn from_epoch(n: i128) -> Option<DateTime<Utc>> {
    let a = n.unsigned_abs();
    let micros = if a < 100_000_000_000 {
        n.checked_mul(1_000_000)?
    } else if a < 100_000_000_000_000 {
        n.checked_mul(1_000)?
    } else if a < 100_000_000_000_000_000 {
        n
    } else {
        n / 1_000
    };
    DateTime::from_timestamp_micros(i64::try_from(micros).ok()?)
}

/// Parses a time value; `None` when it is none of the accepted forms.
pub fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => from_epoch(i128::from(i)),
            None => {
                let f = n.as_f64()?;
                if !f.is_finite() || f.abs() >= 1e11 {
                    return None;
                }
                DateTime::from_timestamp_micros((f * 1e6).round() as i64)
            }
        },
        Value::String(s) => parse_str(s.trim()),
        _ => None,
    }
}

fn parse_str(s: &str) -> Option<DateTime<Utc>> {
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) && s.len() >= 9 && s.len() != 8 {
        return from_epoch(s.parse().ok()?);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_rfc2822(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in NAIVE_DATETIMES {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(Utc.from_utc_datetime(&t));
        }
    }
    for f in NAIVE_DATES {
        if let Ok(d) = NaiveDate::parse_from_str(s, f) {
            return Some(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0)?));
        }
    }
    None
}

/// Unix microseconds of a time value.
pub fn time_micros(v: &Value) -> Option<i64> {
    parse_time(v).map(|t| t.timestamp_micros())
}

/// RFC 3339 in UTC (`2026-11-24T10:00:00Z`, with a fraction only when there is one).
pub fn to_rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// RFC 3339 of Unix microseconds (out of range: the epoch).
pub fn micros_to_rfc3339(micros: i64) -> String {
    to_rfc3339(DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn n(v: Value) -> Option<String> {
        parse_time(&v).map(to_rfc3339)
    }

    #[test]
    fn common_forms_become_rfc3339_utc() {
        let want = Some("2026-11-24T10:00:00Z".to_owned());
        for v in [
            json!("2026-11-24T10:00:00Z"),
            json!("2026-11-24T11:00:00+01:00"),
            json!(" 2026-11-24T10:00:00Z "),
            json!("Tue, 24 Nov 2026 10:00:00 +0000"),
            json!("2026-11-24 10:00:00"),
            json!("2026-11-24T10:00"),
            json!("2026/11/24 10:00:00"),
            json!("24.11.2026 10:00:00"),
            json!("20261124T100000Z"),
            json!(1_795_514_400),
            json!("1795514400"),
            json!(1_795_514_400_000_i64),
            json!(1_795_514_400_000_000_i64),
            json!(1_795_514_400_000_000_000_i64),
            json!(1_795_514_400.0),
        ] {
            assert_eq!(n(v.clone()), want, "{v}");
        }
        assert_eq!(n(json!("2026-11-24")), Some("2026-11-24T00:00:00Z".into()));
        assert_eq!(n(json!("24.11.2026")), Some("2026-11-24T00:00:00Z".into()));
        assert_eq!(
            n(json!("2026-11-24T10:00:00.250Z")),
            Some("2026-11-24T10:00:00.250Z".into())
        );
        assert_eq!(
            n(json!(1_795_514_400.5)),
            Some("2026-11-24T10:00:00.500Z".into())
        );
    }

    #[test]
    fn other_values_are_not_times() {
        for v in [
            json!("yesterday"),
            json!("11/24/2026"),
            json!(""),
            json!(true),
            json!(null),
            json!({"t": 1}),
            json!(f64::MAX),
            json!("2026-13-40"),
            json!("x".repeat(100)),
        ] {
            assert_eq!(n(v.clone()), None, "{v}");
        }
        assert_eq!(
            time_micros(&json!("2026-11-24T10:00:00Z")),
            Some(1_795_514_400_000_000)
        );
    }
}
