//! The container image and Kubernetes examples in `docker/` (DESIGN.md,
//! layout), kept from rotting: every manifest parses and names itself,
//! every switchyard config in them passes the real `switchyard check`, and
//! the pieces that must agree do: the config path the image reads and the
//! one the pods mount, the ports the configs listen on and the ones the
//! image exposes and the probes, scrape annotations and Services use, the
//! token file and its Secret mount, the state file and a writable volume.
//!
//! Nothing here needs Docker or a cluster: the Dockerfile is read as text.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use switchyard::config::Config;
use yaml_rust2::{Yaml, YamlLoader};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const DOCKER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docker");
/// Where the image reads its config (`CMD`), and where the pods mount theirs.
const IMAGE_CONFIG: &str = "/etc/switchyard/switchyard.toml";
/// The image's runtime user.
const UID: i64 = 10001;

/// One YAML document of a file under `docker/`.
struct Manifest {
    file: PathBuf,
    /// 0-based position of the document in its file.
    index: usize,
    doc: Yaml,
}

impl Manifest {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or("")
    }

    fn dir(&self) -> &Path {
        self.file.parent().expect("a manifest is in a directory")
    }

    /// `file#index (Kind name)`, for messages.
    fn at(&self) -> String {
        format!(
            "{}#{} ({} {})",
            self.file.display(),
            self.index,
            self.kind(),
            self.name()
        )
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

/// Every document of every `*.yaml` / `*.yml` under `docker/`, in path order.
fn manifests() -> Vec<Manifest> {
    let mut files = Vec::new();
    yaml_files(Path::new(DOCKER_DIR), &mut files);
    files.sort();
    let mut all = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let docs = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", file.display()));
        for (index, doc) in docs.into_iter().enumerate() {
            all.push(Manifest {
                file: file.clone(),
                index,
                doc,
            });
        }
    }
    all
}

/// A switchyard config embedded in a ConfigMap.
struct Embedded<'a> {
    manifest: &'a Manifest,
    key: &'a str,
    text: &'a str,
}

/// Every ConfigMap `data` value whose key ends in `.toml`.
fn embedded_configs(manifests: &[Manifest]) -> Vec<Embedded<'_>> {
    let mut found = Vec::new();
    for m in manifests.iter().filter(|m| m.kind() == "ConfigMap") {
        let Some(data) = m.doc["data"].as_hash() else {
            continue;
        };
        for (key, value) in data {
            let key = key
                .as_str()
                .unwrap_or_else(|| panic!("{}: a data key that is not a string", m.at()));
            if key.ends_with(".toml") {
                let text = value
                    .as_str()
                    .unwrap_or_else(|| panic!("{}: data.{key} is not a string", m.at()));
                found.push(Embedded {
                    manifest: m,
                    key,
                    text,
                });
            }
        }
    }
    found
}

/// Runs the real `switchyard check --config PATH`: success, stdout, stderr.
fn check(path: &Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run switchyard check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_manifest_parses_and_names_itself() {
    let manifests = manifests();
    let dirs: BTreeSet<_> = manifests.iter().map(|m| m.dir().to_path_buf()).collect();
    for example in ["k8s/sidecar", "k8s/gateway"] {
        assert!(
            dirs.contains(&Path::new(DOCKER_DIR).join(example)),
            "no manifest in docker/{example}"
        );
    }
    for m in &manifests {
        assert!(
            m.doc.as_hash().is_some(),
            "{}: a document that is not a mapping (an empty document between `---`?)",
            m.at()
        );
        for (what, value) in [
            ("apiVersion", &m.doc["apiVersion"]),
            ("kind", &m.doc["kind"]),
            ("metadata.name", &m.doc["metadata"]["name"]),
        ] {
            assert!(
                value.as_str().is_some_and(|s| !s.is_empty()),
                "{}: no {what}",
                m.at()
            );
        }
    }
}

#[test]
fn every_embedded_config_passes_check() {
    let manifests = manifests();
    let configs = embedded_configs(&manifests);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut models = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        // `check` reads the config alone: the token file it names (a Secret
        // mount that does not exist here) is read by `serve` only, and the
        // state file's directory is not touched. So the config is checked
        // exactly as written.
        let path = dir.path().join(format!("{i}-{}", c.key));
        std::fs::write(&path, c.text).expect("write the config");
        let (ok, stdout, stderr) = check(&path);
        assert!(
            ok,
            "{} data.{}: switchyard check failed:\n{stderr}",
            c.manifest.at(),
            c.key
        );
        models.push((c.manifest.dir().to_path_buf(), stdout));
    }
    let example = |name: &str| {
        models
            .iter()
            .find(|(dir, _)| dir.ends_with(name))
            .map(|(_, stdout)| stdout.as_str())
            .unwrap_or_else(|| panic!("no config in docker/{name}"))
    };
    assert!(example("k8s/sidecar").contains("ok (1 model)"));
    assert!(example("k8s/gateway").contains("ok (3 models)"));
}

