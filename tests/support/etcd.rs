//! A real etcd for the fleet tests: Debian's `etcd-server` binary
//! (`/usr/bin/etcd`, or `$SWITCHYARD_TEST_ETCD`), one member on two free
//! loopback ports (client and peer) with its data in a temp dir, waited for
//! through its `/health` endpoint, killed when dropped. It can be stopped
//! and started again on the same ports and data, as an outage.
//!
//! Also [`Link`], a TCP relay between one instance and etcd that a test can
//! cut and restore: one instance losing etcd while the others keep it.
//!
//! A missing binary fails the test with what to install: CI installs it,
//! and a fleet test that silently skips proves nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{within, DEADLINE};

/// Where the etcd binary is: `$SWITCHYARD_TEST_ETCD`, else Debian's.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("SWITCHYARD_TEST_ETCD")
        .map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from);
    assert!(
        path.exists(),
        "the fleet tests need a real etcd at {}, and it is not there: install Debian's etcd-server \
         (`apt-get install etcd-server`, as .ci/run does) or point SWITCHYARD_TEST_ETCD at an etcd 3.4+ binary",
        path.display()
    );
    path
}

/// A free loopback port, found by binding port 0 and letting it go.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// TLS for etcd's client port: its certificate and key, the CA clients
/// must present a certificate of (mTLS).
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// What the test's own client uses to reach it.
    pub client: Arc<rustls::ClientConfig>,
}

/// One etcd member; see the module docs.
pub struct Etcd {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<EtcdTls>,
    child: Option<Child>,
    /// The root token once auth is enabled, for the test's own requests.
    token: Mutex<Option<String>>,
}

impl Etcd {
    /// Starts a member on plain HTTP and waits until it is healthy.
    pub async fn start() -> Etcd {
        Etcd::launch(None).await
    }

    /// Starts a member serving its client port over TLS, asking clients
    /// for a certificate `tls.ca` signed.
    pub async fn start_tls(tls: EtcdTls) -> Etcd {
        Etcd::launch(Some(tls)).await
    }

    async fn launch(tls: Option<EtcdTls>) -> Etcd {
        let mut etcd = Etcd {
            dir: tempfile::tempdir().expect("temp dir"),
            client_port: free_port(),
            peer_port: free_port(),
            tls,
            child: None,
            token: Mutex::new(None),
        };
        etcd.resume().await;
        etcd
    }

    /// The client URL, as `[state] endpoints` names it.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Kills the member (as a crash or an outage would); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the member again on the same ports and data, and waits until
    /// it is healthy.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let name = "switchyard-test";
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.url();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        let mut command = Command::new(binary());
        command
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("{name}={peer}")])
            // One member: elect it at once rather than after a second.
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary().display()));
        self.child = Some(child);
        self.wait_healthy().await;
    }

    /// Polls `/health` until the member says it is healthy; panics with
    /// its log if it exits or the deadline passes.
    async fn wait_healthy(&mut self) {
        let give_up = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "etcd exited ({status}) before it was healthy; its log:\n{}",
                        self.log()
                    );
                }
            }
            let healthy = self
                .try_call(Method::GET, "/health", None)
                .await
                .is_ok_and(|(status, body)| status == StatusCode::OK && body["health"] == "true");
            if healthy {
                return;
            }
            if tokio::time::Instant::now() > give_up {
                panic!(
                    "timed out after {DEADLINE:?} waiting for etcd at {} to be healthy; its log:\n{}",
                    self.url(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The member's log so far (its last 4 KiB).
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let start = text.len().saturating_sub(4096);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// One request to the member from the test itself.
    async fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let tls = match &self.tls {
            Some(tls) => Arc::clone(&tls.client),
            None => Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            ),
        };
        let connector = hyper_rustls::HttpsConnector::from((http, tls));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url()));
        if let Some(token) = self.token.lock().expect("token lock").clone() {
            request = request.header("authorization", token);
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(2), client.request(request))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }

    /// A v3 gateway call that must succeed.
    async fn call(&self, path: &str, body: Value) -> Value {
        let (status, answer) = within(
            &format!("etcd {path}"),
            self.try_call(Method::POST, path, Some(body)),
        )
        .await
        .unwrap_or_else(|e| panic!("etcd {path}: {e}"));
        assert_eq!(status, StatusCode::OK, "etcd {path}: {answer}");
        answer
    }

    /// The value at `key` as JSON and its `mod_revision`, if the key exists.
    pub async fn get(&self, key: &str) -> Option<(Value, u64)> {
        let answer = self
            .call("/v3/kv/range", json!({ "key": BASE64.encode(key) }))
            .await;
        let kv = answer["kvs"].get(0)?;
        let value = BASE64
            .decode(kv["value"].as_str().unwrap_or(""))
            .expect("base64 value");
        let revision = kv["mod_revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("a mod_revision");
        Some((
            serde_json::from_slice(&value).unwrap_or(Value::Null),
            revision,
        ))
    }

    /// Writes `value` at `key`, as another writer would.
    pub async fn put(&self, key: &str, value: &[u8]) {
        self.call(
            "/v3/kv/put",
            json!({ "key": BASE64.encode(key), "value": BASE64.encode(value) }),
        )
        .await;
    }

    /// Deletes `key`; the store's revision after it.
    pub async fn delete(&self, key: &str) -> u64 {
        let answer = self
            .call("/v3/kv/deleterange", json!({ "key": BASE64.encode(key) }))
            .await;
        answer["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("a revision")
    }

    /// Adds `user` with `password` and the root role, and turns
    /// authentication on; the test's own requests use the user from then on.
    pub async fn enable_auth(&self, user: &str, password: &str) {
        self.call(
            "/v3/auth/user/add",
            json!({ "name": user, "password": password }),
        )
        .await;
        self.call(
            "/v3/auth/user/grant",
            json!({ "user": user, "role": "root" }),
        )
        .await;
        self.call("/v3/auth/enable", json!({})).await;
        let answer = self
            .call(
                "/v3/auth/authenticate",
                json!({ "name": user, "password": password }),
            )
            .await;
        let token = answer["token"].as_str().expect("a token").to_string();
        *self.token.lock().expect("token lock") = Some(token);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes the text to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

// === link ===

/// A TCP relay on a loopback port of its own to one etcd member: an
/// instance configured with [`Link::url`] reaches etcd through it, until
/// [`Link::cut`] closes every relayed connection and refuses new ones.
pub struct Link {
    addr: SocketAddr,
    open: Arc<std::sync::atomic::AtomicBool>,
    /// Cancelled to close every relayed connection; replaced on restore.
    cut: Arc<Mutex<CancellationToken>>,
    token: CancellationToken,
}

impl Link {
    pub async fn start(to: SocketAddr) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind link");
        let addr = listener.local_addr().expect("link addr");
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let token = CancellationToken::new();
        let (task_open, task_cut, task_token) =
            (Arc::clone(&open), Arc::clone(&cut), token.clone());
        tokio::spawn(async move {
            let mut relays = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    () = task_token.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                if !task_open.load(std::sync::atomic::Ordering::SeqCst) {
                    // Cut: close at once, as a partition would end it.
                    drop(inbound);
                    continue;
                }
                let closed = task_cut.lock().expect("cut lock").clone();
                relays.spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        () = closed.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Link {
            addr,
            open,
            cut,
            token,
        }
    }

    /// The URL an instance uses to reach etcd through this link.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut cut = self.cut.lock().expect("cut lock");
        cut.cancel();
        *cut = CancellationToken::new();
    }

    /// Relays again.
    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.token.cancel();
        self.cut.lock().expect("cut lock").cancel();
    }
}
