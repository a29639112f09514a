//! DNS endpoint discovery: for every pool with `discover = "dns"`, resolves
//! the names in its `endpoints` every `resolve_interval` and turns the
//! answers into the pool's endpoint set. Never on the request path, which
//! only ever reads the set this installs (`Pool::set_members`).
//!
//! Per round, per name, one of three answers ([`Answer`]):
//! - addresses (A and AAAA of `http://name:port`, each on that port; or for
//!   `http://_port._tcp.name`, the SRV records' targets on their own ports):
//!   the name's endpoints are exactly these;
//! - gone (NXDOMAIN, or the name has no such records): an authoritative
//!   empty answer, so the name has no endpoints. For addresses, A and
//!   AAAA are asked separately and the name is gone only when both say so;
//! - failed (timeout, SERVFAIL, refused, no server, for the name, its A or
//!   its AAAA query, or any SRV target's): nothing is known, so the name
//!   keeps the endpoints it had. A DNS hiccup never empties a pool, nor
//!   drops one family's or one target's endpoints.
//!
//! The new set is diffed against the current one by address ([`diff`],
//! sans-io): kept endpoints are the same `Arc`s, with their connections,
//! health and counters; added ones start `Pending`, out of rotation, and
//! the prober probes them at once (its first round opens the pool's
//! `warm_connections`), so they take traffic only once a probe passed.
//! Removed ones leave rotation for good (retries included); requests on
//! them hold them until their bodies end (the drain), then their
//! connections close as they drop, and their metric series are removed
//! when they leave the set.
//!
//! At start (and for a pool a reload builds) the first round runs before
//! the pool serves ([`lookup`], then [`seed`]), every name side by side
//! under one deadline: a name that does not resolve leaves the pool empty
//! (or, for a pool a reload rebuilds, with its predecessor's endpoints of
//! that name), logged, and is asked again every interval. Refusing to
//! start would be wrong: a standby scaled to zero has no records.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::Name;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};
use http::uri::Authority;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Discovery, DnsName, Lookup};
use crate::events::{EventKind, Events};
use crate::metrics::Metrics;
use crate::pool::{Endpoint, Pool, PoolName, Writer};
use crate::switch::Model;

/// A DNS query gives up after the interval, but never sooner than this: a
/// very short interval must not make a slow server look failed...
const MIN_QUERY_TIMEOUT: Duration = Duration::from_secs(1);
/// ...nor later than this.
const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries of one query (per server), as resolv.conf's default.
const QUERY_ATTEMPTS: usize = 2;

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
    /// Keeps resolving `pool`'s names, if it is a dns pool; [`seed`] it
    /// before, so it serves its first set at once.
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

/// How long a query of `discovery`'s may take.
fn query_timeout(discovery: &Discovery) -> Duration {
    discovery
        .resolve_interval
        .clamp(MIN_QUERY_TIMEOUT, MAX_QUERY_TIMEOUT)
}

/// How long a whole round of `discovery` may take: its names (and SRV
/// targets) are asked side by side, each query retried once.
pub fn round_limit(discovery: &Discovery) -> Duration {
    // Two steps for SRV (the records, then the targets' addresses).
    let tries = u32::try_from(2 * QUERY_ATTEMPTS).unwrap_or(u32::MAX);
    query_timeout(discovery) * tries
}

/// The first round of a dns pool, before it serves (at start): its
/// endpoints start in rotation (serving until probed, as listed endpoints
/// do), since no traffic has seen the pool yet. A name without an answer
/// by `deadline` failed. A no-op for a static pool.
pub async fn resolve_first(pool: &Pool, deadline: Instant, metrics: &Metrics, events: &Events) {
    let Some(discovery) = pool.discovery() else {
        return;
    };
    let answers = lookup(discovery, deadline).await;
    seed(pool, &answers, None, metrics, events);
}

/// One round for a pool not built yet (a reload resolves before it takes
/// the switch lock): every name's answer, side by side; a name without an
/// answer by `deadline` failed.
pub async fn lookup(discovery: &Discovery, deadline: Instant) -> Vec<Answer> {
    match resolver(discovery) {
        Ok(resolver) => resolve_all(&resolver, &discovery.names, deadline).await,
        Err(e) => {
            let why = format!("cannot set up DNS resolution (the system resolver config?): {e}");
            discovery
                .names
                .iter()
                .map(|_| Answer::Failed(why.clone()))
                .collect()
        }
    }
}

