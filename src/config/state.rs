//! `[state]`: where the active pool of every model is kept. The file
//! backend (the default) is one JSON file; the etcd backend is one key per
//! model under a prefix, shared by every instance of a fleet. The raw shape,
//! the defaults and the checks; `store.rs` does the keeping.
//!
//! Files the etcd backend names (the password, the CA, the client
//! certificate and key) are read here, so `switchyard check` finds a missing
//! or broken one; the store reads the password again when it starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Scheme, Uri};
use serde::Deserialize;
use toml::Spanned;

use super::{resolve_relative, Checker};
use crate::tls::{TlsError, TlsFiles};
use crate::ErrorChain;

/// How long one request to etcd may take (connect, TLS, answer) by default.
pub const DEFAULT_ETCD_TIMEOUT: Duration = Duration::from_secs(2);

/// A password file larger than this is refused: it is a mistake (the wrong
/// file), not a password.
pub const MAX_PASSWORD_BYTES: u64 = 4096;

/// Where the switch state is kept, checked.
#[derive(Debug, Clone)]
pub enum StateConfig {
    /// `backend = "file"`, the default: one JSON file, this instance's own.
    File {
        /// Resolved against the config file's directory when relative.
        path: PathBuf,
    },
    /// `backend = "etcd"`: one key per model under `prefix`, shared by every
    /// instance configured with the same endpoints and prefix.
    Etcd(EtcdConfig),
}

/// `[state]` with `backend = "etcd"`.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs of the etcd cluster's members, `http://` or all
    /// `https://`; tried in turn when one cannot be reached.
    pub endpoints: Vec<Uri>,
    /// The key of model `m` is `{prefix}{m}`; ends with `/`.
    pub prefix: String,
    /// A local copy of the last state this instance saw, to start from when
    /// etcd cannot be reached at start. Without it, such a start fails.
    pub cache_path: Option<PathBuf>,
    /// `username` and `password_file`: authenticate to etcd.
    pub credentials: Option<EtcdCredentials>,
    /// How long one request to etcd may take.
    pub timeout: Duration,
    /// `[state.tls]`: how to speak TLS to `https://` endpoints.
    pub tls: Option<EtcdTls>,
}

/// An etcd user and the file holding its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdCredentials {
    pub username: String,
    pub password_file: PathBuf,
}

/// TLS to etcd, checked and built.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// `tls.ca`: the PEM bundle trusted instead of the webpki roots.
    pub ca: Option<PathBuf>,
    /// `tls.cert` and `tls.key`: the client certificate presented.
    pub identity: Option<TlsFiles>,
    /// The rustls client configuration made of the above (ALPN `http/1.1`:
    /// switchyard speaks etcd's JSON gateway).
    pub client: Arc<rustls::ClientConfig>,
}

// === impl StateConfig ===

impl StateConfig {
    /// The state file of the file backend.
    pub fn path(&self) -> Option<&Path> {
        match self {
            StateConfig::File { path } => Some(path),
            StateConfig::Etcd(_) => None,
        }
    }

    /// The `[state]` keys whose value differs between `self` and `new`:
    /// all of them only change with a restart.
    pub(super) fn changed(&self, new: &StateConfig) -> Vec<&'static str> {
        match (self, new) {
            (StateConfig::File { path: a }, StateConfig::File { path: b }) => {
                if a == b {
                    Vec::new()
                } else {
                    vec!["state.path"]
                }
            }
            (StateConfig::Etcd(a), StateConfig::Etcd(b)) => {
                let tls =
                    |t: &Option<EtcdTls>| t.as_ref().map(|t| (t.ca.clone(), t.identity.clone()));
                [
                    (a.endpoints != b.endpoints, "state.endpoints"),
                    (a.prefix != b.prefix, "state.prefix"),
                    (a.cache_path != b.cache_path, "state.cache_path"),
                    (a.credentials != b.credentials, "state.username"),
                    (a.timeout != b.timeout, "state.timeout"),
                    (tls(&a.tls) != tls(&b.tls), "state.tls"),
                ]
                .into_iter()
                .filter_map(|(changed, key)| changed.then_some(key))
                .collect()
            }
            _ => vec!["state.backend"],
        }
    }
}

