//! `switchyard weight` and `switchyard rollout start|pause|resume|abort|status`:
//! one admin call each, and with `--wait` the rollout followed until it
//! ends, its progress on one line of stderr when that is a terminal.

use std::io::Write;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use super::api::{self, AdminClient, Answer};
use super::{print, print_json, refused, render, ClientError, Outcome, RolloutAction, Term};
use crate::pool::PoolName;

/// How often a followed rollout is read.
const POLL: Duration = Duration::from_millis(500);

/// `switchyard weight MODEL POOL PERCENT`.
pub(super) async fn weight(
    client: &AdminClient,
    model: &str,
    pool: PoolName,
    percent: &str,
    force: bool,
    json: bool,
    term: Term,
) -> Result<Outcome, ClientError> {
    let mut path = format!("/models/{}/weight?{pool}={percent}", api::segment(model));
    if force {
        path.push_str("&force=true");
    }
    let answer = client.post(&path, Duration::ZERO).await?;
    answered(answer, json, |body| render::weight(body, term.paint))
}

/// `switchyard rollout ACTION MODEL [--wait]`.
pub(super) async fn run(
    client: &AdminClient,
    model: &str,
    action: RolloutAction,
    wait: bool,
    json: bool,
    term: Term,
) -> Result<Outcome, ClientError> {
    let path = format!("/models/{}/rollout", api::segment(model));
    let answer = match action {
        RolloutAction::Status => client.get(&path).await?,
        RolloutAction::Start => client.post(&path, Duration::ZERO).await?,
        RolloutAction::Pause => {
            client
                .post(&format!("{path}/pause"), Duration::ZERO)
                .await?
        }
        RolloutAction::Resume => {
            client
                .post(&format!("{path}/resume"), Duration::ZERO)
                .await?
        }
        RolloutAction::Abort => {
            client
                .post(&format!("{path}/abort"), Duration::ZERO)
                .await?
        }
    };
    if !wait {
        return answered(answer, json, |body| {
            render::rollout(body, render::now_unix_ms(), term.paint)
        });
    }
    if answer.status == StatusCode::CONFLICT {
        if json {
            print_json(&answer.body)?;
        }
        return refused(&answer.body);
    }
    let body = follow(client, &path, answer.into_ok()?, term).await?;
    if json {
        print_json(&body)?;
    } else {
        print(&render::rollout(&body, render::now_unix_ms(), term.paint))?;
    }
    let rollout = &body["rollout"];
    if rollout["state"] == "completed" {
        return Ok(Outcome::Done);
    }
    let reason = rollout["reason"]
        .as_str()
        .unwrap_or("the rollout did not complete");
    eprintln!(
        "refused: model {model:?}: rollout {}: {reason}",
        rollout["state"].as_str().unwrap_or("ended")
    );
    Ok(Outcome::Refused)
}

/// Prints a 2xx answer (`render` for people), refuses on a 409, fails on
/// anything else.
fn answered(
    answer: Answer,
    json: bool,
    render: impl FnOnce(&Value) -> String,
) -> Result<Outcome, ClientError> {
    match answer.status {
        s if s.is_success() => {
            if json {
                print_json(&answer.body)?;
            } else {
                print(&render(&answer.body))?;
            }
            Ok(Outcome::Done)
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

/// Reads the rollout every [`POLL`] until it is neither running nor
/// paused; on a terminal, shows where it is on one line of stderr, cleared
/// at the end. Returns the last answer.
async fn follow(
    client: &AdminClient,
    path: &str,
    first: Value,
    term: Term,
) -> Result<Value, ClientError> {
    let mut body = first;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let live = matches!(
            body["rollout"]["state"].as_str(),
            Some("running" | "paused")
        );
        if !live {
            break;
        }
        if term.progress {
            let line = render::rollout_progress(&body);
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K{line}");
            let _ = err.flush();
        }
        tick.tick().await;
        body = client.get(path).await?.into_ok()?;
    }
    if term.progress {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K");
        let _ = err.flush();
    }
    Ok(body)
}