/// Installs the first set of `pool` (new, not serving yet) from `answers`
/// ([`lookup`]). A name whose resolution failed keeps the endpoints it had
/// in `predecessor`, the pool a reload replaces, so a DNS hiccup during a
/// reload does not empty it.
pub fn seed(
    pool: &Pool,
    answers: &[Answer],
    predecessor: Option<&Pool>,
    metrics: &Metrics,
    events: &Events,
) {
    let Some(discovery) = pool.discovery() else {
        return;
    };
    let Some(writer) = pool.writer() else {
        return;
    };
    let before = predecessor.map(Pool::endpoints).unwrap_or_default();
    let held = held(&before, &discovery.names);
    record(pool, answers, &held, &mut Vec::new(), metrics);
    // Nothing is kept: the predecessor's endpoints belong to its client.
    let plan = diff(&[], &wanted(answers, &held));
    if !plan.added.is_empty() {
        install(
            pool,
            &writer,
            &[],
            &discovery.names,
            plan,
            false,
            metrics,
            events,
        );
    }
}

async fn watch_pool(pool: Arc<Pool>, metrics: Metrics, events: Events, token: CancellationToken) {
    let Some(discovery) = pool.discovery().cloned() else {
        return;
    };
    let every = discovery.resolve_interval;
    // The first round ran before the pool served.
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let retired = pool.retired().clone();
    let mut resolver = None;
    // Per name: whether its last round failed (warned once, not each round).
    let mut failing = vec![false; discovery.names.len()];
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = retired.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // A reload is replacing the pool: its replacement resolves now.
        if pool.is_discovery_paused() {
            continue;
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
            () = refresh(&pool, resolver, &mut failing, &metrics, &events) => {}
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
    options.attempts = QUERY_ATTEMPTS;
    options.timeout = query_timeout(discovery);
    Ok(builder.build())
}

/// One round of a serving pool: resolves every name, installs the set they
/// give, unless a reload paused discovery meanwhile.
async fn refresh(
    pool: &Pool,
    resolver: &TokioResolver,
    failing: &mut Vec<bool>,
    metrics: &Metrics,
    events: &Events,
) {
    let Some(discovery) = pool.discovery() else {
        return;
    };
    let deadline = Instant::now() + round_limit(discovery);
    let answers = resolve_all(resolver, &discovery.names, deadline).await;
    let Some(writer) = pool.writer() else {
        return;
    };
    let current = pool.endpoints();
    let held = held(&current, &discovery.names);
    record(pool, &answers, &held, failing, metrics);
    let plan = diff(&held, &wanted(&answers, &held));
    if plan.added.is_empty() && plan.removed.is_empty() {
        return;
    }
    install(
        pool,
        &writer,
        &current,
        &discovery.names,
        plan,
        true,
        metrics,
        events,
    );
}

/// The endpoints `endpoints` has, by address and the name (of `names`)
/// each came from.
fn held<'a>(endpoints: &'a [Arc<Endpoint>], names: &[DnsName]) -> Vec<Held<'a>> {
    endpoints
        .iter()
        .map(|e| Held {
            authority: e.authority().as_str(),
            host: e.host().map(Authority::as_str),
            source: e
                .source()
                .and_then(|s| names.iter().position(|n| n.url == s)),
        })
        .collect()
}

