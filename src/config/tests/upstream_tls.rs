//! `https://` endpoints and the `tls.*` keys of models and pools. The
//! certificates are made with rcgen when the tests run, in a temp dir the
//! config under test lives in.

use super::*;

use std::fs;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::ServerName;

fn name(s: &'static str) -> ServerName<'static> {
    ServerName::try_from(s).expect("a valid server name")
}

/// A temp dir holding a CA (`ca.pem`), a client certificate signed by it
/// (`client.pem`, `client.key`), a key that belongs to neither
/// (`other.key`) and a file without PEM (`junk.pem`).
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ca = CertificateParams::new(Vec::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let client_key = KeyPair::generate().expect("client key");
        let client = CertificateParams::new(vec!["client".to_string()])
            .expect("client params")
            .signed_by(&client_key, &issuer)
            .expect("client certificate");
        let write = |name: &str, text: &str| fs::write(dir.path().join(name), text).expect(name);
        write("ca.pem", &ca_cert.pem());
        write("client.pem", &client.pem());
        write("client.key", &client_key.serialize_pem());
        let other = KeyPair::generate().expect("other key");
        write("other.key", &other.serialize_pem());
        write("junk.pem", "not PEM at all\n");
        Files { dir }
    }

    /// Where the config under test pretends to live: beside the files, so
    /// relative paths name them.
    fn config_file(&self) -> PathBuf {
        self.dir.path().join("switchyard.toml")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn parse(&self, src: &str) -> Result<Config, Vec<ConfigError>> {
        Config::from_toml(src, &self.config_file())
    }

    fn errors(&self, src: &str) -> Vec<ConfigError> {
        match self.parse(src) {
            Ok(_) => panic!("config was accepted but should not be:\n{src}"),
            Err(errors) => errors,
        }
    }

    /// As [`assert_blames`], for a config beside these files.
    fn assert_blames(&self, src: &str, blame: &str, says: &[&str]) {
        let errors = self.errors(src);
        assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
        let e = &errors[0];
        assert_eq!(
            e.line,
            line_of(src, blame),
            "error {e} should point at the line with {blame:?}\nin:\n{src}"
        );
        for s in says {
            assert!(
                e.message.contains(s),
                "message {:?} should contain {s:?}",
                e.message
            );
        }
    }
}

/// A model with `blue` and `green` endpoint lists and extra `lines` in its table.
fn model_tls(blue: &str, green: &str, lines: &str) -> String {
    format!(
        "{HEAD}\n[[models]]\nname = \"iris\"\nblue.endpoints = {blue}\ngreen.endpoints = {green}\n{lines}\n"
    )
}

const HTTPS: &str = r#"["https://127.0.0.1:8443"]"#;
const HTTPS2: &str = r#"["https://127.0.0.1:9443"]"#;
const HTTP: &str = r#"["http://127.0.0.1:8001"]"#;

// === accepted ===

#[test]
fn an_https_pool_without_tls_keys_trusts_the_webpki_roots_and_offers_http11() {
    let c = parse(&model_tls(HTTPS, HTTP, "")).unwrap_or_else(|e| panic!("{e:#?}"));
    let blue = &c.models[0].blue;
    let tls = blue.tls.as_ref().expect("an https pool has TLS settings");
    assert_eq!(tls.ca, None);
    assert_eq!(tls.identity, None);
    assert_eq!(tls.server_name, None);
    assert_eq!(tls.client.alpn_protocols, vec![b"http/1.1".to_vec()]);
    assert_eq!(blue.endpoints[0].url, "https://127.0.0.1:8443");
    assert_eq!(blue.endpoints[0].authority.as_str(), "127.0.0.1:8443");
    assert!(c.models[0].green.tls.is_none(), "an http pool has none");
}

#[test]
fn tls_paths_resolve_against_the_config_directory() {
    let f = Files::new();
    let src = model_tls(
        HTTPS,
        HTTPS2,
        "tls.ca = \"ca.pem\"\ntls.cert = \"client.pem\"\ntls.key = \"client.key\"\ntls.server_name = \"model.internal\"",
    );
    let c = f.parse(&src).unwrap_or_else(|e| panic!("{e:#?}"));
    for pool in [&c.models[0].blue, &c.models[0].green] {
        let tls = pool.tls.as_ref().expect("tls");
        assert_eq!(tls.ca.as_deref(), Some(f.path("ca.pem").as_path()));
        assert_eq!(
            tls.identity,
            Some(TlsFiles {
                cert: f.path("client.pem"),
                key: f.path("client.key"),
            })
        );
        assert_eq!(tls.server_name, Some(name("model.internal")));
        assert!(tls.client.client_auth_cert_resolver.has_certs());
    }
}

#[test]
fn a_pool_overrides_the_models_tls_keys_key_by_key() {
    let f = Files::new();
    let src = model_tls(
        HTTPS,
        HTTPS2,
        "tls.ca = \"ca.pem\"\ntls.server_name = \"model.internal\"\n\
         green.tls.server_name = \"green.internal\"\n\
         green.tls.cert = \"client.pem\"\ngreen.tls.key = \"client.key\"",
    );
    let c = f.parse(&src).unwrap_or_else(|e| panic!("{e:#?}"));
    let blue = c.models[0].blue.tls.as_ref().expect("blue tls");
    let green = c.models[0].green.tls.as_ref().expect("green tls");
    assert_eq!(blue.server_name, Some(name("model.internal")));
    assert_eq!(blue.identity, None);
    assert_eq!(
        green.server_name,
        Some(name("green.internal")),
        "the pool's own key wins"
    );
    assert_eq!(green.ca, blue.ca, "other keys come from the model");
    assert!(green.identity.is_some());
}

#[test]
fn model_tls_serves_the_https_pool_when_the_other_is_http() {
    // Moving a model to TLS: blue still http://, green https://.
    let f = Files::new();
    let c = f
        .parse(&model_tls(HTTP, HTTPS, "tls.ca = \"ca.pem\""))
        .unwrap_or_else(|e| panic!("{e:#?}"));
    assert!(c.models[0].blue.tls.is_none());
    assert!(c.models[0].green.tls.as_ref().unwrap().ca.is_some());
}

#[test]
fn h2_over_tls_offers_h2() {
    let c = parse(&model_tls(HTTPS, HTTP, "blue.protocol = \"h2\""))
        .unwrap_or_else(|e| panic!("{e:#?}"));
    let blue = &c.models[0].blue;
    assert_eq!(blue.protocol, Protocol::H2);
    assert_eq!(
        blue.tls.as_ref().unwrap().client.alpn_protocols,
        vec![b"h2".to_vec()]
    );
}

// === refused ===

#[test]
fn a_missing_ca_file_is_blamed_on_its_line() {
    let f = Files::new();
    let src = model_tls(HTTPS, HTTPS2, "tls.ca = \"nowhere.pem\"");
    f.assert_blames(
        &src,
        "nowhere.pem",
        &["models[0].tls.ca", "cannot read", "nowhere.pem"],
    );
}

#[test]
fn a_ca_file_without_pem_is_blamed_on_its_line() {
    let f = Files::new();
    let src = model_tls(HTTPS, HTTP, "blue.tls.ca = \"junk.pem\"");
    f.assert_blames(
        &src,
        "junk.pem",
        &["models[0].blue.tls.ca", "no PEM certificate"],
    );
}

#[test]
fn a_key_file_without_pem_is_blamed_on_its_line() {
    let f = Files::new();
    let src = model_tls(
        HTTPS,
        HTTPS2,
        "tls.cert = \"client.pem\"\ntls.key = \"junk.pem\"",
    );
    f.assert_blames(
        &src,
        "junk.pem",
        &["models[0].tls.key", "no PEM private key"],
    );
}

#[test]
fn every_broken_tls_file_is_reported_on_its_line() {
    let f = Files::new();
    let src = model_tls(
        HTTPS,
        HTTPS2,
        "tls.ca = \"nowhere.pem\"\ntls.cert = \"junk.pem\"\ntls.key = \"client.pem\"",
    );
    let errors = f.errors(&src);
    let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
    let want: Vec<usize> = ["nowhere.pem", "junk.pem", "client.pem"]
        .iter()
        .map(|needle| line_of(&src, needle))
        .collect();
    assert_eq!(lines, want, "{errors:#?}");
    assert!(
        errors[2].message.contains("no PEM private key"),
        "{errors:#?}"
    );
}

#[test]
fn a_client_key_of_another_certificate_is_refused() {
    let f = Files::new();
    let src = model_tls(
        HTTPS,
        HTTPS2,
        "tls.cert = \"client.pem\"\ntls.key = \"other.key\"",
    );
    f.assert_blames(
        &src,
        "client.pem",
        &["models[0].tls.cert", "do not make a usable certificate"],
    );
}

#[test]
fn a_client_certificate_without_its_key_is_refused() {
    let f = Files::new();
    let src = model_tls(HTTPS, HTTP, "blue.tls.cert = \"client.pem\"");
    f.assert_blames(
        &src,
        "client.pem",
        &["models[0].blue.tls.cert", "set models[0].blue.tls.key too"],
    );
    let src = model_tls(HTTPS, HTTP, "blue.tls.key = \"client.key\"");
    f.assert_blames(
        &src,
        "client.key",
        &["models[0].blue.tls.key", "set models[0].blue.tls.cert too"],
    );
}

#[test]
fn a_bad_server_name_is_blamed_on_its_line() {
    let src = model_tls(HTTPS, HTTP, "tls.server_name = \"not a name\"");
    assert_blames(
        &src,
        "not a name",
        &["models[0].tls.server_name", "invalid server name"],
    );
}

#[test]
fn a_pool_mixing_http_and_https_is_refused() {
    let src = model_tls(
        r#"["https://127.0.0.1:8443",
  "http://127.0.0.1:8003"]"#,
        HTTP,
        "",
    );
    assert_blames(
        &src,
        "\"http://127.0.0.1:8003\"",
        &["models[0].blue.endpoints", "one scheme"],
    );
}