#[test]
fn the_image_config_passes_check() {
    let (ok, stdout, stderr) = check(&Path::new(DOCKER_DIR).join("switchyard.toml"));
    assert!(ok, "docker/switchyard.toml: {stderr}");
    assert!(stdout.contains("ok (1 model)"), "{stdout}");
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(DOCKER_DIR).join("Dockerfile"))
        .expect("read docker/Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((op.to_ascii_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    instructions
}

#[test]
fn the_dockerfile_agrees_with_the_image_config() {
    let path = Path::new(DOCKER_DIR).join("switchyard.toml");
    let config = Config::load(&path).expect("docker/switchyard.toml loads");
    let instructions = dockerfile();
    let all = |op: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let one = |op: &str| -> &str {
        let found = all(op);
        assert_eq!(
            found.len(),
            1,
            "docker/Dockerfile: expected one {op}, found {found:?}"
        );
        found[0]
    };

    let from = all("FROM");
    assert!(
        from[0].starts_with("rust:1.95-bookworm"),
        "builder: {from:?}"
    );
    assert!(
        from[1].starts_with("debian:bookworm-slim"),
        "runtime: {from:?}"
    );
    assert!(
        all("RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked")),
        "the binary is built with --release --locked"
    );

    // The config: copied to the path CMD names, which the pods mount too.
    assert!(
        all("COPY").contains(&format!("docker/switchyard.toml {IMAGE_CONFIG}").as_str()),
        "docker/switchyard.toml is copied to {IMAGE_CONFIG}"
    );
    assert_eq!(one("ENTRYPOINT"), r#"["switchyard"]"#);
    assert_eq!(
        one("CMD"),
        format!(r#"["serve", "--config", "{IMAGE_CONFIG}"]"#)
    );

    // The ports: exactly the config's listeners.
    let exposed: BTreeSet<u16> = one("EXPOSE")
        .split_whitespace()
        .map(|p| p.parse().expect("EXPOSE takes port numbers"))
        .collect();
    let listening: BTreeSet<u16> = [config.proxy.listen.port(), config.admin.listen.port()].into();
    assert_eq!(
        exposed, listening,
        "EXPOSE and docker/switchyard.toml's listeners"
    );
    assert!(!config.proxy.listen.ip().is_loopback() && !config.admin.listen.ip().is_loopback());
    let healthcheck = one("HEALTHCHECK");
    let readyz = format!("http://127.0.0.1:{}/readyz", config.admin.listen.port());
    assert!(
        healthcheck.contains(&readyz),
        "HEALTHCHECK asks {readyz}: {healthcheck}"
    );
    // The runtime image has curl for it.
    assert!(all("RUN")
        .iter()
        .any(|r| r.contains("install -y --no-install-recommends ca-certificates curl")));

    // Not root; the state file's directory is the volume.
    assert_eq!(one("USER"), format!("{UID}:{UID}"));
    let state_dir = config
        .state
        .path()
        .and_then(|p| p.parent())
        .expect("state file in a directory");
    assert_eq!(one("VOLUME"), format!(r#"["{}"]"#, state_dir.display()));
    assert!(
        all("RUN")
            .iter()
            .any(|r| r.contains(&format!("chown {UID}:{UID} {}", state_dir.display()))),
        "the user can write {}",
        state_dir.display()
    );

    // A non-loopback admin listener needs a token: the config names one,
    // at the path the Dockerfile documents.
    let token = config.admin.token_file.as_ref().expect("admin.token_file");
    let text = std::fs::read_to_string(Path::new(DOCKER_DIR).join("Dockerfile")).expect("read");
    assert!(
        text.contains(&token.display().to_string()),
        "the Dockerfile documents {}",
        token.display()
    );
}

// === pods ===

fn port_named(container: &Yaml, name: &str) -> Option<i64> {
    container["ports"]
        .as_vec()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_i64())
}

/// The volume a container mounts at exactly `dir`, with its mount.
fn volume_at<'a>(pod: &'a Yaml, container: &'a Yaml, dir: &Path) -> Option<(&'a Yaml, &'a Yaml)> {
    let mount = container["volumeMounts"]
        .as_vec()?
        .iter()
        .find(|m| m["mountPath"].as_str().map(Path::new) == Some(dir))?;
    let volume = pod["volumes"]
        .as_vec()?
        .iter()
        .find(|v| v["name"] == mount["name"])?;
    Some((volume, mount))
}

/// The security setting `key` of a container, else of its pod.
fn security<'a>(pod: &'a Yaml, container: &'a Yaml, key: &str) -> &'a Yaml {
    match &container["securityContext"][key] {
        Yaml::BadValue => &pod["securityContext"][key],
        set => set,
    }
}

/// The seconds of a `preStop` `sleep N`, 0 without one.
fn pre_stop_sleep(container: &Yaml) -> u64 {
    match container["lifecycle"]["preStop"]["exec"]["command"].as_vec() {
        Some(cmd) if cmd.first().and_then(Yaml::as_str) == Some("sleep") => cmd[1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("sleep N"),
        _ => 0,
    }
}

/// A Deployment running switchyard, and the config its pod mounts.
struct Pod<'a> {
    manifest: &'a Manifest,
    config: Config,
}

impl Pod<'_> {
    fn spec(&self) -> &Yaml {
        &self.manifest.doc["spec"]["template"]["spec"]
    }

    fn switchyard(&self) -> &Yaml {
        self.spec()["containers"]
            .as_vec()
            .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some("switchyard")))
            .expect("a container named switchyard")
    }
}

