//! The command-line client (`switchyard status`, `flip`, `activate`,
//! `rollback`, `validate`, `events`), run as a pipeline runs it: the real
//! binary against a real proxy's admin API, its output and its exit codes
//! (0 done, 1 refused, 2 usage or connection error).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use http::StatusCode;
use serde_json::Value;
use support::*;
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A finished command's result.
#[derive(Debug)]
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }
}

/// `switchyard ARGS`, with the client's environment cleared so the
/// machine's settings cannot leak into a test.
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("SWITCHYARD_ADMIN")
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .env_remove("SWITCHYARD_ADMIN_TOKEN_FILE")
        .env_remove("SWITCHYARD_ADMIN_CA_FILE")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// Runs `switchyard ARGS` to completion (within the test deadline), off
/// the runtime's threads so the in-process proxy keeps answering.
async fn switchyard(args: &[&str]) -> Output {
    let mut cmd = command(args);
    let what = format!("switchyard {}", args.join(" "));
    let out = within(&what, tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .expect("the blocking task")
        .expect("run switchyard");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `switchyard ARGS --admin <proxy's admin URL>`.
async fn client(proxy: &Proxy, args: &[&str]) -> Output {
    let admin = proxy.admin_url("");
    let mut all = args.to_vec();
    all.extend(["--admin", &admin]);
    switchyard(&all).await
}

fn assert_code(out: &Output, code: i32) {
    assert_eq!(out.code, Some(code), "exit code: {out:#?}");
}

struct Setup {
    proxy: Proxy,
    blue: Upstream,
    green: Upstream,
}

/// Model "iris" (blue active) behind a proxy, plus `models_extra` lines
/// after it, and `admin_extra` lines in `[admin]`.
async fn start(models_extra: &str, admin_extra: &str) -> Setup {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let models = format!(
        "{}{models_extra}",
        model("iris", "/", &blue.url(), &green.url())
    );
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let proxy = Proxy::try_start_with_admin(dir, "", admin_extra, &models)
        .await
        .expect("proxy starts");
    Setup { proxy, blue, green }
}

async fn active(proxy: &Proxy) -> String {
    let r = proxy.admin_get("/models/iris").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["active"].as_str().expect("active").to_string()
}

// === status ===

#[tokio::test]
async fn status_prints_a_table_or_the_apis_json() {
    let s = start("", "").await;

    let out = client(&s.proxy, &["status"]).await;
    assert_code(&out, 0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "MODEL  ACTIVE  STANDBY  IN FLIGHT  LAST SWITCH",
            "iris   blue    green    0          -",
        ],
        "{out:#?}"
    );
    // Not a terminal: no colour.
    assert!(!out.stdout.contains('\x1b'), "{out:#?}");

    let out = client(&s.proxy, &["status", "--json"]).await;
    assert_code(&out, 0);
    assert_eq!(out.json()["models"][0]["name"], "iris");

    let out = client(&s.proxy, &["status", "iris"]).await;
    assert_code(&out, 0);
    assert!(
        out.stdout.contains("active       blue (standby green)"),
        "{out:#?}"
    );
    let pools = out
        .stdout
        .lines()
        .find(|l| l.starts_with("POOL   ACTIVE"))
        .expect("the pools table");
    assert_eq!(pools, "POOL   ACTIVE  HEALTHY  IN FLIGHT  DRAINED  SERVED");
    assert!(
        out.stdout
            .contains(&format!("blue   {}  healthy", s.blue.url())),
        "{out:#?}"
    );
    assert!(
        out.stdout
            .contains(&format!("green  {}  healthy", s.green.url())),
        "{out:#?}"
    );

    let out = client(&s.proxy, &["status", "iris", "--json"]).await;
    assert_code(&out, 0);
    assert_eq!(out.json()["pools"]["blue"]["active"], true);
}

#[tokio::test]
async fn an_unknown_model_is_exit_2_with_the_apis_reason() {
    let s = start("", "").await;
    for args in [
        &["status", "nope"][..],
        &["flip", "nope"],
        &["validate", "nope"],
    ] {
        let out = client(&s.proxy, args).await;
        assert_code(&out, 2);
        assert!(out.stdout.is_empty(), "{out:#?}");
        assert!(out.stderr.contains("nope"), "{out:#?}");
        assert!(out.stderr.contains("404"), "{out:#?}");
    }
}

#[tokio::test]
async fn an_admin_api_that_is_not_there_is_exit_2() {
    let dead = Refusing::bind();
    let out = switchyard(&["status", "--admin", &dead.url()]).await;
    assert_code(&out, 2);
    assert!(
        out.stderr.contains("cannot reach the admin API"),
        "{out:#?}"
    );
    // A bad URL or a bad flag is a usage error too.
    let out = switchyard(&["status", "--admin", "ftp://x"]).await;
    assert_code(&out, 2);
    assert!(out.stderr.contains("not usable"), "{out:#?}");
    let out = switchyard(&["activate", "iris", "purple", "--admin", &dead.url()]).await;
    assert_code(&out, 2);
    let out = switchyard(&[
        "flip",
        "iris",
        "--wait-drained",
        "2h",
        "--admin",
        &dead.url(),
    ])
    .await;
    assert_code(&out, 2);
    assert!(out.stderr.contains("at most"), "{out:#?}");
}

// === switches ===

#[tokio::test]
async fn flip_then_status_shows_green_and_a_wrong_expectation_is_refused() {
    let s = start("", "").await;

    let out = client(&s.proxy, &["flip", "iris", "--expect", "blue"]).await;
    assert_code(&out, 0);
    assert_eq!(out.stdout, "iris: green is active (was blue)\n", "{out:#?}");
    assert_eq!(active(&s.proxy).await, "green");

    let out = client(&s.proxy, &["status"]).await;
    assert_code(&out, 0);
    assert!(
        out.stdout
            .contains("iris   green   blue     0          flip blue->green"),
        "{out:#?}"
    );

    // A retried step of a pipeline: blue is no longer active, so refused.
    let out = client(&s.proxy, &["flip", "iris", "--expect", "blue"]).await;
    assert_code(&out, 1);
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert!(out.stderr.starts_with("refused: "), "{out:#?}");
    assert!(out.stderr.contains("green"), "{out:#?}");
    assert_eq!(active(&s.proxy).await, "green");

    // --json: the API's answer, refusals included.
    let out = client(&s.proxy, &["flip", "iris", "--expect", "blue", "--json"]).await;
    assert_code(&out, 1);
    assert!(out.json()["error"].is_string(), "{out:#?}");

    let out = client(&s.proxy, &["rollback", "iris", "--json"]).await;
    assert_code(&out, 0);
    let body = out.json();
    assert_eq!(body["active"], "blue");
    assert_eq!(body["switched"], true);

    let out = client(&s.proxy, &["activate", "iris", "blue"]).await;
    assert_code(&out, 0);
    assert!(out.stdout.contains("already active"), "{out:#?}");
}

#[tokio::test]
async fn the_health_guard_refuses_with_the_endpoints_it_saw() {
    let s = start("", "").await;
    s.green.set_healthy(false);
    wait_for_state(&s.proxy, "iris", "green", &s.green.url(), "unhealthy").await;

    let out = client(&s.proxy, &["flip", "iris"]).await;
    assert_code(&out, 1);
    assert!(
        out.stderr
            .contains(&format!("  green {}: unhealthy", s.green.url())),
        "{out:#?}"
    );
    // The API's hint, in the command line's words.
    assert!(
        out.stderr.contains("add --force to switch anyway"),
        "{out:#?}"
    );
    assert_eq!(active(&s.proxy).await, "blue");

    let out = client(&s.proxy, &["flip", "iris", "--force"]).await;
    assert_code(&out, 0);
    assert_eq!(active(&s.proxy).await, "green");
}

#[tokio::test]
async fn flip_wait_drained_returns_once_the_old_pool_is_drained() {
    let s = start("", "").await;
    let proxy_url = s.proxy.url("/hold");
    let held = tokio::spawn(async move { get(&proxy_url).await });
    s.blue.wait_held(1).await;

    let admin = s.proxy.admin_url("");
    let flip = tokio::spawn(async move {
        switchyard(&[
            "flip",
            "iris",
            "--wait-drained",
            "10s",
            "--json",
            "--admin",
            &admin,
        ])
        .await
    });
    // Switched at once; the call waits for blue's request to finish.
    eventually("the flip to switch", || async {
        active(&s.proxy).await == "green"
    })
    .await;
    assert!(!flip.is_finished(), "the call returned before blue drained");
    s.blue.release();
    let out = within("the flip to return", flip).await.expect("flip task");
    assert_code(&out, 0);
    let body = out.json();
    assert_eq!(body["switched"], true, "{out:#?}");
    assert_eq!(body["drained"], true, "{out:#?}");
    assert_eq!(held.await.expect("held request").status, StatusCode::OK);

    // Nothing in flight: drained at once, said in words.
    let out = client(&s.proxy, &["flip", "iris", "--wait-drained", "10s"]).await;
    assert_code(&out, 0);
    assert!(out.stdout.contains("green drained in "), "{out:#?}");
}

#[tokio::test]
async fn a_switch_not_drained_in_time_is_exit_1() {
    let s = start("", "").await;
    let proxy_url = s.proxy.url("/hold");
    let held = tokio::spawn(async move { get(&proxy_url).await });
    s.blue.wait_held(1).await;

    let out = client(&s.proxy, &["flip", "iris", "--wait-drained", "50ms"]).await;
    // Switched, but blue must not be retired yet.
    assert_code(&out, 1);
    assert!(
        out.stdout.contains("iris: green is active (was blue)"),
        "{out:#?}"
    );
    assert!(
        out.stdout.contains("blue still has 1 request(s) in flight"),
        "{out:#?}"
    );
    assert!(out.stderr.contains("still has 1 request(s)"), "{out:#?}");
    assert_eq!(active(&s.proxy).await, "green");
    s.blue.release();
    held.await.expect("held request");
}

// === validation ===

#[tokio::test]
async fn validate_without_checks_is_refused() {
    let s = start("", "").await;
    let out = client(&s.proxy, &["validate", "iris"]).await;
    assert_code(&out, 1);
    assert!(
        out.stderr.contains("no [[models.validate]] checks"),
        "{out:#?}"
    );
}

#[tokio::test]
async fn validate_prints_each_failure_and_a_validated_flip_is_refused() {
    let checks = "\n[[models.validate]]\nname = \"ready\"\npath = \"/check\"\n";
    let s = start(checks, "").await;
    s.green.set_reply("/check", 500, "{}");

    let out = client(&s.proxy, &["validate", "iris"]).await;
    assert_code(&out, 1);
    assert!(
        out.stdout
            .starts_with("iris: pool green FAILED: 0 of 1 check result(s) passed"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("check \"ready\" on "), "{out:#?}");
    assert!(out.stderr.contains("failed 1 of 1 check(s)"), "{out:#?}");

    let out = client(&s.proxy, &["validate", "iris", "--pool", "blue", "--json"]).await;
    assert_code(&out, 0);
    assert_eq!(out.json()["passed"], true, "{out:#?}");

    let out = client(&s.proxy, &["flip", "iris", "--validate"]).await;
    assert_code(&out, 1);
    assert!(out.stderr.contains("check \"ready\" on "), "{out:#?}");
    assert_eq!(active(&s.proxy).await, "blue");

    s.green.set_reply("/check", 200, "{}");
    let out = client(&s.proxy, &["flip", "iris", "--validate"]).await;
    assert_code(&out, 0);
    assert!(out.stdout.contains("validated green"), "{out:#?}");
    assert_eq!(active(&s.proxy).await, "green");
}

// === token ===

#[tokio::test]
async fn the_token_file_is_sent_and_a_missing_or_wrong_one_is_exit_2() {
    const TOKEN: &str = "c4f1e2d3-client-token";
    let dir = tempfile::tempdir().expect("temp dir");
    let right = dir.path().join("right.token");
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&right, format!("{TOKEN}\n")).unwrap();
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let s = start(
        "",
        &format!("token_file = {:?}\n", right.display().to_string()),
    )
    .await;
    let (right, wrong) = (right.to_str().unwrap(), wrong.to_str().unwrap());

    let out = client(&s.proxy, &["status"]).await;
    assert_code(&out, 2);
    assert!(out.stderr.contains("needs a token"), "{out:#?}");
    assert!(out.stderr.contains("--token-file"), "{out:#?}");

    let out = client(&s.proxy, &["status", "--token-file", wrong]).await;
    assert_code(&out, 2);
    assert!(out.stderr.contains("refused the token"), "{out:#?}");
    assert!(!out.stderr.contains("not-the-token"), "{out:#?}");

    let out = client(&s.proxy, &["flip", "iris", "--token-file", right]).await;
    assert_code(&out, 0);
    assert_eq!(out.stdout, "iris: green is active (was blue)\n", "{out:#?}");

    // The environment, as a pipeline sets it.
    let admin = s.proxy.admin_url("");
    let mut cmd = command(&["status", "iris", "--json"]);
    cmd.env("SWITCHYARD_ADMIN", &admin)
        .env("SWITCHYARD_ADMIN_TOKEN_FILE", right);
    let out = within(
        "status with env",
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .expect("blocking task")
    .expect("run switchyard");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let body: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(body["active"], "green");

    let missing = dir.path().join("missing.token");
    let out = client(
        &s.proxy,
        &["status", "--token-file", missing.to_str().unwrap()],
    )
    .await;
    assert_code(&out, 2);
    assert!(
        out.stderr.contains("cannot read the admin token file"),
        "{out:#?}"
    );
}

// === https ===

#[tokio::test]
async fn an_https_admin_api_is_verified_against_the_ca_file() {
    use support::inbound_tls::{start_with_tls_admin, TestCa};
    let ca = TestCa::new();
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let files = ca.issue("switchyard test admin").write(dir.path(), "admin");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).expect("write ca.pem");
    let proxy = start_with_tls_admin(
        Arc::clone(&dir),
        "",
        &files.config_lines(),
        &model("iris", "/", &blue.url(), &green.url()),
        &ca,
    )
    .await;
    let admin = format!("https://{}", proxy.admin);

    let out = switchyard(&[
        "flip",
        "iris",
        "--admin",
        &admin,
        "--ca-file",
        ca_file.to_str().unwrap(),
    ])
    .await;
    assert_code(&out, 0);
    assert_eq!(out.stdout, "iris: green is active (was blue)\n", "{out:#?}");

    // Without the CA: the certificate is not trusted, nothing is sent.
    let out = switchyard(&["flip", "iris", "--admin", &admin]).await;
    assert_code(&out, 2);
    assert!(out.stderr.contains("certificate"), "{out:#?}");
}

// === events ===

#[tokio::test]
async fn events_lists_the_flip() {
    let s = start("", "").await;
    assert_eq!(
        s.proxy.admin_post("/models/iris/flip").await.status,
        StatusCode::OK
    );

    let out = client(&s.proxy, &["events"]).await;
    assert_code(&out, 0);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("  switch  "))
        .unwrap_or_else(|| panic!("no switch event: {out:#?}"));
    assert!(
        line.contains("  iris  flip blue->green by 127.0.0.1:"),
        "{line}"
    );

    let out = client(&s.proxy, &["events", "--json"]).await;
    assert_code(&out, 0);
    let switches: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("one JSON object per line"))
        .filter(|e| e["type"] == "switch")
        .collect();
    assert_eq!(switches.len(), 1, "{out:#?}");
    assert_eq!(switches[0]["to"], "green");

    // --since: only what came after.
    let id = switches[0]["id"].to_string();
    let out = client(&s.proxy, &["events", "--since", &id]).await;
    assert_code(&out, 0);
    assert!(!out.stdout.contains("switch"), "{out:#?}");
}