/// Counts and logs each name's answer. `failing` says, per name, whether
/// its last round failed: a failure is a warning when it starts, and
/// recovery is logged, not every failed round.
fn record(
    pool: &Pool,
    answers: &[Answer],
    held: &[Held<'_>],
    failing: &mut Vec<bool>,
    metrics: &Metrics,
) {
    let Some(discovery) = pool.discovery() else {
        return;
    };
    let counters = metrics.dns_resolutions(pool.model(), pool.name());
    failing.resize(discovery.names.len(), false);
    for (source, (answer, name)) in answers.iter().zip(&discovery.names).enumerate() {
        let failed_before =
            std::mem::replace(&mut failing[source], matches!(answer, Answer::Failed(_)));
        if failed_before && !matches!(answer, Answer::Failed(_)) {
            info!(model = pool.model(), pool = %pool.name(), name = %name.url, "DNS resolution works again");
        }
        match answer {
            Answer::Found(_) => counters[0].inc(),
            Answer::Gone(why) => {
                counters[1].inc();
                if held.iter().any(|h| h.source == Some(source)) {
                    info!(model = pool.model(), pool = %pool.name(), name = %name.url, why = %why, "name has no records any more; its endpoints drain");
                } else {
                    // Said once per round while empty: a standby scaled to
                    // zero is normal, so not a warning.
                    tracing::debug!(model = pool.model(), pool = %pool.name(), name = %name.url, why = %why, "name has no records");
                }
            }
            Answer::Failed(why) if failed_before => {
                counters[2].inc();
                tracing::debug!(model = pool.model(), pool = %pool.name(), name = %name.url, error = %why, "DNS resolution still failing");
            }
            Answer::Failed(why) => {
                counters[2].inc();
                warn!(model = pool.model(), pool = %pool.name(), name = %name.url, error = %why, "DNS resolution failed; keeping the endpoints last resolved until it works again");
            }
        }
    }
}

/// Builds and installs the new set; logs, records and cleans up the change.
#[allow(clippy::too_many_arguments)]
fn install(
    pool: &Pool,
    writer: &Writer<'_>,
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
    pool.set_members(writer, next.into_boxed_slice());
    for url in &removed {
        // Requests still on it finish; its gauge would otherwise go on
        // saying healthy for an endpoint the pool no longer has. Under the
        // writer: a reload that pauses discovery to build this pool's
        // replacement (which shares the series) waits for this to end.
        metrics.forget_endpoint(pool.model(), pool.name(), url);
    }
    info!(
        model = pool.model(),
        pool = %pool.name(),
        added = ?added,
        removed = ?removed,
        "pool endpoints changed"
    );
    events.record(EventKind::Discovery {
        model: pool.model().to_string(),
        pool: pool.name(),
        added,
        removed,
    });
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

/// An endpoint the pool has: its address, the name and port it was found
/// by, and the entry that name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held<'a> {
    pub authority: &'a str,
    pub host: Option<&'a str>,
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
                    // Used when a reload builds the endpoint again.
                    host: h.host.unwrap_or_default().to_string(),
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

/// Every name's answer, asked side by side; a name without one by
/// `deadline` failed.
async fn resolve_all(
    resolver: &TokioResolver,
    names: &[DnsName],
    deadline: Instant,
) -> Vec<Answer> {
    let mut answers: Vec<Answer> = names
        .iter()
        .map(|_| Answer::Failed("no answer before the deadline".to_string()))
        .collect();
    let mut asking = JoinSet::new();
    for (source, name) in names.iter().enumerate() {
        let (resolver, name) = (resolver.clone(), name.clone());
        asking.spawn(async move { (source, resolve(&resolver, &name, source).await) });
    }
    // Dropping the set at the deadline aborts the queries still out.
    while let Ok(Some(done)) = tokio::time::timeout_at(deadline, asking.join_next()).await {
        match done {
            Ok((source, answer)) => answers[source] = answer,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    answers
}

/// Asks DNS about one name, the `source`th of the pool's.
async fn resolve(resolver: &TokioResolver, name: &DnsName, source: usize) -> Answer {
    let answer = match &name.lookup {
        Lookup::Address { host, port } => {
            match addresses(resolver, candidates(resolver, host), host, *port).await {
                Ok(wants) => Answer::Found(wants),
                Err(answer) => answer,
            }
        }
        Lookup::Srv { name: srv } => match resolver.srv_lookup(srv.as_str()).await {
            Err(e) => classify(&e),
            Ok(records) => {
                // The targets side by side.
                let mut targets = JoinSet::new();
                for record in records.iter() {
                    let target = record.target().clone();
                    let host = target.to_utf8().trim_end_matches('.').to_string();
                    let (resolver, port) = (resolver.clone(), record.port());
                    targets.spawn(
                        async move { addresses(&resolver, vec![target], &host, port).await },
                    );
                }
                let mut wants = Vec::new();
                let mut failed = None;
                while let Some(done) = targets.join_next().await {
                    match done {
                        Ok(Ok(found)) => wants.extend(found),
                        // A target with no address (neither A nor AAAA)
                        // has no endpoint.
                        Ok(Err(Answer::Gone(_))) => {}
                        Ok(Err(other)) => failed = Some(other),
                        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                        Err(e) => failed = Some(Answer::Failed(e.to_string())),
                    }
                }
                // One target unanswered: the name's set is not known.
                failed.unwrap_or(Answer::Found(wants))
            }
        },
    };
    tag(answer, source)
}

/// The names `host` is asked as, in order, as the resolver's own address
/// lookup would (its search domains and `ndots`), so that a failure of one
/// is seen and not hidden by a later one's NXDOMAIN.
fn candidates(resolver: &TokioResolver, host: &str) -> Vec<Name> {
    let Ok(name) = Name::from_utf8(host) else {
        return Vec::new();
    };
    if name.is_fqdn() {
        return vec![name];
    }
    let config = resolver.config();
    let mut raw = name.clone();
    raw.set_fqdn(true);
    let raw_first = usize::from(name.num_labels()) > resolver.options().ndots;
    let mut names = Vec::new();
    if raw_first {
        names.push(raw.clone());
    }
    for domain in config.search().iter().chain(config.domain()) {
        if let Ok(mut searched) = name.clone().append_domain(domain) {
            searched.set_fqdn(true);
            if !names.contains(&searched) {
                names.push(searched);
            }
        }
    }
    if !names.contains(&raw) {
        names.push(raw);
    }
    names
}

/// The A and AAAA records of the first of `names` that has any, each on
/// `port`; `host` and `port` are the `Host` of its endpoints. A name that
/// failed stops the search: a later one's NXDOMAIN would hide it.
async fn addresses(
    resolver: &TokioResolver,
    names: Vec<Name>,
    host: &str,
    port: u16,
) -> Result<Vec<Want>, Answer> {
    let mut gone = Answer::Gone(format!("no name to look up for {host}"));
    for name in names {
        let (v4, v6) = tokio::join!(
            resolver.ipv4_lookup(name.clone()),
            resolver.ipv6_lookup(name)
        );
        let v4 = v4
            .map(|l| l.iter().map(|a| IpAddr::V4(a.0)).collect())
            .map_err(|e| classify(&e));
        let v6 = v6
            .map(|l| l.iter().map(|a| IpAddr::V6(a.0)).collect())
            .map_err(|e| classify(&e));
        match both(v4, v6) {
            Ok(ips) => {
                let host = format!("{host}:{port}");
                return Ok(ips
                    .into_iter()
                    .map(|ip| Want {
                        authority: SocketAddr::new(ip, port).to_string(),
                        host: host.clone(),
                        source: 0,
                    })
                    .collect());
            }
            Err(Answer::Gone(why)) => gone = Answer::Gone(why),
            Err(failed) => return Err(failed),
        }
    }
    Err(gone)
}

/// One name's addresses from its A and its AAAA answer: failed if either
/// failed (a lost packet must not drop a family's endpoints), gone if both
/// are authoritatively empty, else every address either gave.
fn both(
    v4: Result<Vec<IpAddr>, Answer>,
    v6: Result<Vec<IpAddr>, Answer>,
) -> Result<Vec<IpAddr>, Answer> {
    match (v4, v6) {
        (Err(failed @ Answer::Failed(_)), _) | (_, Err(failed @ Answer::Failed(_))) => Err(failed),
        (v4, v6) => {
            let gone = match (&v4, &v6) {
                (Err(why), _) | (_, Err(why)) => why.clone(),
                _ => Answer::Gone("no addresses".to_string()),
            };
            let ips: Vec<IpAddr> = v4
                .unwrap_or_default()
                .into_iter()
                .chain(v6.unwrap_or_default())
                .collect();
            if ips.is_empty() {
                Err(gone)
            } else {
                Ok(ips)
            }
        }
    }
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
