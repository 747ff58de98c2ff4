//! What callers may have in flight at once: requests, watches and request
//! body bytes, counted per SPIFFE ID and in total.
//!
//! Connection limits ([`crate::limits`]) bound descriptors, but one HTTP/2
//! connection carries many streams, so memory is bounded here, per request:
//! a request is admitted on its head (role, route, declared body) before a
//! byte of its body is read. Every refusal is immediate, never a wait, so no
//! set of half-sent requests can hold the budget while waiting for more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aegis_core::roles::Role;
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::limits::ConnLimits;
use crate::routes::{self, serves};
use aegis_core::policy::{Action, PolicySet};

/// A running count per SPIFFE ID and in total, each under its maximum.
#[derive(Debug)]
pub struct Tally {
    what: &'static str,
    /// The variables that raise `each` and `total`, named in refusals.
    settings: [&'static str; 2],
    each: usize,
    total: usize,
    counts: Mutex<(usize, HashMap<String, usize>)>,
}

/// Which maximum a refused [`Tally::take`] would have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// The caller's own.
    Identity,
    /// Everybody's together.
    Total,
}

/// Units of a [`Tally`] held until dropped.
#[derive(Debug)]
pub struct Held {
    tally: Arc<Tally>,
    id: String,
    n: usize,
}

impl Tally {
    /// A tally of `what` with at most `each` per identity and `total` in all,
    /// raised by the variables `settings` (for `each`, for `total`).
    pub fn new(what: &'static str, each: usize, total: usize, settings: [&'static str; 2]) -> Arc<Self> {
        Arc::new(Self { what, settings, each, total, counts: Mutex::new((0, HashMap::new())) })
    }

    /// The maxima (per identity, in total).
    pub fn limits(&self) -> (usize, usize) {
        (self.each, self.total)
    }

    /// Held in total now.
    pub fn held(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Takes `n` units for `id`, or says which maximum that would pass.
    pub fn take(self: &Arc<Self>, id: &str, n: usize) -> Result<Held, Over> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mine = c.1.get(id).copied().unwrap_or(0);
        if mine.saturating_add(n) > self.each {
            return Err(Over::Identity);
        }
        if c.0.saturating_add(n) > self.total {
            return Err(Over::Total);
        }
        c.0 += n;
        *c.1.entry(id.to_owned()).or_insert(0) += n;
        Ok(Held { tally: self.clone(), id: id.to_owned(), n })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut c = self.tally.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.0 = c.0.saturating_sub(self.n);
        if let Some(mine) = c.1.get_mut(&self.id) {
            *mine = mine.saturating_sub(self.n);
            if *mine == 0 {
                c.1.remove(&self.id);
            }
        }
    }
}

/// The tallies of one Safe.
#[derive(Debug)]
pub struct InFlight {
    /// Requests other than watches, of every role but the Sentinel's.
    pub requests: Arc<Tally>,
    /// Watches (long polls), both HTTP/1.1 and HTTP/2.
    pub watches: Arc<Tally>,
    /// Request body bytes being read or held.
    pub body_bytes: Arc<Tally>,
}

/// What a request holds while it is served.
#[derive(Debug)]
pub struct Admitted {
    _request: Option<Held>,
    _body: Option<Held>,
    /// What is done with the request's body.
    pub body: BodyRule,
}

/// What is done with a request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRule {
    /// Read, up to this many bytes.
    Read(usize),
    /// Refused with 413 if there is one, unread: the route takes none from this caller.
    Refuse,
    /// Dropped unread: the router answers without it (404, 405).
    Discard,
}

impl InFlight {
    /// Tallies under `limits`.
    pub fn new(l: &ConnLimits) -> Self {
        Self {
            requests: Tally::new(
                "requests",
                l.requests_per_identity,
                usize::MAX,
                ["AEGIS_MAX_REQUESTS_PER_IDENTITY", "AEGIS_MAX_REQUESTS_PER_IDENTITY"],
            ),
            watches: Tally::new(
                "watches",
                l.watches_per_identity,
                l.max_watches,
                ["AEGIS_MAX_WATCHES_PER_IDENTITY", "AEGIS_MAX_WATCHES"],
            ),
            body_bytes: Tally::new(
                "body bytes",
                l.body_bytes_per_identity,
                l.body_bytes_in_flight,
                ["AEGIS_MAX_BODY_BYTES_PER_IDENTITY", "AEGIS_MAX_BODY_BYTES_IN_FLIGHT"],
            ),
        }
    }

