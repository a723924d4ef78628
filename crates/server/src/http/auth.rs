//! An optional bearer token (`--api-key`, `CNN_API_KEY`) on every route but the probes.
//!
//! With a key set, a request must carry `Authorization: Bearer <key>`; one without it, or with
//! another, is answered 401 with `WWW-Authenticate: Bearer` before its body is read (the
//! problem `/problems/unauthorized`). The probes (`/health`, `/ready`, `/v2/health/live`,
//! `/v2/health/ready`) stay open so that an orchestrator can check the server without the
//! key, and `/metrics` too with `--public-metrics` (for a scraper that has no key). So do the
//! pages a browser loads by address, which cannot send a header and hold no data: the API's
//! documentation (`/docs`, its assets, `/openapi.json`, whose Swagger UI then sends the key
//! from its "Authorize" dialog) and the `/ui` page (its requests need the key like any other).
//! CORS pre-flight requests are answered by the CORS layer outside this one, as browsers send
//! them without credentials.
//!
//! Tokens are compared through their SHA-256 digests in constant time ([`subtle`]), so that
//! neither the time taken nor an early exit tells how much of a guess was right, nor how long
//! the key is.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Paths answered without the key: the probes (HTTP and gRPC), and the pages a browser loads
/// by address.
const OPEN: [&str; 11] = [
    "/health",
    "/ready",
    "/v2/health/live",
    "/v2/health/ready",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/docs",
    "/openapi.json",
    "/ui",
];

/// The key requests must present, kept as its digest.
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
    public_metrics: bool,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key, nor its digest, in a log line.
        f.write_str("ApiKey(..)")
    }
}

impl ApiKey {
    /// The key `key`; `public_metrics` leaves `/metrics` open.
    pub fn new(key: &str, public_metrics: bool) -> Self {
        Self {
            digest: Sha256::digest(key.as_bytes()).into(),
            public_metrics,
        }
    }

    /// Whether `path` is answered without the key: a probe, or `/metrics` with
    /// `--public-metrics`.
    pub fn is_open(&self, path: &str) -> bool {
        OPEN.contains(&path)
            || path
                .strip_prefix("/docs/")
                .is_some_and(|file| !file.contains('/'))
            || (self.public_metrics && path == "/metrics")
    }

    /// Whether a request for `path` with this `Authorization` header value may pass.
    pub fn allows(&self, path: &str, authorization: Option<&[u8]>) -> bool {
        if self.is_open(path) {
            return true;
        }
        let Some(token) = authorization.and_then(bearer).filter(|t| !t.is_empty()) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(token).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// The token of a `Bearer` credential (the scheme is case-insensitive, RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_bearer_token_passes() {
        let key = ApiKey::new("s3cret", false);
        assert!(key.allows("/classify", Some(b"Bearer s3cret")));
        assert!(key.allows("/classify", Some(b"bearer   s3cret ")));
        assert!(!key.allows("/classify", Some(b"Bearer s3cre")));
        assert!(!key.allows("/classify", Some(b"Bearer s3cret2")));
        assert!(!key.allows("/classify", Some(b"Basic s3cret")));
        assert!(!key.allows("/classify", Some(b"s3cret")));
        assert!(!key.allows("/classify", None));
        assert!(!key.allows("/v2/models/cifar10-cnn/infer", Some(b"Bearer ")));
    }

    #[test]
    fn probes_and_pages_are_open_and_metrics_when_asked() {
        let closed = ApiKey::new("k", false);
        for path in OPEN {
            assert!(closed.allows(path, None), "{path}");
        }
        assert!(closed.allows("/docs/swagger-ui.css", None));
        assert!(!closed.allows("/docs/a/b", None));
        assert!(!closed.allows("/metrics", None));
        assert!(!closed.allows("/health/", None));
        assert!(!closed.allows("/model/info", None));
        assert!(ApiKey::new("k", true).allows("/metrics", None));
    }

    #[test]
    fn an_empty_key_opens_nothing() {
        let key = ApiKey::new("", false);
        assert!(!key.allows("/classify", Some(b"Bearer ")));
        assert!(!key.allows("/classify", Some(b"Bearer")));
    }
}