#[test]
fn pool_tls_on_an_http_pool_has_no_effect_and_is_refused() {
    let f = Files::new();
    let src = model_tls(HTTPS, HTTP, "green.tls.ca = \"ca.pem\"");
    f.assert_blames(
        &src,
        "ca.pem",
        &["models[0].green.tls", "no effect", "http://"],
    );
}

#[test]
fn model_tls_with_no_https_pool_has_no_effect_and_is_refused() {
    let f = Files::new();
    let src = model_tls(HTTP, r#"["http://127.0.0.1:8002"]"#, "tls.ca = \"ca.pem\"");
    f.assert_blames(&src, "ca.pem", &["models[0].tls", "no effect"]);
}

#[test]
fn h2c_on_https_and_h2_on_http_are_refused() {
    let src = model_tls(HTTPS, HTTP, "blue.protocol = \"h2c\"");
    assert_blames(&src, "\"h2c\"", &["cleartext", "protocol = \"h2\""]);
    let src = model_tls(HTTPS, HTTP, "green.protocol = \"h2\"");
    assert_blames(&src, "\"h2\"", &["over TLS", "protocol = \"h2c\""]);
}

#[test]
fn an_unknown_tls_key_is_blamed_on_its_line() {
    let src = model_tls(HTTPS, HTTP, "tls.verify = false");
    let e = one_error(&src);
    assert_eq!(e.line, line_of(&src, "verify"));
    assert!(e.message.contains("verify"), "{}", e.message);
}