/// A running `switchyard events --follow`, killed when dropped.
struct Following {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Following {
    fn spawn(args: &[&str]) -> Following {
        let mut child = command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn switchyard");
        let out = child.stdout.take().expect("stdout piped");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Following { child, lines }
    }

    /// The first line on stdout that `wanted` accepts.
    async fn line(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        within(what, async {
            loop {
                match self.lines.recv().await {
                    Some(line) if wanted(&line) => return line,
                    Some(_) => {}
                    None => panic!("stdout ended while waiting for {what}"),
                }
            }
        })
        .await
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn events_follow_prints_a_flip_as_it_happens() {
    let s = start("", "").await;
    // From the newest event on: whenever the client connects, the flip
    // below comes after it and is delivered.
    let newest = s.proxy.admin_get("/events").await.json()["newest_id"].to_string();
    let admin = s.proxy.admin_url("");

    let mut human =
        Following::spawn(&["events", "--follow", "--since", &newest, "--admin", &admin]);
    let mut json = Following::spawn(&[
        "events", "--follow", "--since", &newest, "--json", "--admin", &admin,
    ]);
    assert_eq!(
        s.proxy.admin_post("/models/iris/flip").await.status,
        StatusCode::OK
    );

    let line = human
        .line("the flip on the followed stream", |l| {
            l.contains("  switch  ")
        })
        .await;
    assert!(line.contains("  iris  flip blue->green by "), "{line}");
    let line = json
        .line("the flip as JSON", |l| l.contains("\"switch\""))
        .await;
    let event: Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(event["model"], "iris");
    assert_eq!(event["to"], "green");

    // Still following: the next switch comes too.
    assert_eq!(
        s.proxy.admin_post("/models/iris/rollback").await.status,
        StatusCode::OK
    );
    let line = human
        .line("the rollback on the followed stream", |l| {
            l.contains("  switch  ")
        })
        .await;
    assert!(line.contains("rollback green->blue"), "{line}");
}

// === bad input caught before any connection ===

#[tokio::test]
async fn a_port_out_of_range_is_exit_2_without_a_connection() {
    // Were the port dropped, the client would try port 80 and hang or be
    // refused; either way its message would not name the port.
    let out = switchyard(&["status", "--admin", "http://127.0.0.1:99999"]).await;
    assert_code(&out, 2);
    assert!(out.stderr.contains("port out of range"), "{out:#?}");
    assert!(!out.stderr.contains("cannot reach"), "{out:#?}");
}

#[tokio::test]
async fn a_token_file_longer_than_4_kib_is_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let big = dir.path().join("big.token");
    std::fs::write(&big, "t".repeat(5 << 10)).unwrap();
    let dead = Refusing::bind();
    let out = switchyard(&[
        "status",
        "--token-file",
        big.to_str().unwrap(),
        "--admin",
        &dead.url(),
    ])
    .await;
    assert_code(&out, 2);
    assert!(out.stderr.contains("longer than 4 KiB"), "{out:#?}");
    assert!(!out.stderr.contains("cannot reach"), "{out:#?}");
}

#[tokio::test]
async fn a_switch_not_answered_in_time_says_it_may_have_happened() {
    // The check holds green's answer, so the validating flip outlasts the
    // client's --timeout.
    let s = start("\n[[models.validate]]\npath = \"/hold/check\"\n", "").await;
    let out = client(
        &s.proxy,
        &["flip", "iris", "--validate", "--timeout", "300ms"],
    )
    .await;
    assert_code(&out, 2);
    assert!(
        out.stderr.contains("within 300ms")
            && out.stderr.contains("may have been carried out")
            && out.stderr.contains("switchyard status"),
        "{}",
        out.stderr
    );
    s.green.release();
}

// === weight and rollout ===

#[tokio::test]
async fn weight_sets_the_split_and_status_shows_it() {
    let s = start("", "").await;
    let out = client(&s.proxy, &["weight", "iris", "green", "10"]).await;
    assert_code(&out, 0);
    assert_eq!(
        out.stdout,
        "iris: 10% of new requests to green, 90% to blue (active) (was none)\n"
    );
    let out = client(&s.proxy, &["status"]).await;
    assert_code(&out, 0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "MODEL  ACTIVE  STANDBY  IN FLIGHT  LAST SWITCH  SPLIT",
            "iris   blue    green    0          -            10% green",
        ],
        "{out:#?}"
    );
    let out = client(&s.proxy, &["status", "iris"]).await;
    assert!(
        out.stdout
            .contains("split        10% of new requests to green"),
        "{out:#?}"
    );
    let out = client(&s.proxy, &["weight", "iris", "blue", "100", "--json"]).await;
    assert_code(&out, 0);
    assert_eq!(out.json()["split"], Value::Null);
    assert_eq!(out.json()["previous"]["percent"], 10.0);
    // Not a percentage: a usage error, nothing sent.
    let out = client(&s.proxy, &["weight", "iris", "green", "150"]).await;
    assert_code(&out, 2);
    assert!(out.stderr.contains("0 to 100"), "{out:#?}");

