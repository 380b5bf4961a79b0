//! The dataset registry: validated contracts by name, versioned in the state store.
//!
//! On start, the contract files of the configured directory seed names the store has not
//! seen; afterwards contracts change through `PUT /v1/datasets/{name}` (admins, with MFA),
//! each change a new version. Replicas pick up changes on their periodic refresh.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use tracing::{info, warn};
use warden_policy::contract::Contract;

use crate::error::{Error, Result};
use crate::store::StateStore;

/// The example contracts shipped in the binary: a gateway started on its defaults from any
/// directory has the walkthrough's datasets.
const SHIPPED: &[(&str, &str)] = &[
    (
        "payments.toml",
        include_str!("../../config/datasets/payments.toml"),
    ),
    (
        "payment_bands.toml",
        include_str!("../../config/datasets/payment_bands.toml"),
    ),
];

/// Contracts in force, by dataset name. Clones share the registry.
#[derive(Debug, Default, Clone)]
pub struct Datasets {
    current: Arc<RwLock<HashMap<String, Arc<Contract>>>>,
}

impl Datasets {
    /// The contract of `name`, if the dataset exists.
    pub fn get(&self, name: &str) -> Option<Arc<Contract>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Every contract, by name.
    pub fn all(&self) -> Vec<Arc<Contract>> {
        let mut all: Vec<Arc<Contract>> = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Reloads the latest version of every contract from the store.
    ///
    /// # Errors
    /// A store failure or a stored contract that no longer validates.
    pub async fn refresh(&self, store: &dyn StateStore) -> Result<()> {
        let mut next = HashMap::new();
        for (name, _, json) in store.contracts().await? {
            let c = Contract::from_json(&json)
                .map_err(|e| Error::Corrupt(format!("stored contract {name}: {e}")))?;
            next.insert(name, Arc::new(c));
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// Seeds the store from `dir/*.toml` for datasets it does not know yet (from the shipped
    /// examples instead when `dir` is missing and `shipped` allows it), then loads.
    ///
    /// # Errors
    /// An unreadable or invalid contract file (named), or a store failure.
    pub async fn load(
        &self,
        dir: &Path,
        shipped: bool,
        store: &dyn StateStore,
        now: i64,
    ) -> anyhow::Result<()> {
        let known: Vec<String> = store
            .contracts()
            .await?
            .into_iter()
            .map(|(n, _, _)| n)
            .collect();
        let mut sources: Vec<(String, String)> = Vec::new();
        if dir.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(dir)?
                .filter_map(std::result::Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            for path in files {
                sources.push((path.display().to_string(), std::fs::read_to_string(&path)?));
            }
        } else if shipped {
            info!(
                dir = %dir.display(),
                "no dataset contract directory: loading the shipped examples (payments, payment_bands); set datasets_dir for your own"
            );
            sources.extend(
                SHIPPED
                    .iter()
                    .map(|(name, text)| (format!("shipped {name}"), (*text).to_owned())),
            );
        } else {
            warn!(dir = %dir.display(), "the dataset contract directory does not exist");
        }
        for (path, text) in sources {
            let c = Contract::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("invalid dataset contract {path}: {e}"))?;
            if known.contains(&c.name) {
                continue;
            }
            match store
                .put_contract(&c.name, c.version, &c.to_json(), now)
                .await
            {
                Ok(()) => {
                    info!(dataset = %c.name, version = c.version, "dataset contract loaded")
                }
                // Another replica seeded it first.
                Err(Error::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.refresh(store).await?;
        if self.all().is_empty() {
            warn!(
                dir = %dir.display(),
                "NO DATASET CONTRACT IS LOADED: ingest, reads and queries answer 404 until one is added to datasets_dir or with PUT /v1/datasets/{{name}}"
            );
        }
        Ok(())
    }

    /// Stores a new version of a contract and puts it in force. The version must follow the
    /// current one (1 for a new dataset).
    ///
    /// # Errors
    /// [`Error::Conflict`] for any other version; store failures.
    pub async fn put(
        &self,
        contract: Contract,
        store: &dyn StateStore,
        now: i64,
    ) -> Result<Arc<Contract>> {
        let current = self.get(&contract.name);
        let expected = current.as_ref().map_or(1, |c| c.version + 1);
        if contract.version != expected {
            return Err(Error::Conflict(format!(
                "the next version of this contract is {expected}"
            )));
        }
        // A field keeps its class: turning `pci.pan` into `public` would store later card
        // numbers in clear, and records already written keep the old meaning. A field whose
        // protection must change is a new field.
        if let Some(current) = &current {
            for (name, spec) in &contract.fields {
                if current
                    .fields
                    .get(name)
                    .is_some_and(|old| old.class != spec.class)
                {
                    return Err(Error::Invalid(format!(
                        "fields.{name}.class: a field keeps its class across versions; add a new field instead"
                    )));
                }
            }
        }
        store
            .put_contract(&contract.name, contract.version, &contract.to_json(), now)
            .await?;
        let contract = Arc::new(contract);
        self.current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(contract.name.clone(), contract.clone());
        Ok(contract)
    }
}
