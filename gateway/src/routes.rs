//! The route table: every route the gateway serves and the policy that guards it.
//!
//! The request-path middleware looks each request's matched route up here. A route that is
//! served but missing from this table is denied (default deny), so adding a handler without
//! deciding its policy fails closed.

/// How a route is guarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed (probes, metrics, public keys, the token endpoint itself).
    Public,
    /// A valid token whose roles the policy allows `action` on `resource`; `mfa` demands a
    /// second factor younger than the configured window.
    Protected {
        resource: &'static str,
        action: &'static str,
        mfa: bool,
    },
}

/// One route.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

const fn public(method: &'static str, path: &'static str) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access: Access::Public,
    }
}

const fn guarded(
    method: &'static str,
    path: &'static str,
    resource: &'static str,
    action: &'static str,
    mfa: bool,
) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access: Access::Protected {
            resource,
            action,
            mfa,
        },
    }
}

/// Every route. Sensitive actions (audit read, policy change, user administration) need MFA.
pub const ROUTES: &[RouteSpec] = &[
    public("GET", "/healthz"),
    public("GET", "/readyz"),
    public("GET", "/metrics"),
    public("GET", "/.well-known/jwks.json"),
    public("POST", "/v1/auth/token"),
    guarded("GET", "/v1/auth/me", "self", "read", false),
    guarded("POST", "/v1/auth/password", "self", "password", false),
    guarded("POST", "/v1/auth/mfa/enroll", "self", "mfa", false),
    guarded("GET", "/v1/auth/mfa/qr.png", "self", "mfa", false),
    guarded("POST", "/v1/auth/mfa/confirm", "self", "mfa", false),
    guarded("POST", "/v1/auth/mfa", "self", "mfa", false),
    guarded("GET", "/v1/audit/events", "audit", "read", true),
    guarded("GET", "/v1/audit/verify", "audit", "verify", true),
    guarded("GET", "/v1/policy", "policy", "read", false),
    guarded("PUT", "/v1/policy", "policy", "write", true),
    guarded("GET", "/v1/users", "users", "read", true),
    guarded("POST", "/v1/users", "users", "write", true),
    guarded("POST", "/v1/users/{id}/disable", "users", "write", true),
    guarded("POST", "/v1/users/{id}/unlock", "users", "write", true),
    guarded("POST", "/v1/users/{id}/enable", "users", "write", true),
    guarded("POST", "/v1/service-accounts", "users", "write", true),
    guarded("GET", "/v1/datasets", "datasets:*", "read", false),
    guarded(
        "GET",
        "/v1/datasets/{name}",
        "datasets:{name}",
        "read",
        false,
    ),
    guarded(
        "PUT",
        "/v1/datasets/{name}",
        "datasets:{name}",
        "admin",
        true,
    ),
    guarded(
        "POST",
        "/v1/datasets/{name}/protect",
        "datasets:{name}",
        "write",
        false,
    ),
    guarded(
        "POST",
        "/v1/datasets/{name}/records",
        "datasets:{name}",
        "write",
        false,
    ),
    guarded(
        "GET",
        "/v1/datasets/{name}/records",
        "datasets:{name}",
        "read",
        false,
    ),
    guarded("POST", "/v1/detokenize", "pan", "reveal", true),
    guarded(
        "POST",
        "/v1/datasets/{name}/subscriptions/{group}/poll",
        "datasets:{name}",
        "subscribe",
        false,
    ),
    guarded(
        "POST",
        "/v1/datasets/{name}/subscriptions/{group}/commit",
        "datasets:{name}",
        "subscribe",
        false,
    ),
    // Per dataset, the handler registers only what `datasets:<name> read` allows.
    guarded("POST", "/v1/query", "query", "run", false),
    // Data subjects' rights. The subject id never enters a resource name (it may be an
    // identifier); the handlers hold subjects to themselves and ask anyone else for a fresh
    // second factor.
    guarded(
        "POST",
        "/v1/subjects/{id}/erasure",
        "erasure",
        "request",
        false,
    ),
    guarded("GET", "/v1/subjects/{id}/export", "export", "read", false),
    guarded("GET", "/v1/erasure", "erasure", "list", true),
    guarded("GET", "/v1/erasure/{job}", "erasure", "read", false),
    guarded(
        "POST",
        "/v1/erasure/{job}/extend",
        "erasure",
        "extend",
        true,
    ),
    guarded("GET", "/v1/legal-holds", "holds", "read", true),
    guarded("POST", "/v1/legal-holds", "holds", "write", true),
    guarded(
        "POST",
        "/v1/legal-holds/{id}/release",
        "holds",
        "write",
        true,
    ),
];

