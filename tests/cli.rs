//! The command line contract (DESIGN.md, "Command line"), run as a user runs
//! it: the real `switchyard` binary, its exit codes, what it prints, and
//! how it stops on signals.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::sync::{mpsc, oneshot};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A finished command's result.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `switchyard ARGS` to completion (within the test deadline).
async fn switchyard(args: &[&str]) -> Output {
    let mut running = Running::spawn(args);
    let (status, stderr) = running.wait().await;
    let mut stdout = String::new();
    while let Some(line) = within("switchyard's stdout", running.stdout.recv()).await {
        stdout.push_str(&line);
        stdout.push('\n');
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

async fn check(path: &Path) -> Output {
    switchyard(&["check", "--config", path.to_str().expect("utf-8 path")]).await
}

/// A running `switchyard` process, killed if the test ends early (a failed
/// assertion included). Threads read its output as it comes, so the
/// process never blocks on a full pipe: stdout line by line, stderr whole.
struct Running {
    child: Child,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: Option<oneshot::Receiver<String>>,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn switchyard");
        let out = child.stdout.take().expect("stdout piped");
        let (line_tx, stdout) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("stderr piped");
        let (text_tx, stderr) = oneshot::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            // The receiver is gone only when the test already failed.
            let _ = text_tx.send(text);
        });
        Running {
            child,
            stdout,
            stderr: Some(stderr),
        }
    }

    /// The next line on stdout; panics if stdout ends or the deadline passes.
    async fn next_line(&mut self, what: &str) -> String {
        within(what, self.stdout.recv())
            .await
            .unwrap_or_else(|| panic!("stdout ended while waiting for {what}"))
    }

    /// Sends `signal` (e.g. "INT", "TERM") with kill(1), as a user would.
    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Waits for the process to exit; returns its status and stderr.
    async fn wait(&mut self) -> (ExitStatus, String) {
        let give_up = tokio::time::Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll switchyard") {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "timed out after {DEADLINE:?} waiting for switchyard to exit"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let stderr = self.stderr.take().expect("wait is called once");
        let stderr = within("switchyard's stderr", stderr)
            .await
            .expect("stderr reader");
        (status, stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Already exited in a passing test; a failing one must not leave
        // a proxy running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Describes how a process ended, for assertion messages.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => format!("{status:?}"),
    }
}

/// Two distinct free loopback ports: bound together, then released.
fn free_ports() -> (SocketAddr, SocketAddr) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind");
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

/// A valid config with `[[models]]` appended; lines 1 to 8 are the head.
const HEAD: &str = r#"[proxy]
listen = "127.0.0.1:8080"

[admin]
listen = "127.0.0.1:9901"

[state]
path = "state.json"
"#;

const IRIS: &str = r#"[[models]]
name = "iris"
path_prefix = "/v2/models/iris"
blue.endpoints = ["http://127.0.0.1:8001"]
green.endpoints = ["http://127.0.0.1:8002"]
"#;

/// Writes `text` as `switchyard.toml` in a fresh temp dir.
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

/// The 1-based line of the only line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(lines.len(), 1, "{needle:?} must be on exactly one line");
    lines[0]
}

// === check ===

#[tokio::test]
async fn check_accepts_every_shipped_config() {
    for name in ["sidecar.toml", "gateway.toml", "demo.toml", "fleet.toml"] {
        let path = shipped(name);
        let out = check(&path).await;
        assert!(
            out.status.success(),
            "{name}: {}\n{}",
            describe(out.status),
            out.stderr
        );
        assert!(out.stdout.contains("ok"), "{name}: {}", out.stdout);
        assert!(
            out.stdout.contains(&path.display().to_string()),
            "{name}: {}",
            out.stdout
        );
    }
}

