//! switchyard: a layer-7 reverse proxy for ML model servers with blue-green
//! deployment. Each model has two pools of upstreams, `blue` and `green`;
//! one is active, and a switch between them is atomic, instant, persisted
//! and reversible.
//!
//! # Layout
//! - `config`: TOML schema, defaults and validation into a typed [`Config`].
//! - `route`: the routing table, request (host, path) to model.
//! - `switch`: per-model active-pool pointer; flip, activate, rollback;
//!   changes other instances made, applied.
//! - `store`: where the switch state is kept: the state file, or etcd shared
//!   by a fleet (with its local cache).
//! - `pool`: endpoints, balancing, in-flight counting, the upstream client.
//! - `health`: active probes, passive ejection, warm standby connections.
//! - `discovery`: the endpoints of `discover = "dns"` pools, resolved again
//!   every interval and installed as the pool's endpoint set.
//! - `proxy`: the inbound listener and the forwarding of one request.
//! - `admin`: the admin listener and its JSON handlers.
//! - `client`: the command-line client of the admin API (`switchyard status`,
//!   `flip`, ...).
//! - `metrics`: metric names, the registry, per-pool handles.
//! - `server`: the accept loop and graceful drain every listener shares.
//! - `reload`: SIGHUP and `POST /reload`: the config applied again, or not.
//! - `demo`: the built-in toy model servers behind `switchyard demo`.
//! - `tls`: certificates and keys, inbound TLS with reload, upstream TLS.
//! - `watch`: after a switch, judges the new pool and rolls back on a breach.
//! - `rollout`: progressive delivery: a split moved step by step, each step
//!   judged in-process, aborted on a breach, switched at 100 %.
//! - `validate`: `[[models.validate]]` checks run against a pool before a
//!   switch, and their report.
//! - `shadow`: live requests mirrored to the standby, answers compared.
//! - `events`: the event log behind `GET /events`.
//! - `compare`: two JSON answers compared within a tolerance.
//!
//! [`run`] wires them: it takes a checked config, bound listeners and a
//! shutdown future, and returns when shutdown has drained.

pub mod admin;
pub mod client;
pub mod compare;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod events;
pub mod health;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod rollout;
pub mod route;
pub mod server;
pub mod shadow;
pub mod store;
pub mod switch;
pub mod tls;
pub mod validate;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;

use crate::admin::Admin;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::pool::PoolName;
use crate::proxy::Proxy;
use crate::switch::{Control, Model, StateError, Switchboard};

/// Displays an error with its sources, `a: b: c`: one line for a log field
/// or a status message, with the cause that says why (hyper's and the
/// connector's errors wrap the io error that does).
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

/// Why switchyard stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot bind the {which} listener on {addr}")]
    Bind {
        which: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    AdminToken(#[from] admin::TokenError),
    #[error("refusing to serve the admin API on {addr} without a token: anyone who reaches it can move traffic; set admin.token_file or {}, or listen on a loopback address such as 127.0.0.1:9901", admin::TOKEN_ENV)]
    InsecureAdmin { addr: SocketAddr },
    #[error("cannot set up TLS for the {which} listener")]
    Tls {
        which: &'static str,
        #[source]
        source: Box<tls::TlsError>,
    },
    #[error("the {0} task stopped unexpectedly")]
    Task(&'static str, #[source] Option<tokio::task::JoinError>),
}

/// The bound listeners `run` serves.
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
    /// `proxy.preview_listen`: requests go to the standby pool.
    pub preview: Option<TcpListener>,
}

// === impl Listeners ===

impl Listeners {
    /// Binds the addresses the config names.
    pub async fn bind(config: &Config) -> Result<Listeners, RunError> {
        Ok(Listeners {
            proxy: bind("proxy", config.proxy.listen).await?,
            admin: bind("admin", config.admin.listen).await?,
            preview: match config.proxy.preview_listen {
                Some(addr) => Some(bind("preview", addr).await?),
                None => None,
            },
        })
    }
}

async fn bind(which: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind {
            which,
            addr,
            source,
        })
}

