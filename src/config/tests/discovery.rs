//! `discover = "dns"` and its keys, each checked with the line to blame.

use super::*;

fn dns_pool(endpoints: &str, lines: &str) -> String {
    format!(
        "{HEAD}\n[[models]]\nname = \"iris\"\nblue.endpoints = {endpoints}\nblue.discover = \"dns\"\n{lines}\ngreen.endpoints = [\"http://127.0.0.1:8002\"]\n"
    )
}

#[test]
fn pools_are_static_by_default() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.models[0].blue.discovery, None);
    assert_eq!(c.models[0].green.discovery, None);
}

#[test]
fn a_dns_pool_reads_its_names_interval_and_servers() {
    let src = dns_pool(
        r#"["http://models.ns.svc:8000", "http://_grpc._tcp.models.ns.svc", "http://plain.test"]"#,
        "blue.resolve_interval = \"2s\"\nblue.dns_servers = [\"10.96.0.10\", \"127.0.0.1:5353\", \"[::1]:53\"]",
    );
    let c = parse(&src).unwrap_or_else(|e| panic!("{e:#?}"));
    let d = c.models[0].blue.discovery.clone().expect("a dns pool");
    assert_eq!(d.resolve_interval, Duration::from_secs(2));
    assert_eq!(
        d.servers,
        vec![
            "10.96.0.10:53".parse().unwrap(),
            "127.0.0.1:5353".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
        ]
    );
    let lookups: Vec<_> = d.names.iter().map(|n| n.lookup.clone()).collect();
    assert_eq!(
        lookups,
        vec![
            Lookup::Address {
                host: "models.ns.svc".into(),
                port: 8000
            },
            Lookup::Srv {
                name: "_grpc._tcp.models.ns.svc".into()
            },
            Lookup::Address {
                host: "plain.test".into(),
                port: 80
            },
        ]
    );
    assert_eq!(d.names[1].lookup.server_name(), "models.ns.svc");
}

#[test]
fn the_interval_defaults_and_the_system_resolver_is_used() {
    let c = parse(&dns_pool(r#"["http://models.test:8000"]"#, "")).unwrap();
    let d = c.models[0].blue.discovery.clone().unwrap();
    assert_eq!(d.resolve_interval, DEFAULT_RESOLVE_INTERVAL);
    assert!(d.servers.is_empty());
}

#[test]
fn an_unknown_discover_value_is_blamed() {
    let src = dns_pool(r#"["http://models.test:8000"]"#, "").replace("\"dns\"", "\"consul\"");
    assert_blames(&src, "consul", &["blue.discover", "\"static\"", "\"dns\""]);
}

#[test]
fn discovery_keys_on_a_static_pool_are_blamed() {
    let src = model_with("blue.resolve_interval = \"1s\"");
    assert_blames(
        &src,
        "resolve_interval",
        &["no effect", "discover = \"dns\""],
    );
}

#[test]
fn an_interval_out_of_range_is_blamed() {
    for bad in ["\"50ms\"", "\"2h\""] {
        let src = dns_pool(
            r#"["http://models.test:8000"]"#,
            &format!("blue.resolve_interval = {bad}"),
        );
        assert_blames(&src, "resolve_interval", &["out of range"]);
    }
    let src = dns_pool(
        r#"["http://models.test:8000"]"#,
        "blue.resolve_interval = \"soon\"",
    );
    assert_blames(&src, "resolve_interval", &["invalid duration"]);
}

#[test]
fn a_server_that_is_not_an_address_is_blamed() {
    let src = dns_pool(
        r#"["http://models.test:8000"]"#,
        "blue.dns_servers = [\"kube-dns\"]",
    );
    assert_blames(&src, "kube-dns", &["blue.dns_servers", "not an address"]);
}

#[test]
fn an_ip_or_an_srv_name_with_a_port_is_blamed() {
    let src = dns_pool(r#"["http://10.0.0.1:8000"]"#, "");
    assert_blames(&src, "10.0.0.1", &["IP address"]);
    let src = dns_pool(r#"["http://_http._tcp.models.test:80"]"#, "");
    assert_blames(&src, "_http", &["SRV", "remove the port"]);
}

#[test]
fn a_changed_discovery_is_a_changed_pool() {
    let a = parse(&dns_pool(r#"["http://models.test:8000"]"#, "")).unwrap();
    let b = parse(&dns_pool(
        r#"["http://models.test:8000"]"#,
        "blue.resolve_interval = \"1s\"",
    ))
    .unwrap();
    assert!(a.models[0].blue.same_as(&a.models[0].blue));
    assert!(!a.models[0].blue.same_as(&b.models[0].blue));
}