/// Every Deployment with a container named `switchyard`, with the config it
/// mounts: the file `--config` names, found in the ConfigMap mounted there.
fn pods(manifests: &[Manifest]) -> Vec<Pod<'_>> {
    let mut pods = Vec::new();
    for m in manifests.iter().filter(|m| m.kind() == "Deployment") {
        let spec = &m.doc["spec"]["template"]["spec"];
        let Some(container) = spec["containers"]
            .as_vec()
            .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some("switchyard")))
        else {
            continue;
        };
        // No args: the image's CMD, which reads IMAGE_CONFIG.
        let config_path = match container["args"].as_vec() {
            None => IMAGE_CONFIG.to_string(),
            Some(args) => {
                let args: Vec<&str> = args.iter().filter_map(Yaml::as_str).collect();
                assert_eq!(args[..2], ["serve", "--config"], "{}: args", m.at());
                args[2].to_string()
            }
        };
        assert_eq!(
            config_path,
            IMAGE_CONFIG,
            "{}: the config path the image documents",
            m.at()
        );
        let config_path = Path::new(&config_path);
        let (volume, _) = volume_at(spec, container, config_path.parent().expect("a directory"))
            .unwrap_or_else(|| panic!("{}: nothing mounted at {}", m.at(), config_path.display()));
        let map_name = volume["configMap"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: {} is not a ConfigMap", m.at(), config_path.display()));
        let key = config_path
            .file_name()
            .and_then(|f| f.to_str())
            .expect("a file name");
        let text = manifests
            .iter()
            .find(|c| c.kind() == "ConfigMap" && c.name() == map_name && c.dir() == m.dir())
            .and_then(|c| c.doc["data"][key].as_str())
            .unwrap_or_else(|| {
                panic!(
                    "{}: no ConfigMap {map_name} with data.{key} beside it",
                    m.at()
                )
            });
        let config = Config::from_toml(text, config_path)
            .unwrap_or_else(|e| panic!("{}: ConfigMap {map_name}: {e:?}", m.at()));
        pods.push(Pod {
            manifest: m,
            config,
        });
    }
    pods
}

