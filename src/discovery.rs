//! DNS endpoint discovery: for every pool with `discover = "dns"`, resolves
//! the names in its `endpoints` every `resolve_interval` and turns the
//! answers into the pool's endpoint set. Never on the request path, which
//! only ever loads the set this installs ([`Pool::set_members`]).
//!
//! Per round, per name, one of three answers ([`Answer`]):
//! - addresses (A and AAAA of `http://name:port`, each on that port; or for
//!   `http://_port._tcp.name`, the SRV records' targets on their own ports):
//!   the name's endpoints are exactly these;
//! - gone (NXDOMAIN, or the name has no such records): an authoritative
//!   empty answer, so the name has no endpoints;
//! - failed (timeout, SERVFAIL, refused, no server): nothing is known, so
//!   the name keeps the endpoints it had. A DNS hiccup never empties a pool.
//!
//! The new set is diffed against the current one by address ([`diff`],
//! sans-io): kept endpoints are the same `Arc`s, with their connections,
//! health and counters; added ones start `Pending`, out of rotation, and
//! the prober probes them at once (its first round opens the pool's
//! `warm_connections`), so they take traffic only once a probe passed.
//! Removed ones take no new request; requests on them hold them until their
//! bodies end (the drain), then their connections close as they drop, and
//! their metric series are removed when they leave the set.
//!
//! At start (and for a pool a reload builds) the first round runs before
//! the pool serves ([`resolve_first`]): a name that does not resolve leaves
//! the pool empty, logged, and is asked again every interval. Refusing to
//! start would be wrong: a standby scaled to zero has no records.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolverConfig,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};
use http::uri::Authority;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Discovery, DnsName, Lookup};
use crate::events::{EventKind, Events};
use crate::metrics::Metrics;
use crate::pool::{Endpoint, Pool, PoolName};
use crate::switch::Model;

/// A DNS query takes at most this long, or the interval if shorter.
const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the resolution loop of every dns pool until cancelled; pools a
/// reload adds arrive through its [`Watch`], and a loop ends when its pool
/// is retired.
pub struct Discoverer {
    pools: Vec<Arc<Pool>>,
    added: mpsc::UnboundedReceiver<Arc<Pool>>,
    metrics: Metrics,
    events: Events,
}

/// Hands new dns pools to the running [`Discoverer`].
#[derive(Clone)]
pub struct Watch(mpsc::UnboundedSender<Arc<Pool>>);

impl Watch {
    /// Keeps resolving `pool`'s names, if it is a dns pool; call
    /// [`resolve_first`] before, so it serves its first set at once.
    pub fn pool(&self, pool: Arc<Pool>) {
        if pool.discovery().is_some() {
            // The discoverer only stops at shutdown, when nothing needs resolving.
            let _ = self.0.send(pool);
        }
    }
}

// === impl Discoverer ===

impl Discoverer {
    pub fn new(models: &[Arc<Model>], metrics: Metrics, events: Events) -> (Discoverer, Watch) {
        let pools = dns_pools(models).collect();
        let (tx, added) = mpsc::unbounded_channel();
        let discoverer = Discoverer {
            pools,
            added,
            metrics,
            events,
        };
        (discoverer, Watch(tx))
    }

    /// Runs one loop per dns pool until `token` is cancelled.
    pub async fn run(mut self, token: CancellationToken) {
        let mut loops = JoinSet::new();
        let spawn = |loops: &mut JoinSet<()>, pool: Arc<Pool>| {
            let (metrics, events) = (self.metrics.clone(), self.events.clone());
            loops.spawn(watch_pool(pool, metrics, events, token.child_token()));
        };
        for pool in std::mem::take(&mut self.pools) {
            spawn(&mut loops, pool);
        }
        // A panic in a loop ends `run`, and so the proxy, instead of leaving
        // a pool silently unresolved.
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                Some(pool) = self.added.recv() => spawn(&mut loops, pool),
                Some(ended) = loops.join_next() => {
                    if let Err(e) = ended {
                        if e.is_panic() {
                            std::panic::resume_unwind(e.into_panic());
                        }
                    }
                }
            }
        }
        loops.shutdown().await;
    }
}

