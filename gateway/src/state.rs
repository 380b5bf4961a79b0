//! The gateway's shared state and its start-up: open the stores, initialize on first start,
//! load the keys, start the audit sequencer.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use anyhow::Context;
use ed25519_dalek::SigningKey;
use rand::distributions::{Alphanumeric, DistString};
use tracing::{error, info};
use warden_audit::{
    AuditStore, CheckpointKeys, CheckpointSigner, Db, Sealer, Sequencer, SequencerConfig,
    SqlAuditStore,
};
use warden_policy::authz::{parse_policy_csv, Authorizer, DEFAULT_MODEL, DEFAULT_POLICY};
use warden_policy::keyring::{CachePolicy, KeyRing};
use warden_policy::keys::{KeyProvider, LocalKeyFile};
use warden_policy::pan::Tokenizer;
use warden_policy::protect::Protector;
use warden_policy::vault::{SqlVaultStore, VaultStore};
use warden_policy::Clock;
use warden_sdk::PrincipalKind;
use zeroize::Zeroizing;

use crate::auth::tokens::{key_id, TokenService};
use crate::auth::{passwords, totp};
use crate::config::Config;
use crate::datasets::Datasets;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::store::{
    Bootstrap, MfaRecord, PrincipalRecord, SigningKeyRecord, SqlStateStore, StateStore,
};

/// Shared state of all requests; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// What [`AppState`] holds.
#[derive(Debug)]
pub struct Inner {
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn StateStore>,
    pub audit_store: Arc<dyn AuditStore>,
    pub audit: Sequencer,
    pub kek: Arc<dyn KeyProvider>,
    pub tokens: TokenService,
    pub authz: Authorizer,
    /// Version of the policy the authorizer holds; locked while the rules are replaced.
    pub policy_version: tokio::sync::Mutex<i64>,
    pub metrics: Arc<Metrics>,
    pub limiter: RateLimiter,
    pub checkpoint_keys: CheckpointKeys,
    /// Data keys (per subject, per dataset) under the key-encryption key.
    pub keys: Arc<KeyRing>,
    pub tokenizer: Tokenizer,
    pub protector: Protector,
    pub datasets: Datasets,
    /// Where protected records are published (Kafka or the embedded log).
    pub stream: Arc<dyn warden_pipeline::stream::Stream>,
    /// Where records are read from (MongoDB or the embedded document store).
    pub documents: Arc<dyn warden_pipeline::docs::DocumentStore>,
    /// The Delta tables of the datasets.
    pub lake: Arc<warden_pipeline::lake::Lake>,
    /// Stream → document-store loaders (started by [`crate::serve`] when configured).
    pub loaders: Arc<crate::pipeline::Loaders>,
    /// Built-in stages per dataset (validated at start).
    pub stage_graph: HashMap<String, Vec<warden_pipeline::stages::StageKind>>,
    /// Subscriptions of external stages.
    pub subscriptions: crate::api::subscriptions::Subscriptions,
    /// Topics this process has made sure exist.
    pub topics: crate::api::records::Topics,
    /// Erasure jobs and legal holds.
    pub erasures: crate::erasure::Jobs,
    /// Signs erasure receipts (the audit checkpoint key).
    pub receipt_signer: crate::erasure::receipt::ReceiptSigner,
    /// The state database, then the audit database if it is another one.
    pub dbs: Vec<Db>,
}

/// Shown once, on the first start: the admin's credentials.
pub struct FirstStart {
    pub admin_username: String,
    /// `None` when the password came from `WARDEN_ADMIN_PASSWORD`.
    pub admin_password: Option<Zeroizing<String>>,
    pub totp_uri: String,
}

impl std::fmt::Debug for FirstStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstStart")
            .field("admin_username", &self.admin_username)
            .finish_non_exhaustive()
    }
}

pub const ADMIN_USERNAME: &str = "admin";

