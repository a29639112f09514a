//! Configuration: the TOML schema as serde reads it (`Raw*`), the defaults,
//! and the validation that turns it into the typed [`Config`] every other
//! part uses. Reads the config file and nothing else; opens no sockets.
//!
//! Parsing is two-staged, as ripgrep does it: serde reads the raw shape
//! (stopping at its first shape error), then [`validate`] checks every value
//! and gathers *all* problems, each with the line and column of the value to
//! blame, so `switchyard check` can print them in one go.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme, Uri};
use serde::Deserialize;
use toml::Spanned;

use crate::pool::{PoolName, Protocol};
use crate::tls::{TlsError, TlsFiles};

mod discovery;
mod health;
mod rollout;
mod shadow;
mod state;
mod upstream_tls;
mod validate;
mod watch;

pub use discovery::{Discovery, DnsName, Lookup, DEFAULT_RESOLVE_INTERVAL};
use health::RawHealth;
pub use health::{HealthConfig, EJECT_MAX};
pub use rollout::{
    parse_permille, parse_step, Percent, RolloutConfig, StepConfig, Sticky, DEFAULT_MAX_EXTENSION,
    DEFAULT_ROLLOUT_INTERVAL, DEFAULT_ROLLOUT_MIN_REQUESTS, MAX_STEPS, PERMILLE,
};
use rollout::{RawRollout, RawSticky};
use shadow::RawShadow;
pub use shadow::ShadowConfig;
use state::RawState;
pub use state::{
    read_password, EtcdConfig, EtcdCredentials, EtcdTls, StateConfig, DEFAULT_ETCD_TIMEOUT,
};
use upstream_tls::RawUpstreamTls;
pub use upstream_tls::UpstreamTls;
use validate::RawCheck;
pub use validate::{CheckConfig, DEFAULT_CHECK_TIMEOUT, MAX_CHECK_BODY_BYTES};
use watch::RawWatch;
pub use watch::{WatchConfig, DEFAULT_MIN_REQUESTS, DEFAULT_WATCH_INTERVAL};

/// The longest duration any setting takes: deadlines are computed as
/// `now + setting`, which must not overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long the proxy waits for an upstream's response headers.
/// Inference can be slow (large batches, long generations), hence generous.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a TCP connect to an upstream (with the TLS handshake, on
/// `https://` pools) may take before the request fails 502.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Request bodies above this are refused: large enough for image and audio
/// batches, small enough that a runaway client cannot stream forever.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 30;
/// Requests in flight per model above this get 503.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
/// Idle upstream connections kept per endpoint, as nginx's `keepalive`.
pub const DEFAULT_MAX_IDLE_PER_ENDPOINT: usize = 128;
/// How long shutdown waits for in-flight requests before cutting them.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from; a reload reads it again.
    pub file: PathBuf,
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub state: StateConfig,
    pub models: Vec<ModelConfig>,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// Default for models that do not set their own.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    /// Threads serving traffic (tokio workers); `None`: one per core.
    pub worker_threads: Option<usize>,
    /// Idle upstream connections kept per endpoint; more are closed as
    /// requests finish.
    pub max_idle_per_endpoint: usize,
    /// Connection and request-head limits of the proxy listener.
    pub limits: crate::server::Limits,
    /// `tls.cert` and `tls.key`: serve HTTPS (ALPN `h2`, `http/1.1`).
    pub tls: Option<TlsFiles>,
    /// A second proxy listener on which every request goes to its model's
    /// standby pool: the new version, tested before it is live.
    pub preview_listen: Option<SocketAddr>,
}

impl ProxyConfig {
    /// What every pool's upstream client is built with.
    pub fn upstream(&self) -> UpstreamSettings {
        UpstreamSettings {
            connect_timeout: self.connect_timeout,
            max_idle_per_endpoint: self.max_idle_per_endpoint,
        }
    }
}

