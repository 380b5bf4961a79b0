//! The lake: one Delta table per dataset (local disk or S3), schema from the contract,
//! partitioned by a subject bucket so erasing one subject rewrites one partition's files.
//!
//! Appends are exactly-once per stream partition: each commit carries an application
//! transaction per partition (`warden-lake:<topic>:<partition>` → the next offset), and a
//! batch read again after a crash skips what the table already holds. Protected columns
//! (tokens, ciphertext, blind indexes, addresses) are left out of the file statistics the
//! Delta log keeps; delete predicates name `subject_ref` only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use deltalake::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema as ArrowSchema, TimeUnit};
use deltalake::datafusion::datasource::TableProvider;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{DataType, StructField, Transaction};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, TableProperty};
use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;
use warden_policy::contract::{Contract, DataClass, FieldPositions, FieldType};
use warden_policy::protect::BLIND_INDEX_SUFFIX;

use crate::loader::Sink;
use crate::stages::Delivered;
use crate::{Error, Result, StreamedRecord};

/// Subject buckets (the partition column): a subject's rows are in one of them.
pub const BUCKETS: u32 = 16;
/// Columns Warden adds to every table.
pub const SUBJECT_REF: &str = "subject_ref";
pub const SUBJECT_BUCKET: &str = "subject_bucket";
pub const CONTRACT_VERSION: &str = "contract_version";

fn lake_err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Lake(format!("{context}: {e}"))
}

/// The bucket of a subject: from its pseudonym, so it says nothing about the person.
pub fn subject_bucket(subject_ref: &str) -> i32 {
    let hex = subject_ref.strip_prefix("sr_").unwrap_or(subject_ref);
    let n = hex
        .get(..8)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or_else(|| {
            hex.bytes()
                .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)))
        });
    (n % BUCKETS) as i32
}

/// A column of a dataset's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: FieldType,
    pub class: DataClass,
}

/// The table's data columns for a contract, in order: the contract's fields (never
/// `pci.sad`), each `pii.direct` field followed by its blind index.
pub fn columns(contract: &Contract) -> Vec<Column> {
    let mut out = Vec::new();
    for (name, spec) in &contract.fields {
        match spec.class {
            DataClass::PciSad => {}
            DataClass::PiiDirect => {
                out.push(Column {
                    name: name.clone(),
                    ty: FieldType::String,
                    class: spec.class,
                });
                out.push(Column {
                    name: format!("{name}{BLIND_INDEX_SUFFIX}"),
                    ty: FieldType::String,
                    class: spec.class,
                });
            }
            DataClass::PciPan | DataClass::PiiId | DataClass::PiiNetwork => out.push(Column {
                name: name.clone(),
                ty: FieldType::String,
                class: spec.class,
            }),
            DataClass::Public => out.push(Column {
                name: name.clone(),
                ty: spec.ty,
                class: spec.class,
            }),
        }
    }
    out
}

fn delta_type(ty: FieldType) -> DataType {
    match ty {
        FieldType::Integer => DataType::LONG,
        FieldType::Number => DataType::DOUBLE,
        FieldType::Boolean => DataType::BOOLEAN,
        FieldType::Timestamp => DataType::TIMESTAMP,
        FieldType::String | FieldType::Ip => DataType::STRING,
    }
}

fn arrow_type(ty: FieldType) -> ArrowType {
    match ty {
        FieldType::Integer => ArrowType::Int64,
        FieldType::Number => ArrowType::Float64,
        FieldType::Boolean => ArrowType::Boolean,
        FieldType::Timestamp => ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        FieldType::String | FieldType::Ip => ArrowType::Utf8,
    }
}

/// The Arrow schema of the batches written for a contract.
pub fn arrow_schema(contract: &Contract) -> ArrowSchema {
    let mut fields = vec![
        Field::new(SUBJECT_REF, ArrowType::Utf8, false),
        Field::new(SUBJECT_BUCKET, ArrowType::Int32, false),
        Field::new(CONTRACT_VERSION, ArrowType::Int32, false),
    ];
    fields.extend(
        columns(contract)
            .into_iter()
            .map(|c| Field::new(c.name, arrow_type(c.ty), true)),
    );
    ArrowSchema::new(fields)
}