/// Associated data binding a wrapped signing key to its row.
pub fn signing_key_aad(purpose: &str, kid: &str) -> Vec<u8> {
    format!("warden:signing-key:{purpose}:{kid}").into_bytes()
}

/// Associated data binding a wrapped TOTP seed to its principal.
pub fn totp_aad(principal_id: &str) -> Vec<u8> {
    format!("warden:totp:{principal_id}").into_bytes()
}

/// Opens the databases (and migrates them) as configured.
///
/// # Errors
/// An unreachable database or a failed migration.
pub async fn open_databases(config: &Config) -> anyhow::Result<(Db, Db)> {
    if config.uses_data_dir() {
        create_private_dir(&config.data_dir)?;
    }
    let state_url = config.state_url();
    for url in [&state_url, &config.audit_url()] {
        create_private_sqlite_file(url)?;
    }
    let state_db = Db::connect(&state_url).await.with_context(|| {
        format!(
            "cannot open state database {}",
            warden_audit::db::redact_url(&state_url)
        )
    })?;
    state_db
        .migrate()
        .await
        .context("state database migration failed")?;
    let audit_url = config.audit_url();
    let audit_db = if audit_url == state_url {
        state_db.clone()
    } else {
        let db = Db::connect(&audit_url).await.with_context(|| {
            format!(
                "cannot open audit database {}",
                warden_audit::db::redact_url(&audit_url)
            )
        })?;
        db.migrate()
            .await
            .context("audit database migration failed")?;
        db
    };
    Ok((state_db, audit_db))
}

/// Creates a SQLite database file readable by its owner only (SQLite gives its WAL and
/// shared-memory files the same mode); it holds password hashes and wrapped keys.
fn create_private_sqlite_file(url: &str) -> anyhow::Result<()> {
    let Some(path) = url
        .strip_prefix("sqlite://")
        .map(|p| p.split('?').next().unwrap_or(p))
    else {
        return Ok(());
    };
    let path = std::path::Path::new(path);
    if path.as_os_str().is_empty() || path.exists() || path.to_str() == Some(":memory:") {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok(())
}

/// Opens the databases of an existing installation without creating or migrating anything
/// (for the audit commands): a missing database is an error, never an empty log that
/// "verifies".
///
/// # Errors
/// No database, or one that was never initialized.
pub async fn open_existing(config: &Config) -> anyhow::Result<(Db, Db)> {
    async fn open(url: &str) -> anyhow::Result<Db> {
        let url = match url.strip_prefix("sqlite://") {
            Some(rest) => {
                let path = rest.split('?').next().unwrap_or(rest);
                if !std::path::Path::new(path).exists() {
                    anyhow::bail!("no Warden database at {path}: is this the right configuration or directory?");
                }
                format!("sqlite://{path}?mode=rw")
            }
            None => url.to_owned(),
        };
        Db::connect(&url)
            .await
            .with_context(|| format!("cannot open {}", warden_audit::db::redact_url(&url)))
    }
    let state_db = open(&config.state_url()).await?;
    let initialized = SqlStateStore::new(state_db.clone()).is_initialized().await;
    if !initialized.unwrap_or(false) {
        anyhow::bail!("the state database holds no initialized Warden installation");
    }
    let audit_db = if config.audit_url() == config.state_url() {
        state_db.clone()
    } else {
        open(&config.audit_url()).await?
    };
    Ok((state_db, audit_db))
}

fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))
}