/// Settings every pool's upstream client shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub max_idle_per_endpoint: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_idle_per_endpoint: DEFAULT_MAX_IDLE_PER_ENDPOINT,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// File holding the bearer token every admin call but `/healthz` and
    /// `/readyz` must send; resolved against the config file's directory.
    /// Without it, `SWITCHYARD_ADMIN_TOKEN` is used if set.
    pub token_file: Option<PathBuf>,
    /// Whether `/metrics` needs the token too (default true).
    pub metrics_require_token: bool,
    /// `tls.cert` and `tls.key`: serve the admin API over HTTPS.
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    /// Normalised: starts with `/`, no trailing `/` unless it is `/` itself.
    pub path_prefix: String,
    /// Lowercase host name without port; `None` matches any host.
    pub host: Option<String>,
    /// The pool that serves when no saved state names one.
    pub active: PoolName,
    pub request_timeout: Duration,
    /// Send requests to the standby when the active pool has no healthy
    /// endpoint, instead of answering 503.
    pub failover: bool,
    /// Request bodies larger than this are refused with 413 (before
    /// anything is sent when `Content-Length` says so, else mid-stream).
    pub max_body_bytes: u64,
    /// Requests in flight on the model at most; more get 503 with `Retry-After`.
    pub max_in_flight: usize,
    /// Whether `x-switchyard-pool: blue|green` on the main listener picks
    /// the pool (a preview); else the header is ignored.
    pub preview_header: bool,
    /// `[models.watch]`: after a switch, judge the new pool and roll back
    /// on a breach; `None`: switches are not watched.
    pub watch: Option<WatchConfig>,
    /// `[[models.validate]]`: what a pool must answer before a switch to it
    /// (on `?validate=true`, or every switch with `validate_before_switch`).
    pub validate: Vec<CheckConfig>,
    /// Whether flip and activate validate the target pool unless the call
    /// says `?validate=false`.
    pub validate_before_switch: bool,
    /// Mirroring a sample of live requests to the standby, if configured.
    pub shadow: Option<ShadowConfig>,
    /// `sticky`: while a split is on, the header or cookie whose value
    /// keeps a user on one pool; `None`: each request is drawn on its own.
    pub sticky: Option<Sticky>,
    /// `[models.rollout]`: the steps and limits of a progressive rollout.
    pub rollout: Option<RolloutConfig>,
    pub blue: PoolConfig,
    pub green: PoolConfig,
}

impl Config {
    /// The keys that differ between `self` and `new` and that only a restart
    /// applies: listeners, their TLS and limits, threads, the admin's
    /// access, where the state is kept.
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (&self.proxy, &new.proxy);
        // Taken apart field by field so that a new limit cannot be left out
        // of the keys named: each is its own key in `[proxy]`.
        let crate::server::Limits {
            max_connections,
            max_headers,
            max_header_bytes,
            header_read_timeout,
            keepalive_timeout,
        } = a.limits;
        let limits = &b.limits;
        let checks = [
            (a.listen != b.listen, "proxy.listen"),
            (a.tls != b.tls, "proxy.tls"),
            (a.preview_listen != b.preview_listen, "proxy.preview_listen"),
            (a.worker_threads != b.worker_threads, "proxy.worker_threads"),
            (a.drain_timeout != b.drain_timeout, "proxy.drain_timeout"),
            (
                max_connections != limits.max_connections,
                "proxy.max_connections",
            ),
            (max_headers != limits.max_headers, "proxy.max_headers"),
            (
                max_header_bytes != limits.max_header_bytes,
                "proxy.max_header_bytes",
            ),
            (
                header_read_timeout != limits.header_read_timeout,
                "proxy.header_read_timeout",
            ),
            (
                keepalive_timeout != limits.keepalive_timeout,
                "proxy.keepalive_timeout",
            ),
            (self.admin.listen != new.admin.listen, "admin.listen"),
            (self.admin.tls != new.admin.tls, "admin.tls"),
            (
                self.admin.token_file != new.admin.token_file,
                "admin.token_file",
            ),
            (
                self.admin.metrics_require_token != new.admin.metrics_require_token,
                "admin.metrics_require_token",
            ),
        ];
        let mut keys: Vec<&'static str> = checks
            .into_iter()
            .filter_map(|(changed, key)| changed.then_some(key))
            .collect();
        keys.extend(self.state.changed(&new.state));
        keys
    }
}

impl ModelConfig {
    /// Whether `other` configures exactly this model.
    pub fn same_as(&self, other: &ModelConfig) -> bool {
        self.name == other.name
            && self.path_prefix == other.path_prefix
            && self.host == other.host
            && self.active == other.active
            && self.request_timeout == other.request_timeout
            && self.failover == other.failover
            && self.max_body_bytes == other.max_body_bytes
            && self.max_in_flight == other.max_in_flight
            && self.preview_header == other.preview_header
            && self.watch == other.watch
            && self.validate == other.validate
            && self.validate_before_switch == other.validate_before_switch
            && self.shadow == other.shadow
            && self.sticky == other.sticky
            && self.rollout == other.rollout
            && self.blue.same_as(&other.blue)
            && self.green.same_as(&other.green)
    }

