//! `discover`, `resolve_interval` and `dns_servers` of a pool
//! (`[models.<pool>]`): whether its endpoints are the listed URLs
//! (`"static"`) or the addresses DNS gives for the names in them (`"dns"`).
//! The raw keys, the defaults and the checks; `discovery.rs` resolves.
//! Nothing here touches the network: `check` runs offline.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::{Checker, EndpointConfig};

/// How often names are resolved again, by default.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
/// Shorter than this would query DNS faster than any record sensibly changes.
const MIN_RESOLVE_INTERVAL: Duration = Duration::from_millis(100);
/// Longer than this and a scaled-up pool waits too long for its endpoints.
const MAX_RESOLVE_INTERVAL: Duration = Duration::from_secs(3600);

/// How a dns pool finds its endpoints, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// One per entry of `endpoints`, in order.
    pub names: Vec<DnsName>,
    pub resolve_interval: Duration,
    /// `dns_servers`; empty: the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
}

/// One entry of a dns pool's `endpoints`: what to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsName {
    /// The entry as written, for status and logs.
    pub url: String,
    /// `http` or `https`, kept by every endpoint it resolves to.
    pub https: bool,
    pub lookup: Lookup,
}

/// The query an entry makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// `http://name:port`: A and AAAA records of `host`, each on `port`.
    /// `host` is also the `Host` header a request without one gets.
    Address { host: String, port: u16 },
    /// `http://_port._tcp.name` (no port): SRV records, each naming a
    /// target and its own port (what a Kubernetes headless Service
    /// publishes per named port); each target's A and AAAA records.
    Srv { name: String },
}

impl Lookup {
    /// The name a TLS endpoint is verified against: the host looked up,
    /// or for SRV the service name without its `_port._proto.` labels.
    pub fn server_name(&self) -> &str {
        match self {
            Lookup::Address { host, .. } => host,
            Lookup::Srv { name } => {
                let mut rest = name.as_str();
                for _ in 0..2 {
                    if let Some((label, tail)) = rest.split_once('.') {
                        if label.starts_with('_') {
                            rest = tail;
                        }
                    }
                }
                rest
            }
        }
    }
}

/// The raw keys, as the pool table holds them.
pub(super) struct RawDiscovery<'a> {
    pub discover: Option<&'a Spanned<String>>,
    pub resolve_interval: Option<&'a Spanned<String>>,
    pub dns_servers: Option<&'a Spanned<Vec<Spanned<String>>>>,
}

/// Checks a pool's discovery keys against its parsed `endpoints` (`raw`
/// gives their spans); `None` for a static pool.
pub(super) fn validate(
    c: &mut Checker<'_>,
    key: &str,
    raw: &RawDiscovery<'_>,
    entries: &[(Range<usize>, EndpointConfig)],
) -> Option<Discovery> {
    let dns = match raw.discover {
        None => false,
        Some(d) => match d.get_ref().as_str() {
            "static" => false,
            "dns" => true,
            other => {
                c.error(
                    d.span(),
                    format!("{key}.discover: unknown value {other:?}; expected \"static\" (the endpoints as listed) or \"dns\" (the addresses their names resolve to)"),
                );
                false
            }
        },
    };
    if !dns {
        for (field, span) in [
            ("resolve_interval", raw.resolve_interval.map(Spanned::span)),
            ("dns_servers", raw.dns_servers.map(Spanned::span)),
        ] {
            if let Some(span) = span {
                c.error(
                    span,
                    format!("{key}.{field}: has no effect on a static pool; set discover = \"dns\" or remove it"),
                );
            }
        }
        return None;
    }
    let interval_key = format!("{key}.resolve_interval");
    let resolve_interval = c.duration(
        &interval_key,
        raw.resolve_interval,
        DEFAULT_RESOLVE_INTERVAL,
    );
    if let Some(v) = raw.resolve_interval {
        if !(MIN_RESOLVE_INTERVAL..=MAX_RESOLVE_INTERVAL).contains(&resolve_interval) {
            c.error(
                v.span(),
                format!(
                    "{interval_key}: {:?} is out of range; expected \"100ms\" to \"1h\"",
                    v.get_ref()
                ),
            );
        }
    }
    let mut servers = Vec::new();
    for s in raw.dns_servers.map_or(&[][..], |s| s.get_ref()) {
        match parse_server(s.get_ref()) {
            Some(addr) => servers.push(addr),
            None => c.error(
                s.span(),
                format!("{key}.dns_servers: {:?} is not an address; expected an IP with an optional port, such as \"10.96.0.10\" or \"127.0.0.1:5353\"", s.get_ref()),
            ),
        }
    }
    let mut names = Vec::new();
    for (span, endpoint) in entries {
        match dns_name(endpoint) {
            Ok(name) => names.push(name),
            Err(why) => c.error(span.clone(), format!("{key}.endpoints: {why}")),
        }
    }
    Some(Discovery {
        names,
        resolve_interval,
        servers,
    })
}

/// `"10.0.0.1"` (port 53), `"10.0.0.1:5353"`, `"::1"`, `"[::1]:5353"`.
fn parse_server(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

/// What an entry of a dns pool looks up.
pub(super) fn dns_name(endpoint: &EndpointConfig) -> Result<DnsName, String> {
    let url = &endpoint.url;
    let https = url.starts_with("https://");
    let host = endpoint.authority.host();
    if host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
    {
        return Err(format!(
            "endpoint {url:?} is an IP address, which DNS does not resolve; write a name, or list it in a static pool"
        ));
    }
    let port = endpoint.authority.port_u16();
    let lookup = if host.starts_with('_') {
        if port.is_some() {
            return Err(format!(
                "endpoint {url:?} is an SRV name (it starts with \"_\"), whose records give each port; remove the port"
            ));
        }
        Lookup::Srv {
            name: host.to_string(),
        }
    } else {
        Lookup::Address {
            host: host.to_string(),
            port: port.unwrap_or(if https { 443 } else { 80 }),
        }
    };
    Ok(DnsName {
        url: url.clone(),
        https,
        lookup,
    })
}