/// The dns pools of `models`.
pub fn dns_pools(models: &[Arc<Model>]) -> impl Iterator<Item = Arc<Pool>> + '_ {
    models
        .iter()
        .flat_map(|m| PoolName::ALL.map(|p| Arc::clone(m.pool(p))))
        .filter(|p| p.discovery().is_some())
}

/// The first round of a dns pool, before it serves: its endpoints start
/// in rotation (serving until probed, as listed endpoints do), since no
/// traffic has seen the pool yet. A no-op for a static pool.
pub async fn resolve_first(pool: &Pool, metrics: &Metrics, events: &Events) {
    let Some(discovery) = pool.discovery() else {
        return;
    };
    match resolver(discovery) {
        Ok(resolver) => refresh(pool, &resolver, false, metrics, events).await,
        Err(e) => log_no_resolver(pool, metrics, &e),
    }
}

async fn watch_pool(pool: Arc<Pool>, metrics: Metrics, events: Events, token: CancellationToken) {
    let Some(discovery) = pool.discovery().cloned() else {
        return;
    };
    let every = discovery.resolve_interval;
    // The first round ran before the pool served.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let retired = pool.retired().clone();
    let mut resolver = None;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = retired.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // Built once; a system config that could not be read is read
        // again next round.
        if resolver.is_none() {
            match self::resolver(&discovery) {
                Ok(r) => resolver = Some(r),
                Err(e) => log_no_resolver(&pool, &metrics, &e),
            }
        }
        let Some(resolver) = &resolver else { continue };
        tokio::select! {
            () = token.cancelled() => return,
            () = retired.cancelled() => return,
            () = refresh(&pool, resolver, true, &metrics, &events) => {}
        }
    }
}

fn log_no_resolver(pool: &Pool, metrics: &Metrics, e: &ResolveError) {
    warn!(model = pool.model(), pool = %pool.name(), error = %e, "cannot set up DNS resolution (the system resolver config?); the pool keeps its endpoints and tries again next interval");
    metrics.dns_resolutions(pool.model(), pool.name())[2].inc();
}