    pub fn pool(&self, name: PoolName) -> &PoolConfig {
        match name {
            PoolName::Blue => &self.blue,
            PoolName::Green => &self.green,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub protocol: Protocol,
    pub endpoints: Vec<EndpointConfig>,
    pub health: HealthConfig,
    /// Set exactly when the endpoints are `https://`: how to speak TLS to them.
    pub tls: Option<UpstreamTls>,
    /// `discover = "dns"`: `endpoints` are names, and the pool serves the
    /// addresses they resolve to; `None`: the endpoints as listed.
    pub discovery: Option<Discovery>,
}

impl PoolConfig {
    /// Whether a pool built from `other` would be this one. A TLS pool never
    /// is: its CA and client certificate were read again, and a reload is
    /// how rotated ones are picked up.
    pub fn same_as(&self, other: &PoolConfig) -> bool {
        self.tls.is_none()
            && other.tls.is_none()
            && self.protocol == other.protocol
            && self.health == other.health
            && self.discovery == other.discovery
            && self.endpoints.len() == other.endpoints.len()
            && self
                .endpoints
                .iter()
                .zip(&other.endpoints)
                .all(|(a, b)| a.url == b.url)
    }
}

#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// As written in the config (trailing `/` removed); used in status and metric labels.
    pub url: String,
    pub authority: Authority,
}

// === errors ===

/// One problem in a config file, with the position of the value to blame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", ErrorList(.0))]
    Invalid(Vec<ConfigError>),
}

struct ErrorList<'a>(&'a [ConfigError]);

impl fmt::Display for ErrorList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

// === raw schema ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    proxy: RawProxy,
    admin: RawAdmin,
    state: Spanned<RawState>,
    #[serde(default)]
    models: Vec<RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Spanned<String>,
    #[serde(default)]
    request_timeout: Option<Spanned<String>>,
    #[serde(default)]
    connect_timeout: Option<Spanned<String>>,
    #[serde(default)]
    drain_timeout: Option<Spanned<String>>,
    #[serde(default)]
    worker_threads: Option<Spanned<usize>>,
    #[serde(default)]
    max_idle_per_endpoint: Option<Spanned<usize>>,
    #[serde(default)]
    max_connections: Option<Spanned<usize>>,
    #[serde(default)]
    max_headers: Option<Spanned<usize>>,
    #[serde(default)]
    max_header_bytes: Option<Spanned<usize>>,
    #[serde(default)]
    header_read_timeout: Option<Spanned<String>>,
    #[serde(default)]
    keepalive_timeout: Option<Spanned<String>>,
    #[serde(default)]
    preview_listen: Option<Spanned<String>>,
    #[serde(default)]
    tls: Option<Spanned<RawServerTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTls {
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<String>,
    #[serde(default)]
    token_file: Option<Spanned<String>>,
    #[serde(default)]
    metrics_require_token: Option<bool>,
    #[serde(default)]
    tls: Option<Spanned<RawServerTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: Spanned<String>,
    #[serde(default)]
    path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    host: Option<Spanned<String>>,
    #[serde(default)]
    active: Option<Spanned<String>>,
    #[serde(default)]
    request_timeout: Option<Spanned<String>>,
    #[serde(default)]
    failover: bool,
    #[serde(default)]
    preview_header: bool,
    #[serde(default)]
    max_body_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    max_in_flight: Option<Spanned<usize>>,
    #[serde(default)]
    health: Option<RawHealth>,
    #[serde(default)]
    tls: Option<RawUpstreamTls>,
    #[serde(default)]
    watch: Option<RawWatch>,
    #[serde(default)]
    validate: Vec<RawCheck>,
    #[serde(default)]
    validate_before_switch: Option<Spanned<bool>>,
    #[serde(default)]
    shadow: Option<RawShadow>,
    #[serde(default)]
    sticky: Option<Spanned<RawSticky>>,
    #[serde(default)]
    rollout: Option<RawRollout>,
    blue: RawPool,
    green: RawPool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    endpoints: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    protocol: Option<Spanned<String>>,
    #[serde(default)]
    health: Option<RawHealth>,
    #[serde(default)]
    tls: Option<RawUpstreamTls>,
    #[serde(default)]
    discover: Option<Spanned<String>>,
    #[serde(default)]
    resolve_interval: Option<Spanned<String>>,
    #[serde(default)]
    dns_servers: Option<Spanned<Vec<Spanned<String>>>>,
}

