//! `switchyard demo`: two toy model servers speaking the Open Inference
//! Protocol (v2), blue serving iris v1 and green iris v2 with different
//! predictions, and the proxy in front of them, all in one process with no
//! files. The config is `config/demo.toml`, built into the binary; ports
//! that are taken are replaced by free ones.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EndpointConfig, StateConfig};
use crate::pool::PoolName;
use crate::{server, Listeners, RunError};

/// The demo's config, as shipped in `config/demo.toml`.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");
const DEMO_CONFIG_NAME: &str = "config/demo.toml";
/// Toy model servers refuse request bodies larger than this.
const MAX_INFER_BODY: usize = 1 << 20;

/// One toy OIP model server: a version of the iris classifier.
#[derive(Debug, Clone, Copy)]
pub struct ToyModel {
    /// `1` (decision rules) or `2` (nearest centroid).
    pub version: u32,
}

// === impl ToyModel ===

impl ToyModel {
    pub fn for_pool(pool: PoolName) -> ToyModel {
        match pool {
            PoolName::Blue => ToyModel { version: 1 },
            PoolName::Green => ToyModel { version: 2 },
        }
    }

    /// Serves the OIP endpoints on `listener` until `token` is cancelled.
    pub async fn serve(self, listener: TcpListener, token: CancellationToken) {
        let make = move |_: &server::Accepted| {
            hyper::service::service_fn(move |req| async move {
                Ok::<_, Infallible>(self.handle(req).await)
            })
        };
        server::serve("demo-model", listener, make, token, Duration::from_secs(1)).await;
    }

    async fn handle(self, req: Request<server::RequestBody>) -> Response<Full<Bytes>> {
        let path = req.uri().path().trim_end_matches('/');
        match (req.method(), path) {
            (&Method::GET, "/v2/health/ready" | "/v2/health/live" | "/v2/models/iris/ready") => {
                reply(StatusCode::OK, json!({}))
            }
            (&Method::GET, "/v2/models/iris") => reply(StatusCode::OK, self.metadata()),
            (&Method::POST, "/v2/models/iris/infer") => {
                let body = match Limited::new(req.into_body(), MAX_INFER_BODY)
                    .collect()
                    .await
                {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        return reply(
                            StatusCode::BAD_REQUEST,
                            json!({ "error": format!("cannot read body: {e}") }),
                        )
                    }
                };
                match self.infer(&body) {
                    Ok(v) => reply(StatusCode::OK, v),
                    Err(e) => reply(StatusCode::BAD_REQUEST, json!({ "error": e })),
                }
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                json!({ "error": format!("no route {path}") }),
            ),
        }
    }

    fn metadata(self) -> Value {
        json!({
            "name": "iris",
            "versions": [self.version.to_string()],
            "platform": "switchyard-demo",
            "inputs": [{ "name": "input-0", "datatype": "FP32", "shape": [-1, 4] }],
            "outputs": [{ "name": "predict", "datatype": "INT64", "shape": [-1] }],
        })
    }

    /// Answers an OIP inference request: rows of four iris features
    /// (sepal length, sepal width, petal length, petal width) in, one class
    /// (0 setosa, 1 versicolor, 2 virginica) per row out.
    pub fn infer(self, body: &[u8]) -> Result<Value, String> {
        let request: Value =
            serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
        let input = request["inputs"]
            .get(0)
            .ok_or("expected \"inputs\" with one tensor of shape [n, 4]")?;
        let mut data = Vec::new();
        flatten(&input["data"], &mut data)?;
        if data.is_empty() || data.len() % 4 != 0 {
            return Err(format!(
                "expected rows of 4 features, got {} numbers",
                data.len()
            ));
        }
        let predictions: Vec<i64> = data.chunks(4).map(|row| self.classify(row)).collect();
        let mut response = json!({
            "model_name": "iris",
            "model_version": self.version.to_string(),
            "outputs": [{ "name": "predict", "datatype": "INT64", "shape": [predictions.len()], "data": predictions }],
        });
        if let Some(id) = request.get("id") {
            response["id"] = id.clone();
        }
        Ok(response)
    }

    fn classify(self, x: &[f64]) -> i64 {
        if self.version == 1 {
            // v1: the classic two-split decision tree on the petals.
            if x[2] < 2.45 {
                0
            } else if x[3] < 1.75 {
                1
            } else {
                2
            }
        } else {
            // v2: nearest class centroid over all four features.
            const CENTROIDS: [[f64; 4]; 3] = [
                [5.006, 3.428, 1.462, 0.246],
                [5.936, 2.770, 4.260, 1.326],
                [6.588, 2.974, 5.552, 2.026],
            ];
            let distance =
                |c: &[f64; 4]| c.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
            (0..3)
                .min_by(|a, b| distance(&CENTROIDS[*a]).total_cmp(&distance(&CENTROIDS[*b])))
                .unwrap_or(0) as i64
        }
    }
}

