//! Authorization: casbin RBAC, default deny.
//!
//! The request is `(role, resource, action)`; a principal with several roles is allowed when
//! any of its roles is. Rules are `p, role, resource, action` (resource may end in `*`,
//! action may be `*`) and `g, role, parent_role` (the role inherits the parent's rules).
//! Nothing is allowed that no rule allows. Decisions are cached until the policy changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter, MgmtApi};
use warden_sdk::PolicyRule;

use crate::{Error, Result};

/// The casbin model Warden ships (`config/model.conf`).
pub const DEFAULT_MODEL: &str = include_str!("../../config/model.conf");
/// The policy Warden ships (`config/policy.csv`).
pub const DEFAULT_POLICY: &str = include_str!("../../config/policy.csv");

/// Longest accepted rule value.
const MAX_VALUE: usize = 128;
/// Decisions kept in the cache before it is emptied.
const CACHE_CAPACITY: usize = 65_536;

/// Parses casbin CSV policy text: `p, role, resource, action` and `g, role, parent` lines,
/// `#` comments and blank lines.
///
/// # Errors
/// [`Error::InvalidRule`] naming the line.
pub fn parse_policy_csv(text: &str) -> Result<Vec<PolicyRule>> {
    let mut rules = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split(',').map(str::trim);
        let ptype = parts.next().unwrap_or_default().to_owned();
        let rule = PolicyRule {
            ptype,
            values: parts.map(str::to_owned).collect(),
        };
        validate_rule(&rule).map_err(|e| Error::InvalidRule(format!("line {}: {e}", n + 1)))?;
        rules.push(rule);
    }
    Ok(rules)
}