/// Runs the proxy and admin listeners until `shutdown` resolves, then stops
/// accepting and drains in-flight requests for at most `drain_timeout`.
///
/// Fails before serving anything when the state cannot be read (the state
/// file, or etcd with no local cache to start from) or written: the active
/// pools must be known before the first request.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let admin_addr = listeners.admin.local_addr().unwrap_or(config.admin.listen);
    let token = admin_token(&config, admin_addr)?;
    let metrics = Metrics::new();
    let configured: Vec<(String, PoolName)> = config
        .models
        .iter()
        .map(|m| (m.name.clone(), m.active))
        .collect();
    let store = store::open(&config.state, &metrics)?;
    let saved = store.load().await?;
    let control = Control::starting(saved, &configured, store.is_shared());

    let mut models = Vec::with_capacity(config.models.len());
    for m in &config.models {
        let active = control.state(&m.name).map_or(m.active, |s| s.active);
        let model = Model::new(m, active, &config.proxy.upstream(), &metrics);
        // A split survives a restart as the active pool does.
        model.store_routing(active, control.state(&m.name).and_then(|s| s.split));
        models.push(Arc::new(model));
    }
    for m in &models {
        info!(model = m.name(), active = %m.active_name(), path_prefix = m.path_prefix(), "model loaded");
    }

    let events = Events::new();
    // Dns pools get their first set before anything serves: side by side,
    // names too, all under one deadline (the longest round any may take),
    // and shutdown ends the wait.
    let mut shutdown = std::pin::pin!(shutdown);
    let deadline = tokio::time::Instant::now()
        + discovery::dns_pools(&models)
            .filter_map(|p| p.discovery().map(discovery::round_limit))
            .max()
            .unwrap_or_default();
    let mut first = JoinSet::new();
    for pool in discovery::dns_pools(&models) {
        let (metrics, events) = (metrics.clone(), events.clone());
        first.spawn(async move {
            discovery::resolve_first(&pool, deadline, &metrics, &events).await;
        });
    }
    loop {
        tokio::select! {
            () = shutdown.as_mut() => {
                info!("shutting down before serving: endpoint discovery was not done");
                return Ok(());
            }
            done = first.join_next() => match done {
                None => break,
                Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Some(_) => {}
            },
        }
    }
    let routes = Proxy::routes(&models);
    let (checker, watch) = health::Checker::new(&models, events.clone());
    let (discoverer, discovery) =
        discovery::Discoverer::new(&models, metrics.clone(), events.clone());
    let switchboard =
        Arc::new(Switchboard::start(models, control, Arc::clone(&store), events).await?);
    let proxy = Arc::new(Proxy::new(
        routes,
        metrics.unrouted().clone(),
        config.proxy.limits,
    ));
    let hangups = hangups();
    let proxy_tls = server_tls("proxy", config.proxy.tls.as_ref())?;
    let admin_tls = server_tls("admin", config.admin.tls.as_ref())?;
    let drain = config.proxy.drain_timeout;
    let metrics_require_token = config.admin.metrics_require_token;
    let certificates: Vec<_> = [&proxy_tls, &admin_tls]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let reloader = Arc::new(reload::Reloader::new(
        config,
        metrics.clone(),
        Arc::clone(&switchboard),
        Arc::clone(&proxy),
        watch,
        discovery,
        certificates,
    ));
    let watcher = watch::Watcher::new(Arc::clone(&switchboard));
    let roller = rollout::Roller::new(Arc::clone(&switchboard));
    let followed = Arc::clone(&switchboard);
    let proxy_gauges = metrics.client_connections("proxy");
    let preview_gauges = metrics.client_connections("preview");
    let admin = Arc::new(Admin::new(
        switchboard,
        metrics,
        token,
        metrics_require_token,
        Arc::clone(&reloader),
    ));
    log_listening("proxy", &listeners.proxy);
    log_listening("admin", &listeners.admin);

    // Cancelling the root stops every task; each task holds a child token.
    let root = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(
        Arc::clone(&proxy)
            .serve(
                listeners.proxy,
                proxy_tls.clone(),
                false,
                root.child_token(),
                drain,
                proxy_gauges,
            )
            .map_done("proxy"),
    );
    if let Some(preview) = listeners.preview {
        log_listening("preview", &preview);
        tasks.spawn(
            proxy
                .serve(
                    preview,
                    proxy_tls.clone(),
                    true,
                    root.child_token(),
                    drain,
                    preview_gauges,
                )
                .map_done("preview"),
        );
    }
    tasks.spawn(
        admin
            .serve(
                listeners.admin,
                admin_tls.clone(),
                root.child_token(),
                drain,
            )
            .map_done("admin"),
    );
    tasks.spawn(checker.run(root.child_token()).map_done("health"));
    tasks.spawn(discoverer.run(root.child_token()).map_done("discovery"));
    tasks.spawn(watcher.run(root.child_token()).map_done("watch"));
    tasks.spawn(roller.run(root.child_token()).map_done("rollout"));
    tasks.spawn(
        store
            .follow(followed, root.child_token())
            .map_done("state store"),
    );
    tasks.spawn(on_hangup(hangups, reloader, root.child_token()).map_done("reload"));

    let result = tokio::select! {
        () = shutdown => {
            info!("shutting down: no new connections; draining in-flight requests");
            Ok(())
        }
        // The serve and probe loops only return once cancelled, so any task ending
        // here is a failure (a panic, most likely).
        Some(ended) = tasks.join_next() => match ended {
            Ok(name) => Err(RunError::Task(name, None)),
            Err(e) => Err(RunError::Task("server", Some(e))),
        },
    };
    root.cancel();
    while let Some(ended) = tasks.join_next().await {
        if let Err(e) = ended {
            if result.is_ok() {
                return Err(RunError::Task("server", Some(e)));
            }
        }
    }
    info!("stopped");
    result
}