fn flatten(v: &Value, out: &mut Vec<f64>) -> Result<(), String> {
    match v {
        Value::Number(n) => out.push(n.as_f64().ok_or("feature out of range")?),
        Value::Array(items) => {
            for item in items {
                flatten(item, out)?;
            }
        }
        _ => return Err("\"data\" must hold numbers".to_string()),
    }
    Ok(())
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Binds `addr`, or a free port on the same IP when it is taken.
async fn bind_or_free(addr: SocketAddr) -> Result<TcpListener, RunError> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(_) => {
            let free = SocketAddr::new(addr.ip(), 0);
            TcpListener::bind(free)
                .await
                .map_err(|source| RunError::Bind {
                    which: "demo",
                    addr: free,
                    source,
                })
        }
    }
}

fn local_addr(l: &TcpListener) -> SocketAddr {
    l.local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Runs the demo until `shutdown` resolves.
pub async fn run(shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), RunError> {
    let mut config = Config::from_toml(DEMO_CONFIG, Path::new(DEMO_CONFIG_NAME))
        .unwrap_or_else(|errors| unreachable_config(&errors));
    let state_path = demo_state_path();
    config.state = StateConfig::File {
        path: state_path.clone(),
    };

    let token = CancellationToken::new();
    let mut servers = tokio::task::JoinSet::new();
    let mut urls = Vec::new();
    for pool in PoolName::ALL {
        let model = &mut config.models[0];
        let pool_config = match pool {
            PoolName::Blue => &mut model.blue,
            PoolName::Green => &mut model.green,
        };
        let wanted: SocketAddr = pool_config.endpoints[0]
            .authority
            .as_str()
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = bind_or_free(wanted).await?;
        let addr = local_addr(&listener);
        let url = format!("http://{addr}");
        pool_config.endpoints = vec![EndpointConfig {
            url: url.clone(),
            authority: addr.to_string().parse().map_err(|_| RunError::Bind {
                which: "demo",
                addr,
                source: std::io::Error::other("bound address is not a valid authority"),
            })?,
        }];
        urls.push((pool, url));
        servers.spawn(ToyModel::for_pool(pool).serve(listener, token.child_token()));
    }

    let listeners = Listeners {
        proxy: bind_or_free(config.proxy.listen).await?,
        admin: bind_or_free(config.admin.listen).await?,
        preview: None,
    };
    let proxy = local_addr(&listeners.proxy);
    let admin = local_addr(&listeners.admin);
    let running = tokio::spawn(crate::run(config, listeners, shutdown));
    // The banner invites a flip at once: print it only once both pools are
    // probed, or a quick reader's flip would meet the guard's 409.
    wait_until_probed(admin, &running).await;
    print_banner(&urls, proxy, admin);

    let result = match running.await {
        Ok(result) => result,
        Err(e) => Err(RunError::Task("proxy", Some(e))),
    };
    token.cancel();
    while servers.join_next().await.is_some() {}
    // The demo's state is throwaway; a failed removal leaves a small file in
    // the temp directory and nothing else.
    let _ = std::fs::remove_file(&state_path);
    result
}

/// Polls the admin listener's `/readyz` until the first probe round is in,
/// the proxy stopped, or a few seconds passed (then the banner prints anyway).
async fn wait_until_probed(
    admin: SocketAddr,
    running: &tokio::task::JoinHandle<Result<(), RunError>>,
) {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let Ok(url) = format!("http://{admin}/readyz").parse::<http::Uri>() else {
        return;
    };
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < give_up && !running.is_finished() {
        if let Ok(response) = client.get(url.clone()).await {
            if let Ok(body) = response.into_body().collect().await {
                let probed = serde_json::from_slice::<Value>(&body.to_bytes())
                    .is_ok_and(|v| v["probed"] == Value::Bool(true));
                if probed {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `config/demo.toml` is checked by a test; it cannot fail to parse.
fn unreachable_config(errors: &[crate::config::ConfigError]) -> ! {
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    panic!("built-in demo config is invalid:\n{}", text.join("\n"))
}

fn demo_state_path() -> PathBuf {
    std::env::temp_dir().join(format!("switchyard-demo-{}.json", std::process::id()))
}

fn print_banner(urls: &[(PoolName, String)], proxy: SocketAddr, admin: SocketAddr) {
    let body = r#"{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP32","data":[6.3,2.8,5.0,1.6]}]}"#;
    println!(
        "switchyard demo: model \"iris\", two toy model servers and the proxy in front of them\n"
    );
    for (pool, url) in urls {
        let version = ToyModel::for_pool(*pool).version;
        println!("  {pool:<6} iris v{version}  {url}");
    }
    println!("  proxy           http://{proxy}");
    println!("  admin           http://{admin}");
    println!("  dashboard       http://{admin}/\n");
    println!("Infer through the proxy (see x-switchyard-pool and model_version):");
    println!("  curl -si http://{proxy}/v2/models/iris/infer -H 'content-type: application/json' -d '{body}'");
    println!("Status:");
    println!("  curl -s http://{admin}/models/iris");
    println!("Validate the standby pool (its [[models.validate]] checks), switching nothing:");
    println!("  curl -s -X POST http://{admin}/models/iris/validate");
    println!("Flip to the standby pool if it passes them, then infer again:");
    println!("  curl -s -X POST 'http://{admin}/models/iris/flip?validate=true'");
    println!("Roll back:");
    println!("  curl -s -X POST http://{admin}/models/iris/rollback");
    println!("Metrics:");
    println!("  curl -s http://{admin}/metrics\n");
    println!("Ctrl-C stops the demo.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_versions_disagree_on_the_banner_example() {
        let body = br#"{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP32","data":[6.3,2.8,5.0,1.6]}]}"#;
        let v1 = ToyModel { version: 1 }.infer(body).unwrap();
        let v2 = ToyModel { version: 2 }.infer(body).unwrap();
        assert_eq!(v1["outputs"][0]["data"], json!([1]));
        assert_eq!(v2["outputs"][0]["data"], json!([2]));
        assert_eq!(v1["model_version"], "1");
    }

    #[test]
    fn both_versions_agree_on_clear_cases() {
        let body = br#"{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":[[5.1,3.5,1.4,0.2],[7.7,3.0,6.1,2.3]]}]}"#;
        for version in [1, 2] {
            let v = ToyModel { version }.infer(body).unwrap();
            assert_eq!(v["outputs"][0]["data"], json!([0, 2]));
        }
    }

    #[test]
    fn both_versions_pass_the_demo_checks() {
        let config = Config::from_toml(DEMO_CONFIG, Path::new(DEMO_CONFIG_NAME)).unwrap();
        let checks = &config.models[0].validate;
        assert!(!checks.is_empty());
        for pool in PoolName::ALL {
            for check in checks {
                let answer = crate::validate::Answer {
                    status: StatusCode::OK,
                    body: Bytes::from(
                        ToyModel::for_pool(pool)
                            .infer(&check.body)
                            .unwrap()
                            .to_string(),
                    ),
                };
                let failures = crate::validate::judge(check, pool, &answer, None);
                assert!(failures.is_empty(), "{pool}: {failures:?}");
            }
        }
    }

    #[test]
    fn bad_inputs_are_refused() {
        let m = ToyModel { version: 1 };
        assert!(m.infer(b"not json").is_err());
        assert!(m.infer(br#"{"inputs":[{"data":[1,2,3]}]}"#).is_err());
        assert!(m.infer(br#"{"inputs":[{"data":["a"]}]}"#).is_err());
        assert!(m.infer(br#"{}"#).is_err());
    }
}
