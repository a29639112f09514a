//! `[models.tls]` and its per-pool override `[models.<pool>.tls]`: how a
//! pool with `https://` endpoints speaks TLS to them (the CA bundle to trust,
//! the client certificate for mTLS, the name to verify). Every file is loaded
//! here, so `switchyard check` finds a missing or broken one, and the client
//! configuration is built once, so a pool never fails to build at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::ServerName;
use serde::Deserialize;
use toml::Spanned;

use super::{resolve_relative, Checker};
use crate::pool::{PoolName, Protocol};
use crate::tls::{TlsError, TlsFiles};
use crate::ErrorChain;

/// TLS to the `https://` endpoints of one pool, checked and built.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// `tls.ca`: the PEM bundle trusted instead of the webpki (Mozilla) roots.
    pub ca: Option<PathBuf>,
    /// `tls.cert` and `tls.key`: the client certificate presented (mTLS).
    pub identity: Option<TlsFiles>,
    /// `tls.server_name`: the name sent as SNI and verified in the
    /// endpoint's certificate, instead of the endpoint's host.
    pub server_name: Option<ServerName<'static>>,
    /// The rustls client configuration made of the above, ALPN set for the
    /// pool's protocol.
    pub client: Arc<rustls::ClientConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    #[serde(default)]
    ca: Option<Spanned<String>>,
    #[serde(default)]
    cert: Option<Spanned<String>>,
    #[serde(default)]
    key: Option<Spanned<String>>,
    #[serde(default)]
    server_name: Option<Spanned<String>>,
}

impl RawUpstreamTls {
    /// The value of `field` if this table sets it.
    fn get(&self, field: &str) -> Option<&Spanned<String>> {
        match field {
            "ca" => self.ca.as_ref(),
            "cert" => self.cert.as_ref(),
            "key" => self.key.as_ref(),
            "server_name" => self.server_name.as_ref(),
            _ => None,
        }
    }

    /// The first key this table sets, to blame when the table is misplaced.
    pub(super) fn first_set(&self) -> Option<&Spanned<String>> {
        ["ca", "cert", "key", "server_name"]
            .into_iter()
            .find_map(|f| self.get(f))
    }
}

/// Checks the TLS settings of `pool` of the model at `model_key`
/// (`models[0]`): each key from the pool's own table if it sets it, else
/// from the model's. `https` says whether the pool's
/// endpoints are `https://`; for an `http://` pool its own table is an error
/// (it would have no effect) and the model's is ignored (it serves the other
/// pool). Messages name the table the value came from, as health does, so a
/// model-level mistake reads the same for both pools and is reported once.
pub(super) fn validate(
    c: &mut Checker<'_>,
    model_key: &str,
    pool: PoolName,
    https: bool,
    protocol: Protocol,
    model: Option<&RawUpstreamTls>,
    own: Option<&RawUpstreamTls>,
) -> Option<UpstreamTls> {
    let pool_key = &format!("{model_key}.{pool}");
    if !https {
        if let Some(value) = own.and_then(RawUpstreamTls::first_set) {
            c.error(
                value.span(),
                format!("{pool_key}.tls: has no effect: the endpoints of pool {pool} are http://; use https:// endpoints or remove it"),
            );
        }
        return None;
    }
    let pick = |field: &str| {
        own.and_then(|t| t.get(field))
            .or_else(|| model.and_then(|t| t.get(field)))
    };
    // The table a key's value comes from, for messages.
    let table = |field: &str| {
        if own.is_some_and(|t| t.get(field).is_some()) {
            pool_key
        } else {
            model_key
        }
    };
    let k = |field: &str| format!("{}.tls.{field}", table(field));
    let file = c.blame.file;
    let path = |value: &Spanned<String>| resolve_relative(file, Path::new(value.get_ref()));
    let (ca, cert, key) = (pick("ca"), pick("cert"), pick("key"));
    let before = c.errors.len();

    // Each file on its own first, so that every broken one is reported.
    type Load = fn(&Path) -> Result<(), TlsError>;
    let files: [(&str, Option<&Spanned<String>>, Load); 3] = [
        ("ca", ca, |p| crate::tls::load_certs(p).map(drop)),
        ("cert", cert, |p| crate::tls::load_certs(p).map(drop)),
        ("key", key, |p| crate::tls::load_key(p).map(drop)),
    ];
    for (field, value, load) in files {
        if let Some(value) = value {
            if let Err(e) = load(&path(value)) {
                c.error(value.span(), format!("{}: {}", k(field), ErrorChain(&e)));
            }
        }
    }
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: path(cert),
            key: path(key),
        }),
        (Some(only), None) | (None, Some(only)) => {
            let (set, missing) = if cert.is_some() {
                ("cert", "key")
            } else {
                ("key", "cert")
            };
            c.error(
                only.span(),
                format!(
                    "{}: the client certificate and its private key go together; set {}.tls.{missing} too",
                    k(set),
                    table(set)
                ),
            );
            None
        }
        (None, None) => None,
    };
    let server_name = pick("server_name").and_then(|name| {
        match ServerName::try_from(name.get_ref().as_str()) {
            Ok(n) => Some(n.to_owned()),
            Err(_) => {
                c.error(
                    name.span(),
                    format!(
                        "{}: invalid server name {:?}; expected a DNS name such as \"model.internal\" or an IP address",
                        k("server_name"),
                        name.get_ref()
                    ),
                );
                None
            }
        }
    });
    if c.errors.len() != before {
        return None;
    }

    // What is left to fail: a key that is not the certificate's, a CA
    // certificate rustls cannot use, or a file changed since it was read.
    let ca_path = ca.map(path);
    match crate::tls::client_config(ca_path.as_deref(), identity.as_ref()) {
        Ok(mut client) => {
            client.alpn_protocols = vec![protocol.alpn().to_vec()];
            Some(UpstreamTls {
                ca: ca_path,
                identity,
                server_name,
                client: Arc::new(client),
            })
        }
        Err(e) => {
            let field = match &e {
                TlsError::Read { path, .. }
                | TlsError::NoCertificate(path)
                | TlsError::Rustls { path, .. }
                    if Some(path) == ca_path.as_ref() =>
                {
                    "ca"
                }
                TlsError::NoKey(_) => "key",
                _ => "cert",
            };
            let span = pick(field).or(ca).map_or(0..0, Spanned::span);
            c.error(span, format!("{}: {}", k(field), ErrorChain(&e)));
            None
        }
    }
}