#[tokio::test]
async fn check_points_at_the_line_of_each_bad_config() {
    // (what is wrong, the config, a text on the line to blame, a word the message must hold)
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "unknown key",
            HEAD.replace(
                "path = \"state.json\"",
                "path = \"state.json\"\nfsync = false",
            ) + "\n"
                + IRIS,
            "fsync",
            "fsync",
        ),
        (
            "unknown key in a model",
            format!(
                "{HEAD}\n{}",
                IRIS.replace("name = \"iris\"", "name = \"iris\"\nweight = 2")
            ),
            "weight",
            "weight",
        ),
        (
            "duplicate model name",
            format!(
                "{HEAD}\n{IRIS}\n{}",
                IRIS.replace("/v2/models/iris\"", "/other\"   # second")
                    .replace("name = \"iris\"", "name = \"iris\"   # dup")
            ),
            "# dup",
            "duplicate",
        ),
        (
            "same prefix and host",
            format!(
                "{HEAD}\n{IRIS}\n{}",
                IRIS.replace("name = \"iris\"", "name = \"iris2\"")
                    .replace("/v2/models/iris\"", "/v2/models/iris/\"   # same")
            ),
            "# same",
            "path_prefix",
        ),
        (
            "pool with no endpoints",
            format!(
                "{HEAD}\n{}",
                IRIS.replace(
                    "green.endpoints = [\"http://127.0.0.1:8002\"]",
                    "green.endpoints = []"
                )
            ),
            "green.endpoints",
            "no endpoints",
        ),
        (
            "bad URL",
            format!(
                "{HEAD}\n{}",
                IRIS.replace("http://127.0.0.1:8001", "127.0.0.1:8001")
            ),
            "blue.endpoints",
            "scheme",
        ),
        (
            "watch ratio out of range",
            format!("{HEAD}\n{IRIS}\n[models.watch]\nwindow = \"60s\"\nmax_5xx_ratio = 5\n"),
            "max_5xx_ratio",
            "models[0].watch.max_5xx_ratio",
        ),
        (
            "watch without a limit",
            format!("{HEAD}\n{IRIS}\n[models.watch]\nwindow = \"60s\"\n"),
            "window",
            "sets no limit",
        ),
        (
            "bad duration",
            HEAD.replace(
                "listen = \"127.0.0.1:8080\"",
                "listen = \"127.0.0.1:8080\"\ndrain_timeout = \"30\"",
            ) + "\n"
                + IRIS,
            "drain_timeout",
            "drain_timeout",
        ),
        (
            "bad pool name",
            format!(
                "{HEAD}\n{}",
                IRIS.replace("name = \"iris\"", "name = \"iris\"\nactive = \"red\"")
            ),
            "\"red\"",
            "red",
        ),
    ];
    for (what, text, blame, says) in cases {
        let (_dir, path) = config_file(&text);
        let out = check(&path).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: {}; stderr:\n{}",
            describe(out.status),
            out.stderr
        );
        let at = format!("{}:{}:", path.display(), line_of(&text, blame));
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains(&at))
            .unwrap_or_else(|| panic!("{what}: stderr should contain {at:?}:\n{}", out.stderr));
        assert!(line.contains(says), "{what}: {line}");
        assert!(
            out.stdout.is_empty(),
            "{what}: nothing on stdout: {}",
            out.stdout
        );
    }
}

#[tokio::test]
async fn check_names_each_bad_key_of_an_etcd_state() {
    let text = r#"[proxy]
listen = "127.0.0.1:8080"

[admin]
listen = "127.0.0.1:9901"

[state]
backend = "etcd"
path = "state.json"                              # first
endpoints = ["127.0.0.1:2379"]                   # second
prefix = "/switchyard"                           # third
username = "sy"                                  # fourth

[[models]]
name = "iris"
blue.endpoints = ["http://127.0.0.1:8001"]
green.endpoints = ["http://127.0.0.1:8002"]
"#;
    let (_dir, path) = config_file(text);
    let out = check(&path).await;
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    for (which, says) in [
        (
            "# first",
            "state.path: the etcd backend keeps the state in etcd",
        ),
        (
            "# second",
            "state.endpoints: etcd URL \"127.0.0.1:2379\" has no scheme",
        ),
        (
            "# third",
            "state.prefix: \"/switchyard\" must end with \"/\"",
        ),
        ("# fourth", "state.username: needs state.password_file"),
    ] {
        let at = format!("{}:{}:", path.display(), line_of(text, which));
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains(&at))
            .unwrap_or_else(|| panic!("{which}: stderr should contain {at:?}:\n{}", out.stderr));
        assert!(line.contains(says), "{which}: {line}");
    }
    assert!(out.stderr.contains("4 errors"), "{}", out.stderr);
}

