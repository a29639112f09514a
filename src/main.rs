//! The command line: parses arguments, sets up logging, picks exit codes.
//!
//! Exit codes: 0 done; 1 runtime failure (bind, state file, crash);
//! 2 bad configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use switchyard::config::{Config, LoadError};
use switchyard::{Listeners, RunError};

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
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

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

/// Runs `fut` on a multi-threaded runtime with `threads` workers (one per
/// core when `None`).
fn runtime(
    threads: Option<usize>,
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
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