    /// Admits a request on its head: a route that needs an action is refused
    /// before anything is read unless some policy could allow that action to
    /// the caller (`policies`), and only such routes read a body (those
    /// callers' body bytes are taken from the budgets); other routes (a
    /// workload's own secret, its watch) take no body and count as requests.
    /// `max_body` is the largest body accepted.
    pub fn admit(
        &self,
        caller: &Caller,
        policies: &PolicySet,
        method: &Method,
        route: &'static str,
        body_size: Option<u64>,
        max_body: usize,
    ) -> Result<Admitted, Box<Response>> {
        let Some(action) = routes::need(method, route) else {
            if !serves(method, route) {
                return Ok(Admitted { _request: None, _body: None, body: BodyRule::Discard });
            }
            let request = match route {
                routes::WORKLOAD_WATCH => None,
                _ => Some(self.requests.take(caller.id.as_str(), 1).map_err(|o| refuse(&self.requests, o))?),
            };
            return Ok(Admitted { _request: request, _body: None, body: BodyRule::Refuse });
        };
        if !policies.may_any(caller.subject(), action) {
            return Err(Box::new(ApiError::forbidden(head_refusal(caller, policies, action)).into_response()));
        }
        // Readers of named secrets send no body: counted as requests, like workloads.
        if action == Action::Read && !matches!(caller.role, Role::Sentinel) {
            let request = self.requests.take(caller.id.as_str(), 1).map_err(|o| refuse(&self.requests, o))?;
            return Ok(Admitted { _request: Some(request), _body: None, body: BodyRule::Refuse });
        }
        // The body's known length (declared, or none at all), else the most a body may be.
        let declared = body_size.map_or(max_body, |n| usize::try_from(n).unwrap_or(usize::MAX).min(max_body));
        let (each, total) = self.body_bytes.limits();
        let want = declared.min(each).min(total);
        let body = match want {
            0 => None,
            n => Some(self.body_bytes.take(caller.id.as_str(), n).map_err(|o| refuse(&self.body_bytes, o))?),
        };
        Ok(Admitted { _request: None, _body: body, body: BodyRule::Read(max_body) })
    }
}

/// Why `caller` may not `action` at all: a VSecM user's workload on a
/// Sentinel route hears that it is not the Sentinel, as from VSecM.
fn head_refusal(caller: &Caller, policies: &PolicySet, action: Action) -> String {
    let id = &caller.id;
    let explain = format!("`aegis policy explain --spiffe-id {id} --secret NAME --action {action}` shows why");
    let sentinel_may = policies.builtins().sentinel && aegis_core::policy::set::SENTINEL_ACTIONS.contains(&action);
    if sentinel_may && !matches!(caller.role, Role::Sentinel) {
        format!(
            "{id} is not the Sentinel, and no policy allows it to {action} (deny by default): only SPIFFE IDs \
             matching VSECM_SPIFFEID_PREFIX_SENTINEL, or those a policy allows, may; {explain}"
        )
    } else if action == Action::Reveal {
        format!(
            "{id} may not reveal values: no policy allows it (deny by default; the Sentinel, too, needs a policy \
             allowing `reveal`, as in VSecM it never reads values back); {explain}"
        )
    } else {
        format!("{id} may not {action} here: no policy allows it (deny by default), or one denies it on every secret; {explain}")
    }
}

/// The refusal of a request over a budget: 429 when it is the caller's own,
/// 503 when everybody's; both say to retry, and which setting raises it.
pub fn refusal(t: &Tally, over: Over) -> ApiError {
    let (each, total) = t.limits();
    match over {
        Over::Identity => ApiError::too_many(format!(
            "this SPIFFE ID has its limit of {each} {} in flight; wait for some to finish ({})",
            t.what, t.settings[0]
        )),
        Over::Total => ApiError::unavailable(format!(
            "the Safe has its limit of {total} {} in flight; retry later ({})",
            t.what, t.settings[1]
        )),
    }
}

