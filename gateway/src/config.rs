//! Configuration: `warden.toml` (every field optional) plus a few environment overrides.
//!
//! With no file at all, Warden runs embedded: SQLite state and audit log in `./warden-data/`,
//! a local key file beside them. Setting `state.url` (and `audit.url`) to `postgres://...`
//! switches to the distributed backends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of the embedded state (SQLite database, local key file). Relative paths are
    /// relative to the working directory. Env: `WARDEN_DATA_DIR`.
    pub data_dir: PathBuf,
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Dataset contracts (`*.toml`) loaded on start for datasets the store does not know yet.
    /// A relative path is relative to the config file's directory (to the working directory
    /// without a config file). Without a config file and without `./config/datasets`, the
    /// example contracts shipped in the binary are loaded (`payments`, `payment_bands`).
    pub datasets_dir: PathBuf,
    /// Whether the shipped example contracts stand in for a missing `datasets_dir` (only on
    /// the defaults, without a config file).
    #[serde(skip)]
    pub shipped_datasets: bool,
    pub state: StateConfig,
    pub audit: AuditConfig,
    pub keys: KeysConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub policy: PolicyConfig,
    pub streams: StreamsConfig,
    pub documents: DocumentsConfig,
    pub lake: LakeConfig,
    pub pipeline: PipelineConfig,
    pub erasure: ErasureConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("warden-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            datasets_dir: PathBuf::from("config/datasets"),
            shipped_datasets: false,
            state: StateConfig::default(),
            audit: AuditConfig::default(),
            keys: KeysConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            policy: PolicyConfig::default(),
            streams: StreamsConfig::default(),
            documents: DocumentsConfig::default(),
            lake: LakeConfig::default(),
            pipeline: PipelineConfig::default(),
            erasure: ErasureConfig::default(),
        }
    }
}

/// Users, MFA seeds, signing keys, policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`. Default: `sqlite://<data_dir>/warden.db`.
    /// Env: `WARDEN_STATE_URL` (keeps passwords out of the file).
    pub url: Option<String>,
}

/// The audit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Database of the audit log; default: the state database. Env: `WARDEN_AUDIT_URL`.
    pub url: Option<String>,
    /// Most events committed in one transaction.
    pub max_batch: usize,
    /// Sign a checkpoint after this many events...
    pub checkpoint_every: u64,
    /// ...or after this long.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_batch: 1024,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
        }
    }
}

/// Key-encryption key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// `file://PATH` of the local key file (default `file://<data_dir>/kek.key`), or
    /// `aws-kms:KEY_ID` (key id, ARN or alias) for AWS KMS. AWS credentials come from the
    /// usual AWS environment (variables, profile, instance or task role).
    pub kek: Option<String>,
    /// AWS region of the KMS key; default: from the AWS environment.
    pub kms_region: Option<String>,
    /// KMS endpoint override (VPC endpoint, a KMS-compatible service); default: AWS.
    pub kms_endpoint: Option<String>,
}

/// Where the key-encryption key is.
#[derive(Debug, Clone)]
pub enum KekSource {
    File(PathBuf),
    AwsKms(warden_policy::kms::KmsSettings),
}