// === loading ===

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let src = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&src, path).map_err(LoadError::Invalid)
    }

    /// Validates `src` as if it were read from `file`: errors name `file`, and
    /// a relative state path is resolved against `file`'s directory.
    pub fn from_toml(src: &str, file: &Path) -> Result<Config, Vec<ConfigError>> {
        let blame = Blame { src, file };
        let raw: RawConfig = toml::from_str(src).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            vec![blame.at(span, e.message().to_string())]
        })?;
        validate(raw, &blame)
    }
}

/// Turns byte spans into line and column for error messages.
struct Blame<'a> {
    src: &'a str,
    file: &'a Path,
}

impl Blame<'_> {
    fn at(&self, span: Range<usize>, message: String) -> ConfigError {
        let offset = span.start.min(self.src.len());
        let before = &self.src[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            message,
        }
    }
}

/// Collects errors while values are checked one by one.
struct Checker<'a> {
    blame: &'a Blame<'a>,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: String) {
        self.errors.push(self.blame.at(span, message));
    }

    fn socket_addr(&mut self, key: &str, value: &Spanned<String>) -> Option<SocketAddr> {
        match value.get_ref().parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(
                    value.span(),
                    format!(
                        "{key}: invalid listen address {:?}; expected ip:port such as \"127.0.0.1:8080\"",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// A whole number within `range`, or `default` when absent.
    /// A judged ratio: a share from 0 to `max` when `max` is 1, else a
    /// multiple from 1 to `max`; `what` says which in the error.
    fn ratio(
        &mut self,
        key: &str,
        value: Option<&Spanned<f64>>,
        max: f64,
        what: &str,
    ) -> Option<f64> {
        let v = value?;
        let n = *v.get_ref();
        let min = if max > 1.0 { 1.0 } else { 0.0 };
        if n.is_finite() && (min..=max).contains(&n) {
            Some(n)
        } else {
            self.error(
                v.span(),
                format!("{key}: {n} is out of range; expected {what}"),
            );
            None
        }
    }

    fn count<T>(
        &mut self,
        key: &str,
        value: Option<&Spanned<T>>,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> T
    where
        T: Copy + PartialOrd + fmt::Display,
    {
        match value {
            None => default,
            Some(v) if range.contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.error(
                    v.span(),
                    format!(
                        "{key}: {} is out of range; expected {} to {}",
                        v.get_ref(),
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }

    /// A listener's certificate and key, paths resolved against the config
    /// file's directory. They are loaded here, so `check` finds a missing
    /// file, a file without PEM, or a key that does not match.
    fn server_tls(&mut self, key: &str, raw: Option<&Spanned<RawServerTls>>) -> Option<TlsFiles> {
        let raw = raw?;
        let files = TlsFiles {
            cert: resolve_relative(self.blame.file, Path::new(raw.get_ref().cert.get_ref())),
            key: resolve_relative(self.blame.file, Path::new(raw.get_ref().key.get_ref())),
        };
        match crate::tls::ServerTls::new(&files) {
            Ok(_) => Some(files),
            Err(e) => {
                let span = match &e {
                    TlsError::Read { path, .. } | TlsError::NoKey(path) if *path == files.key => {
                        raw.get_ref().key.span()
                    }
                    TlsError::Read { .. } | TlsError::NoCertificate(_) => raw.get_ref().cert.span(),
                    _ => raw.span(),
                };
                self.error(span, format!("{key}: {}", crate::ErrorChain(&e)));
                None
            }
        }
    }

    fn duration(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.error(value.span(), format!("{key}: must be longer than zero"));
                default
            }
            Ok(d) if d > MAX_DURATION => {
                self.error(
                    value.span(),
                    format!(
                        "{key}: {:?} is longer than a year; at most \"8760h\"",
                        value.get_ref()
                    ),
                );
                default
            }
            Ok(d) => d,
            Err(why) => {
                self.error(value.span(), format!("{key}: {why}"));
                default
            }
        }
    }
}

fn validate(raw: RawConfig, blame: &Blame<'_>) -> Result<Config, Vec<ConfigError>> {
    let mut c = Checker {
        blame,
        errors: Vec::new(),
    };
    let unspecified: SocketAddr = ([127, 0, 0, 1], 0).into();

    let worker_threads = match &raw.proxy.worker_threads {
        Some(n) if !(1..=1024).contains(n.get_ref()) => {
            c.error(
                n.span(),
                format!(
                    "proxy.worker_threads: {} is out of range; expected 1 to 1024 (omit it for one per core)",
                    n.get_ref()
                ),
            );
            None
        }
        n => n.as_ref().map(|n| *n.get_ref()),
    };
    let max_idle_per_endpoint = match &raw.proxy.max_idle_per_endpoint {
        Some(n) if !(1..=100_000).contains(n.get_ref()) => {
            c.error(
                n.span(),
                format!(
                    "proxy.max_idle_per_endpoint: {} is out of range; expected 1 to 100000",
                    n.get_ref()
                ),
            );
            DEFAULT_MAX_IDLE_PER_ENDPOINT
        }
        n => n
            .as_ref()
            .map_or(DEFAULT_MAX_IDLE_PER_ENDPOINT, |n| *n.get_ref()),
    };
    let defaults = crate::server::Limits::default();
    let limits = crate::server::Limits {
        max_connections: c.count(
            "proxy.max_connections",
            raw.proxy.max_connections.as_ref(),
            defaults.max_connections,
            1..=1_000_000,
        ),
        max_headers: c.count(
            "proxy.max_headers",
            raw.proxy.max_headers.as_ref(),
            defaults.max_headers,
            1..=10_000,
        ),
        max_header_bytes: c.count(
            "proxy.max_header_bytes",
            raw.proxy.max_header_bytes.as_ref(),
            defaults.max_header_bytes,
            8192..=16 * 1024 * 1024,
        ),
        header_read_timeout: c.duration(
            "proxy.header_read_timeout",
            raw.proxy.header_read_timeout.as_ref(),
            defaults.header_read_timeout,
        ),
        keepalive_timeout: c.duration(
            "proxy.keepalive_timeout",
            raw.proxy.keepalive_timeout.as_ref(),
            defaults.keepalive_timeout,
        ),
    };
    let preview_listen = raw
        .proxy
        .preview_listen
        .as_ref()
        .and_then(|a| c.socket_addr("proxy.preview_listen", a));
    if let Some(p) = &raw.proxy.preview_listen {
        let taken = [raw.proxy.listen.get_ref(), raw.admin.listen.get_ref()];
        if taken.contains(&p.get_ref()) && !p.get_ref().ends_with(":0") {
            c.error(
                p.span(),
                "proxy.preview_listen: the preview listener needs an address of its own"
                    .to_string(),
            );
        }
    }
    let proxy = ProxyConfig {
        preview_listen,
        tls: c.server_tls("proxy.tls", raw.proxy.tls.as_ref()),
        worker_threads,
        max_idle_per_endpoint,
        limits,
        listen: c
            .socket_addr("proxy.listen", &raw.proxy.listen)
            .unwrap_or(unspecified),
        request_timeout: c.duration(
            "proxy.request_timeout",
            raw.proxy.request_timeout.as_ref(),
            DEFAULT_REQUEST_TIMEOUT,
        ),
        connect_timeout: c.duration(
            "proxy.connect_timeout",
            raw.proxy.connect_timeout.as_ref(),
            DEFAULT_CONNECT_TIMEOUT,
        ),
        drain_timeout: c.duration(
            "proxy.drain_timeout",
            raw.proxy.drain_timeout.as_ref(),
            DEFAULT_DRAIN_TIMEOUT,
        ),
    };
    let admin = AdminConfig {
        listen: c
            .socket_addr("admin.listen", &raw.admin.listen)
            .unwrap_or(unspecified),
        token_file: raw.admin.token_file.as_ref().and_then(|f| {
            if f.get_ref().trim().is_empty() {
                c.error(f.span(), "admin.token_file: must name a file".to_string());
                None
            } else {
                Some(resolve_relative(blame.file, Path::new(f.get_ref())))
            }
        }),
        metrics_require_token: raw.admin.metrics_require_token.unwrap_or(true),
        tls: c.server_tls("admin.tls", raw.admin.tls.as_ref()),
    };
    if raw.admin.listen.get_ref() == raw.proxy.listen.get_ref() && proxy.listen.port() != 0 {
        c.error(
            raw.admin.listen.span(),
            "admin.listen: the admin listener cannot share the proxy's address".to_string(),
        );
    }

    let state = state::validate(&mut c, raw.state.get_ref(), raw.state.span());

    if raw.models.is_empty() {
        c.error(
            0..0,
            "no [[models]] configured; add at least one model with blue and green endpoints"
                .to_string(),
        );
    }

    let mut names = HashSet::new();
    let mut routes = HashSet::new();
    let mut models = Vec::with_capacity(raw.models.len());
    for (i, m) in raw.models.iter().enumerate() {
        if let Some(model) = validate_model(&mut c, i, m, &proxy) {
            if !names.insert(model.name.clone()) {
                c.error(
                    m.name.span(),
                    format!("models[{i}].name: duplicate model name {:?}", model.name),
                );
            }
            if !routes.insert((model.path_prefix.clone(), model.host.clone())) {
                let span = m.path_prefix.as_ref().map_or(m.name.span(), |p| p.span());
                let host = model
                    .host
                    .as_deref()
                    .map_or(String::new(), |h| format!(" and host {h:?}"));
                c.error(
                    span,
                    format!(
                        "models[{i}].path_prefix: another model already serves path_prefix {:?}{host}",
                        model.path_prefix
                    ),
                );
            }
            models.push(model);
        }
    }

    // A model-level health mistake is found once per pool, word for word.
    let mut seen = HashSet::new();
    c.errors.retain(|e| seen.insert(e.clone()));
    match state {
        Some(state) if c.errors.is_empty() => Ok(Config {
            file: blame.file.to_path_buf(),
            proxy,
            admin,
            state,
            models,
        }),
        _ => Err(c.errors),
    }
}

fn validate_model(
    c: &mut Checker<'_>,
    i: usize,
    m: &RawModel,
    proxy: &ProxyConfig,
) -> Option<ModelConfig> {
    let before = c.errors.len();
    let name = m.name.get_ref().clone();
    if !is_valid_name(&name) {
        c.error(
            m.name.span(),
            format!(
                "models[{i}].name: invalid model name {name:?}; use 1 to 64 of A-Z a-z 0-9 . _ -"
            ),
        );
    }

    let path_prefix = match &m.path_prefix {
        None => "/".to_string(),
        Some(p) => match normalize_prefix(p.get_ref()) {
            Ok(p) => p,
            Err(why) => {
                c.error(p.span(), format!("models[{i}].path_prefix: {why}"));
                String::new()
            }
        },
    };

    let host = m
        .host
        .as_ref()
        .and_then(|h| match normalize_host(h.get_ref()) {
            Ok(h) => Some(h),
            Err(why) => {
                c.error(h.span(), format!("models[{i}].host: {why}"));
                None
            }
        });

    let active = match &m.active {
        None => PoolName::Blue,
        Some(a) => match a.get_ref().parse() {
            Ok(p) => p,
            Err(_) => {
                c.error(
                    a.span(),
                    format!(
                        "models[{i}].active: unknown pool {:?}; expected \"blue\" or \"green\"",
                        a.get_ref()
                    ),
                );
                PoolName::Blue
            }
        },
    };

    let request_timeout = c.duration(
        &format!("models[{i}].request_timeout"),
        m.request_timeout.as_ref(),
        proxy.request_timeout,
    );
    let max_body_bytes = c.count(
        &format!("models[{i}].max_body_bytes"),
        m.max_body_bytes.as_ref(),
        DEFAULT_MAX_BODY_BYTES,
        1..=u64::MAX,
    );
    let max_in_flight = c.count(
        &format!("models[{i}].max_in_flight"),
        m.max_in_flight.as_ref(),
        DEFAULT_MAX_IN_FLIGHT,
        1..=10_000_000,
    );
    let model_tls = m.tls.as_ref().and_then(RawUpstreamTls::first_set);
    if let Some(value) = model_tls.filter(|_| !is_https(&m.blue) && !is_https(&m.green)) {
        c.error(
            value.span(),
            format!("models[{i}].tls: has no effect: the endpoints of both pools are http://; use https:// endpoints or remove it"),
        );
    }
    let watch = m
        .watch
        .as_ref()
        .and_then(|w| watch::validate(c, &format!("models[{i}]"), w));
    let shadow = m
        .shadow
        .as_ref()
        .map(|raw| shadow::validate(c, &format!("models[{i}]"), raw, request_timeout));
    let sticky = m
        .sticky
        .as_ref()
        .and_then(|raw| rollout::validate_sticky(c, &format!("models[{i}]"), raw));
    let rollout = m
        .rollout
        .as_ref()
        .and_then(|raw| rollout::validate(c, &format!("models[{i}]"), raw));
    let blue = validate_pool(c, i, &name, PoolName::Blue, &m.blue, m);
    let green = validate_pool(c, i, &name, PoolName::Green, &m.green, m);
    let checks = validate::validate(
        c,
        &format!("models[{i}]"),
        &m.validate,
        m.validate_before_switch.as_ref(),
    );

    (c.errors.len() == before).then(|| ModelConfig {
        name,
        path_prefix,
        host,
        active,
        request_timeout,
        failover: m.failover,
        preview_header: m.preview_header,
        watch,
        max_body_bytes,
        max_in_flight,
        validate: checks,
        validate_before_switch: m
            .validate_before_switch
            .as_ref()
            .is_some_and(|v| *v.get_ref()),
        shadow,
        sticky,
        rollout,
        blue,
        green,
    })
}

fn validate_pool(
    c: &mut Checker<'_>,
    i: usize,
    model: &str,
    pool: PoolName,
    raw: &RawPool,
    m: &RawModel,
) -> PoolConfig {
    let key = format!("models[{i}].{pool}");
    let health = health::validate(
        c,
        &format!("models[{i}]"),
        &key,
        m.health.as_ref(),
        raw.health.as_ref(),
    );
    let https = is_https(raw);
    let protocol = match &raw.protocol {
        None => Protocol::Http1,
        Some(p) => match (p.get_ref().as_str(), https) {
            ("http1", _) => Protocol::Http1,
            ("h2c", false) => Protocol::H2c,
            ("h2", true) => Protocol::H2,
            (name, _) => {
                let why = match name {
                    "h2c" => "\"h2c\" is HTTP/2 over cleartext but the endpoints are https://; use protocol = \"h2\" for HTTP/2 over TLS".to_string(),
                    "h2" => "\"h2\" is HTTP/2 over TLS but the endpoints are http://; use protocol = \"h2c\" for HTTP/2 over cleartext".to_string(),
                    other => format!("unknown protocol {other:?}; expected \"http1\", \"h2c\" (http:// endpoints) or \"h2\" (https:// endpoints)"),
                };
                c.error(p.span(), format!("{key}.protocol: {why}"));
                Protocol::Http1
            }
        },
    };
    if raw.endpoints.get_ref().is_empty() {
        c.error(
            raw.endpoints.span(),
            format!("{key}.endpoints: model {model:?} pool {pool} has no endpoints; list at least one URL such as \"http://127.0.0.1:8001\""),
        );
    }
    let mut seen = HashSet::new();
    let mut endpoints = Vec::new();
    let mut entries = Vec::new();
    let mut first_scheme: Option<(Scheme, &str)> = None;
    for e in raw.endpoints.get_ref() {
        match parse_endpoint(e.get_ref()) {
            Ok((endpoint, scheme)) => {
                match &first_scheme {
                    None => first_scheme = Some((scheme, e.get_ref())),
                    Some((first, url)) if *first != scheme => c.error(
                        e.span(),
                        format!("{key}.endpoints: endpoint {:?} is {scheme}:// but {url:?} is {first}://; a pool speaks one scheme, so put http:// and https:// endpoints in different pools", e.get_ref()),
                    ),
                    Some(_) => {}
                }
                if !seen.insert(endpoint.authority.clone()) {
                    c.error(
                        e.span(),
                        format!(
                            "{key}.endpoints: endpoint {:?} is listed twice",
                            e.get_ref()
                        ),
                    );
                }
                entries.push((e.span(), endpoint.clone()));
                endpoints.push(endpoint);
            }
            Err(why) => c.error(e.span(), format!("{key}.endpoints: {why}")),
        }
    }
    let discovery = discovery::validate(
        c,
        &key,
        &discovery::RawDiscovery {
            discover: raw.discover.as_ref(),
            resolve_interval: raw.resolve_interval.as_ref(),
            dns_servers: raw.dns_servers.as_ref(),
        },
        &entries,
    );
    let mut tls = upstream_tls::validate(
        c,
        &format!("models[{i}]"),
        pool,
        https,
        protocol,
        m.tls.as_ref(),
        raw.tls.as_ref(),
    );
    // Discovered endpoints are addresses: TLS verifies the name they came
    // from, which must then be one name per pool unless `server_name` says.
    if let (Some(d), Some(tls)) = (&discovery, tls.as_mut()) {
        if tls.server_name.is_none() {
            let mut hosts: Vec<&str> = d.names.iter().map(|n| n.lookup.server_name()).collect();
            hosts.sort_unstable();
            hosts.dedup();
            match hosts.as_slice() {
                [host] => match rustls_pki_types::ServerName::try_from(host.to_string()) {
                    Ok(name) => tls.server_name = Some(name),
                    Err(_) => c.error(
                        raw.endpoints.span(),
                        format!("{key}.endpoints: {host:?} is not a valid TLS server name; set tls.server_name"),
                    ),
                },
                [] => {}
                _ => c.error(
                    raw.endpoints.span(),
                    format!("{key}.endpoints: a dns pool over https:// verifies its endpoints by one name, and these are {}; set tls.server_name", hosts.join(", ")),
                ),
            }
        }
    }
    PoolConfig {
        protocol,
        endpoints,
        health,
        tls,
        discovery,
    }
}

/// Whether any endpoint of `raw` is `https://` (a pool mixing schemes is an
/// error of its own; its TLS settings are still checked).
fn is_https(raw: &RawPool) -> bool {
    raw.endpoints.get_ref().iter().any(|e| {
        e.get_ref()
            .parse::<Uri>()
            .is_ok_and(|u| u.scheme() == Some(&Scheme::HTTPS))
    })
}

// === value parsers ===

/// Parses durations such as `"500ms"`, `"2s"`, `"1.5s"`, `"5m"`, `"1h"`.
///
/// Exact decimal arithmetic, not `f64`: `"8945979685ms"` must be exactly that
/// many milliseconds. Digits finer than a nanosecond are dropped.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration {s:?}; expected a number with a unit (ms, s, m, h) such as \"500ms\" or \"2s\"")
    };
    let too_long = || format!("duration {s:?} is too long");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (number, unit) = s.split_at(split);
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(bad()),
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (number, None),
    };
    let all_digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
        return Err(bad());
    }
    let mut nanos: u128 = 0;
    for b in whole.bytes() {
        nanos = nanos
            .checked_mul(10)
            .and_then(|n| n.checked_add(u128::from(b - b'0')))
            .ok_or_else(too_long)?;
    }
    nanos = nanos.checked_mul(unit_nanos).ok_or_else(too_long)?;
    if let Some(fraction) = fraction {
        // 18 digits are already finer than a nanosecond of an hour; more
        // would overflow the scale below without changing the result.
        let digits = &fraction[..fraction.len().min(18)];
        let scale = 10u128.pow(digits.len() as u32);
        let value: u128 = digits.parse().map_err(|_| bad())?;
        nanos = nanos
            .checked_add(value * unit_nanos / scale)
            .ok_or_else(too_long)?;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_long())?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// Whether `name` is a model name a config may use.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn normalize_prefix(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with \"/\""));
    }
    if p.contains(['?', '#']) || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{p:?} must be a plain path (no query, fragment or spaces)"
        ));
    }
    let trimmed = p.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/" } else { trimmed }.to_string())
}