#[test]
fn every_switchyard_pod_mounts_and_exposes_what_its_config_names() {
    let manifests = manifests();
    let pods = pods(&manifests);
    assert!(pods.len() >= 2, "the sidecar and the gateway Deployments");
    for pod in &pods {
        let at = pod.manifest.at();
        let (spec, container, config) = (pod.spec(), pod.switchyard(), &pod.config);

        // Ports: the container declares what the config listens on.
        let admin = i64::from(config.admin.listen.port());
        assert_eq!(
            port_named(container, "admin"),
            Some(admin),
            "{at}: port admin"
        );
        assert_eq!(
            port_named(container, "http"),
            Some(i64::from(config.proxy.listen.port())),
            "{at}: port http"
        );
        if let Some(preview) = config.proxy.preview_listen {
            assert_eq!(
                port_named(container, "preview"),
                Some(i64::from(preview.port())),
                "{at}: port preview"
            );
        }

        // The admin listener is reachable from the kubelet, so it has a
        // token, read from a Secret mounted where token_file points.
        assert!(
            !config.admin.listen.ip().is_loopback(),
            "{at}: admin on the pod IP"
        );
        let token = config
            .admin
            .token_file
            .as_ref()
            .unwrap_or_else(|| panic!("{at}: no admin.token_file"));
        let (volume, mount) = volume_at(spec, container, token.parent().expect("a directory"))
            .unwrap_or_else(|| panic!("{at}: nothing mounted at {}", token.display()));
        assert!(
            volume["secret"]["secretName"].as_str().is_some(),
            "{at}: the token is not from a Secret"
        );
        assert_eq!(
            mount["readOnly"].as_bool(),
            Some(true),
            "{at}: token mount read-only"
        );
        let file = token
            .file_name()
            .and_then(|f| f.to_str())
            .expect("a file name");
        assert!(
            volume["secret"]["items"]
                .as_vec()
                .is_some_and(|items| items.iter().any(|i| i["path"].as_str() == Some(file))),
            "{at}: the Secret volume has no item at {file}"
        );

        // The state file is on a writable volume (the root is read-only).
        let state_dir = config
            .state
            .path()
            .and_then(|p| p.parent())
            .expect("a state file in a directory");
        let (volume, mount) = volume_at(spec, container, state_dir)
            .unwrap_or_else(|| panic!("{at}: nothing mounted at {}", state_dir.display()));
        assert!(
            !volume["emptyDir"].is_badvalue() || !volume["persistentVolumeClaim"].is_badvalue(),
            "{at}: {} is neither an emptyDir nor a claim",
            state_dir.display()
        );
        assert_ne!(
            mount["readOnly"].as_bool(),
            Some(true),
            "{at}: state mount read-only"
        );

        // Probes on the admin port; liveness never depends on the models.
        for probe in ["readinessProbe", "livenessProbe"] {
            let port = &container[probe]["httpGet"]["port"];
            assert!(
                port.as_str() == Some("admin") || port.as_i64() == Some(admin),
                "{at}: {probe} not on the admin port"
            );
        }
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"].as_str(),
            Some("/healthz"),
            "{at}"
        );
        let readiness = container["readinessProbe"]["httpGet"]["path"].as_str();
        assert!(
            matches!(readiness, Some("/readyz" | "/healthz")),
            "{at}: readiness {readiness:?}"
        );

        // Prometheus scrapes /metrics on the admin port, without a token.
        let annotations = &pod.manifest.doc["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/scrape"].as_str(),
            Some("true"),
            "{at}"
        );
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            Some(admin.to_string().as_str()),
            "{at}"
        );
        assert_eq!(
            annotations["prometheus.io/path"].as_str(),
            Some("/metrics"),
            "{at}"
        );
        assert!(
            !config.admin.metrics_require_token,
            "{at}: annotation scraping sends no token"
        );

        // Not root, read-only root.
        assert_eq!(
            security(spec, container, "runAsUser").as_i64(),
            Some(UID),
            "{at}: runAsUser"
        );
        assert_eq!(
            security(spec, container, "runAsNonRoot").as_bool(),
            Some(true),
            "{at}"
        );
        assert_eq!(
            container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{at}"
        );
        assert_eq!(
            spec["securityContext"]["fsGroup"].as_i64(),
            Some(UID),
            "{at}: fsGroup"
        );

        // SIGTERM leaves time to drain.
        let grace = spec["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
        let needed = pre_stop_sleep(container) + config.proxy.drain_timeout.as_secs();
        assert!(
            u64::try_from(grace).is_ok_and(|g| g > needed),
            "{at}: terminationGracePeriodSeconds {grace} leaves no time for preStop and drain_timeout ({needed}s)"
        );
    }
}