/// Tokens and second factors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `iss` of the tokens Warden issues.
    pub issuer: String,
    /// `aud` of the tokens Warden issues and accepts.
    pub audience: String,
    /// Lifetime of access tokens.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// How recent the second factor must be for sensitive actions.
    #[serde(with = "humantime_serde")]
    pub mfa_window: Duration,
    /// Failed one-time codes before the factor is locked.
    pub mfa_max_failures: u32,
    /// How long a locked factor stays locked.
    #[serde(with = "humantime_serde")]
    pub mfa_lockout: Duration,
    /// Failed passwords or client secrets from one address on one account before its next
    /// attempts wait (1 s, doubling with each further failure); ten times as many from all
    /// addresses make every attempt on the account wait too (at most a minute). No account
    /// is ever locked: whoever knows its name cannot keep its owner out.
    pub login_max_failures: u32,
    /// The longest wait of one address on one account.
    #[serde(with = "humantime_serde")]
    pub login_lockout: Duration,
    /// Name shown in authenticator apps.
    pub totp_issuer: String,
    /// An external OpenID Connect issuer whose tokens are accepted too.
    pub oidc: Option<OidcConfig>,
    /// The data classes a reader sees in clear (`pii.direct`) or half-masked (`pci.pan`:
    /// first six and last four) only with a fresh second factor, in record reads and exports
    /// alike — beside the policy's `pii read` / `pan bin`. A data subject's own rows need
    /// none. SQL never shows either.
    pub reveal_needs_mfa: Vec<warden_policy::contract::DataClass>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "warden".to_owned(),
            audience: "warden".to_owned(),
            token_ttl: Duration::from_secs(15 * 60),
            mfa_window: Duration::from_secs(5 * 60),
            mfa_max_failures: 5,
            mfa_lockout: Duration::from_secs(15 * 60),
            login_max_failures: 10,
            login_lockout: Duration::from_secs(15 * 60),
            totp_issuer: "Warden".to_owned(),
            oidc: None,
            reveal_needs_mfa: vec![warden_policy::contract::DataClass::PiiDirect],
        }
    }
}

/// An external OIDC issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Expected `iss`.
    pub issuer: String,
    /// Where its signing keys are published.
    pub jwks_url: String,
    /// Expected `aud`.
    pub audience: String,
    /// Claim holding the Warden roles (an array of strings).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
}

fn default_roles_claim() -> String {
    "roles".to_owned()
}

/// Bounds on every request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest accepted body of a record ingest (`POST /v1/datasets/{name}/records`).
    pub max_ingest_bytes: usize,
    /// Longest a request may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Sustained requests per second per principal (or per client address before login).
    pub rate_per_second: u32,
    /// Burst above the sustained rate.
    pub rate_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_ingest_bytes: 16 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            rate_per_second: 50,
            rate_burst: 200,
        }
    }
}

/// Where the authorization model and the initial policy come from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// casbin model file; default: the shipped `config/model.conf`.
    pub model: Option<PathBuf>,
    /// Initial policy CSV, loaded on first start only (later changes go through the API);
    /// default: the shipped `config/policy.csv`.
    pub initial_policy: Option<PathBuf>,
}

/// Where protected records travel: the embedded log or Kafka.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// `embedded` (a durable log in the state database) or `kafka://HOST:PORT[,HOST:PORT]`.
    /// Env: `WARDEN_STREAMS_URL`.
    pub url: String,
    /// Prefix of every topic and consumer group name (one cluster, several installations).
    pub topic_prefix: String,
    /// Partitions of the topics Warden creates.
    pub partitions: i32,
    /// Replication factor of the topics Warden creates (Kafka).
    pub replication: i32,
    /// Extra librdkafka producer properties (`"linger.ms" = "10"`); idempotence, `acks=all`
    /// and a report for every delivery are fixed, and `message.timeout.ms` may not be 0.
    pub producer: std::collections::BTreeMap<String, String>,
    /// Properties of the topics Warden creates, over its defaults (compacted and deleted:
    /// `cleanup.policy = "compact,delete"`, `min.compaction.lag.ms` one day,
    /// `max.compaction.lag.ms` a week — the bound on how long an erased subject's records
    /// stay in a topic, unreadable).
    pub topic: std::collections::BTreeMap<String, String>,
    /// The embedded stream keeps a record this long after it was published, and then until
    /// every consumer group of its topic has read it; `0s` keeps every record. Kafka: the
    /// topics' `retention.ms` applies instead.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            url: "embedded".to_owned(),
            topic_prefix: String::new(),
            partitions: warden_pipeline::DEFAULT_PARTITIONS,
            replication: 1,
            producer: std::collections::BTreeMap::new(),
            topic: std::collections::BTreeMap::new(),
            // Kafka's default `retention.ms`.
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Where records are stored for reads: the embedded document store or MongoDB.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DocumentsConfig {
    /// `embedded` (a table in the state database) or `mongodb://HOST:PORT/DATABASE`.
    /// Env: `WARDEN_DOCUMENTS_URL`.
    pub url: String,
}