/// Builds the Arrow batch of records (values of the wrong type become nulls; the edge has
/// checked types already).
pub fn to_batch(contract: &Contract, records: &[&StreamedRecord]) -> Result<RecordBatch> {
    let schema = Arc::new(arrow_schema(contract));
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    // A subject reference is `sr_` and 32 hex digits.
    let mut sr = StringBuilder::with_capacity(records.len(), records.len().saturating_mul(35));
    let mut bucket = Int32Builder::with_capacity(records.len());
    let mut version = Int32Builder::with_capacity(records.len());
    for r in records {
        sr.append_value(&r.subject_ref);
        bucket.append_value(subject_bucket(&r.subject_ref));
        version.append_value(i32::try_from(r.contract_version).unwrap_or(i32::MAX));
    }
    arrays.push(Arc::new(sr.finish()));
    arrays.push(Arc::new(bucket.finish()));
    arrays.push(Arc::new(version.finish()));
    let columns = columns(contract);
    let mut builders: Vec<ColumnBuilder> = columns
        .iter()
        .map(|c| ColumnBuilder::new(c.ty, records.len()))
        .collect();
    // Record by record, each field into its column's builder (found by position, see
    // `FieldPositions`); a column the record does not fill gets a null.
    let mut positions = FieldPositions::new(columns.iter().map(|c| c.name.as_str()));
    let mut filled = vec![false; columns.len()];
    for r in records {
        filled.fill(false);
        for (k, (name, v)) in r.fields.iter().enumerate() {
            if let Some(p) = positions.position(k, name) {
                builders[p].append(v);
                filled[p] = true;
            }
        }
        for (b, _) in builders.iter_mut().zip(&filled).filter(|(_, f)| !**f) {
            b.append(&Value::Null);
        }
    }
    arrays.extend(builders.into_iter().map(ColumnBuilder::finish));
    RecordBatch::try_new(schema, arrays).map_err(|e| lake_err("building a batch", e))
}

/// The Arrow builder of one data column.
enum ColumnBuilder {
    Integer(Int64Builder),
    Number(Float64Builder),
    Boolean(BooleanBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    String(StringBuilder),
}

impl ColumnBuilder {
    fn new(ty: FieldType, rows: usize) -> Self {
        match ty {
            FieldType::Integer => Self::Integer(Int64Builder::with_capacity(rows)),
            FieldType::Number => Self::Number(Float64Builder::with_capacity(rows)),
            FieldType::Boolean => Self::Boolean(BooleanBuilder::with_capacity(rows)),
            FieldType::Timestamp => Self::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            ),
            FieldType::String | FieldType::Ip => Self::String(StringBuilder::with_capacity(
                rows,
                rows.saturating_mul(STRING_BYTES_HINT),
            )),
        }
    }