#[tokio::test]
async fn check_prints_every_error_in_a_file() {
    let text = r#"[proxy]
listen = "127.0.0.1:8080"
request_timeout = "5 s"          # first

[admin]
listen = "127.0.0.1:9901"

[state]
path = "state.json"

[[models]]
name = "iris"
active = "red"                   # second
blue.endpoints = ["ftp://127.0.0.1:8001"]     # third
green.endpoints = []             # fourth
"#;
    let (_dir, path) = config_file(text);
    let out = check(&path).await;
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    for which in ["# first", "# second", "# third", "# fourth"] {
        let at = format!("{}:{}:", path.display(), line_of(text, which));
        assert!(
            out.stderr.contains(&at),
            "{which}: stderr should contain {at:?}:\n{}",
            out.stderr
        );
    }
    let error_lines = out
        .stderr
        .lines()
        .filter(|l| l.contains(&format!("{}:", path.display())))
        .count();
    assert_eq!(error_lines, 4, "{}", out.stderr);
    assert!(out.stderr.contains("4 errors"), "{}", out.stderr);
}

#[tokio::test]
async fn check_of_a_missing_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such.toml");
    let out = check(&path).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(out.status));
    assert!(
        out.stderr.contains(&path.display().to_string()),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn check_of_a_toml_syntax_error_prints_its_line() {
    let text = format!(
        "{HEAD}\n{}",
        IRIS.replace("name = \"iris\"", "name = \"iris")
    );
    let (_dir, path) = config_file(&text);
    let out = check(&path).await;
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    let at = format!("{}:{}:", path.display(), line_of(&text, "name = \"iris"));
    assert!(out.stderr.contains(&at), "want {at:?} in:\n{}", out.stderr);
}

#[tokio::test]
async fn serve_refuses_a_bad_config_like_check() {
    let text = format!(
        "{HEAD}\n{}",
        IRIS.replace("name = \"iris\"", "name = \"iris\"\nactive = \"red\"")
    );
    let (_dir, path) = config_file(&text);
    let out = switchyard(&["serve", "--config", path.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    let at = format!("{}:{}:", path.display(), line_of(&text, "\"red\""));
    assert!(out.stderr.contains(&at), "want {at:?} in:\n{}", out.stderr);
}

#[tokio::test]
async fn version_prints_the_version() {
    let out = switchyard(&["--version"]).await;
    assert!(out.status.success(), "{}", describe(out.status));
    assert_eq!(
        out.stdout.trim(),
        format!("switchyard {}", env!("CARGO_PKG_VERSION"))
    );
}

// === serve ===

/// A config for `serve` on free loopback ports, state in `dir`.
fn serve_config(dir: &Path, blue: &str, green: &str) -> (String, SocketAddr, SocketAddr) {
    let (proxy, admin) = free_ports();
    let text = format!(
        "[proxy]\nlisten = \"{proxy}\"\ndrain_timeout = \"5s\"\n\n[admin]\nlisten = \"{admin}\"\n\n[state]\npath = \"state.json\"\n\n{}",
        model("iris", "/", blue, green)
    );
    std::fs::write(dir.join("switchyard.toml"), &text).expect("write config");
    (text, proxy, admin)
}

#[tokio::test]
async fn serve_refuses_a_corrupt_state_file_and_does_not_serve() {
    let dir = tempfile::tempdir().unwrap();
    serve_config(dir.path(), "http://127.0.0.1:8001", "http://127.0.0.1:8002");
    let state = dir.path().join("state.json");
    std::fs::write(&state, b"\x00garbage{{{").unwrap();

    let config = dir.path().join("switchyard.toml");
    let out = switchyard(&["serve", "--config", config.to_str().unwrap()]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}; stderr:\n{}",
        describe(out.status),
        out.stderr
    );
    assert!(
        out.stderr.contains(&state.display().to_string()),
        "stderr should name the state file:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("corrupt"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("listening"),
        "it must not start serving:\n{}",
        out.stderr
    );
    // The operator's file is left as it was, for inspection.
    assert_eq!(std::fs::read(&state).unwrap(), b"\x00garbage{{{");
}

#[tokio::test]
async fn serve_fails_when_the_state_file_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let (text, _, _) = serve_config(dir.path(), "http://127.0.0.1:8001", "http://127.0.0.1:8002");
    let text = text.replace("path = \"state.json\"", "path = \"missing-dir/state.json\"");
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, text).unwrap();

    let out = switchyard(&["serve", "--config", config.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(out.status));
    let state = dir.path().join("missing-dir").join("state.json");
    assert!(
        out.stderr.contains(&state.display().to_string()),
        "stderr should name the state file:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains("listening"), "{}", out.stderr);
}

#[tokio::test]
async fn serve_fails_when_its_port_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    // Held first, then written into the config: a port picked free and
    // bound again later may meanwhile be another socket's.
    let taken = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let proxy = taken.local_addr().unwrap();
    let (text, picked, _) =
        serve_config(dir.path(), "http://127.0.0.1:8001", "http://127.0.0.1:8002");
    let config = dir.path().join("switchyard.toml");
    let text = text.replacen(
        &format!("listen = \"{picked}\""),
        &format!("listen = \"{proxy}\""),
        1,
    );
    std::fs::write(&config, text).expect("write config");

    let out = switchyard(&["serve", "--config", config.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(out.status));
    assert!(
        out.stderr.contains(&proxy.to_string()),
        "stderr should name the address:\n{}",
        out.stderr
    );
}

#[tokio::test]
async fn serve_runs_until_sigterm_and_exits_zero() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let (_text, proxy, admin) = serve_config(dir.path(), &blue.url(), &green.url());
    let config = dir.path().join("switchyard.toml");
    let mut running = Running::spawn(&["serve", "--config", config.to_str().unwrap()]);

    let ready = format!("http://{admin}/readyz");
    eventually("switchyard serve to be ready", || {
        let ready = ready.clone();
        async move {
            try_send(&client(), http::Method::GET, &ready, full_body(""))
                .await
                .is_ok_and(|r| r.status == 200)
        }
    })
    .await;
    let r = get(&format!("http://{proxy}/v2/models/iris/infer")).await;
    assert_eq!((r.status.as_u16(), r.pool()), (200, "blue"));
    // The binary's jemalloc runs with its options (`main.rs`): its
    // background thread, which gives freed pages back to the kernel, runs.
    #[cfg(all(target_os = "linux", feature = "jemalloc"))]
    {
        let tasks = format!("/proc/{}/task", running.child.id());
        let threads: Vec<String> = std::fs::read_dir(&tasks)
            .unwrap()
            // A thread may end between the listing and the read.
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .collect();
        assert!(
            threads.iter().any(|t| t.trim() == "jemalloc_bg_thd"),
            "no jemalloc background thread among {threads:?}"
        );
    }

    running.signal("TERM");
    let (status, stderr) = running.wait().await;
    assert_eq!(
        status.code(),
        Some(0),
        "{}; stderr:\n{stderr}",
        describe(status)
    );
    // The state file outlives the process.
    assert!(dir.path().join("state.json").exists());
}

// === demo ===

/// What the demo's banner tells a newcomer.
#[derive(Debug, Default)]
struct Banner {
    proxy: String,
    admin: String,
    infer_url: String,
    infer_body: String,
}

/// Reads the demo's stdout until the banner is complete.
async fn read_banner(demo: &mut Running) -> Banner {
    let mut banner = Banner::default();
    let mut seen = String::new();
    loop {
        let line = demo.next_line("the demo banner").await;
        seen.push_str(&line);
        seen.push('\n');
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["proxy", url] => banner.proxy = url.to_string(),
            ["admin", url] => banner.admin = url.to_string(),
            ["curl", "-si", url, ..] if url.ends_with("/infer") => {
                banner.infer_url = url.to_string();
                let start = line.find("-d '").expect("curl line has -d '...'") + 4;
                let end = line.rfind('\'').expect("closing quote");
                banner.infer_body = line[start..end].to_string();
            }
            _ => {}
        }
        if line.contains("Ctrl-C") {
            break;
        }
    }
    for (what, value) in [
        ("proxy URL", &banner.proxy),
        ("admin URL", &banner.admin),
        ("infer URL", &banner.infer_url),
        ("infer body", &banner.infer_body),
    ] {
        assert!(
            !value.is_empty(),
            "the banner should give the {what}:\n{seen}"
        );
    }
    assert!(
        banner.infer_url.starts_with(&banner.proxy),
        "the curl line should use the proxy URL:\n{seen}"
    );
    banner
}