impl Default for DocumentsConfig {
    fn default() -> Self {
        Self {
            url: "embedded".to_owned(),
        }
    }
}

/// The lake: one Delta table per dataset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// A directory, `file:///DIR/` or `s3://BUCKET/PREFIX/`. Default: `<data_dir>/lake`.
    /// Env: `WARDEN_LAKE_URL`.
    pub url: Option<String>,
    /// Object-store options (`AWS_ENDPOINT_URL`, `AWS_REGION`, ...); credentials are better
    /// left to the AWS environment.
    pub storage_options: std::collections::BTreeMap<String, String>,
    /// Aggregate tables materialized from SQL over the datasets' masked views.
    pub aggregates: Vec<AggregateConfig>,
}

/// An aggregate table: `warden materialize` (and, with `every`, the server on a schedule)
/// runs `sql` over the datasets' masked views and replaces the table `agg_<name>` with the
/// result.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    pub name: String,
    pub sql: String,
    /// Materialize this often while serving (none: only by `warden materialize`).
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
}

/// Data subjects' erasure requests (GDPR Art. 17).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErasureConfig {
    /// Run erasure jobs in this process (any number of replicas may: a job is leased).
    pub run: bool,
    /// The answer is due this long after the request (Art. 12(3): one month).
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Extensions may add at most this much, each with a recorded reason (two months).
    #[serde(with = "humantime_serde")]
    pub max_extension: Duration,
    /// The lake files an erasure rewrote are vacuumed once this old. Until then, a reader
    /// scanning a snapshot from before the delete still finds its files (and the subject's
    /// rows, undecryptable); after, such a reader fails. Zero removes them at once, at the
    /// cost of failing queries that were running over an older snapshot.
    #[serde(with = "humantime_serde")]
    pub vacuum_retention: Duration,
    /// How long a worker owns a job it stopped renewing (it renews while it works): after a
    /// crash, the job resumes on any replica once this has passed.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for ErasureConfig {
    fn default() -> Self {
        Self {
            run: true,
            deadline: Duration::from_secs(30 * 86_400),
            max_extension: Duration::from_secs(60 * 86_400),
            vacuum_retention: Duration::from_secs(15 * 60),
            lease: Duration::from_secs(30),
        }
    }
}

/// The data plane run by this process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Run the loaders (stream → document store) in this process. Several replicas may all
    /// run them: on Kafka they share the work as one consumer group.
    pub loaders: bool,
    /// The stage graph: per dataset, the built-in stages its records pass, in order
    /// (`dedupe`, `normalize`, `geo_enrich`). External stages connect datasets through the
    /// SDK (read one, write the next).
    pub stages: std::collections::BTreeMap<String, Vec<String>>,
    /// MaxMind DB file (GeoIP2/GeoLite2 City or Country) for `geo_enrich`.
    pub geoip_db: Option<PathBuf>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            loaders: true,
            stages: std::collections::BTreeMap::new(),
            geoip_db: None,
        }
    }
}

impl PipelineConfig {
    /// The stage graph, parsed.
    ///
    /// # Errors
    /// An unknown stage, or `geo_enrich` without a geo database.
    pub fn stage_graph(
        &self,
    ) -> anyhow::Result<HashMap<String, Vec<warden_pipeline::stages::StageKind>>> {
        use warden_pipeline::stages::StageKind;
        let mut graph = HashMap::new();
        for (dataset, stages) in &self.stages {
            let kinds = stages
                .iter()
                .map(|s| s.parse::<StageKind>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("pipeline.stages.{dataset}: {e}"))?;
            if kinds.contains(&StageKind::GeoEnrich) && self.geoip_db.is_none() {
                bail!("pipeline.stages.{dataset}: geo_enrich needs pipeline.geoip_db");
            }
            graph.insert(dataset.clone(), kinds);
        }
        Ok(graph)
    }

