//! The command line: parses arguments, sets up logging, picks exit codes.
//!
//! Exit codes of `serve`, `check` and `demo`: 0 done; 1 runtime failure
//! (bind, state file, crash); 2 bad configuration or usage.
//!
//! Exit codes of the admin client (`status`, `flip`, `activate`,
//! `rollback`, `validate`, `events`, `weight`, `rollout`): 0 done; 1
//! refused (409: guard, expectation, validation, a rollout call that does
//! not fit; a validation report that did not pass; a switch whose old pool
//! was not drained within `--wait-drained`; a rollout waited for that was
//! aborted or cancelled); 2 usage, connection, token or any other error;
//! the reason on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use switchyard::client::{self, Call, Outcome, RolloutAction, SwitchKind, Target};
use switchyard::config::{parse_duration, parse_permille, Config, LoadError};
use switchyard::pool::PoolName;
use switchyard::{ErrorChain, Listeners, RunError};

/// The allocator on Linux: jemalloc, which keeps each allocation size on
/// pages of its own. With glibc's malloc the small allocations an idle
/// connection keeps were scattered among the buffers its requests had
/// freed, so that freed memory stayed resident even after `malloc_trim`:
/// RSS at 10,000 parked connections 32 MiB, 26 with jemalloc; CPU per
/// request unchanged (see "Performance" in the README). Elsewhere the
/// system's allocator (jemalloc's background thread is Linux's only).
#[cfg(all(feature = "jemalloc", target_os = "linux"))]
mod allocator {
    #[global_allocator]
    static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// jemalloc's options (its `malloc_conf`; `_RJEM_MALLOC_CONF` in the
    /// environment overrides them). Pages freed stay mapped for about a
    /// second, for the next requests to reuse, then one background thread
    /// gives them back to the kernel: without it jemalloc returns memory
    /// only while allocating, and a process whose connections all went idle
    /// allocates nothing.
    #[unsafe(export_name = "_rjem_malloc_conf")]
    static MALLOC_CONF: &u8 =
        &b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0"
            [0];
}

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Blue-green reverse proxy for ML model servers"
)]
struct Cli {
    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config: exit 0, or print every error with its line and exit 2.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run two toy model servers and the proxy in front of them; needs no files.
    Demo,
    /// Show every model, or one model's pools and endpoints.
    Status {
        /// The model to show in full; every model when absent.
        model: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make the standby pool of MODEL active.
    Flip {
        model: String,
        /// Flip only if this pool is active now (else refused, exit 1).
        #[arg(long, value_name = "POOL")]
        expect: Option<PoolName>,
        #[command(flatten)]
        switch: SwitchArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make POOL (blue or green) of MODEL active; a no-op if it already is.
    Activate {
        model: String,
        pool: PoolName,
        #[command(flatten)]
        switch: SwitchArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Return MODEL to the pool active before its last switch.
    Rollback {
        model: String,
        /// Switch even if the target pool has no healthy endpoint.
        #[arg(long)]
        force: bool,
        /// Then wait until nothing is in flight on the pool traffic left.
        #[arg(long, value_name = "DURATION", value_parser = wait_duration)]
        wait_drained: Option<Duration>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run MODEL's validation checks against a pool without switching (exit
    /// 1 if any fails).
    Validate {
        model: String,
        /// The pool to check (default: the standby).
        #[arg(long)]
        pool: Option<PoolName>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Send PERCENT of MODEL's new requests to POOL (0 to 100, in steps of
    /// 0.1; naming the active pool gives the standby the rest; 0 ends the
    /// split).
    Weight {
        model: String,
        pool: PoolName,
        #[arg(value_parser = percent)]
        percent: String,
        /// Give a share to a pool with no healthy endpoint anyway.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Progressive rollouts of MODEL's standby pool along its
    /// [models.rollout] steps: start, pause, resume, abort, status.
    Rollout {
        #[command(subcommand)]
        action: RolloutCommand,
    },
    /// List the recent events (switches, validations, health, reloads), or
    /// follow them as they happen.
    Events {
        /// Keep printing events as they happen, until interrupted.
        #[arg(long)]
        follow: bool,
        /// Only events after this id (with --follow: first those).
        #[arg(long, value_name = "ID")]
        since: Option<u64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Start a rollout of the standby pool, at its first step.
    Start {
        model: String,
        /// Then follow it until it ends (exit 0 completed, 1 aborted).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Hold the running rollout at its step (the split stays).
    Pause {
        model: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run the paused rollout on, with the time its step had left.
    Resume {
        model: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// End the rollout: back to 0% on the new pool.
    Abort {
        model: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the rollout: step, weight, time left, figures, verdicts.
    Status {
        model: String,
        /// Follow it until it ends (exit 0 completed, 1 aborted).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How the client reaches the admin API.
#[derive(Args)]
struct AdminArgs {
    /// Base URL of the admin API.
    #[arg(
        long,
        value_name = "URL",
        env = "SWITCHYARD_ADMIN",
        default_value = "http://127.0.0.1:9901"
    )]
    admin: String,
    /// File holding the admin token, sent as `Authorization: Bearer`
    /// (without one: SWITCHYARD_ADMIN_TOKEN, if set).
    #[arg(long, value_name = "FILE", env = "SWITCHYARD_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// PEM file of CAs to trust for an https:// admin URL (default: the
    /// webpki roots).
    #[arg(long, value_name = "FILE", env = "SWITCHYARD_ADMIN_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// How long to wait for an answer (a --wait-drained wait comes on top).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print the API's JSON (one object per line) instead of tables.
    #[arg(long)]
    json: bool,
}

/// The flags of `flip` and `activate`.
#[derive(Args)]
struct SwitchArgs {
    /// Switch even if the target pool has no healthy endpoint.
    #[arg(long)]
    force: bool,
    /// Run the model's validation checks against the target first.
    #[arg(long, conflicts_with = "no_validate")]
    validate: bool,
    /// Skip the checks of a model with `validate_before_switch = true`.
    #[arg(long)]
    no_validate: bool,
    /// Then wait until nothing is in flight on the pool traffic left.
    #[arg(long, value_name = "DURATION", value_parser = wait_duration)]
    wait_drained: Option<Duration>,
}

impl SwitchArgs {
    fn into_call(self, model: String, kind: SwitchKind) -> Call {
        let validate = match (self.validate, self.no_validate) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        };
        Call::Switch {
            model,
            kind,
            force: self.force,
            validate,
            wait_drained: self.wait_drained,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A weight: a percentage from 0 to 100 in steps of 0.1, as the admin
/// API takes it.
fn percent(s: &str) -> Result<String, String> {
    match parse_permille(s.trim_end_matches('%')) {
        Some(_) => Ok(s.trim_end_matches('%').to_string()),
        None => Err(format!(
            "{s:?} is not a percentage from 0 to 100 in steps of 0.1, such as 10 or 2.5"
        )),
    }
}

/// A `--wait-drained` value: a duration of at most an hour, the admin
/// API's bound.
fn wait_duration(s: &str) -> Result<Duration, String> {
    const MAX: Duration = Duration::from_secs(3600);
    match parse_duration(s)? {
        d if d <= MAX => Ok(d),
        _ => Err(format!(
            "{s:?} is longer than the 1h the admin API waits at most"
        )),
    }
}

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;
const EXIT_REFUSED: u8 = 1;
const EXIT_CLIENT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Serve { config } => match Config::load(&config) {
            Ok(config) => {
                let threads = config.proxy.worker_threads;
                runtime(threads, serve(config))
            }
            Err(e) => config_error(&e),
        },
        Command::Demo => runtime(None, async {
            switchyard::demo::run(shutdown_signal())
                .await
                .map_err(Into::into)
        }),
        Command::Status { model, admin } => admin_call(admin, Call::Status { model }),
        Command::Flip {
            model,
            expect,
            switch,
            admin,
        } => admin_call(admin, switch.into_call(model, SwitchKind::Flip { expect })),
        Command::Activate {
            model,
            pool,
            switch,
            admin,
        } => admin_call(admin, switch.into_call(model, SwitchKind::Activate(pool))),
        Command::Rollback {
            model,
            force,
            wait_drained,
            admin,
        } => admin_call(
            admin,
            Call::Switch {
                model,
                kind: SwitchKind::Rollback,
                force,
                validate: None,
                wait_drained,
            },
        ),
        Command::Validate { model, pool, admin } => {
            admin_call(admin, Call::Validate { model, pool })
        }
        Command::Events {
            follow,
            since,
            admin,
        } => admin_call(admin, Call::Events { follow, since }),
        Command::Weight {
            model,
            pool,
            percent,
            force,
            admin,
        } => admin_call(
            admin,
            Call::Weight {
                model,
                pool,
                percent,
                force,
            },
        ),
        Command::Rollout { action } => {
            let (admin, model, action, wait) = match action {
                RolloutCommand::Start { model, wait, admin } => {
                    (admin, model, RolloutAction::Start, wait)
                }
                RolloutCommand::Pause { model, admin } => {
                    (admin, model, RolloutAction::Pause, false)
                }
                RolloutCommand::Resume { model, admin } => {
                    (admin, model, RolloutAction::Resume, false)
                }
                RolloutCommand::Abort { model, admin } => {
                    (admin, model, RolloutAction::Abort, false)
                }
                RolloutCommand::Status { model, wait, admin } => {
                    (admin, model, RolloutAction::Status, wait)
                }
            };
            admin_call(
                admin,
                Call::Rollout {
                    model,
                    action,
                    wait,
                },
            )
        }
    }
}

/// Runs one admin client command on a single-threaded runtime.
fn admin_call(args: AdminArgs, call: Call) -> ExitCode {
    let target = Target {
        admin: args.admin,
        token_file: args.token_file,
        ca_file: args.ca_file,
        timeout: args.timeout,
        json: args.json,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_CLIENT);
        }
    };
    match rt.block_on(client::run(&target, call)) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Refused) => ExitCode::from(EXIT_REFUSED),
        Err(e) => {
            eprintln!("error: {}", ErrorChain(&e));
            ExitCode::from(EXIT_CLIENT)
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} model{})",
                path.display(),
                config.models.len(),
                if config.models.len() == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => config_error(&e),
    }
}

fn config_error(e: &LoadError) -> ExitCode {
    match e {
        LoadError::Invalid(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            eprintln!(
                "{} error{} in the config",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
        }
        LoadError::Read { source, .. } => eprintln!("error: {e}: {source}"),
    }
    ExitCode::from(EXIT_CONFIG)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    // Refuse an exposed admin API before opening any socket.
    switchyard::admin_token(&config, config.admin.listen)?;
    let listeners = Listeners::bind(&config).await?;
    switchyard::run(config, listeners, shutdown)
        .await
        .map_err(|e: RunError| anyhow::Error::from(e))
        .context("switchyard stopped")
}

/// How many tasks the one-worker runtime polls between looks at the I/O
/// driver while tasks are ready (tokio's default is 61). Under the load
/// bench's 64 connections, 200 made a request cheaper and faster in 13
/// interleaved rounds of 13 (`benches/load/ab.sh`: proxy CPU per request
/// -2.6 %, p50 -5.5 %, req/s +3.2 %, p99 unchanged): fewer zero-timeout
/// `epoll_wait` calls, and the ready connections served in longer runs.
/// Not measured with more workers, so left at the default there.
const EVENT_INTERVAL: u32 = 200;

/// Runs `fut` on a runtime with `threads` workers (one per core when
/// `None`; the current thread alone for 1).
fn runtime(
    threads: Option<usize>,
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let mut builder = match threads {
        // One worker: a current-thread runtime. Same throughput, and in
        // `benches/load` a p99 lower in every round than the work-stealing
        // scheduler's with one worker (see "Performance" in the README).
        Some(1) => {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.event_interval(EVENT_INTERVAL);
            builder
        }
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now, before startup work, so a
/// signal that arrives while the state file loads still means "stop
/// cleanly"; the returned future resolves on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            (int, term) => {
                let e = int.err().or(term.err());
                tracing::warn!(error = ?e, "cannot install signal handlers; falling back to Ctrl-C only");
                // A failed ctrl_c wait leaves nothing to wait for: stop.
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