// === raw schema ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    #[serde(default)]
    backend: Option<Spanned<String>>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    endpoints: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    prefix: Option<Spanned<String>>,
    #[serde(default)]
    cache_path: Option<Spanned<String>>,
    #[serde(default)]
    username: Option<Spanned<String>>,
    #[serde(default)]
    password_file: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    tls: Option<Spanned<RawStateTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStateTls {
    #[serde(default)]
    ca: Option<Spanned<String>>,
    #[serde(default)]
    cert: Option<Spanned<String>>,
    #[serde(default)]
    key: Option<Spanned<String>>,
}

impl RawState {
    /// The etcd-only keys this table sets, with their names.
    fn etcd_keys(&self) -> Vec<(&'static str, std::ops::Range<usize>)> {
        let mut keys = Vec::new();
        if let Some(v) = &self.endpoints {
            keys.push(("endpoints", v.span()));
        }
        for (name, value) in [
            ("prefix", &self.prefix),
            ("cache_path", &self.cache_path),
            ("username", &self.username),
            ("password_file", &self.password_file),
            ("timeout", &self.timeout),
        ] {
            if let Some(v) = value {
                keys.push((name, v.span()));
            }
        }
        if let Some(v) = &self.tls {
            keys.push(("tls", v.span()));
        }
        keys
    }
}

/// Checks `[state]`; `table` is the span of the whole table, blamed for a
/// key that is missing. `None` when it has an error (reported on `c`).
pub(super) fn validate(
    c: &mut Checker<'_>,
    raw: &RawState,
    table: std::ops::Range<usize>,
) -> Option<StateConfig> {
    let backend = raw
        .backend
        .as_ref()
        .map_or("file", |b| b.get_ref().as_str());
    match backend {
        "file" => {
            for (key, span) in raw.etcd_keys() {
                c.error(
                    span,
                    format!("state.{key}: only the etcd backend has it; set backend = \"etcd\" or remove it"),
                );
            }
            let Some(path) = &raw.path else {
                c.error(
                    table,
                    "state.path: missing; name the state file, such as path = \"switchyard-state.json\" (or set backend = \"etcd\")".to_string(),
                );
                return None;
            };
            if path.get_ref().trim().is_empty() {
                c.error(path.span(), "state.path: must name a file".to_string());
                return None;
            }
            Some(StateConfig::File {
                path: resolve_relative(c.blame.file, Path::new(path.get_ref())),
            })
        }
        "etcd" => validate_etcd(c, raw, table).map(StateConfig::Etcd),
        other => {
            let span = raw.backend.as_ref().map_or(table, Spanned::span);
            c.error(
                span,
                format!("state.backend: unknown backend {other:?}; expected \"file\" or \"etcd\""),
            );
            None
        }
    }
}