fn normalize_host(h: &str) -> Result<String, String> {
    let authority: Authority = h
        .parse()
        .map_err(|_| format!("invalid host {h:?}; expected a name such as \"iris.example.com\""))?;
    if authority.port().is_some() || authority.as_str().contains('@') {
        return Err(format!(
            "host {h:?} must be a bare name without port or user; the port is ignored when matching"
        ));
    }
    Ok(authority.host().to_ascii_lowercase())
}

/// An endpoint URL and its scheme, `http` or `https`.
fn parse_endpoint(url: &str) -> Result<(EndpointConfig, Scheme), String> {
    let uri: Uri = url.parse().map_err(|_| {
        format!(
            "invalid endpoint URL {url:?}; expected \"http://host:port\" or \"https://host:port\""
        )
    })?;
    let scheme = match uri.scheme() {
        Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
        Some(other) => {
            return Err(format!(
                "endpoint {url:?}: scheme {:?} is not supported; use \"http://\" or \"https://\" (set protocol = \"h2c\" or \"h2\" on the pool for HTTP/2 and gRPC)",
                other.as_str()
            ))
        }
        None => return Err(format!("endpoint {url:?} has no scheme; write \"http://{url}\" or \"https://{url}\"")),
    };
    let Some(authority) = uri.authority().cloned() else {
        return Err(format!("endpoint {url:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("endpoint {url:?}: user info is not supported"));
    }
    if authority.host().is_empty() {
        return Err(format!("endpoint {url:?} has no host"));
    }
    let path = uri.path();
    if !(path.is_empty() || path == "/") || uri.query().is_some() {
        return Err(format!(
            "endpoint {url:?} must not have a path or query; requests keep their own path"
        ));
    }
    Ok((
        EndpointConfig {
            url: url.trim_end_matches('/').to_string(),
            authority,
        },
        scheme,
    ))
}

fn resolve_relative(config_file: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    match config_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests;