#[test]
fn the_sidecar_pod_is_ready_with_its_live_model_and_runs_both_versions() {
    let manifests = manifests();
    let pods = pods(&manifests);
    let pod = pods
        .iter()
        .find(|p| p.manifest.dir().ends_with("k8s/sidecar"))
        .expect("the sidecar Deployment");
    let at = pod.manifest.at();
    let container = pod.switchyard();
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz"),
        "{at}"
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz"),
        "{at}"
    );

    // Every endpoint is a loopback port some container of the pod serves,
    // and no model server has a readiness probe: the pod's readiness is
    // switchyard's, which a standby being reloaded does not touch.
    let others: Vec<&Yaml> = pod.spec()["containers"]
        .as_vec()
        .expect("containers")
        .iter()
        .filter(|c| c["name"].as_str() != Some("switchyard"))
        .collect();
    for c in &others {
        assert!(
            c["readinessProbe"].is_badvalue(),
            "{at}: {:?} has a readinessProbe",
            c["name"]
        );
    }
    let served: BTreeSet<i64> = others
        .iter()
        .flat_map(|c| c["ports"].as_vec().into_iter().flatten())
        .filter_map(|p| p["containerPort"].as_i64())
        .collect();
    for model in &pod.config.models {
        for pool in [&model.blue, &model.green] {
            for e in &pool.endpoints {
                assert_eq!(e.authority.host(), "127.0.0.1", "{at}: {}", e.url);
                let port = e.authority.port_u16().map(i64::from);
                assert!(
                    port.is_some_and(|p| served.contains(&p)),
                    "{at}: no container of the pod serves {}",
                    e.url
                );
            }
        }
    }
}

#[test]
fn every_service_selects_a_switchyard_pod_port() {
    let manifests = manifests();
    let services: Vec<&Manifest> = manifests.iter().filter(|m| m.kind() == "Service").collect();
    assert!(services.len() >= 2, "the sidecar and the gateway Services");
    for s in services {
        let at = s.at();
        let selector = s.doc["spec"]["selector"]
            .as_hash()
            .unwrap_or_else(|| panic!("{at}: no selector"));
        let deployment = manifests
            .iter()
            .filter(|d| d.kind() == "Deployment" && d.dir() == s.dir())
            .find(|d| {
                let labels = &d.doc["spec"]["template"]["metadata"]["labels"];
                selector
                    .iter()
                    .all(|(k, v)| labels[k.as_str().unwrap_or("")] == *v)
            })
            .unwrap_or_else(|| panic!("{at}: selects no Deployment beside it"));
        for port in s.doc["spec"]["ports"]
            .as_vec()
            .unwrap_or_else(|| panic!("{at}: no ports"))
        {
            let target = port["targetPort"]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: targetPort by name"));
            let containers = deployment.doc["spec"]["template"]["spec"]["containers"]
                .as_vec()
                .expect("containers");
            assert!(
                containers.iter().any(|c| port_named(c, target).is_some()),
                "{at}: targetPort {target} is no port of {}",
                deployment.at()
            );
        }
    }
}
