//! The route table of the mTLS API: the one place a route is declared.
//!
//! Each [`Route`] names its template, its API, who may call it and, for each
//! method it serves, the handler, the audit action and the query parameters
//! it takes. The router ([`crate::router::router`]), the metric and log
//! labels ([`route_label`], [`path_label`]), the strict query check, the
//! audit action ([`action`]) and the role check on the request head
//! ([`serves`], [`sentinel_only`]) are all read from [`ROUTES`]; a test
//! checks that `openapi.yaml` documents exactly these routes, methods and
//! query parameters.
//!
//! Adding a route: write its handler, add one [`Route`] (or one [`Op`]) to
//! [`ROUTES`] with a new [`Endpoint`] (the compiler then asks for its handler
//! in `router.rs`), and document it in `openapi.yaml`.

use aegis_core::policy::Action;
use axum::http::Method;
use axum::routing::MethodFilter;

/// VSecM's workload fetch.
pub const WORKLOAD_SECRETS: &str = "/workload/v1/secrets";
/// VSecM's Sentinel secrets (list, upsert, delete).
pub const SENTINEL_SECRETS: &str = "/sentinel/v1/secrets";
/// VSecM's root key (as Sentinel).
pub const SENTINEL_KEYS: &str = "/sentinel/v1/keys";
/// VSecM's keystone.
pub const SENTINEL_KEYSTONE: &str = "/sentinel/v1/keystone";
/// Secret list.
pub const SECRETS: &str = "/v1/secrets";
/// One secret.
pub const SECRET: &str = "/v1/secrets/{name}";
/// Undelete.
pub const UNDELETE: &str = "/v1/secrets/{name}/undelete";
/// Rollback.
pub const ROLLBACK: &str = "/v1/secrets/{name}/rollback";
/// Version history.
pub const VERSIONS: &str = "/v1/secrets/{name}/versions";
/// One version (destroy).
pub const VERSION: &str = "/v1/secrets/{name}/versions/{version}";
/// The calling workload's secret.
pub const WORKLOAD_SECRET: &str = "/v1/workload/secret";
/// The workload watch (served before axum on HTTP/1.1, see `watchconn`).
pub const WORKLOAD_WATCH: &str = "/v1/workload/watch";
/// Encrypt for git.
pub const ENCRYPT: &str = "/v1/encrypt";
/// Unseal.
pub const UNSEAL: &str = "/v1/unseal";
/// Status.
pub const STATUS: &str = "/v1/status";
/// Root key rotation.
pub const ROTATE_ROOT_KEY: &str = "/v1/admin/rotate-root-key";
/// A backup of every secret (streamed).
pub const BACKUP: &str = "/v1/admin/backup";
/// The check of a backup file (streamed in).
pub const BACKUP_VERIFY: &str = "/v1/admin/backup/verify";
/// A restore from a backup file (streamed in).
pub const RESTORE: &str = "/v1/admin/restore";
/// The OpenAPI document.
pub const OPENAPI: &str = "/v1/openapi.yaml";
/// A secret by name, as a workload gets it (allowed by a policy).
pub const WORKLOAD_NAMED: &str = "/v1/workload/secrets/{name}";
/// The policies.
pub const POLICIES: &str = "/v1/policies";
/// One policy.
pub const POLICY: &str = "/v1/policies/{name}";
/// What the policies decide for a SPIFFE ID, a secret and an action.
pub const EXPLAIN: &str = "/v1/explain";
/// The newest lines of the audit trail.
pub const AUDIT: &str = "/v1/audit";
/// The replication links' state.
pub const REPLICATION: &str = "/v1/replication";
/// A source's changes, asked for by its replicas.
pub const REPLICATION_CHANGES: &str = "/v1/replication/changes";

/// Which API a route belongs to (the audit trail's `api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// VSecM's API.
    Vsecm,
    /// The native `/v1` API.
    Native,
}

impl Api {
    /// The name in the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Vsecm => "vsecm",
            Api::Native => "native",
        }
    }
}