/// The resolver of one pool: its `dns_servers`, else the system's
/// (`/etc/resolv.conf`, with its search domains and `ndots`). No cache:
/// each round asks the server, so a change is seen within an interval.
fn resolver(discovery: &Discovery) -> Result<TokioResolver, ResolveError> {
    let mut builder = if discovery.servers.is_empty() {
        TokioResolver::builder_tokio()?
    } else {
        let servers: Vec<NameServerConfig> = discovery
            .servers
            .iter()
            .flat_map(|a| {
                // TCP for answers too large for a datagram.
                [Protocol::Udp, Protocol::Tcp].map(|p| NameServerConfig::new(*a, p))
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], NameServerConfigGroup::from(servers)),
            TokioConnectionProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.timeout = discovery.resolve_interval.min(MAX_QUERY_TIMEOUT);
    Ok(builder.build())
}

/// One round: resolves every name, installs the set they give.
async fn refresh(
    pool: &Pool,
    resolver: &TokioResolver,
    pending: bool,
    metrics: &Metrics,
    events: &Events,
) {
    let Some(discovery) = pool.discovery() else {
        return;
    };
    let counters = metrics.dns_resolutions(pool.model(), pool.name());
    let mut answers = Vec::with_capacity(discovery.names.len());
    for (source, name) in discovery.names.iter().enumerate() {
        let answer = resolve(resolver, name, source).await;
        match &answer {
            Answer::Found(_) => counters[0].inc(),
            Answer::Gone(why) => {
                counters[1].inc();
                if !pool
                    .endpoints()
                    .iter()
                    .any(|e| e.source() == Some(&name.url))
                {
                    // Said once per round while empty: a standby scaled to
                    // zero is normal, so not a warning.
                    tracing::debug!(model = pool.model(), pool = %pool.name(), name = %name.url, why = %why, "name has no records");
                } else {
                    info!(model = pool.model(), pool = %pool.name(), name = %name.url, why = %why, "name has no records any more; its endpoints drain");
                }
            }
            Answer::Failed(why) => {
                counters[2].inc();
                warn!(model = pool.model(), pool = %pool.name(), name = %name.url, error = %why, "DNS resolution failed; keeping the endpoints last resolved");
            }
        }
        answers.push(answer);
    }
    let current = pool.endpoints();
    let held: Vec<Held<'_>> = current
        .iter()
        .map(|e| Held {
            authority: e.authority().as_str(),
            source: e
                .source()
                .and_then(|s| discovery.names.iter().position(|n| n.url == s)),
        })
        .collect();
    let wanted = wanted(&answers, &held);
    let plan = diff(&held, &wanted);
    if plan.added.is_empty() && plan.removed.is_empty() {
        return;
    }
    install(
        pool,
        &current,
        &discovery.names,
        plan,
        pending,
        metrics,
        events,
    );
}

/// Builds and installs the new set; logs, records and cleans up the change.
fn install(
    pool: &Pool,
    current: &[Arc<Endpoint>],
    names: &[DnsName],
    plan: Diff,
    pending: bool,
    metrics: &Metrics,
    events: &Events,
) {
    let mut next: Vec<Arc<Endpoint>> = plan.kept.iter().map(|&i| Arc::clone(&current[i])).collect();
    let mut added = Vec::with_capacity(plan.added.len());
    for want in plan.added {
        let (Ok(authority), Ok(host)) = (
            Authority::try_from(want.authority.as_str()),
            Authority::try_from(want.host.as_str()),
        ) else {
            // A resolved address is always an authority, and a name that
            // resolved is always a host: nothing to add otherwise.
            continue;
        };
        let source: Arc<str> = names[want.source].url.as_str().into();
        let endpoint = pool.discovered_endpoint(authority, &host, &source, pending, metrics);
        added.push(endpoint.url().to_string());
        next.push(Arc::new(endpoint));
    }
    let removed: Vec<String> = plan
        .removed
        .iter()
        .map(|&i| current[i].url().to_string())
        .collect();
    pool.set_members(next.into_boxed_slice());
    for url in &removed {
        // Requests still on it finish; its gauge would otherwise go on
        // saying healthy for an endpoint the pool no longer has.
        metrics.forget_endpoint(pool.model(), pool.name(), url);
    }
    info!(
        model = pool.model(),
        pool = %pool.name(),
        added = ?added,
        removed = ?removed,
        "pool {} of {}: endpoints {}",
        pool.name(),
        pool.model(),
        describe(&added, &removed),
    );
    events.record(EventKind::Discovery {
        model: pool.model().to_string(),
        pool: pool.name(),
        added,
        removed,
    });
}

/// `10.0.0.5:8000 added, 10.0.0.4:8000 removed`.
fn describe(added: &[String], removed: &[String]) -> String {
    let strip = |u: &String| {
        u.split_once("://")
            .map_or(u.clone(), |(_, a)| a.to_string())
    };
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!(
            "{} added",
            added.iter().map(strip).collect::<Vec<_>>().join(", ")
        ));
    }
    if !removed.is_empty() {
        parts.push(format!(
            "{} removed",
            removed.iter().map(strip).collect::<Vec<_>>().join(", ")
        ));
    }
    parts.join(", ")
}

/// What one name gave this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name's endpoints are exactly these.
    Found(Vec<Want>),
    /// Authoritatively nothing (NXDOMAIN, no records): no endpoints.
    Gone(String),
    /// No answer (timeout, SERVFAIL, ...): keep what the name had.
    Failed(String),
}

/// An endpoint a name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// `10.0.0.5:8000`, `[fd00::5]:8000`: where to connect.
    pub authority: String,
    /// `models.ns.svc:8000`: the `Host` of requests that bring none.
    pub host: String,
    /// Index of the name in the pool's `endpoints`.
    pub source: usize,
}