fn validate_etcd(
    c: &mut Checker<'_>,
    raw: &RawState,
    table: std::ops::Range<usize>,
) -> Option<EtcdConfig> {
    let before = c.errors.len();
    if let Some(path) = &raw.path {
        c.error(
            path.span(),
            "state.path: the etcd backend keeps the state in etcd; remove path, or name a local copy with cache_path".to_string(),
        );
    }

    let mut endpoints = Vec::new();
    let mut first_scheme: Option<(Scheme, &str)> = None;
    match &raw.endpoints {
        None => c.error(
            table.clone(),
            "state.endpoints: missing; list the etcd client URLs, such as endpoints = [\"http://127.0.0.1:2379\"]".to_string(),
        ),
        Some(list) if list.get_ref().is_empty() => c.error(
            list.span(),
            "state.endpoints: is empty; list at least one etcd client URL such as \"http://127.0.0.1:2379\"".to_string(),
        ),
        Some(list) => {
            for e in list.get_ref() {
                match parse_endpoint(e.get_ref()) {
                    Ok(uri) => {
                        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
                        match &first_scheme {
                            None => first_scheme = Some((scheme, e.get_ref())),
                            Some((first, url)) if *first != scheme => c.error(
                                e.span(),
                                format!("state.endpoints: {:?} is {scheme}:// but {url:?} is {first}://; use one scheme for every member", e.get_ref()),
                            ),
                            Some(_) => {}
                        }
                        if endpoints.contains(&uri) {
                            c.error(
                                e.span(),
                                format!("state.endpoints: {:?} is listed twice", e.get_ref()),
                            );
                        }
                        endpoints.push(uri);
                    }
                    Err(why) => c.error(e.span(), format!("state.endpoints: {why}")),
                }
            }
        }
    }
    let https = first_scheme
        .as_ref()
        .is_some_and(|(s, _)| *s == Scheme::HTTPS);

    let prefix = match &raw.prefix {
        None => {
            c.error(
                table.clone(),
                "state.prefix: missing; name the key prefix the fleet shares, such as prefix = \"/switchyard/prod/\"".to_string(),
            );
            String::new()
        }
        Some(p) => {
            let value = p.get_ref();
            if value.is_empty() {
                c.error(
                    p.span(),
                    "state.prefix: must not be empty; use a prefix such as \"/switchyard/prod/\""
                        .to_string(),
                );
            } else if value
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control())
            {
                c.error(
                    p.span(),
                    format!(
                        "state.prefix: {value:?} must not contain spaces or control characters"
                    ),
                );
            } else if !value.ends_with('/') {
                c.error(
                    p.span(),
                    format!("state.prefix: {value:?} must end with \"/\" (write \"{value}/\"), so that it is not also the prefix of another fleet's keys"),
                );
            }
            value.clone()
        }
    };

    let cache_path = raw.cache_path.as_ref().and_then(|p| {
        if p.get_ref().trim().is_empty() {
            c.error(p.span(), "state.cache_path: must name a file".to_string());
            None
        } else {
            Some(resolve_relative(c.blame.file, Path::new(p.get_ref())))
        }
    });

    let credentials = match (&raw.username, &raw.password_file) {
        (None, None) => None,
        (Some(user), None) => {
            c.error(
                user.span(),
                "state.username: needs state.password_file, the file holding its password"
                    .to_string(),
            );
            None
        }
        (None, Some(file)) => {
            c.error(
                file.span(),
                "state.password_file: needs state.username, the etcd user it is the password of"
                    .to_string(),
            );
            None
        }
        (Some(user), Some(file)) => {
            if user.get_ref().trim().is_empty() {
                c.error(user.span(), "state.username: must not be empty".to_string());
            }
            let path = resolve_relative(c.blame.file, Path::new(file.get_ref()));
            match read_password(&path) {
                Ok(_) => {}
                Err(why) => c.error(file.span(), format!("state.password_file: {why}")),
            }
            Some(EtcdCredentials {
                username: user.get_ref().clone(),
                password_file: path,
            })
        }
    };

    let timeout = c.duration("state.timeout", raw.timeout.as_ref(), DEFAULT_ETCD_TIMEOUT);

    let tls = raw
        .tls
        .as_ref()
        .and_then(|t| validate_tls(c, t, https, first_scheme.is_some()));

    (c.errors.len() == before).then(|| EtcdConfig {
        endpoints,
        prefix,
        cache_path,
        credentials,
        timeout,
        tls,
    })
}