    /// Appends a value; one of the wrong type becomes a null (the edge has checked types
    /// already), and a string column takes any non-null value as its JSON text.
    fn append(&mut self, v: &Value) {
        match self {
            Self::Integer(b) => b.append_option(
                v.as_i64()
                    .or_else(|| v.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX))),
            ),
            Self::Number(b) => b.append_option(v.as_f64()),
            Self::Boolean(b) => b.append_option(v.as_bool()),
            Self::Timestamp(b) => b.append_option(warden_policy::timefmt::time_micros(v)),
            Self::String(b) => match v {
                Value::String(s) => b.append_value(s),
                Value::Null => b.append_null(),
                other => b.append_value(other.to_string()),
            },
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Self::Integer(mut b) => Arc::new(b.finish()),
            Self::Number(mut b) => Arc::new(b.finish()),
            Self::Boolean(mut b) => Arc::new(b.finish()),
            Self::Timestamp(mut b) => Arc::new(b.finish()),
            Self::String(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Bytes a string column is sized for per row before the first is appended (a token, a
/// blind index and a ciphertext are 20 to 100 bytes); it grows past that as needed.
const STRING_BYTES_HINT: usize = 48;

/// Where the lake is and how to reach it.
#[derive(Debug, Clone)]
pub struct LakeConfig {
    /// `file:///abs/dir/`, a plain directory path, or `s3://bucket/prefix/`.
    pub root: String,
    /// Object-store options (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ALLOW_HTTP`, ...).
    pub storage_options: HashMap<String, String>,
}

/// The table property naming the columns the log keeps statistics of.
const STATS_COLUMNS: &str = "delta.dataSkippingStatsColumns";

/// The columns the log keeps minimum and maximum values of: only those that hold nothing
/// personal and identify nobody — not the subject's pseudonym nor the record key, which would
/// otherwise stay in the log's statistics after the subject's rows are erased (the subject's
/// bucket partition prunes a subject's reads without them). Partition columns have none.
pub fn stats_columns(contract: &Contract) -> String {
    let mut stats: Vec<String> = vec![CONTRACT_VERSION.into()];
    stats.extend(
        columns(contract)
            .into_iter()
            .filter(|c| c.class == DataClass::Public && c.name != contract.record_key)
            .map(|c| c.name),
    );
    stats.join(",")
}

/// The Delta tables of the datasets.
#[derive(Debug)]
pub struct Lake {
    root: Url,
    options: HashMap<String, String>,
    tables: Mutex<HashMap<String, DeltaTable>>,
}

impl Lake {
    /// # Errors
    /// A root that is neither a directory nor a URL.
    pub fn new(config: &LakeConfig) -> Result<Self> {
        let root = if config.root.contains("://") {
            Url::parse(&config.root).map_err(|e| lake_err("lake root", e))?
        } else {
            let path = std::path::Path::new(&config.root);
            std::fs::create_dir_all(path).map_err(|e| lake_err("lake directory", e))?;
            let abs = path
                .canonicalize()
                .map_err(|e| lake_err("lake directory", e))?;
            Url::from_directory_path(abs)
                .map_err(|()| lake_err("lake directory", "not absolute"))?
        };
        let mut root = root;
        if !root.path().ends_with('/') {
            root.set_path(&format!("{}/", root.path()));
        }
        Ok(Self {
            root,
            options: config.storage_options.clone(),
            tables: Mutex::new(HashMap::new()),
        })
    }

    /// The URL of a dataset's table.
    pub fn table_url(&self, contract: &Contract) -> Result<Url> {
        self.root
            .join(&format!("{}/", contract.lake_table))
            .map_err(|e| lake_err("table URL", e))
    }

    async fn open_or_create(&self, contract: &Contract) -> Result<DeltaTable> {
        for c in [SUBJECT_REF, SUBJECT_BUCKET, CONTRACT_VERSION] {
            if contract.fields.contains_key(c) {
                return Err(Error::Invalid(format!(
                    "fields.{c}: the lake reserves this column name"
                )));
            }
        }
        let url = self.table_url(contract)?;
        if url.scheme() == "file" {
            if let Ok(path) = url.to_file_path() {
                std::fs::create_dir_all(&path).map_err(|e| lake_err("table directory", e))?;
            }
        }
        let table = match self.open_if_exists(url).await? {
            Ok(table) => return Ok(table),
            Err(unloaded) => unloaded,
        };
        let mut fields = vec![
            StructField::new(SUBJECT_REF, DataType::STRING, false),
            StructField::new(SUBJECT_BUCKET, DataType::INTEGER, false),
            StructField::new(CONTRACT_VERSION, DataType::INTEGER, false),
        ];
        fields.extend(
            columns(contract)
                .into_iter()
                .map(|c| StructField::new(c.name, delta_type(c.ty), true)),
        );
        table
            .create()
            .with_table_name(&contract.lake_table)
            .with_comment(format!("Warden dataset {}", contract.name))
            .with_columns(fields)
            .with_partition_columns([SUBJECT_BUCKET])
            .with_configuration([
                (STATS_COLUMNS, Some(stats_columns(contract))),
                (
                    "delta.logRetentionDuration",
                    Some("interval 30 days".to_owned()),
                ),
                ("delta.checkpointInterval", Some("10".to_owned())),
            ])
            .with_configuration_property(
                TableProperty::DeletedFileRetentionDuration,
                Some("interval 7 days"),
            )
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(|e| lake_err("create table", e))
    }

    /// A dataset's table, current (another writer may have committed).
    ///
    /// # Errors
    /// The table cannot be opened, created or refreshed.
    pub async fn table(&self, contract: &Contract) -> Result<DeltaTable> {
        let mut tables = self.tables.lock().await;
        let table = match tables.get_mut(&contract.lake_table) {
            Some(t) => {
                t.update_state()
                    .await
                    .map_err(|e| lake_err("refresh table", e))?;
                t.clone()
            }
            None => {
                let t = self.open_or_create(contract).await?;
                tables.insert(contract.lake_table.clone(), t.clone());
                t
            }
        };
        Ok(table)
    }

    /// The next offset of a stream partition the table holds records up to (`None`: none).
    ///
    /// # Errors
    /// The table's log cannot be read.
    pub async fn committed(table: &DeltaTable, app_id: &str) -> Result<Option<i64>> {
        table
            .snapshot()
            .map_err(|e| lake_err("snapshot", e))?
            .transaction_version(table.log_store().as_ref(), app_id)
            .await
            .map_err(|e| lake_err("read transaction", e))
    }

    /// Appends the records of one poll, exactly once per stream partition: what the table
    /// holds already (by its application transactions) is skipped. Returns how many rows
    /// were appended.
    ///
    /// # Errors
    /// The commit failed; nothing was appended.
    pub async fn append(
        &self,
        contract: &Contract,
        topic: &str,
        records: &[Delivered],
    ) -> Result<u64> {
        // The state this process last wrote or read, not refreshed: should another writer
        // have committed for the same stream partition since (after a rebalance), the
        // commit below fails on the conflicting application transaction, the state is
        // dropped, and the retry reads the table afresh. One log listing fewer per batch.
        let table = self.cached_table(contract).await?;
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut keep: Vec<&StreamedRecord> = Vec::with_capacity(records.len());
        let mut done: HashMap<i32, Option<i64>> = HashMap::new();
        for d in records {
            let committed = match done.get(&d.partition) {
                Some(c) => *c,
                None => {
                    let c = Self::committed(&table, &app_id(topic, d.partition)).await?;
                    done.insert(d.partition, c);
                    c
                }
            };
            if committed.is_some_and(|c| d.offset < c) {
                continue;
            }
            keep.push(&d.record);
            let n = next.entry(d.partition).or_insert(d.offset + 1);
            *n = (*n).max(d.offset + 1);
        }
        if keep.is_empty() {
            return Ok(0);
        }
        let batch = to_batch(contract, &keep)?;
        let txns = next
            .into_iter()
            .map(|(p, n)| Transaction::new(app_id(topic, p), n))
            .collect();
        let written = table
            .write(vec![batch])
            .with_save_mode(SaveMode::Append)
            .with_schema_mode(SchemaMode::Merge)
            .with_commit_properties(CommitProperties::default().with_application_transactions(txns))
            .await;
        let mut tables = self.tables.lock().await;
        match written {
            Ok(t) => {
                tables.insert(contract.lake_table.clone(), t);
                Ok(keep.len() as u64)
            }
            Err(e) => {
                tables.remove(&contract.lake_table);
                Err(lake_err("append", e))
            }
        }
    }

    /// A dataset's table as this process last saw it (opened or created the first time).
    async fn cached_table(&self, contract: &Contract) -> Result<DeltaTable> {
        let mut tables = self.tables.lock().await;
        if let Some(t) = tables.get(&contract.lake_table) {
            return Ok(t.clone());
        }
        let t = self.open_or_create(contract).await?;
        tables.insert(contract.lake_table.clone(), t.clone());
        Ok(t)
    }

    /// The table as a DataFusion table (its current snapshot).
    ///
    /// # Errors
    /// The table cannot be opened.
    pub async fn provider(&self, contract: &Contract) -> Result<Arc<dyn TableProvider>> {
        let table = self.table(contract).await?;
        table
            .table_provider()
            .await
            .map_err(|e| lake_err("table provider", e))
    }

    /// The data files of the table's current snapshot, as URIs (plain paths on local disk).
    ///
    /// # Errors
    /// The table cannot be opened.
    pub async fn data_files(&self, contract: &Contract) -> Result<Vec<String>> {
        let table = self.table(contract).await?;
        let files = table
            .get_file_uris()
            .map_err(|e| lake_err("list files", e))?
            .collect();
        Ok(files)
    }
}

impl Lake {
    fn aggregate_url(&self, name: &str) -> Result<Url> {
        if !warden_policy::contract::valid_name(name) {
            return Err(Error::Invalid(format!("aggregate name {name:?}")));
        }
        self.root
            .join(&format!("aggregates/{name}/"))
            .map_err(|e| lake_err("aggregate URL", e))
    }

    /// Replaces an aggregate table's content with `batches` (creating the table, with their
    /// schema, the first time). Returns the rows written.
    ///
    /// # Errors
    /// The write failed; the table keeps its previous content.
    pub async fn overwrite_aggregate(&self, name: &str, batches: Vec<RecordBatch>) -> Result<u64> {
        let url = self.aggregate_url(name)?;
        if url.scheme() == "file" {
            if let Ok(path) = url.to_file_path() {
                std::fs::create_dir_all(&path).map_err(|e| lake_err("aggregate directory", e))?;
            }
        }
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let table = match self.open_if_exists(url).await? {
            Ok(table) | Err(table) => table,
        };
        table
            .write(batches)
            .with_save_mode(SaveMode::Overwrite)
            .with_schema_mode(SchemaMode::Overwrite)
            .with_table_name(name)
            .await
            .map_err(|e| lake_err("write aggregate", e))?;
        Ok(rows as u64)
    }

    /// An aggregate table as a DataFusion table; `None` before its first materialization.
    ///
    /// # Errors
    /// The table cannot be read.
    pub async fn aggregate_provider(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Ok(table) = self.open_if_exists(self.aggregate_url(name)?).await? else {
            return Ok(None);
        };
        table
            .table_provider()
            .await
            .map(Some)
            .map_err(|e| lake_err("aggregate provider", e))
    }
}

/// The application id of a stream partition's appends.
pub fn app_id(topic: &str, partition: i32) -> String {
    format!("warden-lake:{topic}:{partition}")
}

/// The consumer group of the lake loader of a dataset.
pub fn lake_group(dataset: &str) -> String {
    format!("warden-lake-{dataset}")
}

/// The lake as a loader's sink.
#[derive(Debug, Clone)]
pub struct LakeSink(pub Arc<Lake>);

#[async_trait]
impl Sink for LakeSink {
    fn name(&self) -> &'static str {
        "lake"
    }

    async fn prepare(&self, contract: &Contract) -> Result<()> {
        self.0.table(contract).await.map(|_| ())
    }

    async fn write(
        &self,
        contract: &Contract,
        topic: &str,
        records: Vec<Delivered>,
    ) -> Result<u64> {
        self.0.append(contract, topic, &records).await
    }
}

/// What erasing a subject did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubjectDelete {
    /// Rows deleted.
    pub rows: u64,
    /// The table version before and after (equal when there was nothing to delete).
    pub version_before: Option<u64>,
    pub version_after: Option<u64>,
    /// Data files removed (rewritten without the subject's rows, or dropped).
    pub files_removed: u64,
    /// Bytes of the files removed, and of the whole table before the delete.
    pub bytes_removed: u64,
    pub bytes_table: u64,
}

/// The predicate selecting a subject's rows: its bucket partition (so only that partition's
/// files are read) and its pseudonym. Built as an expression, never as SQL text.
pub fn subject_predicate(subject_ref: &str) -> deltalake::datafusion::prelude::Expr {
    use deltalake::datafusion::prelude::{col, lit};
    col(SUBJECT_BUCKET)
        .eq(lit(subject_bucket(subject_ref)))
        .and(col(SUBJECT_REF).eq(lit(subject_ref.to_owned())))
}

fn file_sizes(table: &DeltaTable) -> Result<HashMap<String, i64>> {
    Ok(table
        .snapshot()
        .map_err(|e| lake_err("snapshot", e))?
        .log_data()
        .iter()
        .map(|f| (f.path().into_owned(), f.size()))
        .collect())
}

fn df_err(e: impl std::fmt::Display) -> Error {
    lake_err("scan", e)
}

/// Erasure: deleting, counting and reading one subject's rows; vacuum.
impl Lake {
    /// The table's current version, `None` when it does not exist yet (it is not created).
    ///
    /// # Errors
    /// The table's log cannot be read.
    pub async fn version(&self, contract: &Contract) -> Result<Option<u64>> {
        Ok(self.existing(contract).await?.and_then(|t| t.version()))
    }

