//! The command-line client of the admin API: `switchyard status`, `flip`,
//! `activate`, `rollback`, `validate`, `events`, `weight` and `rollout`.
//!
//! Each command is one admin call (two for `status` of every model, which
//! also reads each model's watch and shadow), printed as an aligned table
//! for people or as the API's JSON for scripts (`--json`). The outcome is
//! what a pipeline branches on: [`Outcome::Done`], [`Outcome::Refused`] (the
//! API said 409, a validation did not pass, or a switch happened but the old
//! pool did not drain in time), or a [`ClientError`] (usage, connection,
//! token, unknown model, server failure), each with its reason on stderr.
//!
//! - `client/api.rs`: the HTTP side: URL, token, TLS, timeouts, answers.
//! - `client/render.rs`: tables, colour, times, one line per event.
//! - `client/events.rs`: `events`, listed or followed (server-sent events).
//! - `client/rollout.rs`: `weight`, and `rollout` with its progress line.

mod api;
mod events;
mod render;
mod rollout;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use crate::pool::PoolName;

use api::{AdminClient, Answer};
use render::Paint;

/// Where the admin API is and how to talk to it: the command line's
/// `--admin`, `--token-file`, `--ca-file`, `--timeout` and `--json`.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL, `http://host:port` (a path prefix is kept); a bare
    /// `host:port` means `http://`.
    pub admin: String,
    /// The file holding the bearer token; without it, `SWITCHYARD_ADMIN_TOKEN`.
    pub token_file: Option<PathBuf>,
    /// PEM CAs to trust for an `https://` admin URL (default: webpki roots).
    pub ca_file: Option<PathBuf>,
    /// How long an answer may take (a `wait_drained` wait comes on top).
    pub timeout: Duration,
    /// Print the API's JSON instead of tables.
    pub json: bool,
}

/// One client command.
#[derive(Debug, Clone)]
pub enum Call {
    /// `GET /models`, or `GET /models/{name}`.
    Status { model: Option<String> },
    /// `POST /models/{name}/flip|activate/{pool}|rollback`.
    Switch {
        model: String,
        kind: SwitchKind,
        force: bool,
        /// `?validate=`: `None` leaves it to the model's config.
        validate: Option<bool>,
        wait_drained: Option<Duration>,
    },
    /// `POST /models/{name}/validate[?pool=]`.
    Validate {
        model: String,
        pool: Option<PoolName>,
    },
    /// `GET /events[?since=][&follow=true]`.
    Events { follow: bool, since: Option<u64> },
    /// `POST /models/{name}/weight?{pool}={percent}[&force=true]`.
    Weight {
        model: String,
        pool: PoolName,
        /// As the API takes it: `10`, `2.5`.
        percent: String,
        force: bool,
    },
    /// `POST /models/{name}/rollout[/pause|resume|abort]`, or `GET` for
    /// the status; `wait` follows the rollout until it ends.
    Rollout {
        model: String,
        action: RolloutAction,
        wait: bool,
    },
}

/// What `switchyard rollout` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    Start,
    Pause,
    Resume,
    Abort,
    Status,
}

/// Which switch.
#[derive(Debug, Clone, Copy)]
pub enum SwitchKind {
    Flip { expect: Option<PoolName> },
    Activate(PoolName),
    Rollback,
}

/// How a command that reached the API ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done as asked (exit 0).
    Done,
    /// Refused, or not done in full (exit 1): a 409 (guard, expectation,
    /// validation, nothing to roll back), a validation report that did not
    /// pass, or a switch whose old pool still had requests in flight when
    /// `wait_drained` ran out (504: switched, but do not retire it).
    Refused,
}