/// Loads the admin token, and refuses an admin listener on `addr` that
/// others can reach when there is none: whoever reaches the admin API can
/// move a model's traffic. `serve` calls it before binding anything.
pub fn admin_token(config: &Config, addr: SocketAddr) -> Result<Option<admin::Token>, RunError> {
    let token = admin::Token::load(&config.admin)?;
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(RunError::InsecureAdmin { addr });
    }
    Ok(token)
}

fn server_tls(
    which: &'static str,
    files: Option<&tls::TlsFiles>,
) -> Result<Option<Arc<tls::ServerTls>>, RunError> {
    files
        .map(|files| {
            tls::ServerTls::new(files)
                .map(Arc::new)
                .map_err(|e| RunError::Tls {
                    which,
                    source: Box::new(e),
                })
        })
        .transpose()
}

/// Listens for SIGHUP. Registered before anything serves, so a SIGHUP
/// after startup never takes the default action (terminating the process).
fn hangups() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup())
        .inspect_err(|e| warn!(error = %e, "cannot listen for SIGHUP; it will not reload"))
        .ok()
}

/// On every SIGHUP: re-reads the listeners' certificates, then the config
/// file (see [`reload`]). Failures are logged; what runs stays.
async fn on_hangup(
    hangups: Option<tokio::signal::unix::Signal>,
    reloader: Arc<reload::Reloader>,
    token: CancellationToken,
) {
    let Some(mut hangups) = hangups else {
        return token.cancelled().await;
    };
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            got = hangups.recv() => if got.is_none() {
                return token.cancelled().await;
            },
        }
        info!("SIGHUP: reloading certificates and config");
        // Its own task, so shutdown does not wait for it; the result is
        // logged by the reloader either way.
        let reloader = Arc::clone(&reloader);
        tokio::spawn(async move {
            reloader.reload_certificates().await;
            let _ = reloader.reload("SIGHUP").await;
        });
    }
}

fn log_listening(which: &'static str, listener: &TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        info!(listener = which, %addr, "listening");
    }
}

/// Tags a finished serve loop with its name.
trait MapDone: Future<Output = ()> + Sized {
    fn map_done(self, name: &'static str) -> impl Future<Output = &'static str> {
        async move {
            self.await;
            name
        }
    }
}

impl<F: Future<Output = ()>> MapDone for F {}