    /// The table at `url` if there is one, loaded; without a log, `Err` carries the table
    /// unloaded (to create or write to). Loading a location without a log is not tried: the
    /// Delta kernel logs that at ERROR, on every first start.
    async fn open_if_exists(
        &self,
        url: Url,
    ) -> Result<std::result::Result<DeltaTable, DeltaTable>> {
        let mut table = deltalake::DeltaTableBuilder::from_url(url)
            .map_err(|e| lake_err("table URL", e))?
            .with_storage_options(self.options.clone())
            .build()
            .map_err(|e| lake_err("open table", e))?;
        let exists = table
            .log_store()
            .is_delta_table_location()
            .await
            .map_err(|e| lake_err("list table log", e))?;
        if !exists {
            return Ok(Err(table));
        }
        table.load().await.map_err(|e| lake_err("open table", e))?;
        Ok(if table.version().is_some() {
            Ok(table)
        } else {
            Err(table)
        })
    }

    /// The table, current, if it exists (never created here: erasing from or reading a
    /// dataset that never had a row must not make a table).
    async fn existing(&self, contract: &Contract) -> Result<Option<DeltaTable>> {
        {
            let tables = self.tables.lock().await;
            if tables.contains_key(&contract.lake_table) {
                drop(tables);
                return self.table(contract).await.map(Some);
            }
        }
        let Ok(table) = self.open_if_exists(self.table_url(contract)?).await? else {
            return Ok(None);
        };
        self.tables
            .lock()
            .await
            .insert(contract.lake_table.clone(), table.clone());
        Ok(Some(table))
    }