/// The query parameters an operation takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// Only these: any other is refused with a 400 naming it, so that a typo
    /// (`?versoin=2`) is not silently ignored.
    Only(&'static [&'static str]),
    /// These are read and others ignored (VSecM's leniency).
    Lenient(&'static [&'static str]),
    /// The handler parses and checks its own query (the watch, which is also
    /// served before axum).
    Own(&'static [&'static str]),
}

impl Query {
    /// The parameters named.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Query::Only(n) | Query::Lenient(n) | Query::Own(n) => n,
        }
    }
}

/// What serves an operation: a name the router binds to its handler
/// ([`crate::router`], an exhaustive match, so an operation without a handler
/// does not compile). A name, not the handler, so that this table depends on
/// no handler and every module may read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `vsecm::fetch`.
    VsecmFetch,
    /// `vsecm::list`.
    VsecmList,
    /// `vsecm::upsert`.
    VsecmUpsert,
    /// `vsecm::delete`.
    VsecmDelete,
    /// `vsecm::keys`.
    VsecmKeys,
    /// `vsecm::keystone`.
    VsecmKeystone,
    /// `native::list`.
    List,
    /// `native::get`.
    Get,
    /// `native::put`.
    Put,
    /// `native::delete`.
    Delete,
    /// `native::undelete`.
    Undelete,
    /// `native::rollback`.
    Rollback,
    /// `native::history`.
    History,
    /// `native::destroy`.
    Destroy,
    /// `native::workload`.
    Workload,
    /// `watch::watch`.
    Watch,
    /// `native::encrypt`.
    Encrypt,
    /// `native::unseal`.
    Unseal,
    /// `native::status`.
    Status,
    /// `native::rotate`.
    Rotate,
    /// `native::openapi`.
    Openapi,
    /// `backup::backup`.
    Backup,
    /// `backup::verify`.
    VerifyBackup,
    /// `backup::restore`.
    Restore,
    /// `native::named`.
    WorkloadNamed,
    /// `policy::list`.
    PolicyList,
    /// `policy::get`.
    PolicyGet,
    /// `policy::put`.
    PolicyPut,
    /// `policy::delete`.
    PolicyDelete,
    /// `policy::explain`.
    Explain,
    /// `native::audit_tail`.
    AuditTail,
    /// `native::replication`.
    Replication,
    /// `replication::changes`.
    ReplicationChanges,
}

impl Endpoint {
    /// The action a caller needs a policy for on some secret (or on the Safe)
    /// to be let past the request head, before any of the body is read;
    /// `None`: any caller, and the handler decides (a workload's own secret,
    /// the OpenAPI document). The handler then decides on the secret itself.
    pub fn need(self) -> Option<Action> {
        use Endpoint as E;
        match self {
            // The replica check is the handler's: only the SPIFFE IDs named by --replicate-to.
            E::VsecmFetch | E::Workload | E::Watch | E::Openapi | E::ReplicationChanges => None,
            E::VsecmList | E::VsecmKeystone | E::List | E::History | E::Status | E::Replication => Some(Action::List),
            E::VsecmUpsert | E::VsecmDelete | E::Put | E::Delete | E::Undelete | E::Rollback | E::Destroy => {
                Some(Action::Write)
            }
            E::Encrypt => Some(Action::Write),
            E::Get => Some(Action::Reveal),
            E::WorkloadNamed => Some(Action::Read),
            E::VsecmKeys | E::Unseal | E::Rotate | E::Backup | E::VerifyBackup | E::Restore => Some(Action::Admin),
            E::PolicyList | E::PolicyGet | E::PolicyPut | E::PolicyDelete | E::Explain => Some(Action::Admin),
            E::AuditTail => Some(Action::Audit),
        }
    }
}