/// Checks a rule's shape: `p` with role, resource, action; `g` with role, parent; values of
/// letters, digits and `_ - . : / *`, at most 128 bytes.
///
/// # Errors
/// [`Error::InvalidRule`] saying what is wrong.
pub fn validate_rule(rule: &PolicyRule) -> Result<()> {
    let arity = match rule.ptype.as_str() {
        "p" => 3,
        "g" => 2,
        other => {
            return Err(Error::InvalidRule(format!(
                "unknown rule type {other:?} (expected p or g)"
            )))
        }
    };
    if rule.values.len() != arity {
        return Err(Error::InvalidRule(format!(
            "{} rules take {arity} values, got {}",
            rule.ptype,
            rule.values.len()
        )));
    }
    for v in &rule.values {
        let ok = !v.is_empty()
            && v.len() <= MAX_VALUE
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.:/*".contains(c));
        if !ok {
            return Err(Error::InvalidRule(format!(
                "value {v:?} must be 1 to {MAX_VALUE} letters, digits or _-.:/*"
            )));
        }
    }
    Ok(())
}

struct Inner {
    decider: Decider,
    rules: Vec<PolicyRule>,
}

/// The policy decision point.
pub struct Authorizer {
    inner: RwLock<Inner>,
    /// Bumped by every [`Authorizer::replace`]; a decision is cached only if no replace
    /// happened while it was being made, so a revoked permission never lingers in the cache.
    generation: AtomicU64,
    cache: RwLock<HashMap<(String, String, String), bool>>,
    model: String,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

/// The casbin enforcers behind the decisions.
enum Decider {
    /// With the shipped model a request for role R can only match rules of R and of the roles
    /// R inherits, so each role gets an enforcer holding just those: a decision scans one
    /// role's rules, not the whole policy (casbin matches rules one by one).
    ByRole(HashMap<String, Enforcer>),
    /// Any other model: one enforcer over every rule.
    Whole(Box<Enforcer>),
}

impl Decider {
    fn enforce(&self, role: &str, resource: &str, action: &str) -> Result<bool> {
        match self {
            Self::ByRole(roles) => match roles.get(role) {
                Some(e) => Ok(e.enforce((role, resource, action))?),
                None => Ok(false),
            },
            Self::Whole(e) => Ok(e.enforce((role, resource, action))?),
        }
    }
}

async fn enforcer(
    model: DefaultModel,
    p: Vec<Vec<String>>,
    g: Vec<Vec<String>>,
) -> Result<Enforcer> {
    let mut enforcer = Enforcer::new(model, MemoryAdapter::default()).await?;
    enforcer.enable_auto_save(false);
    if !p.is_empty() {
        enforcer.add_policies(p).await?;
    }
    if !g.is_empty() {
        enforcer.add_grouping_policies(g).await?;
    }
    Ok(enforcer)
}

async fn build(model_text: &str, rules: &[PolicyRule]) -> Result<Decider> {
    let mut p = Vec::new();
    let mut g = Vec::new();
    for r in rules {
        validate_rule(r)?;
        if r.ptype == "p" {
            p.push(r.values.clone());
        } else {
            g.push(r.values.clone());
        }
    }
    let model = DefaultModel::from_str(model_text).await?;
    if model_text.trim() != DEFAULT_MODEL.trim() {
        return Ok(Decider::Whole(Box::new(enforcer(model, p, g).await?)));
    }
    let mut parents: HashMap<&str, Vec<&str>> = HashMap::new();
    for edge in &g {
        parents
            .entry(edge[0].as_str())
            .or_default()
            .push(edge[1].as_str());
    }
    let mut roles: Vec<&str> = p
        .iter()
        .map(|r| r[0].as_str())
        .chain(g.iter().map(|e| e[0].as_str()))
        .collect();
    roles.sort_unstable();
    roles.dedup();
    let mut by_role = HashMap::new();
    for role in roles {
        // The role and every role it inherits, transitively.
        let mut closure = vec![role];
        let mut i = 0;
        while i < closure.len() {
            for parent in parents.get(closure[i]).into_iter().flatten() {
                if !closure.contains(parent) {
                    closure.push(parent);
                }
            }
            i += 1;
        }
        let own_p = p
            .iter()
            .filter(|r| closure.contains(&r[0].as_str()))
            .cloned()
            .collect();
        let own_g = g
            .iter()
            .filter(|e| closure.contains(&e[0].as_str()))
            .cloned()
            .collect();
        by_role.insert(
            role.to_owned(),
            enforcer(model.clone(), own_p, own_g).await?,
        );
    }
    Ok(Decider::ByRole(by_role))
}

impl Authorizer {
    /// An authorizer over `model` (casbin model text) and `rules`.
    ///
    /// # Errors
    /// A malformed model or rule.
    pub async fn new(model: &str, rules: &[PolicyRule]) -> Result<Self> {
        let decider = build(model, rules).await?;
        Ok(Self {
            inner: RwLock::new(Inner {
                decider,
                rules: rules.to_vec(),
            }),
            generation: AtomicU64::new(0),
            cache: RwLock::new(HashMap::new()),
            model: model.to_owned(),
        })
    }

    /// True when any of `roles` may do `action` on `resource`. No roles, no access.
    ///
    /// # Errors
    /// A casbin evaluation failure (treat as deny).
    pub fn allows(&self, roles: &[String], resource: &str, action: &str) -> Result<bool> {
        for role in roles {
            if self.allows_role(role, resource, action)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn allows_role(&self, role: &str, resource: &str, action: &str) -> Result<bool> {
        let key = (role.to_owned(), resource.to_owned(), action.to_owned());
        if let Some(hit) = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(*hit);
        }
        let (decision, generation) = {
            let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
            // Read under the rules' lock: a replace swaps the rules before it bumps this.
            let generation = self.generation.load(Ordering::SeqCst);
            (inner.decider.enforce(role, resource, action)?, generation)
        };
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::SeqCst) == generation {
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(key, decision);
        }
        Ok(decision)
    }

    /// Decides without the cache (for benchmarks).
    ///
    /// # Errors
    /// As [`allows`](Self::allows).
    pub fn allows_uncached(&self, role: &str, resource: &str, action: &str) -> Result<bool> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .decider
            .enforce(role, resource, action)
    }

    /// Replaces the whole rule set; decisions made after this call see the new rules.
    ///
    /// # Errors
    /// A malformed rule; the old rules then stay in force.
    pub async fn replace(&self, rules: &[PolicyRule]) -> Result<()> {
        let decider = build(&self.model, rules).await?;
        {
            let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
            *inner = Inner {
                decider,
                rules: rules.to_vec(),
            };
        }
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        cache.clear();
        Ok(())
    }

    /// The rules in force.
    pub fn rules(&self) -> Vec<PolicyRule> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .rules
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn default_deny_wildcards_and_inheritance() {
        let rules = parse_policy_csv(
            "# comment\np, admin, users, *\np, auditor, audit, read\np, stage, datasets:*, write\ng, dpo, auditor\n",
        )
        .unwrap();
        let a = Authorizer::new(DEFAULT_MODEL, &rules).await.unwrap();
        assert!(a.allows(&roles(&["admin"]), "users", "write").unwrap());
        assert!(!a.allows(&roles(&["admin"]), "audit", "read").unwrap());
        assert!(
            a.allows(&roles(&["dpo"]), "audit", "read").unwrap(),
            "dpo inherits auditor"
        );
        assert!(a
            .allows(&roles(&["stage"]), "datasets:payments", "write")
            .unwrap());
        assert!(!a
            .allows(&roles(&["stage"]), "datasets:payments", "read")
            .unwrap());
        assert!(!a.allows(&roles(&[]), "users", "read").unwrap());
        assert!(!a.allows(&roles(&["nobody"]), "users", "read").unwrap());
        assert!(a
            .allows(&roles(&["nobody", "auditor"]), "audit", "read")
            .unwrap());
    }

    /// The per-role partition and a single enforcer (any other model) decide alike.
    #[tokio::test]
    async fn partitioned_and_whole_decide_alike() {
        let rules = parse_policy_csv(
            "p, a, x:*, read\np, b, y, *\np, c, z, write\ng, b, a\ng, c, b\ng, d, c\n",
        )
        .unwrap();
        let partitioned = Authorizer::new(DEFAULT_MODEL, &rules).await.unwrap();
        let custom_model = format!("{DEFAULT_MODEL}\n# same rules, another text: one enforcer\n");
        let whole = Authorizer::new(&custom_model, &rules).await.unwrap();
        for role in ["a", "b", "c", "d", "e"] {
            for (res, act) in [
                ("x:1", "read"),
                ("y", "delete"),
                ("z", "write"),
                ("z", "read"),
                ("x:1", "write"),
            ] {
                assert_eq!(
                    partitioned.allows_uncached(role, res, act).unwrap(),
                    whole.allows_uncached(role, res, act).unwrap(),
                    "{role} {res} {act}"
                );
            }
        }
        assert!(
            partitioned.allows_uncached("d", "x:1", "read").unwrap(),
            "inherited through three levels"
        );
        assert!(
            !partitioned.allows_uncached("a", "y", "read").unwrap(),
            "parents do not inherit from children"
        );
    }

    #[tokio::test]
    async fn replace_takes_effect_and_clears_the_cache() {
        let a = Authorizer::new(
            DEFAULT_MODEL,
            &parse_policy_csv("p, analyst, audit, read").unwrap(),
        )
        .await
        .unwrap();
        assert!(a.allows(&roles(&["analyst"]), "audit", "read").unwrap());
        a.replace(&[]).await.unwrap();
        assert!(!a.allows(&roles(&["analyst"]), "audit", "read").unwrap());
        assert!(a
            .replace(&[PolicyRule {
                ptype: "p".into(),
                values: vec!["x".into()]
            }])
            .await
            .is_err());
    }

    #[test]
    fn malformed_rules_name_the_line() {
        for (text, needle) in [
            ("p, a, b\n", "line 1"),
            ("\nq, a, b, c\n", "line 2"),
            ("p, a b, c, d", "letters"),
        ] {
            let err = parse_policy_csv(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn shipped_policy_parses() {
        let rules = parse_policy_csv(DEFAULT_POLICY).unwrap();
        assert!(rules.iter().any(|r| r.values[0] == "admin"));
    }
}