    /// Deletes a subject's rows (`DELETE WHERE subject_bucket = b AND subject_ref = s`): only
    /// the files of the subject's bucket that hold its rows are rewritten. Idempotent: a
    /// second run finds nothing and commits nothing. The commit names the erasure `job`.
    ///
    /// # Errors
    /// The delete failed (a conflicting concurrent commit included); nothing was deleted.
    pub async fn delete_subject(
        &self,
        contract: &Contract,
        subject_ref: &str,
        job: &str,
    ) -> Result<SubjectDelete> {
        let Some(table) = self.existing(contract).await? else {
            return Ok(SubjectDelete::default());
        };
        let before = file_sizes(&table)?;
        let version_before = table.version();
        let commit = CommitProperties::default()
            .with_metadata([("warden.erasure".to_owned(), Value::String(job.to_owned()))]);
        let result = table
            .delete()
            .with_predicate(subject_predicate(subject_ref))
            .with_commit_properties(commit)
            .await;
        let mut tables = self.tables.lock().await;
        let (table, metrics) = match result {
            Ok(r) => r,
            Err(e) => {
                tables.remove(&contract.lake_table);
                return Err(lake_err("delete", e));
            }
        };
        tables.insert(contract.lake_table.clone(), table.clone());
        drop(tables);
        let after = file_sizes(&table)?;
        let removed: Vec<i64> = before
            .iter()
            .filter(|(p, _)| !after.contains_key(*p))
            .map(|(_, s)| *s)
            .collect();
        Ok(SubjectDelete {
            rows: metrics.num_deleted_rows.unwrap_or(0) as u64,
            version_before,
            version_after: table.version(),
            files_removed: removed.len() as u64,
            bytes_removed: removed.iter().map(|s| u64::try_from(*s).unwrap_or(0)).sum(),
            bytes_table: before
                .values()
                .map(|s| u64::try_from(*s).unwrap_or(0))
                .sum(),
        })
    }

