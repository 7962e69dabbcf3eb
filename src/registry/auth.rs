//! Basic authentication on the registry's write endpoints.
//!
//! Registering a schema, changing a compatibility level and deleting anything change
//! what every producer and consumer may do, so they can be limited to one user: with
//! `--write-user` / `--write-password` set, such requests need those credentials
//! (HTTP basic auth) and others get Confluent's 401 (`error_code` 40101). Reads (GET,
//! and the POST lookups and compatibility checks serializers make) stay open.

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;
use strata_pipeline::secret::Secret;

/// The one user allowed to write.
#[derive(Clone)]
pub struct WriteAuth {
    pub user: String,
    pub password: Secret,
}

/// Whether a request changes the registry's contents or settings.
fn is_write(method: &Method, path: &str) -> bool {
    match *method {
        Method::PUT | Method::DELETE => true,
        Method::POST => path.starts_with("/subjects/") && path.ends_with("/versions"),
        _ => false,
    }
}

impl WriteAuth {
    fn allows(&self, request: &Request) -> bool {
        let Some(value) = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some(encoded) = value.strip_prefix("Basic ") else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let expected = format!("{}:{}", self.user, self.password.expose());
        // Compared in full, whatever the first difference.
        decoded.len() == expected.len()
            && decoded
                .iter()
                .zip(expected.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// The middleware: writes without the credentials are refused.
pub async fn require_for_writes(
    State(auth): State<Option<WriteAuth>>,
    request: Request,
    next: Next,
) -> Response {
    match &auth {
        Some(auth) if is_write(request.method(), request.uri().path()) && !auth.allows(&request) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"strata-registry\"")],
            axum::Json(json!({
                "error_code": 40101,
                "message": "Unauthorized: registering, deleting and changing settings need the registry's write credentials"
            })),
        )
            .into_response(),
        _ => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_the_changing_requests() {
        assert!(is_write(&Method::POST, "/subjects/a-value/versions"));
        assert!(is_write(&Method::DELETE, "/subjects/a-value"));
        assert!(is_write(&Method::PUT, "/config"));
        assert!(!is_write(&Method::POST, "/subjects/a-value"), "a lookup");
        assert!(!is_write(
            &Method::POST,
            "/compatibility/subjects/a-value/versions"
        ));
        assert!(!is_write(&Method::GET, "/subjects"));
    }
}
