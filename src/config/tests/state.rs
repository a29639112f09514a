//! `[state]`: the file backend (the default) and the etcd backend, each key
//! checked with the line to blame.

use super::*;

/// A config whose `[state]` table is `lines`; the models follow.
fn state(lines: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:8080\"\n\n[admin]\nlisten = \"127.0.0.1:9901\"\n\n[state]\n{lines}\n\n[[models]]\nname = \"iris\"\nblue.endpoints = [\"http://127.0.0.1:8001\"]\ngreen.endpoints = [\"http://127.0.0.1:8002\"]\n"
    )
}

const ETCD: &str = "backend = \"etcd\"\nendpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379/\"]\nprefix = \"/switchyard/prod/\"";

fn etcd(config: &Config) -> &EtcdConfig {
    match &config.state {
        StateConfig::Etcd(etcd) => etcd,
        other => panic!("not the etcd backend: {other:?}"),
    }
}

#[test]
fn the_file_backend_is_the_default_and_may_be_named() {
    let c = parse(&state("backend = \"file\"\npath = \"s.json\"")).unwrap();
    assert_eq!(c.state.path(), Some(Path::new("/etc/switchyard/s.json")));
    assert_blames(
        &state("# no path"),
        "[state]",
        &["state.path: missing", r#"backend = "etcd""#],
    );
}

#[test]
fn every_etcd_key_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("etcd.password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let src = state(&format!(
        "{ETCD}\ncache_path = \"cache/state.json\"\nusername = \"switchyard\"\npassword_file = {:?}\ntimeout = \"750ms\"",
        password.display().to_string()
    ));
    let c = parse(&src).unwrap_or_else(|e| panic!("{e:#?}"));
    let e = etcd(&c);
    let urls: Vec<String> = e.endpoints.iter().map(ToString::to_string).collect();
    assert_eq!(urls, ["http://10.0.0.1:2379/", "http://10.0.0.2:2379/"]);
    assert_eq!(e.prefix, "/switchyard/prod/");
    assert_eq!(
        e.cache_path.as_deref(),
        Some(Path::new("/etc/switchyard/cache/state.json"))
    );
    let credentials = e.credentials.as_ref().unwrap();
    assert_eq!(credentials.username, "switchyard");
    assert_eq!(read_password(&credentials.password_file).unwrap(), "s3cret");
    assert_eq!(e.timeout, Duration::from_millis(750));
    assert!(e.tls.is_none());
    assert_eq!(c.state.path(), None);

    // The defaults.
    let c = parse(&state(ETCD)).unwrap();
    let e = etcd(&c);
    assert_eq!(e.timeout, DEFAULT_ETCD_TIMEOUT);
    assert!(e.cache_path.is_none() && e.credentials.is_none());
}

#[test]
fn etcd_keys_need_the_etcd_backend() {
    assert_blames(
        &state("path = \"s.json\"\nprefix = \"/sy/\""),
        "prefix",
        &["state.prefix: only the etcd backend has it"],
    );
    assert_blames(
        &state(&format!("{ETCD}\npath = \"s.json\"")),
        "path =",
        &["state.path", "cache_path"],
    );
    assert_blames(
        &state("backend = \"consul\"\npath = \"s.json\""),
        "backend",
        &[
            r#"state.backend: unknown backend "consul""#,
            r#""file" or "etcd""#,
        ],
    );
}