/// The key-encryption key as configured: the local key file (created on first use) or AWS KMS.
///
/// # Errors
/// A key file that cannot be read or created, or an invalid `keys.kek`.
pub async fn open_kek(config: &Config) -> anyhow::Result<Arc<dyn KeyProvider>> {
    let path = match config.kek_source()? {
        crate::config::KekSource::File(path) => path,
        crate::config::KekSource::AwsKms(settings) => {
            let kms = warden_policy::kms::AwsKms::connect(&settings).await;
            info!(key_id = kms.key_id(), "key-encryption key in AWS KMS");
            return Ok(Arc::new(kms));
        }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    let (kek, created) = LocalKeyFile::load_or_create(&path)?;
    if created {
        info!(path = %path.display(), key_id = kek.key_id(), "generated a new key-encryption key");
    }
    Ok(Arc::new(kek))
}

/// Starts the gateway's state: opens the stores, initializes them on first start, loads the
/// keys and starts the audit sequencer. `env` supplies `WARDEN_ADMIN_PASSWORD`.
///
/// # Errors
/// Any failure to open, initialize or load; the message says which.
pub async fn start(
    config: Config,
    env: &HashMap<String, String>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<(AppState, Option<FirstStart>)> {
    let kek = open_kek(&config).await?;
    let (state_db, audit_db) = open_databases(&config).await?;
    let store: Arc<dyn StateStore> = Arc::new(SqlStateStore::new(state_db.clone()));
    let first_start = if store.is_initialized().await? {
        None
    } else {
        initialize(&config, env, clock.as_ref(), kek.as_ref(), store.as_ref()).await?
    };

    let jwt = load_signing_keys(store.as_ref(), kek.as_ref(), "jwt").await?;
    let (_, active) = jwt
        .first()
        .context("no JWT signing key in the state store")?;
    let older: Vec<[u8; 32]> = jwt
        .iter()
        .skip(1)
        .map(|(_, k)| k.verifying_key().to_bytes())
        .collect();
    let tokens = TokenService::new(&config.auth, active, &older, clock.clone())?;

    let checkpoint = load_signing_keys(store.as_ref(), kek.as_ref(), "checkpoint").await?;
    let mut checkpoint_keys = CheckpointKeys::new();
    for (kid, key) in &checkpoint {
        checkpoint_keys.insert(kid.clone(), key.verifying_key());
    }
    let (cp_kid, cp_key) = checkpoint
        .into_iter()
        .next()
        .context("no checkpoint signing key in the state store")?;
    let receipt_signer =
        crate::erasure::receipt::ReceiptSigner::new(cp_kid.clone(), cp_key.clone());

    let model = match &config.policy.model {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read casbin model {}", p.display()))?,
        None => DEFAULT_MODEL.to_owned(),
    };
    let (policy_version, rules) = store.policy().await?;
    let authz = Authorizer::new(&model, &rules)
        .await
        .context("invalid policy")?;

    let metrics = Arc::new(Metrics::new());
    let audit_store: Arc<dyn AuditStore> = Arc::new(SqlAuditStore::new(audit_db.clone()));
    let audit = Sequencer::start(
        audit_store.clone(),
        Some(Sealer::new(
            CheckpointSigner::new(cp_kid, cp_key),
            checkpoint_keys.clone(),
        )),
        SequencerConfig {
            max_batch: config.audit.max_batch,
            checkpoint_every: config.audit.checkpoint_every,
            checkpoint_interval: config.audit.checkpoint_interval,
            ..SequencerConfig::default()
        },
        Some(metrics.clone() as Arc<dyn warden_audit::AuditObserver>),
    );
    // Entries a crash left after the last seal, or a log from before seals, are sealed only
    // once the chain up to them recomputes; a break leaves the gateway running but not
    // ready (readyz, warden_audit_chain_broken), recording nothing.
    match audit.seal().await {
        Ok(()) => {}
        Err(warden_audit::Error::ChainBroken(reason)) => {
            error!(%reason, "the audit log does not verify: not ready, nothing will be recorded; run `warden audit verify`");
        }
        Err(e) => return Err(e).context("cannot seal the audit log's head"),
    }
    let mut dbs = vec![state_db.clone()];
    if config.audit_url() != config.state_url() {
        dbs.push(audit_db);
    }
    let limiter = RateLimiter::new(config.limits.rate_per_second, config.limits.rate_burst);
    let vault: Arc<dyn VaultStore> = Arc::new(SqlVaultStore::new(state_db.clone()));
    let keys = Arc::new(KeyRing::new(
        kek.clone(),
        vault.clone(),
        clock.clone(),
        CachePolicy::default(),
    ));
    let tokenizer = Tokenizer::new(keys.clone(), vault, clock.clone());
    let stage_graph = config.pipeline.stage_graph()?;
    let mut protector = Protector::new(keys.clone(), tokenizer.clone());
    if let Some(path) = &config.pipeline.geoip_db {
        let geo = warden_pipeline::geo::GeoEnricher::open(path, config.pipeline.geo_datasets())?;
        info!(path = %path.display(), "geo enrichment at the edge");
        protector = protector.with_enricher(Arc::new(geo));
    }
    let datasets = Datasets::default();
    datasets
        .load(
            &config.datasets_dir,
            config.shipped_datasets,
            store.as_ref(),
            clock.now_micros(),
        )
        .await
        .context("cannot load the dataset contracts")?;
    let stream = crate::pipeline::open_stream(&config, &state_db)?;
    let documents = crate::pipeline::open_documents(&config, &state_db).await?;
    let lake = crate::pipeline::open_lake(&config)?;
    let erasure_lease = config.erasure.lease;
    let state = AppState(Arc::new(Inner {
        config,
        clock,
        store,
        audit_store,
        audit,
        kek,
        tokens,
        authz,
        policy_version: tokio::sync::Mutex::new(policy_version),
        metrics,
        limiter,
        checkpoint_keys,
        keys,
        tokenizer,
        protector,
        datasets,
        stream,
        documents,
        lake,
        loaders: Arc::default(),
        topics: crate::api::records::Topics::default(),
        subscriptions: crate::api::subscriptions::Subscriptions::default(),
        stage_graph,
        erasures: crate::erasure::Jobs::new(state_db.clone()).with_lease(erasure_lease),
        receipt_signer,
        dbs,
    }));
    Ok((state, first_start))
}

impl AppState {
    /// Reloads the policy and the dataset contracts if another replica (or the API) changed
    /// them.
    ///
    /// # Errors
    /// A database failure, or stored rules the authorizer refuses (the old rules stay).
    pub async fn refresh_policy(&self) -> crate::error::Result<()> {
        self.datasets.refresh(self.store.as_ref()).await?;
        let mut held = self.policy_version.lock().await;
        let (version, rules) = self.store.policy().await?;
        if version > *held {
            self.authz.replace(&rules).await?;
            *held = version;
            info!(version, rules = rules.len(), "policy reloaded");
        }
        Ok(())
    }

    /// Makes sure a topic exists (once per process).
    ///
    /// # Errors
    /// The stream cannot create it.
    pub async fn topics_ensure(&self, topic: &str) -> crate::error::Result<()> {
        self.topics.ensure(self, topic).await
    }

    /// Starts the loaders of every dataset (stream → stages → document store and lake), as
    /// configured.
    pub fn start_loaders(&self) {
        self.loaders.start(
            self.stream.clone(),
            self.sinks(),
            self.datasets.clone(),
            self.config.streams.topic_prefix.clone(),
            self.stage_graph.clone(),
            self.config.streams.partitions,
        );
    }

    /// The sinks the loaders write into.
    pub fn sinks(&self) -> crate::pipeline::Sinks {
        crate::pipeline::Sinks {
            documents: self.documents.clone(),
            lake: self.lake.clone(),
            keys: self.keys.clone(),
        }
    }

    /// The topic of a dataset's stream (with the configured prefix).
    pub fn topic(&self, contract: &warden_policy::contract::Contract) -> String {
        format!("{}{}", self.config.streams.topic_prefix, contract.stream)
    }

    /// Stops the loaders, flushes the audit log and closes the databases.
    pub async fn shutdown(&self) {
        self.loaders.stop().await;
        self.audit.shutdown().await;
        for db in &self.dbs {
            db.close().await;
        }
    }
}

/// Decrypts the stored key pairs of one purpose, newest first.
pub(crate) async fn load_signing_keys(
    store: &dyn StateStore,
    kek: &dyn KeyProvider,
    purpose: &str,
) -> anyhow::Result<Vec<(String, SigningKey)>> {
    let mut out = Vec::new();
    for rec in store.signing_keys(purpose).await? {
        let secret = kek
            .unwrap(&rec.private_wrapped, &signing_key_aad(purpose, &rec.kid))
            .await
            .with_context(|| {
                format!(
                    "cannot unwrap signing key {}: is this the right key-encryption key?",
                    rec.kid
                )
            })?;
        let bytes: [u8; 32] = secret
            .expose()
            .try_into()
            .context("signing key is not 32 bytes")?;
        let key = SigningKey::from_bytes(&bytes);
        if key.verifying_key().to_bytes().as_slice() != rec.public_key.as_slice() {
            anyhow::bail!("signing key {} does not match its public key", rec.kid);
        }
        out.push((rec.kid, key));
    }
    Ok(out)
}

async fn new_signing_key(
    kek: &dyn KeyProvider,
    purpose: &str,
    now: i64,
) -> anyhow::Result<SigningKeyRecord> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let public = key.verifying_key().to_bytes();
    let kid = key_id(purpose, &public);
    let private_wrapped = kek
        .wrap(key.as_bytes(), &signing_key_aad(purpose, &kid))
        .await?;
    Ok(SigningKeyRecord {
        kid,
        purpose: purpose.to_owned(),
        public_key: public.to_vec(),
        private_wrapped,
        active: true,
        created_at: now,
    })
}

async fn initialize(
    config: &Config,
    env: &HashMap<String, String>,
    clock: &dyn Clock,
    kek: &dyn KeyProvider,
    store: &dyn StateStore,
) -> anyhow::Result<Option<FirstStart>> {
    let now = clock.now_micros();
    let (password, shown) = match env.get("WARDEN_ADMIN_PASSWORD") {
        Some(p) => {
            passwords::check_new_password(p).context("WARDEN_ADMIN_PASSWORD")?;
            (Zeroizing::new(p.clone()), false)
        }
        None => (
            Zeroizing::new(Alphanumeric.sample_string(&mut rand::rngs::OsRng, 24)),
            true,
        ),
    };
    let admin_id = uuid::Uuid::new_v4().to_string();
    let seed = Zeroizing::new(totp::new_seed());
    let policy_text = match &config.policy.initial_policy {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read policy {}", p.display()))?,
        None => DEFAULT_POLICY.to_owned(),
    };
    let init = Bootstrap {
        keys: vec![
            new_signing_key(kek, "jwt", now).await?,
            new_signing_key(kek, "checkpoint", now).await?,
        ],
        admin: PrincipalRecord {
            id: admin_id.clone(),
            kind: PrincipalKind::User,
            name: ADMIN_USERNAME.to_owned(),
            secret_hash: passwords::hash(password.to_string()).await?,
            roles: vec!["admin".to_owned()],
            disabled: false,
            failed_logins: 0,
            locked_until: 0,
            must_change_password: shown,
            created_at: now,
            credentials_epoch: 0,
        },
        admin_mfa: MfaRecord {
            principal_id: admin_id.clone(),
            secret_wrapped: kek.wrap(&seed, &totp_aad(&admin_id)).await?,
            confirmed: true,
            last_step: -1,
            failures: 0,
            locked_until: 0,
        },
        policy: parse_policy_csv(&policy_text).context("invalid initial policy")?,
    };
    if !store.initialize(&init).await? {
        // Another replica initialized the store first; its admin stands.
        return Ok(None);
    }
    info!(admin_id = %admin_id, "initialized a new Warden installation");
    Ok(Some(FirstStart {
        admin_username: ADMIN_USERNAME.to_owned(),
        admin_password: shown.then_some(password),
        totp_uri: totp::otpauth_uri(&seed, &config.auth.totp_issuer, ADMIN_USERNAME)?,
    }))
}