    /// A subject's rows as a DataFusion frame over the current snapshot (`None`: no table).
    async fn subject_frame(
        &self,
        contract: &Contract,
        subject_ref: &str,
    ) -> Result<Option<deltalake::datafusion::dataframe::DataFrame>> {
        let Some(table) = self.existing(contract).await? else {
            return Ok(None);
        };
        let provider = table
            .table_provider()
            .await
            .map_err(|e| lake_err("table provider", e))?;
        let ctx = deltalake::datafusion::prelude::SessionContext::new();
        let frame = ctx
            .read_table(provider)
            .map_err(df_err)?
            .filter(subject_predicate(subject_ref))
            .map_err(df_err)?;
        Ok(Some(frame))
    }

    /// How many rows a subject has in the table (its bucket only is read).
    ///
    /// # Errors
    /// The table cannot be read.
    pub async fn count_subject(&self, contract: &Contract, subject_ref: &str) -> Result<u64> {
        match self.subject_frame(contract, subject_ref).await? {
            None => Ok(0),
            Some(f) => Ok(f.count().await.map_err(df_err)? as u64),
        }
    }

    /// A subject's rows, as stored (protected), for an access request.
    ///
    /// # Errors
    /// The table cannot be read.
    pub async fn subject_rows(
        &self,
        contract: &Contract,
        subject_ref: &str,
    ) -> Result<Vec<RecordBatch>> {
        match self.subject_frame(contract, subject_ref).await? {
            None => Ok(Vec::new()),
            Some(f) => f.collect().await.map_err(df_err),
        }
    }

