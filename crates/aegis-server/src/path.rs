//! Request paths: where a path segment is percent-decoded (once), and
//! VSecM's query-in-the-path quirk on the one route that needs it.
//!
//! The router matches the path as sent, so an encoded `/` or `?` inside a
//! name stays inside its segment; the router then percent-decodes each
//! captured segment exactly once, and [`Segments`] hands them over as they
//! are. Nothing else decodes paths: there is no whole-path decoding step.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::uri::{PathAndQuery, Uri};

use crate::error::ApiError;

/// The route where VSecM's CLI puts the query into the path.
const VSECM_SECRETS: &str = "/sentinel/v1/secrets";

/// Turns `/sentinel/v1/secrets%3Freveal=true` (how VSecM's CLI asks for a
/// listing) into `/sentinel/v1/secrets?reveal=true`. Any other path is left
/// alone: a `%3F` elsewhere is part of a name, not a query.
pub(crate) fn vsecm_encoded_query(uri: &mut Uri) {
    let Some(rest) = uri.path().strip_prefix(VSECM_SECRETS) else { return };
    let Some(query) = rest.strip_prefix("%3F").or_else(|| rest.strip_prefix("%3f")) else { return };
    let query = match uri.query() {
        Some(q) if !q.is_empty() => format!("{query}&{q}"),
        _ => query.to_owned(),
    };
    let Ok(pq) = PathAndQuery::try_from(format!("{VSECM_SECRETS}?{query}")) else { return };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(new) = Uri::from_parts(parts) {
        *uri = new;
    }
}

/// The captured segments of a route (`{name}`, `{version}`), each
/// percent-decoded exactly once by the router and not again.
#[derive(Debug)]
pub struct Segments {
    /// `{name}`.
    pub name: String,
    /// `{version}`, where the route has one.
    pub version: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Segments {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state).await.map_err(|_| {
            ApiError::bad_request("the path holds percent-encoded bytes that are not UTF-8 text; names are ASCII")
        })?;
        let mut name = None;
        let mut version = None;
        for (key, value) in &params {
            match key {
                "name" => name = Some(value.to_owned()),
                "version" => version = Some(value.to_owned()),
                _ => {}
            }
        }
        let name = name.ok_or_else(|| ApiError::bad_request("the path names no secret"))?;
        Ok(Self { name, version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quirk(s: &str) -> Uri {
        let mut u: Uri = s.parse().unwrap();
        vsecm_encoded_query(&mut u);
        u
    }

    #[test]
    fn vsecm_encoded_query_only_on_its_route() {
        let u = quirk("/sentinel/v1/secrets%3Freveal=true");
        assert_eq!((u.path(), u.query()), ("/sentinel/v1/secrets", Some("reveal=true")));
        let u = quirk("/sentinel/v1/secrets%3freveal=true&x=1");
        assert_eq!((u.path(), u.query()), ("/sentinel/v1/secrets", Some("reveal=true&x=1")));
        let u = quirk("/sentinel/v1/secrets%3Freveal=true?a=b");
        assert_eq!((u.path(), u.query()), ("/sentinel/v1/secrets", Some("reveal=true&a=b")));
        let u = quirk("https://safe:8443/sentinel/v1/secrets%3Freveal=true");
        assert_eq!((u.authority().map(|a| a.as_str()), u.path()), (Some("safe:8443"), "/sentinel/v1/secrets"));
        let u = quirk("/sentinel/v1/secrets?reveal=true");
        assert_eq!((u.path(), u.query()), ("/sentinel/v1/secrets", Some("reveal=true")));
        // Anywhere else a %3F is data: names keep it, nothing is cut.
        for other in
            ["/v1/secrets/a%3Fb", "/v1/secrets/a%3Fb/versions", "/sentinel/v1/secretsX%3Fa", "/v1/secrets/k8s%3Adb"]
        {
            let u = quirk(other);
            assert_eq!((u.path(), u.query()), (other, None));
        }
    }

    async fn segments_of(path: &str) -> (u16, String) {
        use axum::routing::get;
        use tower::ServiceExt;
        let echo = |p: Segments| async move { format!("{}|{}", p.name, p.version.unwrap_or_default()) };
        let app = axum::Router::new()
            .route("/v1/secrets/{name}", get(echo))
            .route("/v1/secrets/{name}/versions/{version}", get(echo));
        let req = axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn segments_are_decoded_exactly_once() {
        for (path, want) in [
            ("/v1/secrets/billing", "billing|"),
            ("/v1/secrets/k8s%3Adb", "k8s:db|"),
            ("/v1/secrets/a%3Fb", "a?b|"),
            ("/v1/secrets/a%2541", "a%41|"),
            ("/v1/secrets/a%252F", "a%2F|"),
            ("/v1/secrets/a%2Fb", "a/b|"),
            ("/v1/secrets/bad%2", "bad%2|"),
            ("/v1/secrets/caf%C3%A9", "caf\u{e9}|"),
            ("/v1/secrets/%20billing", " billing|"),
            ("/v1/secrets/x%3Fy/versions/%31", "x?y|1"),
        ] {
            assert_eq!(segments_of(path).await, (200, want.to_owned()), "{path}");
        }
        let (status, body) = segments_of("/v1/secrets/a%FFb").await;
        assert_eq!(status, 400);
        assert!(body.contains("not UTF-8"), "{body}");
    }
}
