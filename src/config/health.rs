//! `[models.health]` and its per-pool override `[models.<pool>.health]`:
//! the raw shape, the defaults, and the checks that reject settings a prober
//! cannot honour (a timeout longer than the interval, zero thresholds).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;

pub const DEFAULT_HEALTH_PATH: &str = "/v2/health/ready";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTHY_AFTER: u32 = 2;
pub const DEFAULT_UNHEALTHY_AFTER: u32 = 3;
pub const DEFAULT_WARM_CONNECTIONS: u32 = 2;
pub const DEFAULT_EJECT_AFTER: u32 = 5;
/// First passive ejection lasts this long; each one in a row doubles it.
pub const DEFAULT_EJECT_BACKOFF: Duration = Duration::from_secs(10);
/// Upper bound of the doubling ejection back-off.
pub const EJECT_MAX: Duration = Duration::from_secs(300);
/// More idle connections than this per endpoint is a config mistake, not warmth.
const MAX_WARM_CONNECTIONS: u32 = 64;

/// Health settings of one pool, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Probed with `GET` on HTTP/1.1 pools; unused on HTTP/2 pools, which are
    /// probed with the gRPC health protocol.
    pub path: String,
    /// The `service` asked about in a gRPC health check; "" is the whole server.
    pub grpc_service: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
    /// Idle keep-alive connections the prober keeps open per endpoint.
    pub warm_connections: u32,
    /// Consecutive failed requests (connect errors, resets, timeouts, 5xx)
    /// that eject an endpoint.
    pub eject_after: u32,
    /// How long the first ejection lasts; doubled per ejection in a row, up
    /// to [`EJECT_MAX`] (or this, if longer).
    pub eject_backoff: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: DEFAULT_HEALTH_PATH.to_string(),
            grpc_service: String::new(),
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            healthy_after: DEFAULT_HEALTHY_AFTER,
            unhealthy_after: DEFAULT_UNHEALTHY_AFTER,
            warm_connections: DEFAULT_WARM_CONNECTIONS,
            eject_after: DEFAULT_EJECT_AFTER,
            eject_backoff: DEFAULT_EJECT_BACKOFF,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    grpc_service: Option<Spanned<String>>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    healthy_after: Option<Spanned<u32>>,
    #[serde(default)]
    unhealthy_after: Option<Spanned<u32>>,
    #[serde(default)]
    warm_connections: Option<Spanned<u32>>,
    #[serde(default)]
    eject_after: Option<Spanned<u32>>,
    #[serde(default)]
    eject_backoff: Option<Spanned<String>>,
}

impl RawHealth {
    /// Whether this table sets `field` itself.
    fn sets(&self, field: &str) -> bool {
        match field {
            "path" => self.path.is_some(),
            "grpc_service" => self.grpc_service.is_some(),
            "interval" => self.interval.is_some(),
            "timeout" => self.timeout.is_some(),
            "healthy_after" => self.healthy_after.is_some(),
            "unhealthy_after" => self.unhealthy_after.is_some(),
            "warm_connections" => self.warm_connections.is_some(),
            "eject_after" => self.eject_after.is_some(),
            "eject_backoff" => self.eject_backoff.is_some(),
            _ => false,
        }
    }
}

/// Checks a pool's health settings: each key from the pool's own table if it
/// sets it, else from the model's, else the default. Messages name the
/// table the value came from: `pool_key` (`models[0].green`) or `model_key`
/// (`models[0]`), so a model-level mistake reads the same for both pools
/// and the caller reports it once.
pub(super) fn validate(
    c: &mut Checker<'_>,
    model_key: &str,
    pool_key: &str,
    model: Option<&RawHealth>,
    pool: Option<&RawHealth>,
) -> HealthConfig {
    // Field by field: the pool's value wins, then the model's.
    macro_rules! pick {
        ($field:ident) => {
            pool.and_then(|p| p.$field.as_ref())
                .or_else(|| model.and_then(|m| m.$field.as_ref()))
        };
    }
    let d = HealthConfig::default();
    let k = |field: &str| {
        let table = if pool.is_some_and(|p| p.sets(field)) {
            pool_key
        } else {
            model_key
        };
        format!("{table}.health.{field}")
    };

    let path = match pick!(path) {
        None => d.path,
        Some(p) if p.get_ref().starts_with('/') && !p.get_ref().contains(char::is_whitespace) => {
            p.get_ref().clone()
        }
        Some(p) => {
            c.error(
                p.span(),
                format!(
                    "{}: {:?} must be a path starting with \"/\"",
                    k("path"),
                    p.get_ref()
                ),
            );
            d.path
        }
    };
    let grpc_service = pick!(grpc_service).map_or(d.grpc_service, |s| s.get_ref().clone());
    let interval = c.duration(&k("interval"), pick!(interval), d.interval);
    let timeout = c.duration(&k("timeout"), pick!(timeout), d.timeout);
    let eject_backoff = c.duration(&k("eject_backoff"), pick!(eject_backoff), d.eject_backoff);
    if timeout > interval {
        let span = pick!(timeout)
            .or(pick!(interval))
            .map_or(0..0, |s| s.span());
        c.error(
            span,
            format!(
                "{}: timeout {timeout:?} is longer than the interval {interval:?}; probes would overlap",
                k("timeout")
            ),
        );
    }
    let mut count =
        |field: &str, value: Option<&Spanned<u32>>, default: u32, min: u32, max: u32| -> u32 {
            match value {
                None => default,
                Some(v) if (min..=max).contains(v.get_ref()) => *v.get_ref(),
                Some(v) => {
                    c.error(
                        v.span(),
                        format!(
                            "{}: {} is out of range; expected {min} to {max}",
                            k(field),
                            v.get_ref()
                        ),
                    );
                    default
                }
            }
        };
    let healthy_after = count(
        "healthy_after",
        pick!(healthy_after),
        d.healthy_after,
        1,
        1000,
    );
    let unhealthy_after = count(
        "unhealthy_after",
        pick!(unhealthy_after),
        d.unhealthy_after,
        1,
        1000,
    );
    let warm_connections = count(
        "warm_connections",
        pick!(warm_connections),
        d.warm_connections,
        0,
        MAX_WARM_CONNECTIONS,
    );
    let eject_after = count("eject_after", pick!(eject_after), d.eject_after, 1, 100_000);
    HealthConfig {
        path,
        grpc_service,
        interval,
        timeout,
        healthy_after,
        unhealthy_after,
        warm_connections,
        eject_after,
        eject_backoff,
    }
}