    /// Removes the data files no version within `retention` needs (those rewritten or
    /// dropped by deletes, erasures included). With zero retention, readers still scanning
    /// an older snapshot fail — the price of removing an erased subject's files now. Returns
    /// how many files were removed.
    ///
    /// # Errors
    /// The table cannot be read or a file cannot be removed.
    pub async fn vacuum(&self, contract: &Contract, retention: std::time::Duration) -> Result<u64> {
        let Some(table) = self.existing(contract).await? else {
            return Ok(0);
        };
        let retention = chrono::Duration::from_std(retention)
            .map_err(|e| Error::Invalid(format!("vacuum retention: {e}")))?;
        let (table, metrics) = table
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .await
            .map_err(|e| lake_err("vacuum", e))?;
        self.tables
            .lock()
            .await
            .insert(contract.lake_table.clone(), table);
        Ok(metrics.files_deleted.len() as u64)
    }

    /// Leaves no trace of what was deleted in the table's log: the log is checkpointed at a
    /// new version and every commit file before it removed — the erasure's `DELETE` names the
    /// subject in its `commitInfo`, and the `add` actions of files written before statistics
    /// left the subject and key columns carry them. The new version also (re)sets the
    /// statistics columns ([`stats_columns`]), so tables made before that follow it. Time
    /// travel to an earlier version fails from then on, as after a vacuum. Returns how many
    /// log files were removed.
    ///
    /// # Errors
    /// The table cannot be read, committed to, checkpointed or its log listed.
    pub async fn compact_log(&self, contract: &Contract) -> Result<u64> {
        let Some(table) = self.existing(contract).await? else {
            return Ok(0);
        };
        let table = table
            .set_tbl_properties()
            .with_properties(HashMap::from([(
                STATS_COLUMNS.to_owned(),
                stats_columns(contract),
            )]))
            .with_raise_if_not_exists(false)
            .await
            .map_err(|e| lake_err("set table properties", e))?;
        let version = table
            .version()
            .ok_or_else(|| lake_err("compact log", "no version after a commit"))?;
        deltalake::checkpoints::create_checkpoint(&table, None)
            .await
            .map_err(|e| lake_err("checkpoint", e))?;
        // Every commit before the checkpoint, whatever its age (a day ahead of now absorbs
        // clock skew between this host and the object store).
        let cutoff = chrono::Utc::now().timestamp_millis() + 86_400_000;
        let removed = deltalake::checkpoints::cleanup_expired_logs_for(
            version,
            table.log_store().as_ref(),
            cutoff,
            None,
        )
        .await
        .map_err(|e| lake_err("clean log", e))?;
        self.tables
            .lock()
            .await
            .insert(contract.lake_table.clone(), table);
        Ok(removed as u64)
    }