/// Why a command could not be carried out (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("admin URL {url:?} is not usable: {why}")]
    BadUrl { url: String, why: String },
    #[error("cannot read the admin token file {}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin token file {} is empty; put the token in it", path.display())]
    EmptyToken { path: PathBuf },
    #[error("admin token file {} is longer than 4 KiB; is it the right file?", path.display())]
    TokenTooLong { path: PathBuf },
    #[error("cannot set up TLS for the admin API")]
    Tls(#[source] crate::tls::TlsError),
    #[error("cannot reach the admin API at {url}; is switchyard running there? (set --admin or SWITCHYARD_ADMIN)")]
    Connect {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the admin call {url} failed")]
    Request {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "no answer from the admin API at {url} within {after:?}; raise --timeout if it is busy{}",
        if *.changes { "; the call may have been carried out anyway (a switch runs to its end once begun): check with `switchyard status`" } else { "" }
    )]
    Timeout {
        url: String,
        /// The deadline that ran out (`--timeout`, plus any wait asked for).
        after: Duration,
        /// A POST: the server may have done it.
        changes: bool,
    },
    #[error("{}", unauthorized(.token))]
    Unauthorized {
        /// Where the token sent came from, `None` if none was sent.
        token: Option<String>,
    },
    /// The API's own reason, from its `{"error": ...}`.
    #[error("{message} ({status})")]
    Api { status: StatusCode, message: String },
    #[error("the admin API answered {url} with {status} and a body that is not JSON: {snippet:?}")]
    NotJson {
        url: String,
        status: StatusCode,
        snippet: String,
    },
    #[error("the admin API's answer to {url} is too large: answer larger than {limit}")]
    TooLarge { url: String, limit: &'static str },
    #[error("no event or keepalive from {url} in {after:?}; the connection is likely dead")]
    StreamSilent { url: String, after: Duration },
    #[error("the event stream ended: switchyard closed the connection")]
    StreamEnded,
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
}

fn unauthorized(token: &Option<String>) -> String {
    match token {
        None => "the admin API needs a token (401); pass --token-file FILE or set SWITCHYARD_ADMIN_TOKEN_FILE".to_string(),
        Some(from) => format!(
            "the admin API refused the token from {from} (401); it must equal the server's admin token"
        ),
    }
}

/// How output looks: colour on stdout, a progress line on stderr.
#[derive(Debug, Clone, Copy)]
struct Term {
    paint: Paint,
    /// Show `wait_drained` progress on stderr.
    progress: bool,
}

impl Term {
    /// Colour only when stdout is a terminal and `NO_COLOR` is unset; the
    /// progress line only when stderr is a terminal; neither with `--json`.
    fn detect(json: bool) -> Term {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Term {
            paint: Paint::new(!json && !no_color && std::io::stdout().is_terminal()),
            progress: !json && std::io::stderr().is_terminal(),
        }
    }
}

/// Runs `call` against the admin API at `target`, printing the answer.
pub async fn run(target: &Target, call: Call) -> Result<Outcome, ClientError> {
    let client = AdminClient::new(target)?;
    let term = Term::detect(target.json);
    let ran = match call {
        Call::Status { model: None } => status_all(&client, target.json, term).await,
        Call::Status { model: Some(m) } => status_one(&client, &m, target.json, term).await,
        Call::Switch {
            model,
            kind,
            force,
            validate,
            wait_drained,
        } => {
            let path = switch_path(&model, kind, force, validate, wait_drained);
            switch(&client, &model, &path, wait_drained, target.json, term).await
        }
        Call::Validate { model, pool } => validate(&client, &model, pool, target.json, term).await,
        Call::Events { follow, since } => {
            events::run(&client, follow, since, target.json, term.paint).await
        }
        Call::Weight {
            model,
            pool,
            percent,
            force,
        } => rollout::weight(&client, &model, pool, &percent, force, target.json, term).await,
        Call::Rollout {
            model,
            action,
            wait,
        } => rollout::run(&client, &model, action, wait, target.json, term).await,
    };
    match ran {
        // A reader that went away (`| head`) is not a failure.
        Err(ClientError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(Outcome::Done)
        }
        other => other,
    }
}

/// The path of a switch call with its query.
fn switch_path(
    model: &str,
    kind: SwitchKind,
    force: bool,
    validate: Option<bool>,
    wait_drained: Option<Duration>,
) -> String {
    let model = api::segment(model);
    let mut path = match kind {
        SwitchKind::Flip { .. } => format!("/models/{model}/flip"),
        SwitchKind::Activate(pool) => format!("/models/{model}/activate/{pool}"),
        SwitchKind::Rollback => format!("/models/{model}/rollback"),
    };
    let mut query = Vec::new();
    if let SwitchKind::Flip { expect: Some(p) } = kind {
        query.push(format!("expect={p}"));
    }
    if force {
        query.push("force=true".to_string());
    }
    if let Some(v) = validate {
        query.push(format!("validate={v}"));
    }
    if let Some(wait) = wait_drained {
        let ms = wait.as_millis();
        query.push(match ms % 1000 {
            0 => format!("wait_drained={}s", ms / 1000),
            _ => format!("wait_drained={ms}ms"),
        });
    }
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    path
}

async fn status_all(client: &AdminClient, json: bool, term: Term) -> Result<Outcome, ClientError> {
    let body = client.get("/models").await?.into_ok()?;
    if json {
        print_json(&body)?;
        return Ok(Outcome::Done);
    }
    let models = body["models"].as_array().cloned().unwrap_or_default();
    // The summary lacks the watch and the shadow: read each model's detail.
    let mut details = Vec::with_capacity(models.len());
    for m in &models {
        let name = m["name"].as_str().unwrap_or_default();
        let path = format!("/models/{}", api::segment(name));
        details.push(client.get(&path).await?.into_ok()?);
    }
    let now = render::now_unix_ms();
    let mut text = render::models(&details, now, term.paint);
    if let Some(store) = render::store(&body["state_store"], now, term.paint) {
        text.push_str(&store);
    }
    print(&text)?;
    Ok(Outcome::Done)
}

async fn status_one(
    client: &AdminClient,
    model: &str,
    json: bool,
    term: Term,
) -> Result<Outcome, ClientError> {
    let path = format!("/models/{}", api::segment(model));
    let body = client.get(&path).await?.into_ok()?;
    if json {
        print_json(&body)?;
    } else {
        print(&render::model(&body, render::now_unix_ms(), term.paint))?;
    }
    Ok(Outcome::Done)
}

async fn switch(
    client: &AdminClient,
    model: &str,
    path: &str,
    wait_drained: Option<Duration>,
    json: bool,
    term: Term,
) -> Result<Outcome, ClientError> {
    let extra = wait_drained.unwrap_or_default();
    let call = client.post(path, extra);
    let answer = match (wait_drained, term.progress) {
        (Some(_), true) => with_progress(client, model, call).await?,
        _ => call.await?,
    };
    let switched = answer.body.get("switched").is_some();
    match answer.status {
        s if s.is_success() => {
            if json {
                print_json(&answer.body)?;
            } else {
                print(&render::switched(&answer.body, term.paint))?;
            }
            Ok(Outcome::Done)
        }
        // Switched, but the old pool still has requests in flight.
        StatusCode::GATEWAY_TIMEOUT if switched => {
            if json {
                print_json(&answer.body)?;
            } else {
                print(&render::switched(&answer.body, term.paint))?;
            }
            refused(&answer.body)
        }
        StatusCode::CONFLICT => {
            if json {
                print_json(&answer.body)?;
            }
            refused(&answer.body)
        }
        _ => Err(answer.into_error()),
    }
}

/// Awaits `call`, showing on stderr how many requests the old pool still
/// has in flight (read every 500 ms); the line is cleared at the end.
async fn with_progress(
    client: &AdminClient,
    model: &str,
    call: impl std::future::Future<Output = Result<Answer, ClientError>>,
) -> Result<Answer, ClientError> {
    let path = format!("/models/{}", api::segment(model));
    let progress = async {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once; the switch has barely begun then.
        tick.tick().await;
        loop {
            tick.tick().await;
            let Ok(detail) = client.get(&path).await.and_then(Answer::into_ok) else {
                continue;
            };
            if let Some(line) = render::drain_progress(&detail) {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[K{line}");
                let _ = err.flush();
            }
        }
    };
    let answer = tokio::select! {
        answer = call => answer,
        () = progress => unreachable!("the progress loop never ends"),
    };
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[K");
    let _ = err.flush();
    answer
}

async fn validate(
    client: &AdminClient,
    model: &str,
    pool: Option<PoolName>,
    json: bool,
    term: Term,
) -> Result<Outcome, ClientError> {
    let mut path = format!("/models/{}/validate", api::segment(model));
    if let Some(p) = pool {
        path.push_str(&format!("?pool={p}"));
    }
    let answer = client.post(&path, Duration::ZERO).await?;
    if answer.status == StatusCode::CONFLICT {
        if json {
            print_json(&answer.body)?;
        }
        return refused(&answer.body);
    }
    let report = answer.into_ok()?;
    if json {
        print_json(&report)?;
    } else {
        print(&render::report(&report, term.paint))?;
    }
    if report["passed"] == Value::Bool(true) {
        Ok(Outcome::Done)
    } else {
        let failed = report["checks"]
            .as_array()
            .map_or(0, |c| c.iter().filter(|c| c["passed"] != true).count());
        let total = report["checks"].as_array().map_or(0, Vec::len);
        eprintln!(
            "refused: model {:?}: pool {} failed {failed} of {total} check(s)",
            report["model"].as_str().unwrap_or(model),
            report["pool"].as_str().unwrap_or("?"),
        );
        Ok(Outcome::Refused)
    }
}

/// Prints the API's reason for a refusal, and its details, on stderr.
fn refused(body: &Value) -> Result<Outcome, ClientError> {
    let mut err = std::io::stderr().lock();
    err.write_all(render::refusal(body).as_bytes())
        .map_err(ClientError::Output)?;
    Ok(Outcome::Refused)
}

fn print(text: &str) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(ClientError::Output)
}

/// One JSON document on one line.
fn print_json(value: &Value) -> Result<(), ClientError> {
    print(&format!("{value}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_paths_carry_their_flags() {
        let flip = SwitchKind::Flip {
            expect: Some(PoolName::Blue),
        };
        assert_eq!(
            switch_path("iris", flip, false, None, None),
            "/models/iris/flip?expect=blue"
        );
        assert_eq!(
            switch_path(
                "iris",
                SwitchKind::Activate(PoolName::Green),
                true,
                Some(false),
                Some(Duration::from_secs(10)),
            ),
            "/models/iris/activate/green?force=true&validate=false&wait_drained=10s"
        );
        assert_eq!(
            switch_path("a b", SwitchKind::Rollback, false, None, None),
            "/models/a%20b/rollback"
        );
    }

    #[test]
    fn unauthorized_says_what_to_do() {
        let none = ClientError::Unauthorized { token: None }.to_string();
        assert!(none.contains("--token-file"), "{none}");
        let wrong = ClientError::Unauthorized {
            token: Some("/etc/token".into()),
        }
        .to_string();
        assert!(wrong.contains("/etc/token"), "{wrong}");
    }
}
