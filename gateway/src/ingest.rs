//! `warden ingest FILE --dataset NAME`: batch files (JSON, NDJSON, CSV, Parquet) sent through
//! a running gateway's ingest API — the same contract checks, protection, stream and audit as
//! any other write — in batches, with a progress bar. Rejections are listed by record number
//! and field, never by value.

use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::{Map, Value};
use warden_sdk::client::{Client, ClientError};

/// Formats `warden ingest` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Ndjson,
    Csv,
    Parquet,
}

impl Format {
    /// The format of a file by its extension.
    pub fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "json" => Some(Self::Json),
            "ndjson" | "jsonl" => Some(Self::Ndjson),
            "csv" => Some(Self::Csv),
            "parquet" => Some(Self::Parquet),
            _ => None,
        }
    }
}

/// What an ingest did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub read: usize,
    pub accepted: usize,
    pub rejected: usize,
}

/// Options of one ingest.
#[derive(Debug, Clone)]
pub struct Options {
    pub dataset: String,
    pub format: Option<Format>,
    pub batch: usize,
    pub atomic: bool,
    pub progress: bool,
}

fn type_of(contract: &Value, field: &str) -> Option<String> {
    contract["fields"][field]["type"]
        .as_str()
        .map(str::to_owned)
}

/// A CSV cell as the contract types its column: numbers, booleans and strings; an empty
/// cell is an absent field.
fn typed(ty: Option<&str>, cell: &str) -> Option<Value> {
    if cell.is_empty() {
        return None;
    }
    let v = match ty {
        Some("integer") => cell.trim().parse::<i64>().map(Value::from).ok(),
        Some("number") => cell
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        Some("boolean") => match cell.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(Value::Bool(true)),
            "false" | "0" | "no" => Some(Value::Bool(false)),
            _ => None,
        },
        Some("timestamp") => cell
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .ok()
            .or_else(|| Some(Value::String(cell.to_owned()))),
        _ => None,
    };
    // A cell the type does not read goes as text: the gateway names the field it refuses.
    Some(v.unwrap_or_else(|| Value::String(cell.to_owned())))
}

/// Reads the records of a file.
///
/// # Errors
/// An unreadable file, or one that is not of its format.
pub fn read_records(
    path: &Path,
    format: Format,
    contract: &Value,
) -> anyhow::Result<Vec<Map<String, Value>>> {
    let open =
        || std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()));
    let object = |v: Value, n: usize| match v {
        Value::Object(m) => Ok(m),
        _ => bail!("record {n} is not a JSON object"),
    };
    match format {
        Format::Json => {
            let items: Vec<Value> = serde_json::from_reader(std::io::BufReader::new(open()?))
                .with_context(|| format!("{} is not a JSON array of records", path.display()))?;
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| object(v, i + 1))
                .collect()
        }
        Format::Ndjson => {
            let mut out = Vec::new();
            for (i, line) in std::io::BufReader::new(open()?).lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&line)
                    .map_err(|_| anyhow::anyhow!("line {} is not JSON", i + 1))?;
                out.push(object(v, i + 1)?);
            }
            Ok(out)
        }
        Format::Csv => {
            let mut reader = csv::Reader::from_reader(open()?);
            let headers = reader.headers()?.clone();
            let types: Vec<Option<String>> = headers.iter().map(|h| type_of(contract, h)).collect();
            let mut out = Vec::new();
            for (i, row) in reader.records().enumerate() {
                // The row's content stays out of the message: it may be personal data.
                let row = row.map_err(|_| anyhow::anyhow!("CSV row {} is malformed", i + 2))?;
                let mut m = Map::new();
                for ((h, cell), ty) in headers.iter().zip(row.iter()).zip(&types) {
                    if let Some(v) = typed(ty.as_deref(), cell) {
                        m.insert(h.to_owned(), v);
                    }
                }
                out.push(m);
            }
            Ok(out)
        }
        Format::Parquet => {
            use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
            let reader = ParquetRecordBatchReaderBuilder::try_new(open()?)
                .with_context(|| format!("{} is not a Parquet file", path.display()))?
                .build()?;
            let mut out = Vec::new();
            for batch in reader {
                let batch = batch?;
                let mut w = deltalake::arrow::json::ArrayWriter::new(Vec::new());
                w.write_batches(&[&batch])?;
                w.finish()?;
                let bytes = w.into_inner();
                if bytes.is_empty() {
                    continue;
                }
                let rows: Vec<Value> = serde_json::from_slice(&bytes)?;
                for (i, v) in rows.into_iter().enumerate() {
                    out.push(object(v, out.len() + i + 1)?);
                }
            }
            Ok(out)
        }
    }
}

/// Sends a file's records to the gateway in batches; `report` receives one line per
/// rejection.
///
/// # Errors
/// A file that cannot be read, a dataset the gateway does not know, or a refused batch in
/// atomic mode.
pub async fn ingest(
    client: &Client,
    path: &Path,
    options: &Options,
    report: &mut dyn std::io::Write,
) -> anyhow::Result<Summary> {
    let format = options
        .format
        .or_else(|| Format::of(path))
        .context("cannot tell the format from the file name: pass --format")?;
    if !(1..=10_000).contains(&options.batch) {
        bail!("--batch: 1 to 10000 records");
    }
    let contract = client
        .dataset(&options.dataset)
        .await
        .with_context(|| format!("dataset {}", options.dataset))?;
    let records = read_records(path, format, &contract)?;
    let bar = if options.progress {
        indicatif::ProgressBar::new(records.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bar:40} {pos}/{len} records ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut summary = Summary {
        read: records.len(),
        ..Summary::default()
    };
    for (b, chunk) in records.chunks(options.batch).enumerate() {
        let first = b * options.batch;
        let outcome = client.ingest(&options.dataset, chunk, options.atomic).await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(ClientError::Api { status: 422, body }) => {
                bar.abandon();
                bail!(
                    "records {}..{} refused, nothing of them accepted: {} (request {})",
                    first + 1,
                    first + chunk.len(),
                    body.error.message,
                    body.error.request_id
                );
            }
            Err(e) => {
                bar.abandon();
                return Err(e)
                    .with_context(|| format!("records {}..{}", first + 1, first + chunk.len()));
            }
        };
        summary.accepted += outcome.accepted;
        summary.rejected += outcome.rejected;
        for r in &outcome.rejections {
            writeln!(
                report,
                "record {}: {}{}",
                first + r.index + 1,
                r.field
                    .as_deref()
                    .map(|f| format!("{f}: "))
                    .unwrap_or_default(),
                r.reason
            )?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_cells_take_the_contract_types() {
        assert_eq!(typed(Some("number"), "12.5"), Some(json!(12.5)));
        assert_eq!(typed(Some("integer"), " 7 "), Some(json!(7)));
        assert_eq!(typed(Some("boolean"), "Yes"), Some(json!(true)));
        assert_eq!(
            typed(Some("timestamp"), "1795514400"),
            Some(json!(1_795_514_400))
        );
        assert_eq!(
            typed(Some("timestamp"), "2026-11-24"),
            Some(json!("2026-11-24"))
        );
        assert_eq!(typed(Some("string"), "0042"), Some(json!("0042")));
        assert_eq!(
            typed(Some("number"), "n/a"),
            Some(json!("n/a")),
            "left for the gateway to refuse"
        );
        assert_eq!(typed(None, ""), None);
        assert_eq!(Format::of(Path::new("x.JSONL")), Some(Format::Ndjson));
        assert_eq!(Format::of(Path::new("x.txt")), None);
    }
}