    /// The datasets whose stages include `geo_enrich`.
    pub fn geo_datasets(&self) -> std::collections::HashSet<String> {
        self.stages
            .iter()
            .filter(|(_, s)| s.iter().any(|s| s == "geo_enrich"))
            .map(|(d, _)| d.clone())
            .collect()
    }
}

impl Config {
    /// Reads `path` (if any), then applies `WARDEN_DATA_DIR`, `WARDEN_STATE_URL`,
    /// `WARDEN_AUDIT_URL`, `WARDEN_STREAMS_URL` and `WARDEN_DOCUMENTS_URL` from `env`, and
    /// validates.
    ///
    /// # Errors
    /// An unreadable or invalid file, or an invalid value.
    pub fn load(path: Option<&Path>, env: &HashMap<String, String>) -> anyhow::Result<Self> {
        let mut config: Config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("invalid config {}", p.display()))?
            }
            None => Config {
                shipped_datasets: true,
                ..Config::default()
            },
        };
        if let Some(dir) = path.and_then(Path::parent) {
            if config.datasets_dir.is_relative() {
                config.datasets_dir = dir.join(&config.datasets_dir);
            }
        }
        if let Some(v) = env.get("WARDEN_DATA_DIR") {
            config.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env.get("WARDEN_STATE_URL") {
            config.state.url = Some(v.clone());
        }
        if let Some(v) = env.get("WARDEN_AUDIT_URL") {
            config.audit.url = Some(v.clone());
        }
        if let Some(v) = env.get("WARDEN_STREAMS_URL") {
            config.streams.url = v.clone();
        }
        if let Some(v) = env.get("WARDEN_DOCUMENTS_URL") {
            config.documents.url = v.clone();
        }
        if let Some(v) = env.get("WARDEN_LAKE_URL") {
            config.lake.url = Some(v.clone());
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let a = &self.auth;
        if a.token_ttl < Duration::from_secs(10) || a.token_ttl > Duration::from_secs(24 * 3600) {
            bail!("auth.token_ttl must be between 10s and 24h");
        }
        if let Some(c) = a.reveal_needs_mfa.iter().find(|c| {
            !matches!(
                c,
                warden_policy::contract::DataClass::PiiDirect
                    | warden_policy::contract::DataClass::PciPan
            )
        }) {
            bail!("auth.reveal_needs_mfa: {c:?} is never revealed; name pii.direct or pci.pan");
        }
        if a.mfa_window.is_zero() || a.mfa_max_failures == 0 || a.login_max_failures == 0 {
            bail!("auth.mfa_window, auth.mfa_max_failures and auth.login_max_failures must be positive");
        }
        if self.limits.max_body_bytes == 0
            || self.limits.max_ingest_bytes == 0
            || self.limits.rate_per_second == 0
            || self.limits.request_timeout.is_zero()
        {
            bail!("limits.max_body_bytes, limits.max_ingest_bytes, limits.rate_per_second and limits.request_timeout must be positive");
        }
        if let Some(oidc) = &self.auth.oidc {
            // The JWKS decides whose tokens are accepted: fetch it over TLS (loopback excepted,
            // for tests and sidecars).
            let url = url::Url::parse(&oidc.jwks_url).context("auth.oidc.jwks_url is not a URL")?;
            let loopback = match url.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
                bail!("auth.oidc.jwks_url must be https (http only on loopback)");
            }
        }
        if self.audit.max_batch == 0 || self.audit.checkpoint_every == 0 {
            bail!("audit.max_batch and audit.checkpoint_every must be positive");
        }
        if self.streams.url != "embedded" && !self.streams.url.starts_with("kafka://") {
            bail!("streams.url must be embedded or kafka://HOST:PORT");
        }
        if !(1..=1024).contains(&self.streams.partitions)
            || !(1..=16).contains(&self.streams.replication)
        {
            bail!("streams.partitions must be 1 to 1024 and streams.replication 1 to 16");
        }
        if self.streams.retention > Duration::from_secs(100 * 365 * 24 * 3600) {
            bail!("streams.retention: at most 100 years (0s keeps every record)");
        }
        self.pipeline.stage_graph()?;
        for a in &self.lake.aggregates {
            if !warden_policy::contract::valid_name(&a.name) {
                bail!(
                    "lake.aggregates: name {:?}: 1 to 64 of a-z, 0-9 and _",
                    a.name
                );
            }
            if a.sql.trim().is_empty() || a.every.is_some_and(|e| e < Duration::from_secs(1)) {
                bail!(
                    "lake.aggregates.{}: sql must be set and every at least 1s",
                    a.name
                );
            }
        }
        let prefix = &self.streams.topic_prefix;
        if prefix.len() > 100
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            bail!("streams.topic_prefix: at most 100 of a-z, A-Z, 0-9, '.', '_' and '-'");
        }
        let docs = &self.documents.url;
        if docs != "embedded"
            && !docs.starts_with("mongodb://")
            && !docs.starts_with("mongodb+srv://")
        {
            bail!("documents.url must be embedded or mongodb://HOST:PORT/DATABASE");
        }
        Ok(())
    }

    /// The state database URL.
    pub fn state_url(&self) -> String {
        self.state
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("warden.db").display()))
    }

    /// The audit database URL.
    pub fn audit_url(&self) -> String {
        self.audit.url.clone().unwrap_or_else(|| self.state_url())
    }

    /// The lake's root as configured.
    pub fn lake_url(&self) -> String {
        self.lake
            .url
            .clone()
            .unwrap_or_else(|| self.data_dir.join("lake").display().to_string())
    }

    /// The key-encryption key as configured.
    ///
    /// # Errors
    /// A `keys.kek` that is neither `file://PATH` nor `aws-kms:KEY_ID`.
    pub fn kek_source(&self) -> anyhow::Result<KekSource> {
        let Some(url) = &self.keys.kek else {
            return Ok(KekSource::File(self.data_dir.join("kek.key")));
        };
        if let Some(p) = url.strip_prefix("file://") {
            return Ok(KekSource::File(PathBuf::from(p)));
        }
        match url.strip_prefix("aws-kms:") {
            Some(key_id) if !key_id.is_empty() => {
                Ok(KekSource::AwsKms(warden_policy::kms::KmsSettings {
                    key_id: key_id.to_owned(),
                    region: self.keys.kms_region.clone(),
                    endpoint: self.keys.kms_endpoint.clone(),
                    static_credentials: None,
                }))
            }
            _ => bail!("keys.kek must be file://PATH or aws-kms:KEY_ID"),
        }
    }

    /// True when something lives in the data directory (SQLite or the key file).
    pub fn uses_data_dir(&self) -> bool {
        self.keys.kek.is_none()
            || self.lake.url.is_none()
            || self.state_url().starts_with("sqlite:")
            || self.audit_url().starts_with("sqlite:")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_embedded() {
        let c = Config::load(None, &HashMap::new()).unwrap();
        assert_eq!(c.state_url(), "sqlite://warden-data/warden.db");
        assert_eq!(c.audit_url(), c.state_url());
        assert!(
            matches!(c.kek_source().unwrap(), KekSource::File(p) if p == Path::new("warden-data/kek.key"))
        );
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn file_and_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warden.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:9000\"\n[auth]\ntoken_ttl = \"5m\"\n[audit]\ncheckpoint_every = 10\n").unwrap();
        let env = HashMap::from([(
            "WARDEN_STATE_URL".to_owned(),
            "postgres://u@h/db".to_owned(),
        )]);
        let c = Config::load(Some(&path), &env).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.auth.token_ttl, Duration::from_secs(300));
        assert_eq!(c.audit.checkpoint_every, 10);
        assert_eq!(c.audit_url(), "postgres://u@h/db");
    }

    #[test]
    fn shipped_example_is_valid() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/warden.example.toml"
        ));
        let c = Config::load(Some(path), &HashMap::new()).unwrap();
        assert_eq!(c.audit.checkpoint_every, 1000);
        assert!(c.auth.oidc.is_none());
        // Relative to the file: the shipped contracts beside it, from any directory.
        assert!(
            c.datasets_dir.join("payments.toml").is_file(),
            "{}",
            c.datasets_dir.display()
        );
        assert!(
            !c.shipped_datasets,
            "with a config file, its directory counts"
        );
        let d = Config::default();
        for (name, shown, default) in [
            ("erasure.deadline", c.erasure.deadline, d.erasure.deadline),
            (
                "erasure.max_extension",
                c.erasure.max_extension,
                d.erasure.max_extension,
            ),
            (
                "erasure.vacuum_retention",
                c.erasure.vacuum_retention,
                d.erasure.vacuum_retention,
            ),
            ("erasure.lease", c.erasure.lease, d.erasure.lease),
        ] {
            assert_eq!(shown, default, "the example shows the default {name}");
        }
        assert_eq!(c.streams.retention, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(
            Config::default().streams.retention,
            c.streams.retention,
            "the example shows the default"
        );
    }

    #[test]
    fn reveal_needs_mfa_names_revealable_classes() {
        use warden_policy::contract::DataClass;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warden.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(Some(&path), &HashMap::new())
        };
        assert_eq!(
            Config::default().auth.reveal_needs_mfa,
            vec![DataClass::PiiDirect]
        );
        let c = load("[auth]\nreveal_needs_mfa = [\"pii.direct\", \"pci.pan\"]\n").unwrap();
        assert_eq!(c.auth.reveal_needs_mfa.len(), 2);
        let e = load("[auth]\nreveal_needs_mfa = [\"public\"]\n").unwrap_err();
        assert!(e.to_string().contains("reveal_needs_mfa"), "{e}");
    }

    #[test]
    fn kek_sources() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warden.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(Some(&path), &HashMap::new())
        };
        let c =
            load("[keys]\nkek = \"aws-kms:alias/warden\"\nkms_region = \"eu-west-1\"\n").unwrap();
        let KekSource::AwsKms(k) = c.kek_source().unwrap() else {
            panic!("kms expected")
        };
        assert_eq!(
            (k.key_id.as_str(), k.region.as_deref()),
            ("alias/warden", Some("eu-west-1"))
        );
        assert!(c.uses_data_dir(), "the state is still embedded");
        let c =
            load("[state]\nurl = \"postgres://h/db\"\n[keys]\nkek = \"aws-kms:k-1\"\n").unwrap();
        assert!(c.uses_data_dir(), "the lake is still on local disk");
        let c = load(
            "[state]\nurl = \"postgres://h/db\"\n[keys]\nkek = \"aws-kms:k-1\"\n[lake]\nurl = \"s3://b/p/\"\n",
        )
        .unwrap();
        assert!(!c.uses_data_dir(), "nothing embedded");
        let c = load("[keys]\nkek = \"vault://x\"\n").unwrap();
        assert!(c.kek_source().is_err());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warden.toml");
        std::fs::write(&path, "[auth]\ntoken_tll = \"5m\"\n").unwrap();
        let err = format!(
            "{:#}",
            Config::load(Some(&path), &HashMap::new()).unwrap_err()
        );
        assert!(err.contains("token_tll"), "{err}");
        std::fs::write(&path, "[auth]\ntoken_ttl = \"1s\"\n").unwrap();
        assert!(Config::load(Some(&path), &HashMap::new()).is_err());
    }
}