    /// Reads every byte of the table's log and of the subject's bucket partition (the only
    /// data files its rows can be in), as stored, for any of `needles`.
    ///
    /// # Errors
    /// An object cannot be listed or read.
    pub async fn scan_residue(
        &self,
        contract: &Contract,
        subject_ref: &str,
        needles: &crate::residue::Needles<'_>,
    ) -> Result<crate::residue::Scan> {
        use deltalake::logstore::object_store::ObjectStoreExt as _;
        use futures::{StreamExt as _, TryStreamExt as _};
        let mut scan = crate::residue::Scan::default();
        let Some(table) = self.existing(contract).await? else {
            return Ok(scan);
        };
        let store = table.log_store().object_store(None);
        let bucket = format!("{SUBJECT_BUCKET}={}", subject_bucket(subject_ref));
        for prefix in ["_delta_log", bucket.as_str()] {
            let prefix = deltalake::Path::from(prefix);
            let objects: Vec<deltalake::ObjectMeta> = store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|e| lake_err("list table files", e))?;
            for meta in objects {
                let chunks = store
                    .get(&meta.location)
                    .await
                    .map_err(|e| lake_err("read table file", e))?
                    .into_stream()
                    .boxed();
                let (holds, bytes) = needles
                    .scan(chunks)
                    .await
                    .map_err(|e| lake_err("read table file", e))?;
                scan.objects += 1;
                scan.bytes += bytes;
                scan.holding += u64::from(holds);
            }
        }
        Ok(scan)
    }

    /// Opens the table at an old `version` (time travel) and counts a subject's rows there.
    /// Fails once vacuum removed that version's files.
    ///
    /// # Errors
    /// The version cannot be loaded or its files read.
    pub async fn count_subject_at(
        &self,
        contract: &Contract,
        subject_ref: &str,
        version: u64,
    ) -> Result<u64> {
        let url = self.table_url(contract)?;
        let mut table = DeltaTable::try_from_url_with_storage_options(url, self.options.clone())
            .await
            .map_err(|e| lake_err("open table", e))?;
        table
            .load_version(version)
            .await
            .map_err(|e| lake_err("load version", e))?;
        let provider = table
            .table_provider()
            .await
            .map_err(|e| lake_err("table provider", e))?;
        let ctx = deltalake::datafusion::prelude::SessionContext::new();
        let n = ctx
            .read_table(provider)
            .map_err(df_err)?
            .filter(subject_predicate(subject_ref))
            .map_err(df_err)?
            .count()
            .await
            .map_err(df_err)?;
        Ok(n as u64)
    }
}