/// The resource of a request: the route's resource with `{param}` replaced by the value in
/// the path. `None` when a value is not a plain name (`[a-z0-9_]`, as dataset names are),
/// so no crafted value (a `*`, a `:`) reaches the policy.
pub fn resource(template: &str, route: &str, path: &str) -> Option<String> {
    let mut resource = template.to_owned();
    for (pattern, actual) in route.split('/').zip(path.split('/')) {
        if pattern.starts_with('{') && pattern.ends_with('}') && template.contains(pattern) {
            if !warden_policy::contract::valid_name(actual) {
                return None;
            }
            resource = resource.replace(pattern, actual);
        }
    }
    Some(resource)
}

/// The spec of a matched route.
pub fn lookup(method: &str, path: &str) -> Option<&'static RouteSpec> {
    ROUTES.iter().find(|r| r.method == method && r.path == path)
}

#[cfg(test)]
mod tests {
    use super::resource;

    #[test]
    fn resources_from_paths() {
        let r = |path: &str| resource("datasets:{name}", "/v1/datasets/{name}/protect", path);
        assert_eq!(
            r("/v1/datasets/payments/protect").as_deref(),
            Some("datasets:payments")
        );
        for bad in [
            "/v1/datasets/*/protect",
            "/v1/datasets/a:b/protect",
            "/v1/datasets/%2A/protect",
            "/v1/datasets/Pay/protect",
        ] {
            assert_eq!(r(bad), None, "{bad}");
        }
        assert_eq!(
            resource("users", "/v1/users/{id}/disable", "/v1/users/x-y/disable").as_deref(),
            Some("users")
        );
    }

    /// The (method, path) pairs the README's endpoint table names: each backticked piece of
    /// the first column is `METHOD[/METHOD] PATH`, or a bare path taking the methods before
    /// it; `a|b` at the end of a path names each; `…/x` replaces the previous path's last
    /// segment; `/*` covers every path below; a query or a note after the path is ignored.
    fn readme_endpoints() -> Vec<(String, String)> {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("| endpoint | who |")
            .expect("the README's endpoint table");
        let mut out = Vec::new();
        for row in readme[start..].lines().skip(2) {
            let Some(first) = row.strip_prefix("| ").and_then(|r| r.split(" | ").next()) else {
                break;
            };
            let mut methods: Vec<String> = Vec::new();
            let mut last = String::new();
            for piece in first.split('`').skip(1).step_by(2) {
                let (m, path) = match piece.split_once(' ') {
                    Some((m, p)) if m.chars().all(|c| c.is_ascii_uppercase() || c == '/') => {
                        (Some(m), p)
                    }
                    _ => (None, piece),
                };
                if !path.starts_with('/') && !path.starts_with('…') {
                    continue;
                }
                if let Some(m) = m {
                    methods = m.split('/').map(str::to_owned).collect();
                }
                let path = path.split('?').next().unwrap_or_default();
                let path = match path.strip_prefix('…') {
                    Some(rest) => format!("{}{rest}", &last[..last.rfind('/').unwrap_or(0)]),
                    None => path.to_owned(),
                };
                last.clone_from(&path);
                let (base, tail) = path.rsplit_once('/').unwrap_or(("", &path));
                for name in tail.split('|') {
                    for m in &methods {
                        out.push((m.clone(), format!("{base}/{name}")));
                    }
                }
            }
        }
        out
    }

    /// The README's endpoint table and the route table name the same endpoints.
    #[test]
    fn readme_endpoint_table_matches_the_routes() {
        let named = readme_endpoints();
        assert!(named.len() > 20, "{named:?}");
        let covers = |(m, p): &(String, String), r: &super::RouteSpec| {
            m == r.method
                && (p == r.path
                    || p.strip_suffix("/*").is_some_and(|base| {
                        r.path == base || r.path.starts_with(&format!("{base}/"))
                    }))
        };
        for r in super::ROUTES {
            assert!(
                named.iter().any(|n| covers(n, r)
                    || (n.1.ends_with("/*") && covers(&(r.method.to_owned(), n.1.clone()), r))),
                "the README's endpoint table does not name {} {}",
                r.method,
                r.path
            );
        }
        for n in &named {
            assert!(
                n.1.ends_with("/*") || super::ROUTES.iter().any(|r| covers(n, r)),
                "the README names {} {}, which no route serves",
                n.0,
                n.1
            );
        }
    }
}
