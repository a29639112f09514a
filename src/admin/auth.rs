//! Admin access: the bearer token, where it comes from, and its check.
//!
//! Every admin call but `/healthz` and `/readyz` (and `/metrics`, if
//! `admin.metrics_require_token = false`) must send
//! `Authorization: Bearer <token>` once a token is configured. The token
//! comes from `admin.token_file`, else from `SWITCHYARD_ADMIN_TOKEN`.

use std::path::PathBuf;

use http::HeaderValue;

use crate::config::AdminConfig;

/// The environment variable that holds the token when no file is configured.
pub const TOKEN_ENV: &str = "SWITCHYARD_ADMIN_TOKEN";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read admin token file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin token file {} is empty; put the token in it", path.display())]
    Empty { path: PathBuf },
}

/// The admin bearer token.
pub struct Token(Box<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret, not even in a debug log.
        f.write_str("Token(..)")
    }
}

impl Token {
    /// The configured token: the file's content (trimmed) if
    /// `admin.token_file` is set, else `SWITCHYARD_ADMIN_TOKEN`, else none.
    pub fn load(config: &AdminConfig) -> Result<Option<Token>, TokenError> {
        if let Some(path) = &config.token_file {
            let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
                path: path.clone(),
                source,
            })?;
            let token = text.trim();
            if token.is_empty() {
                return Err(TokenError::Empty { path: path.clone() });
            }
            return Ok(Some(Token(token.as_bytes().into())));
        }
        Ok(std::env::var(TOKEN_ENV)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(|v| Token(v.into_bytes().into())))
    }

    /// Whether an `Authorization` header carries this token. The comparison
    /// takes the same time wherever the first wrong byte is.
    pub fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization.map(HeaderValue::as_bytes) else {
            return false;
        };
        // The scheme is case-insensitive (RFC 9110 11.1).
        let Some((scheme, given)) = value.split_at_checked(7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ") && constant_time_eq(given, &self.0)
    }
}

/// Equal in time independent of where `a` and `b` differ. The length is not
/// hidden: it says nothing about a random token's content.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| std::hint::black_box(acc | (x ^ y)));
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(t: &str) -> Token {
        Token(t.as_bytes().into())
    }

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let t = token("s3cret-token");
        let h = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(t.admits(Some(&h("Bearer s3cret-token"))));
        assert!(t.admits(Some(&h("bearer s3cret-token"))));
        assert!(!t.admits(Some(&h("Bearer s3cret-tokem"))));
        assert!(!t.admits(Some(&h("Bearer s3cret-token "))));
        assert!(!t.admits(Some(&h("Bearer s3cret"))));
        assert!(!t.admits(Some(&h("Basic s3cret-token"))));
        assert!(!t.admits(Some(&h("Bearer"))));
        assert!(!t.admits(None));
    }

    #[test]
    fn the_token_never_prints() {
        assert_eq!(format!("{:?}", token("s3cret")), "Token(..)");
    }
}