/// `[state.tls]`: the files loaded, the client configuration built.
fn validate_tls(
    c: &mut Checker<'_>,
    raw: &Spanned<RawStateTls>,
    https: bool,
    any_endpoint: bool,
) -> Option<EtcdTls> {
    if !https {
        if any_endpoint {
            c.error(
                raw.span(),
                "state.tls: has no effect: the endpoints are http://; use https:// endpoints or remove it".to_string(),
            );
        }
        return None;
    }
    let t = raw.get_ref();
    let file = c.blame.file;
    let path = |v: &Spanned<String>| resolve_relative(file, Path::new(v.get_ref()));
    let before = c.errors.len();
    type Load = fn(&Path) -> Result<(), TlsError>;
    let files: [(&str, Option<&Spanned<String>>, Load); 3] = [
        ("ca", t.ca.as_ref(), |p| crate::tls::load_certs(p).map(drop)),
        ("cert", t.cert.as_ref(), |p| {
            crate::tls::load_certs(p).map(drop)
        }),
        ("key", t.key.as_ref(), |p| crate::tls::load_key(p).map(drop)),
    ];
    for (field, value, load) in files {
        if let Some(value) = value {
            if let Err(e) = load(&path(value)) {
                c.error(
                    value.span(),
                    format!("state.tls.{field}: {}", ErrorChain(&e)),
                );
            }
        }
    }
    let identity = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: path(cert),
            key: path(key),
        }),
        (Some(only), None) | (None, Some(only)) => {
            let (set, missing) = if t.cert.is_some() {
                ("cert", "key")
            } else {
                ("key", "cert")
            };
            c.error(
                only.span(),
                format!("state.tls.{set}: the client certificate and its private key go together; set state.tls.{missing} too"),
            );
            None
        }
        (None, None) => None,
    };
    if c.errors.len() != before {
        return None;
    }
    let ca = t.ca.as_ref().map(path);
    match crate::tls::client_config(ca.as_deref(), identity.as_ref()) {
        Ok(mut client) => {
            client.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(EtcdTls {
                ca,
                identity,
                client: Arc::new(client),
            })
        }
        Err(e) => {
            let (field, span) = match &e {
                TlsError::Read { path, .. }
                | TlsError::NoCertificate(path)
                | TlsError::Rustls { path, .. }
                    if Some(path) == ca.as_ref() =>
                {
                    ("ca", t.ca.as_ref().map(Spanned::span))
                }
                _ => ("cert", t.cert.as_ref().map(Spanned::span)),
            };
            c.error(
                span.unwrap_or_else(|| raw.span()),
                format!("state.tls.{field}: {}", ErrorChain(&e)),
            );
            None
        }
    }
}

/// An etcd client URL: `http(s)://host:port`, no path, query or user.
fn parse_endpoint(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|_| {
        format!("invalid etcd URL {url:?}; expected \"http://host:port\" or \"https://host:port\"")
    })?;
    match uri.scheme() {
        Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => {}
        Some(other) => {
            return Err(format!(
                "etcd URL {url:?}: scheme {:?} is not supported; use \"http://\" or \"https://\"",
                other.as_str()
            ))
        }
        None => {
            return Err(format!(
                "etcd URL {url:?} has no scheme; write \"http://{url}\" or \"https://{url}\""
            ))
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("etcd URL {url:?} has no host"));
    };
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(format!(
            "etcd URL {url:?} must be host:port without user info"
        ));
    }
    if !(uri.path().is_empty() || uri.path() == "/") || uri.query().is_some() {
        return Err(format!(
            "etcd URL {url:?} must not have a path or query; switchyard adds /v3/..."
        ));
    }
    let scheme = uri.scheme_str().unwrap_or("http");
    format!("{scheme}://{authority}")
        .parse()
        .map_err(|_| format!("invalid etcd URL {url:?}"))
}

/// Reads an etcd password file: the first line, without its line break.
/// Empty or larger than [`MAX_PASSWORD_BYTES`] is an error.
pub fn read_password(path: &Path) -> Result<String, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "{} is {} bytes; a password file holds the password alone (at most {MAX_PASSWORD_BYTES} bytes)",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err(format!("{} holds no password", path.display()));
    }
    Ok(password)
}