    // The health guard: refused, exit 1, the endpoints named.
    s.green.set_healthy(false);
    wait_for_state(&s.proxy, "iris", "green", &s.green.url(), "unhealthy").await;
    let out = client(&s.proxy, &["weight", "iris", "green", "20"]).await;
    assert_code(&out, 1);
    assert!(out.stderr.starts_with("refused: "), "{out:#?}");
    assert!(out.stderr.contains("no healthy endpoint"), "{out:#?}");
    assert!(out.stderr.contains("--force"), "{out:#?}");
}

const ROLLOUT: &str = "\n[models.rollout]\nsteps = [\"20%:300ms\", \"100%\"]\ninterval = \"50ms\"\nmin_requests = 3\nmax_extension = \"300ms\"\nmax_5xx_ratio = 0.1\n";

#[tokio::test]
async fn a_rollout_waited_for_ends_in_exit_0_when_complete() {
    let s = start(ROLLOUT, "").await;
    let out = client(&s.proxy, &["rollout", "status", "iris"]).await;
    assert_code(&out, 0);
    assert!(out.stdout.starts_with("iris: no rollout yet"), "{out:#?}");
    let out = client(&s.proxy, &["rollout", "pause", "iris"]).await;
    assert_code(&out, 1);
    assert!(
        out.stderr.contains("no rollout has been started"),
        "{out:#?}"
    );

    // Traffic for the steps to be judged on.
    let stop = tokio_util::sync::CancellationToken::new();
    let url = s.proxy.url("/x");
    let load = tokio::spawn({
        let stop = stop.clone();
        async move {
            let client = support::client();
            while !stop.is_cancelled() {
                let _ = try_send(&client, http::Method::GET, &url, full_body("")).await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    });
    let out = client(&s.proxy, &["rollout", "start", "iris", "--wait"]).await;
    stop.cancel();
    load.await.unwrap();
    assert_code(&out, 0);
    assert!(
        out.stdout.starts_with(
            "iris: rollout of green from blue: completed, step 2 of 2 (100% to green)"
        ),
        "{out:#?}"
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines.contains(&"STEP  WEIGHT  DURATION  RESULT"),
        "{out:#?}"
    );
    assert!(
        lines.contains(&"1     20%     300ms     passed"),
        "{out:#?}"
    );
    assert!(
        lines.contains(&"2     100%    -         switched"),
        "{out:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("step 1 passed: green ")),
        "{out:#?}"
    );
    assert_eq!(active(&s.proxy).await, "green");
    // No terminal: no progress line on stderr.
    assert!(out.stderr.is_empty(), "{out:#?}");
}

#[tokio::test]
async fn a_rollout_with_too_few_requests_is_aborted_never_passed() {
    let s = start(ROLLOUT, "").await;
    let out = client(&s.proxy, &["rollout", "start", "iris", "--wait", "--json"]).await;
    assert_code(&out, 1);
    let body = out.json();
    let rollout = &body["rollout"];
    assert_eq!(rollout["state"], "aborted", "{body}");
    let verdicts = rollout["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 2, "{body}");
    assert_eq!(verdicts[0]["result"], "inconclusive");
    let first = verdicts[0]["reason"].as_str().unwrap();
    assert!(
        first.starts_with("step 1 inconclusive: green served 0 request(s) in ")
            && first.ends_with(", fewer than min_requests 3; extended by up to 300ms"),
        "{first}"
    );
    let last = verdicts[1]["reason"].as_str().unwrap();
    assert!(
        last.starts_with("step 1 aborted: inconclusive: green served 0 request(s)"),
        "{last}"
    );
    assert!(
        out.stderr
            .starts_with("refused: model \"iris\": rollout aborted: step 1 aborted: inconclusive"),
        "{out:#?}"
    );
    assert_eq!(active(&s.proxy).await, "blue");
    let r = s.proxy.admin_get("/models/iris").await.json();
    assert_eq!(r["split"], Value::Null);
    // The events say it, one line each.
    let out = client(&s.proxy, &["events"]).await;
    assert!(
        out.stdout
            .contains("rollout     iris  started step 1 of 2 (20% to green) by 127.0.0.1:"),
        "{out:#?}"
    );
    assert!(
        out.stdout.contains(
            "rollout     iris  extended step 1 of 2 (20% to green) by rollout: step 1 inconclusive"
        ),
        "{out:#?}"
    );
    assert!(
        out.stdout.contains(
            "rollout     iris  aborted step 1 of 2 (0% to green) by rollout: step 1 aborted"
        ),
        "{out:#?}"
    );
}