#[test]
fn etcd_endpoints_must_be_urls_of_one_scheme() {
    let with = |endpoints: &str| {
        state(&format!(
            "backend = \"etcd\"\nendpoints = {endpoints} # here\nprefix = \"/sy/\""
        ))
    };
    let cases: [(&str, &str); 6] = [
        ("[\"10.0.0.1:2379\"]", "has no scheme"),
        (
            "[\"grpc://10.0.0.1:2379\"]",
            r#"scheme "grpc" is not supported"#,
        ),
        ("[\"http://10.0.0.1:2379/v3\"]", "must not have a path"),
        ("[\"http://user@10.0.0.1:2379\"]", "without user info"),
        ("[]", "is empty"),
        (
            "[\"http://10.0.0.1:2379\", \"https://10.0.0.2:2379\"]",
            "use one scheme",
        ),
    ];
    for (endpoints, says) in cases {
        assert_blames(&with(endpoints), "# here", &["state.endpoints", says]);
    }
    assert_blames(
        &with("[\"http://10.0.0.1:2379\", \"http://10.0.0.1:2379/\"]"),
        "# here",
        &["listed twice"],
    );
    assert_blames(
        &state("backend = \"etcd\"\nprefix = \"/sy/\""),
        "[state]",
        &["state.endpoints: missing"],
    );
}

#[test]
fn the_prefix_is_required_and_ends_with_a_slash() {
    let with = |prefix: &str| {
        state(&format!(
            "backend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nprefix = {prefix:?}"
        ))
    };
    assert_blames(&with(""), "prefix", &["state.prefix: must not be empty"]);
    assert_blames(
        &with("/sy"),
        "prefix",
        &[r#"must end with "/""#, r#"write "/sy/""#],
    );
    assert_blames(&with("/s y/"), "prefix", &["spaces"]);
    assert_blames(
        &state("backend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]"),
        "[state]",
        &["state.prefix: missing"],
    );
}

#[test]
fn credentials_go_together_and_the_password_file_must_hold_one() {
    assert_blames(
        &state(&format!("{ETCD}\nusername = \"sy\"")),
        "username",
        &["state.username: needs state.password_file"],
    );
    assert_blames(
        &state(&format!("{ETCD}\npassword_file = \"p\"")),
        "password_file",
        &["state.password_file: needs state.username"],
    );
    assert_blames(
        &state(&format!(
            "{ETCD}\nusername = \"sy\"\npassword_file = \"/nonexistent/etcd.password\""
        )),
        "password_file",
        &["state.password_file: cannot read /nonexistent/etcd.password"],
    );
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    assert_blames(
        &state(&format!(
            "{ETCD}\nusername = \"sy\"\npassword_file = {:?}",
            empty.display().to_string()
        )),
        "password_file",
        &["holds no password"],
    );
}

#[test]
fn tls_needs_https_endpoints_and_its_files() {
    assert_blames(
        &state(&format!("{ETCD}\ntls.ca = \"ca.pem\"")),
        "tls.ca",
        &["state.tls: has no effect", "http://"],
    );
    let https = "backend = \"etcd\"\nendpoints = [\"https://10.0.0.1:2379\"]\nprefix = \"/sy/\"";
    assert_blames(
        &state(&format!("{https}\ntls.ca = \"/nonexistent/ca.pem\"")),
        "tls.ca",
        &["state.tls.ca: cannot read /nonexistent/ca.pem"],
    );
    let errors = errors(&state(&format!(
        "{https}\ntls.key = \"/nonexistent/key.pem\""
    )));
    assert!(
        errors.iter().any(|e| e
            .message
            .contains("state.tls.key: the client certificate and its private key go together")),
        "{errors:#?}"
    );
    // https:// with no [state.tls]: the webpki roots.
    let c = parse(&state(https)).unwrap();
    assert!(etcd(&c).tls.is_none());
}

#[test]
fn changing_where_the_state_is_kept_needs_a_restart() {
    let file = parse(&state("path = \"a.json\"")).unwrap();
    let other = parse(&state("path = \"b.json\"")).unwrap();
    let fleet = parse(&state(ETCD)).unwrap();
    let moved = parse(&state(&ETCD.replace("/prod/", "/staging/"))).unwrap();
    assert_eq!(file.restart_needed(&other), ["state.path"]);
    assert_eq!(file.restart_needed(&fleet), ["state.backend"]);
    assert_eq!(fleet.restart_needed(&moved), ["state.prefix"]);
    assert!(fleet.restart_needed(&fleet.clone()).is_empty());
}