/// One method of a route.
#[derive(Clone, Copy)]
pub struct Op {
    /// The HTTP method (axum also answers HEAD wherever GET is served).
    pub method: Verb,
    /// The audit trail's `action`.
    pub action: &'static str,
    /// The query parameters it takes.
    pub query: Query,
    /// What serves it.
    pub endpoint: Endpoint,
    /// A transfer: its body is streamed to the handler (not read first, not
    /// bounded by `--max-body-bytes`) and it runs under the transfer deadline
    /// (`--transfer-timeout-ms`) instead of the request deadline.
    pub transfer: bool,
}

/// The methods routes serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET (and HEAD).
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// DELETE.
    Delete,
}

impl Verb {
    /// The method.
    pub fn method(self) -> Method {
        match self {
            Verb::Get => Method::GET,
            Verb::Post => Method::POST,
            Verb::Put => Method::PUT,
            Verb::Delete => Method::DELETE,
        }
    }

    /// The router's method filter.
    pub fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Put => MethodFilter::PUT,
            Verb::Delete => MethodFilter::DELETE,
        }
    }

    /// Whether a request with `method` is served by this verb (HEAD by GET).
    fn serves(self, method: &Method) -> bool {
        *method == self.method() || (self == Verb::Get && *method == Method::HEAD)
    }
}

/// One route of the mTLS API.
pub struct Route {
    /// The template (`{x}` stands for one path segment); also its metric and log label.
    pub path: &'static str,
    /// Its API.
    pub api: Api,
    /// Its methods.
    pub ops: &'static [Op],
}

impl Route {
    /// The operation serving `method`, if any.
    pub fn op(&self, method: &Method) -> Option<&'static Op> {
        self.ops.iter().find(|o| o.method.serves(method))
    }
}

const fn op(method: Verb, action: &'static str, query: Query, endpoint: Endpoint) -> Op {
    Op { method, action, query, endpoint, transfer: false }
}

const fn transfer(method: Verb, action: &'static str, query: Query, endpoint: Endpoint) -> Op {
    Op { method, action, query, endpoint, transfer: true }
}

const NONE: Query = Query::Only(&[]);
const LENIENT: Query = Query::Lenient(&[]);
use Endpoint as E;
use Verb::{Delete, Get, Post, Put};