/// Posts the banner's inference request; returns (pool, model_version, prediction).
async fn infer(banner: &Banner) -> (String, String, Value) {
    let r = post(&banner.infer_url, banner.infer_body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    (
        r.pool().to_string(),
        body["model_version"].as_str().unwrap_or("").to_string(),
        body["outputs"][0]["data"].clone(),
    )
}

#[tokio::test]
async fn the_demo_quickstart_works_as_the_banner_says() {
    let mut demo = Running::spawn(&["demo"]);
    let banner = read_banner(&mut demo).await;

    let (pool, version, blue_prediction) = infer(&banner).await;
    assert_eq!((pool.as_str(), version.as_str()), ("blue", "1"));

    let r = post(&format!("{}/models/iris/flip", banner.admin), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["active"], "green");

    let (pool, version, green_prediction) = infer(&banner).await;
    assert_eq!((pool.as_str(), version.as_str()), ("green", "2"));
    assert_ne!(
        green_prediction, blue_prediction,
        "the banner's example should show the two versions disagree"
    );

    let r = post(&format!("{}/models/iris/rollback", banner.admin), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (pool, version, prediction) = infer(&banner).await;
    assert_eq!((pool.as_str(), version.as_str()), ("blue", "1"));
    assert_eq!(prediction, blue_prediction);

    let r = get(&format!("{}/metrics", banner.admin)).await;
    assert!(
        r.text()
            .contains(r#"switchyard_switches_total{model="iris",to="green"} 1"#),
        "{}",
        r.text()
    );

    let pid = demo.child.id();
    demo.signal("INT");
    let (status, stderr) = demo.wait().await;
    assert_eq!(
        status.code(),
        Some(0),
        "{}; stderr:\n{stderr}",
        describe(status)
    );
    // The demo keeps its state in the temp directory and cleans up after itself.
    let state = std::env::temp_dir().join(format!("switchyard-demo-{pid}.json"));
    assert!(!state.exists(), "{} left behind", state.display());
}

#[tokio::test]
async fn serve_refuses_an_exposed_admin_listener_without_a_token() {
    if std::env::var_os("SWITCHYARD_ADMIN_TOKEN").is_some() {
        // The environment provides a token; the refusal cannot be observed.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    // The refusal comes before any socket is opened, so this address is
    // never bound.
    std::fs::write(
        &config,
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"0.0.0.0:9901\"\n[state]\npath = \"state.json\"\n\
         [[models]]\nname = \"iris\"\nblue.endpoints = [\"http://127.0.0.1:8001\"]\ngreen.endpoints = [\"http://127.0.0.1:8002\"]\n",
    )
    .unwrap();
    let out = switchyard(&["serve", "--config", config.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    for part in ["0.0.0.0:9901", "admin.token_file", "SWITCHYARD_ADMIN_TOKEN"] {
        assert!(out.stderr.contains(part), "{part} missing:\n{}", out.stderr);
    }
    assert!(!out.stderr.contains("listening"), "{}", out.stderr);
}

#[tokio::test]
async fn log_format_json_writes_one_json_object_per_line() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let (_text, _proxy, admin) = serve_config(dir.path(), &blue.url(), &green.url());
    let config = dir.path().join("switchyard.toml");
    let mut running = Running::spawn(&[
        "--log-format",
        "json",
        "serve",
        "--config",
        config.to_str().unwrap(),
    ]);
    let ready = format!("http://{admin}/readyz");
    eventually("switchyard serve to be ready", || {
        let ready = ready.clone();
        async move {
            try_send(&client(), http::Method::GET, &ready, full_body(""))
                .await
                .is_ok_and(|r| r.status == 200)
        }
    })
    .await;
    running.signal("TERM");
    let (status, stderr) = running.wait().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.iter().any(|l| l.contains("listening")), "{stderr}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
    }
}