/// [`refusal`] as an answer, with `Retry-After`.
fn refuse(t: &Tally, over: Over) -> Box<Response> {
    let mut resp = refusal(t, over).into_response();
    resp.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    Box::new(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_core::{SpiffeId, WorkloadName};
    use axum::http::StatusCode;

    fn caller(role: Role) -> Caller {
        Caller::new(SpiffeId::parse("spiffe://vsecm.com/x").unwrap(), role)
    }

    #[test]
    fn a_tally_bounds_each_identity_and_the_total_and_frees_on_drop() {
        let t = Tally::new("watches", 2, 3, ["EACH", "TOTAL"]);
        let a1 = t.take("a", 1).unwrap();
        let _a2 = t.take("a", 1).unwrap();
        assert_eq!(t.take("a", 1).unwrap_err(), Over::Identity);
        let _b1 = t.take("b", 1).unwrap();
        assert_eq!(t.take("c", 1).unwrap_err(), Over::Total);
        drop(a1);
        assert_eq!(t.held(), 2);
        assert!(t.take("c", 1).is_ok());
        assert_eq!(t.take("d", 4).unwrap_err(), Over::Identity);
    }

    fn flight() -> InFlight {
        let mut l = crate::limits::ConnLimitSettings::default().resolve(4096);
        (l.requests_per_identity, l.body_bytes_per_identity, l.body_bytes_in_flight) = (2, 100, 150);
        InFlight::new(&l)
    }

    #[test]
    fn no_role_and_workloads_are_refused_on_the_head_and_read_no_body() {
        let f = flight();
        let set = PolicySet::default();
        let nobody = caller(Role::Unknown);
        let wl = caller(Role::Workload(WorkloadName::parse("billing").unwrap()));
        let put = f.admit(&nobody, &set, &Method::PUT, routes::SECRET, None, 1 << 20).unwrap_err();
        assert_eq!(put.status(), StatusCode::FORBIDDEN);
        let upsert = f.admit(&wl, &set, &Method::POST, routes::SENTINEL_SECRETS, None, 1 << 20).unwrap_err();
        assert_eq!(upsert.status(), StatusCode::FORBIDDEN);
        let fetch = f.admit(&wl, &set, &Method::GET, routes::WORKLOAD_SECRET, None, 1 << 20).unwrap();
        assert_eq!(fetch.body, BodyRule::Refuse);
        let _second = f.admit(&wl, &set, &Method::GET, routes::WORKLOAD_SECRETS, None, 1 << 20).unwrap();
        let third = f.admit(&wl, &set, &Method::GET, routes::WORKLOAD_SECRET, None, 1 << 20).unwrap_err();
        assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
        // A method the route does not serve is the router's 405, whoever asks; its body is not read.
        let trace = f.admit(&nobody, &set, &Method::TRACE, routes::SECRET, None, 1 << 20).unwrap();
        assert_eq!(trace.body, BodyRule::Discard);
        // Watches are counted as watches, not as requests.
        assert!(f.admit(&wl, &set, &Method::GET, routes::WORKLOAD_WATCH, None, 1 << 20).is_ok());
        drop(fetch);
        assert!(f.admit(&wl, &set, &Method::GET, routes::WORKLOAD_SECRET, None, 1 << 20).is_ok());
    }

    #[test]
    fn sentinel_bodies_take_their_declared_length_from_the_budgets() {
        let f = flight();
        let set = PolicySet::default();
        let admin = caller(Role::Sentinel);
        let h = Some(60);
        let a = f.admit(&admin, &set, &Method::PUT, routes::SECRET, h, 1000).unwrap();
        assert_eq!(f.body_bytes.held(), 60);
        let b = f.admit(&admin, &set, &Method::PUT, routes::SECRET, h, 1000).unwrap_err();
        assert_eq!(b.status(), StatusCode::TOO_MANY_REQUESTS);
        // Without a declared length the most a body may be is taken (capped by the budget).
        drop(a);
        let c = f.admit(&admin, &set, &Method::PUT, routes::SECRET, None, 1000).unwrap();
        assert_eq!(f.body_bytes.held(), 100);
        drop(c);
        assert_eq!(f.body_bytes.held(), 0);
        // Many Sentinel requests without a body are not limited.
        let many: Vec<_> =
            (0..50).map(|_| f.admit(&admin, &set, &Method::GET, routes::STATUS, Some(0), 1000)).collect();
        assert!(many.iter().all(Result::is_ok));
    }
}