/// Every route of the mTLS API.
pub static ROUTES: [Route; 27] = [
    Route { path: WORKLOAD_SECRETS, api: Api::Vsecm, ops: &[op(Get, "fetch", LENIENT, E::VsecmFetch)] },
    Route {
        path: SENTINEL_SECRETS,
        api: Api::Vsecm,
        ops: &[
            op(Get, "list", Query::Lenient(&["reveal"]), E::VsecmList),
            op(Post, "write", LENIENT, E::VsecmUpsert),
            op(Delete, "delete", LENIENT, E::VsecmDelete),
        ],
    },
    Route { path: SENTINEL_KEYS, api: Api::Vsecm, ops: &[op(Post, "unseal", LENIENT, E::VsecmKeys)] },
    Route { path: SENTINEL_KEYSTONE, api: Api::Vsecm, ops: &[op(Get, "keystone", LENIENT, E::VsecmKeystone)] },
    Route { path: SECRETS, api: Api::Native, ops: &[op(Get, "list", Query::Only(&["deleted"]), E::List)] },
    Route {
        path: SECRET,
        api: Api::Native,
        ops: &[
            op(Get, "read", Query::Only(&["version"]), E::Get),
            op(Put, "write", NONE, E::Put),
            op(Delete, "delete", NONE, E::Delete),
        ],
    },
    Route { path: UNDELETE, api: Api::Native, ops: &[op(Post, "undelete", NONE, E::Undelete)] },
    Route { path: ROLLBACK, api: Api::Native, ops: &[op(Post, "rollback", NONE, E::Rollback)] },
    Route { path: VERSIONS, api: Api::Native, ops: &[op(Get, "history", NONE, E::History)] },
    Route { path: VERSION, api: Api::Native, ops: &[op(Delete, "destroy", NONE, E::Destroy)] },
    Route { path: WORKLOAD_SECRET, api: Api::Native, ops: &[op(Get, "fetch", NONE, E::Workload)] },
    Route {
        path: WORKLOAD_WATCH,
        api: Api::Native,
        ops: &[op(Get, "watch", Query::Own(&["revision", "wait_ms", "secret"]), E::Watch)],
    },
    Route { path: ENCRYPT, api: Api::Native, ops: &[op(Post, "encrypt", NONE, E::Encrypt)] },
    Route { path: UNSEAL, api: Api::Native, ops: &[op(Post, "unseal", NONE, E::Unseal)] },
    Route { path: STATUS, api: Api::Native, ops: &[op(Get, "status", NONE, E::Status)] },
    Route { path: ROTATE_ROOT_KEY, api: Api::Native, ops: &[op(Post, "rotate-root-key", NONE, E::Rotate)] },
    Route { path: BACKUP, api: Api::Native, ops: &[transfer(Post, "backup", NONE, E::Backup)] },
    Route { path: BACKUP_VERIFY, api: Api::Native, ops: &[transfer(Post, "verify-backup", NONE, E::VerifyBackup)] },
    Route { path: RESTORE, api: Api::Native, ops: &[transfer(Post, "restore", Query::Only(&["replace"]), E::Restore)] },
    Route { path: OPENAPI, api: Api::Native, ops: &[op(Get, "openapi", NONE, E::Openapi)] },
    Route { path: WORKLOAD_NAMED, api: Api::Native, ops: &[op(Get, "fetch", NONE, E::WorkloadNamed)] },
    Route { path: POLICIES, api: Api::Native, ops: &[op(Get, "list-policies", NONE, E::PolicyList)] },
    Route {
        path: POLICY,
        api: Api::Native,
        ops: &[
            op(Get, "read-policy", NONE, E::PolicyGet),
            op(Put, "write-policy", NONE, E::PolicyPut),
            op(Delete, "delete-policy", NONE, E::PolicyDelete),
        ],
    },
    Route { path: EXPLAIN, api: Api::Native, ops: &[op(Post, "explain", NONE, E::Explain)] },
    Route {
        path: AUDIT,
        api: Api::Native,
        ops: &[op(Get, "read-audit", Query::Only(&["lines", "caller", "secret"]), E::AuditTail)],
    },
    Route { path: REPLICATION, api: Api::Native, ops: &[op(Get, "replication-status", NONE, E::Replication)] },
    Route {
        path: REPLICATION_CHANGES,
        api: Api::Native,
        ops: &[op(
            Get,
            "replicate",
            Query::Own(&["after", "after_name", "selection", "wait_ms"]),
            E::ReplicationChanges,
        )],
    },
];

/// The route with the template `template`.
pub fn find(template: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.path == template)
}

/// The label of a route template: the template itself from [`ROUTES`], else `other`.
pub fn route_label(template: &str) -> &'static str {
    find(template).map_or("other", |r| r.path)
}

/// The label of a request path before routing (for the request span, and
/// for answers given before axum routes, such as an oversized body or a
/// timeout): the template of [`ROUTES`] it matches, else `other`.
pub fn path_label(path: &str) -> &'static str {
    ROUTES.iter().find(|r| matches_template(r.path, path)).map_or("other", |r| r.path)
}

/// Whether `path` matches `template`, where `{x}` stands for one non-empty segment.
fn matches_template(template: &str, path: &str) -> bool {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) if ts == ps || (ts.starts_with('{') && !ps.is_empty()) => {}
            _ => return false,
        }
    }
}

/// Whether the router serves `method` on `route` (axum answers HEAD wherever GET is served).
pub fn serves(method: &Method, route: &str) -> bool {
    find(route).and_then(|r| r.op(method)).is_some()
}

/// Whether `method` on `route` is a transfer (see [`Op::transfer`]).
pub fn is_transfer(method: &Method, route: &str) -> bool {
    find(route).and_then(|r| r.op(method)).is_some_and(|o| o.transfer)
}