/// An endpoint the pool has: its address and the name it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held<'a> {
    pub authority: &'a str,
    pub source: Option<usize>,
}

/// The change from the current set to the wanted one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Indexes into the current set, in its order.
    pub kept: Vec<usize>,
    pub added: Vec<Want>,
    /// Indexes into the current set.
    pub removed: Vec<usize>,
}

/// The endpoints the answers ask for: each name's addresses, those it held
/// for a name whose resolution failed, nothing for a gone name. An address
/// two names give is one endpoint, the first name's.
pub fn wanted(answers: &[Answer], held: &[Held<'_>]) -> Vec<Want> {
    let mut out: Vec<Want> = Vec::new();
    for (source, answer) in answers.iter().enumerate() {
        let wants: Vec<Want> = match answer {
            Answer::Found(wants) => wants.clone(),
            Answer::Gone(_) => Vec::new(),
            Answer::Failed(_) => held
                .iter()
                .filter(|h| h.source == Some(source))
                .map(|h| Want {
                    authority: h.authority.to_string(),
                    // Not used: a held endpoint is kept, not built again.
                    host: String::new(),
                    source,
                })
                .collect(),
        };
        for want in wants {
            if !out.iter().any(|w| w.authority == want.authority) {
                out.push(want);
            }
        }
    }
    out
}

/// Kept, added and removed endpoints, by address.
pub fn diff(held: &[Held<'_>], wanted: &[Want]) -> Diff {
    let mut plan = Diff::default();
    for (i, h) in held.iter().enumerate() {
        if wanted.iter().any(|w| w.authority == h.authority) {
            plan.kept.push(i);
        } else {
            plan.removed.push(i);
        }
    }
    plan.added = wanted
        .iter()
        .filter(|w| !held.iter().any(|h| h.authority == w.authority))
        .cloned()
        .collect();
    plan
}

/// Asks DNS about one name, the `source`th of the pool's.
async fn resolve(resolver: &TokioResolver, name: &DnsName, source: usize) -> Answer {
    let answer = match &name.lookup {
        Lookup::Address { host, port } => match addresses(resolver, host, *port).await {
            Ok(wants) => Answer::Found(wants),
            Err(answer) => answer,
        },
        Lookup::Srv { name: srv } => match resolver.srv_lookup(srv.as_str()).await {
            Err(e) => classify(&e),
            Ok(records) => {
                let mut wants = Vec::new();
                let mut failed = None;
                for record in records.iter() {
                    let target = record.target().to_utf8();
                    let target = target.trim_end_matches('.');
                    match addresses(resolver, target, record.port()).await {
                        Ok(found) => wants.extend(found),
                        // A target with no address has no endpoint.
                        Err(Answer::Gone(_)) => {}
                        Err(other) => failed = Some(other),
                    }
                }
                // One target unanswered: the name's set is not known.
                failed.unwrap_or(Answer::Found(wants))
            }
        },
    };
    tag(answer, source)
}

/// The A and AAAA records of `host`, each on `port`.
async fn addresses(resolver: &TokioResolver, host: &str, port: u16) -> Result<Vec<Want>, Answer> {
    let ips = resolver.lookup_ip(host).await.map_err(|e| classify(&e))?;
    let host = format!("{host}:{port}");
    Ok(ips
        .iter()
        .map(|ip| Want {
            authority: SocketAddr::new(ip, port).to_string(),
            host: host.clone(),
            source: 0,
        })
        .collect())
}

fn tag(answer: Answer, source: usize) -> Answer {
    match answer {
        Answer::Found(wants) => {
            Answer::Found(wants.into_iter().map(|w| Want { source, ..w }).collect())
        }
        other => other,
    }
}

/// An authoritative "no such name" or "no such records" is an answer; any
/// other failure is not.
fn classify(e: &ResolveError) -> Answer {
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NXDomain | ResponseCode::NoError,
            ..
        }) => Answer::Gone(e.to_string()),
        _ => Answer::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