/// The action `method` on `route` needs a policy for (see [`Endpoint::need`]).
/// Unknown paths and methods a route does not serve are left to the router (404, 405).
pub fn need(method: &Method, route: &str) -> Option<Action> {
    find(route).and_then(|r| r.op(method)).and_then(|o| o.endpoint.need())
}

/// The query parameters `method` on `route` is limited to; `None` where the
/// route keeps VSecM's leniency, parses its own query, or does not serve the
/// method (it gets its 405).
pub fn allowed_query(method: &Method, route: &str) -> Option<&'static [&'static str]> {
    // Exactly the method: a HEAD keeps its leniency, as before the table.
    let op = find(route)?.ops.iter().find(|o| o.method.method() == *method)?;
    match op.query {
        Query::Only(names) => Some(names),
        Query::Lenient(_) | Query::Own(_) => None,
    }
}

/// The API and the action of a request, from its method and route template.
/// A route with one operation gives its action whatever the method (a 405 is
/// still recorded as what was tried); `("other", "other")` otherwise.
pub fn action(method: &Method, route: &str) -> (&'static str, &'static str) {
    let Some(r) = find(route) else { return ("other", "other") };
    let op = match r.ops {
        [only] => Some(only),
        ops => ops.iter().find(|o| o.method.method() == *method),
    };
    op.map_or(("other", "other"), |o| (r.api.as_str(), o.action))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_get_their_template_and_never_a_name() {
        assert_eq!(path_label("/v1/secrets"), SECRETS);
        assert_eq!(path_label("/v1/secrets/billing"), SECRET);
        assert_eq!(path_label("/v1/secrets/billing/versions"), VERSIONS);
        assert_eq!(path_label("/v1/secrets/billing/versions/3"), VERSION);
        assert_eq!(path_label("/v1/workload/watch"), WORKLOAD_WATCH);
        assert_eq!(path_label("/v1/secrets/billing/other"), "other");
        assert_eq!(path_label("/v1/secrets/"), "other");
        assert_eq!(path_label("/nope"), "other");
        assert_eq!(route_label("/v1/secrets/{name}"), SECRET);
        assert_eq!(route_label("/v1/secrets/billing"), "other");
    }

    #[test]
    fn templates_methods_and_actions_are_unique() {
        let mut paths: Vec<_> = ROUTES.iter().map(|r| r.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ROUTES.len(), "a template is declared twice");
        for r in &ROUTES {
            let mut verbs: Vec<_> = r.ops.iter().map(|o| o.method.method()).collect();
            verbs.dedup();
            assert_eq!(verbs.len(), r.ops.len(), "{}: a method is declared twice", r.path);
            assert!(!r.ops.is_empty(), "{} serves no method", r.path);
        }
    }

    #[test]
    fn every_route_has_an_action() {
        for r in &ROUTES {
            for o in r.ops {
                assert_eq!(action(&o.method.method(), r.path), (r.api.as_str(), o.action), "{}", r.path);
            }
        }
        assert_eq!(action(&Method::PUT, SECRET), ("native", "write"));
        assert_eq!(action(&Method::DELETE, SENTINEL_SECRETS), ("vsecm", "delete"));
        assert_eq!(action(&Method::GET, SENTINEL_KEYS), ("vsecm", "unseal"), "one operation: any method");
        assert_eq!(action(&Method::PATCH, SECRET), ("other", "other"));
        assert_eq!(action(&Method::GET, "/nope"), ("other", "other"));
    }

    #[test]
    fn roles_and_queries_come_from_the_table() {
        assert_eq!(need(&Method::PUT, SECRET), Some(Action::Write));
        assert_eq!(need(&Method::GET, SECRET), Some(Action::Reveal));
        assert_eq!(need(&Method::HEAD, SECRETS), Some(Action::List), "HEAD is served wherever GET is");
        assert_eq!(need(&Method::PATCH, SECRET), None, "a method not served is left to the router");
        assert_eq!(need(&Method::GET, WORKLOAD_SECRET), None);
        assert_eq!(need(&Method::GET, WORKLOAD_NAMED), Some(Action::Read));
        assert_eq!(need(&Method::PUT, POLICY), Some(Action::Admin));
        assert_eq!(need(&Method::GET, OPENAPI), None);
        assert!(serves(&Method::DELETE, VERSION) && !serves(&Method::GET, VERSION));
        assert_eq!(allowed_query(&Method::GET, SECRET), Some(&["version"][..]));
        assert_eq!(allowed_query(&Method::PUT, SECRET), Some(&[][..]));
        assert_eq!(allowed_query(&Method::GET, SENTINEL_SECRETS), None, "VSecM's leniency");
        assert_eq!(allowed_query(&Method::GET, WORKLOAD_WATCH), None, "the watch checks its own");
        assert_eq!(allowed_query(&Method::POST, SECRET), None, "a 405, not a 400");
        assert_eq!(allowed_query(&Method::HEAD, SECRET), None);
    }

    /// `(template, method, query parameters)` of every operation `doc` documents.
    fn documented(doc: &str) -> Vec<(String, String, Vec<String>)> {
        use yaml_rust2::{Yaml, YamlLoader};
        let docs = YamlLoader::load_from_str(doc).unwrap();
        let paths = docs[0]["paths"].as_hash().expect("openapi.yaml has paths");
        let mut ops = Vec::new();
        for (path, item) in paths {
            let path = path.as_str().unwrap().to_owned();
            for (key, op) in item.as_hash().unwrap() {
                let key = key.as_str().unwrap();
                if key == "parameters" || key == "summary" || key == "description" {
                    continue;
                }
                let params = op["parameters"].as_vec().map(Vec::as_slice).unwrap_or_default();
                let mut query: Vec<String> = params
                    .iter()
                    .filter(|p| p["in"] == Yaml::String("query".into()))
                    .map(|p| p["name"].as_str().unwrap().to_owned())
                    .collect();
                query.sort();
                ops.push((path.clone(), key.to_ascii_uppercase(), query));
            }
        }
        ops.sort();
        ops
    }

    /// `(template, method, query parameters)` of every operation in [`ROUTES`].
    fn declared() -> Vec<(String, String, Vec<String>)> {
        let mut ops: Vec<_> = ROUTES
            .iter()
            .flat_map(|r| {
                r.ops.iter().map(|o| {
                    let mut query: Vec<String> = o.query.names().iter().map(|n| (*n).to_owned()).collect();
                    query.sort();
                    (r.path.to_owned(), o.method.method().to_string(), query)
                })
            })
            .collect();
        ops.sort();
        ops
    }

    #[test]
    fn openapi_documents_exactly_the_route_table() {
        let doc = documented(crate::native::OPENAPI);
        let table = declared();
        let missing: Vec<_> = table.iter().filter(|d| !doc.contains(d)).collect();
        let extra: Vec<_> = doc.iter().filter(|d| !table.contains(d)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "in routes.rs but not in openapi.yaml: {missing:?}; in openapi.yaml but not in routes.rs: {extra:?}"
        );
        assert_eq!(table.len(), 33);
    }

    #[test]
    fn the_openapi_check_sees_a_missing_route_and_a_missing_parameter() {
        let full = crate::native::OPENAPI;
        // A route left out of the document (its whole path item).
        let start = full.find("\n  /v1/status:").unwrap();
        let end = start + 1 + full[start + 1..].find("\n  /").unwrap();
        let without = format!("{}{}", &full[..start], &full[end..]);
        let doc = documented(&without);
        assert!(declared().iter().any(|d| d.0 == STATUS && !doc.contains(d)));
        // A query parameter left out.
        let without = full.replacen("- { name: deleted, in: query", "- { name: deleted, in: header", 1);
        let doc = documented(&without);
        assert!(declared().iter().any(|d| d.0 == SECRETS && !doc.contains(d)));
    }
}
