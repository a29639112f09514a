use super::*;
use proptest::prelude::*;

/// Where the config under test pretends to live.
const FILE: &str = "/etc/switchyard/switchyard.toml";

/// The smallest valid config, exactly as DESIGN.md shows it.
const MINIMAL: &str = r#"[proxy]
listen = "127.0.0.1:8080"

[admin]
listen = "127.0.0.1:9901"

[state]
path = "switchyard-state.json"   # active pool per model; survives restarts

[[models]]
name = "iris"
path_prefix = "/"                # longest matching prefix wins
active = "blue"                  # used only when no saved state exists
blue.endpoints  = ["http://127.0.0.1:8001"]
green.endpoints = ["http://127.0.0.1:8002"]
"#;

/// `[proxy]`, `[admin]` and `[state]` without models; lines 1 to 8.
const HEAD: &str = r#"[proxy]
listen = "127.0.0.1:8080"

[admin]
listen = "127.0.0.1:9901"

[state]
path = "state.json"
"#;

fn parse(src: &str) -> Result<Config, Vec<ConfigError>> {
    Config::from_toml(src, Path::new(FILE))
}

fn errors(src: &str) -> Vec<ConfigError> {
    match parse(src) {
        Ok(_) => panic!("config was accepted but should not be:\n{src}"),
        Err(errors) => errors,
    }
}

/// The single error `src` yields.
fn one_error(src: &str) -> ConfigError {
    let errors = errors(src);
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one error, got {errors:#?}\nfor:\n{src}"
    );
    errors.into_iter().next().unwrap()
}

/// The 1-based line of the only line of `src` containing `needle`.
fn line_of(src: &str, needle: &str) -> usize {
    let lines: Vec<usize> = src
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(lines.len(), 1, "{needle:?} must occur on exactly one line");
    lines[0]
}

/// Asserts `src` fails with one error on the line holding `blame`, whose
/// message contains every one of `says`.
fn assert_blames(src: &str, blame: &str, says: &[&str]) {
    let e = one_error(src);
    assert_eq!(
        e.line,
        line_of(src, blame),
        "error {e} should point at the line with {blame:?}\nin:\n{src}"
    );
    assert_eq!(e.file, Path::new(FILE));
    for s in says {
        assert!(
            e.message.contains(s),
            "message {:?} should contain {s:?}",
            e.message
        );
    }
    // The rendered form is what `switchyard check` prints.
    assert!(e.to_string().starts_with(&format!("{FILE}:{}:", e.line)));
}

fn model_with(lines: &str) -> String {
    format!(
        "{HEAD}\n[[models]]\nname = \"iris\"\n{lines}\nblue.endpoints = [\"http://127.0.0.1:8001\"]\ngreen.endpoints = [\"http://127.0.0.1:8002\"]\n"
    )
}

fn pools(blue: &str, green: &str) -> String {
    format!(
        "{HEAD}\n[[models]]\nname = \"iris\"\nblue.endpoints = {blue}\ngreen.endpoints = {green}\n"
    )
}

// === valid configs ===

#[test]
fn the_minimal_config_parses_with_the_documented_defaults() {
    let c = parse(MINIMAL).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(c.proxy.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.admin.listen, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(c.proxy.request_timeout, Duration::from_secs(60));
    assert_eq!(c.proxy.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.proxy.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.models.len(), 1);
    let m = &c.models[0];
    assert_eq!(m.name, "iris");
    assert_eq!(m.path_prefix, "/");
    assert_eq!(m.host, None);
    assert_eq!(m.active, PoolName::Blue);
    assert_eq!(m.request_timeout, Duration::from_secs(60));
    assert_eq!(m.blue.protocol, Protocol::Http1);
    let urls = |p: &PoolConfig| {
        p.endpoints
            .iter()
            .map(|e| e.url.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(urls(&m.blue), ["http://127.0.0.1:8001"]);
    assert_eq!(urls(&m.green), ["http://127.0.0.1:8002"]);
}

#[test]
fn omitted_model_keys_take_their_defaults() {
    let c = parse(&pools(
        r#"["http://127.0.0.1:8001"]"#,
        r#"["http://127.0.0.1:8002"]"#,
    ))
    .unwrap_or_else(|e| panic!("{e:#?}"));
    let m = &c.models[0];
    assert_eq!(m.path_prefix, "/");
    assert_eq!(m.active, PoolName::Blue);
    assert_eq!(m.request_timeout, DEFAULT_REQUEST_TIMEOUT);
}

#[test]
fn durations_and_per_model_settings_are_read() {
    let src = format!(
        "{}\n{}",
        HEAD.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nrequest_timeout = \"1.5s\"\nconnect_timeout = \"250ms\"\ndrain_timeout = \"2m\"",
        ),
        r#"[[models]]
name = "chat"
path_prefix = "/v1/"
host = "LLM.Example.Internal"
active = "green"
request_timeout = "1h"
blue.endpoints = ["http://10.0.0.1:8000/"]
green.protocol = "h2c"
green.endpoints = ["http://10.0.0.2:8000", "http://10.0.0.3:8000"]
"#
    );
    let c = parse(&src).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(c.proxy.request_timeout, Duration::from_millis(1500));
    assert_eq!(c.proxy.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.proxy.drain_timeout, Duration::from_secs(120));
    let m = &c.models[0];
    assert_eq!(m.path_prefix, "/v1");
    assert_eq!(m.host.as_deref(), Some("llm.example.internal"));
    assert_eq!(m.active, PoolName::Green);
    assert_eq!(m.request_timeout, Duration::from_secs(3600));
    assert_eq!(m.blue.endpoints[0].url, "http://10.0.0.1:8000");
    assert_eq!(m.green.protocol, Protocol::H2c);
    assert_eq!(m.green.endpoints.len(), 2);
}

#[test]
fn a_relative_state_path_resolves_against_the_config_directory() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(
        c.state.path(),
        Some(Path::new("/etc/switchyard/switchyard-state.json"))
    );

    let nested = MINIMAL.replace("switchyard-state.json", "state/s.json");
    let c = Config::from_toml(&nested, Path::new("/srv/app/conf/switchyard.toml")).unwrap();
    assert_eq!(
        c.state.path(),
        Some(Path::new("/srv/app/conf/state/s.json"))
    );

    // A config named without a directory resolves against the working directory.
    let c = Config::from_toml(MINIMAL, Path::new("switchyard.toml")).unwrap();
    assert_eq!(c.state.path(), Some(Path::new("switchyard-state.json")));
}

#[test]
fn an_absolute_state_path_is_kept() {
    let src = MINIMAL.replace("switchyard-state.json", "/var/lib/switchyard/state.json");
    let c = parse(&src).unwrap();
    assert_eq!(
        c.state.path(),
        Some(Path::new("/var/lib/switchyard/state.json"))
    );
}

#[test]
fn the_shipped_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for name in ["sidecar.toml", "gateway.toml", "demo.toml", "fleet.toml"] {
        let path = dir.join(name);
        if let Err(e) = Config::load(&path) {
            panic!("{}: {e}", path.display());
        }
    }
}

// === unknown keys ===

#[test]
fn an_unknown_top_level_key_is_blamed_on_its_line() {
    let src = format!("log_level = \"debug\"\n{MINIMAL}");
    assert_blames(&src, "log_level", &["log_level"]);
}

#[test]
fn an_unknown_key_in_proxy_is_blamed_on_its_line() {
    let src = MINIMAL.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nrequest_timout = \"5s\"",
    );
    assert_blames(&src, "request_timout", &["request_timout"]);
}

#[test]
fn an_unknown_key_in_a_model_is_blamed_on_its_line() {
    let src = model_with("weight = 3");
    assert_blames(&src, "weight", &["weight"]);
}

#[test]
fn an_unknown_key_in_a_pool_is_blamed_on_its_line() {
    let src = model_with("blue.endpionts = [\"http://127.0.0.1:8003\"]");
    assert_blames(&src, "endpionts", &["endpionts"]);
}

// === conflicts between models ===

#[test]
fn a_duplicate_model_name_is_blamed_on_the_second_one() {
    let src = format!(
        r#"{HEAD}
[[models]]
name = "iris"
path_prefix = "/a"
blue.endpoints = ["http://127.0.0.1:8001"]
green.endpoints = ["http://127.0.0.1:8002"]

[[models]]
name = "iris"   # the duplicate
path_prefix = "/b"
blue.endpoints = ["http://127.0.0.1:8003"]
green.endpoints = ["http://127.0.0.1:8004"]
"#
    );
    assert_blames(&src, "the duplicate", &["duplicate model name", "\"iris\""]);
}

#[test]
fn two_models_on_the_same_prefix_and_host_are_refused() {
    let src = format!(
        r#"{HEAD}
[[models]]
name = "iris"
host = "ml.example.com"
path_prefix = "/v2/models/iris"
blue.endpoints = ["http://127.0.0.1:8001"]
green.endpoints = ["http://127.0.0.1:8002"]

[[models]]
name = "iris-copy"
host = "ML.example.com"
path_prefix = "/v2/models/iris/"   # same route once normalised
blue.endpoints = ["http://127.0.0.1:8003"]
green.endpoints = ["http://127.0.0.1:8004"]
"#
    );
    assert_blames(
        &src,
        "same route",
        &["/v2/models/iris", "ml.example.com", "already"],
    );
}

#[test]
fn the_same_prefix_on_different_hosts_is_allowed() {
    let src = format!(
        r#"{HEAD}
[[models]]
name = "a"
host = "a.example.com"
blue.endpoints = ["http://127.0.0.1:8001"]
green.endpoints = ["http://127.0.0.1:8002"]

[[models]]
name = "b"
host = "b.example.com"
blue.endpoints = ["http://127.0.0.1:8003"]
green.endpoints = ["http://127.0.0.1:8004"]

[[models]]
name = "c"
blue.endpoints = ["http://127.0.0.1:8005"]
green.endpoints = ["http://127.0.0.1:8006"]
"#
    );
    let c = parse(&src).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(c.models.len(), 3);
}

#[test]
fn a_config_without_models_is_refused() {
    let e = one_error(HEAD);
    assert!(e.message.contains("[[models]]"), "{e}");
}

// === pools and endpoints ===

#[test]
fn a_model_without_a_pool_is_blamed_on_its_table() {
    let src = format!(
        "{HEAD}\n[[models]]\nname = \"iris\"\nblue.endpoints = [\"http://127.0.0.1:8001\"]\n"
    );
    assert_blames(&src, "[[models]]", &["green"]);
}

#[test]
fn a_pool_with_no_endpoints_is_blamed_on_its_line() {
    let src = pools(r#"["http://127.0.0.1:8001"]"#, "[]   # empty");
    assert_blames(&src, "empty", &["green", "no endpoints"]);
}

#[test]
fn an_endpoint_without_a_scheme_is_refused() {
    let src = pools(r#"["127.0.0.1:8001"]"#, r#"["http://127.0.0.1:8002"]"#);
    assert_blames(&src, "\"127.0.0.1:8001\"", &["no scheme", "http://"]);
}

#[test]
fn an_endpoint_with_another_scheme_is_refused() {
    let src = pools(
        r#"["http://127.0.0.1:8001"]"#,
        r#"["ftp://127.0.0.1:8002"]"#,
    );
    assert_blames(&src, "ftp://", &["\"ftp\"", "not supported", "https://"]);
}

#[test]
fn an_endpoint_with_a_path_is_refused() {
    let src = pools(
        r#"["http://127.0.0.1:8001/v2"]"#,
        r#"["http://127.0.0.1:8002"]"#,
    );
    assert_blames(&src, "/v2", &["path"]);
    let src = pools(
        r#"["http://127.0.0.1:8001?x=1"]"#,
        r#"["http://127.0.0.1:8002"]"#,
    );
    assert_blames(&src, "?x=1", &["query"]);
}

#[test]
fn a_garbage_endpoint_is_refused() {
    for garbage in ["not a url", "http://", "", "http://exa mple:80", "://x"] {
        let src = pools(
            &format!("[{garbage:?}]   # garbage"),
            r#"["http://127.0.0.1:8002"]"#,
        );
        assert_blames(&src, "# garbage", &["endpoint"]);
    }
}

#[test]
fn an_endpoint_listed_twice_is_refused() {
    let src = pools(
        "[\"http://127.0.0.1:8001\",\n  \"http://127.0.0.1:8001/\"]",
        r#"["http://127.0.0.1:8002"]"#,
    );
    assert_blames(&src, "8001/", &["twice"]);
}

#[test]
fn an_unknown_protocol_is_blamed_on_its_line() {
    let src = model_with("green.protocol = \"http3\"");
    assert_blames(&src, "http3", &["http3", "h2c"]);
}

// === values ===

#[test]
fn a_bad_duration_is_blamed_on_its_line() {
    for bad in [
        "5", "5 s", "-1s", "0s", "1.5.2s", "", "s", "5sec", ".5s", "5.s",
    ] {
        let src = MINIMAL.replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:8080\"\nconnect_timeout = {bad:?}"),
        );
        assert_blames(&src, "connect_timeout", &["proxy.connect_timeout"]);
        let e = one_error(&src);
        if bad == "0s" {
            assert!(e.message.contains("longer than zero"), "{e}");
        } else {
            assert!(e.message.contains(&format!("{bad:?}")), "{e}");
        }
    }
}

#[test]
fn a_bad_model_duration_is_blamed_on_its_line() {
    let src = model_with("request_timeout = \"forever\"");
    assert_blames(&src, "forever", &["models[0].request_timeout", "forever"]);
}

#[test]
fn a_duration_longer_than_a_year_is_refused() {
    // `now + request_timeout` must not overflow a deadline on the request path.
    let src = model_with("request_timeout = \"3000000000000000h\"");
    assert_blames(
        &src,
        "3000000000000000h",
        &["models[0].request_timeout", "at most \"8760h\""],
    );
    assert!(parse(&model_with("request_timeout = \"8760h\"")).is_ok());
}

#[test]
fn an_unknown_active_pool_is_blamed_on_its_line() {
    let src = MINIMAL.replace("active = \"blue\"", "active = \"red\"");
    assert_blames(&src, "\"red\"", &["\"red\"", "blue", "green"]);
}

#[test]
fn a_bad_listen_address_is_blamed_on_its_line() {
    for bad in ["localhost:8080", "127.0.0.1", "127.0.0.1:99999", ":8080"] {
        let src = MINIMAL.replace(
            "listen = \"127.0.0.1:9901\"",
            &format!("listen = {bad:?}   # bad"),
        );
        assert_blames(&src, "# bad", &["admin.listen", bad]);
    }
}

#[test]
fn an_invalid_model_name_is_blamed_on_its_line() {
    for bad in ["", "iris model", "a/b", "ïris", &"x".repeat(65)] {
        let src = MINIMAL.replace("name = \"iris\"", &format!("name = {bad:?}"));
        assert_blames(&src, "name =", &["invalid model name"]);
    }
}

#[test]
fn a_path_prefix_without_a_leading_slash_is_blamed_on_its_line() {
    let src = MINIMAL.replace("path_prefix = \"/\"", "path_prefix = \"v2/models/iris\"");
    assert_blames(&src, "v2/models/iris", &["must start with \"/\""]);
}

// === several errors ===

#[test]
fn every_error_in_a_file_is_reported() {
    let src = r#"[proxy]
listen = "127.0.0.1:8080"
drain_timeout = "30"          # 1: no unit

[admin]
listen = "localhost:9901"     # 2: not an ip:port

[state]
path = "state.json"

[[models]]
name = "iris"
path_prefix = "iris"          # 3: no leading slash
active = "purple"             # 4: no such pool
blue.endpoints = ["http://127.0.0.1:8001"]
green.endpoints = ["ftp://127.0.0.1:8002"]    # 5: not http(s)

[[models]]
name = "bad name"             # 6: space in name
blue.endpoints = []           # 7: empty
green.endpoints = ["http://127.0.0.1:8004"]
"#;
    let errors = errors(src);
    let got: Vec<usize> = errors.iter().map(|e| e.line).collect();
    let want: Vec<usize> = (1..=7).map(|n| line_of(src, &format!("# {n}:"))).collect();
    let mut got_sorted = got.clone();
    got_sorted.sort_unstable();
    assert_eq!(got_sorted, want, "{errors:#?}");
    // Reported in file order, so the output reads top to bottom.
    assert_eq!(got, want, "errors should come in file order");
}

#[test]
fn a_toml_syntax_error_names_its_line() {
    let src = MINIMAL.replace("\"127.0.0.1:9901\"", "\"127.0.0.1:9901");
    let e = one_error(&src);
    assert_eq!(e.line, line_of(&src, "9901"), "{e}");
}

// === parse_duration ===

#[test]
fn durations_parse_with_their_units() {
    let cases = [
        ("500ms", Duration::from_millis(500)),
        ("2s", Duration::from_secs(2)),
        ("1.5s", Duration::from_millis(1500)),
        ("5m", Duration::from_secs(300)),
        ("1h", Duration::from_secs(3600)),
        ("0.25h", Duration::from_secs(900)),
        ("007s", Duration::from_secs(7)),
    ];
    for (text, want) in cases {
        assert_eq!(parse_duration(text), Ok(want), "{text}");
    }
}

#[test]
fn large_and_fine_durations_are_exact() {
    // Found by the round-trip property: f64 arithmetic gave 8945979.685000001s.
    assert_eq!(
        parse_duration("8945979685ms"),
        Ok(Duration::from_millis(8_945_979_685))
    );
    assert_eq!(parse_duration("0.000000001s"), Ok(Duration::from_nanos(1)));
    assert_eq!(
        parse_duration("1.0000000019999999999999s"),
        Ok(Duration::from_nanos(1_000_000_001))
    );
    assert_eq!(parse_duration("0.1ms"), Ok(Duration::from_micros(100)));
}

#[test]
fn a_huge_duration_is_an_error_not_a_panic() {
    let e = parse_duration(&format!("{}h", "9".repeat(40))).unwrap_err();
    assert!(e.contains("too long"), "{e}");
}

proptest! {
    #[test]
    fn whole_milliseconds_round_trip(n in 0u64..=10_000_000_000) {
        prop_assert_eq!(parse_duration(&format!("{n}ms")), Ok(Duration::from_millis(n)));
    }

    #[test]
    fn whole_seconds_minutes_and_hours_round_trip(n in 0u64..=1_000_000) {
        prop_assert_eq!(parse_duration(&format!("{n}s")), Ok(Duration::from_secs(n)));
        prop_assert_eq!(parse_duration(&format!("{n}m")), Ok(Duration::from_secs(n * 60)));
        prop_assert_eq!(parse_duration(&format!("{n}h")), Ok(Duration::from_secs(n * 3600)));
    }

    #[test]
    fn tenths_of_seconds_round_trip(whole in 0u64..100_000, tenth in 0u64..10) {
        prop_assert_eq!(
            parse_duration(&format!("{whole}.{tenth}s")),
            Ok(Duration::from_millis(whole * 1000 + tenth * 100))
        );
    }

    #[test]
    fn fractional_milliseconds_round_trip(whole in 0u64..1_000_000_000, micros in 0u64..1000) {
        prop_assert_eq!(
            parse_duration(&format!("{whole}.{micros:03}ms")),
            Ok(Duration::from_micros(whole * 1000 + micros))
        );
    }

    #[test]
    fn junk_never_panics(s in "\\PC{0,16}") {
        let _ = parse_duration(&s);
    }

    #[test]
    fn junk_close_to_a_duration_never_panics(s in "[0-9.eE+ -]{0,12}(ms|s|m|h|ns|)") {
        if let Ok(d) = parse_duration(&s) {
            // Whatever parses is a number then a unit, nothing else.
            prop_assert!(s.trim() == s && !s.contains(['e', 'E', '+', '-', ' ']), "{s:?} -> {d:?}");
        }
    }

    #[test]
    fn a_number_without_a_unit_is_refused(n in 0u64..u64::MAX) {
        prop_assert!(parse_duration(&n.to_string()).is_err());
    }
}

// === health ===

#[test]
fn health_settings_default_as_documented() {
    let config = parse(MINIMAL).unwrap();
    for pool in [&config.models[0].blue, &config.models[0].green] {
        assert_eq!(pool.health, HealthConfig::default());
        assert_eq!(pool.health.path, "/v2/health/ready");
        assert_eq!(pool.health.interval, Duration::from_secs(2));
        assert_eq!(pool.health.timeout, Duration::from_secs(1));
        assert_eq!(
            (pool.health.healthy_after, pool.health.unhealthy_after),
            (2, 3)
        );
        assert_eq!(pool.health.warm_connections, 2);
        assert_eq!(pool.health.eject_after, 5);
        assert_eq!(pool.health.eject_backoff, Duration::from_secs(10));
    }
    assert!(!config.models[0].failover);
}

#[test]
fn a_pool_overrides_the_models_health_settings_key_by_key() {
    let src = format!(
        "{HEAD}\n[[models]]\nname = \"iris\"\nfailover = true\n\
         blue.endpoints = [\"http://127.0.0.1:8001\"]\n\
         green.endpoints = [\"http://127.0.0.1:8002\"]\n\
         green.health.interval = \"5s\"\n\n\
         [models.health]\npath = \"/ping\"\ninterval = \"500ms\"\ntimeout = \"200ms\"\n\
         healthy_after = 1\nunhealthy_after = 4\nwarm_connections = 0\neject_after = 2\neject_backoff = \"1s\"\n"
    );
    let config = parse(&src).unwrap();
    let model = &config.models[0];
    assert!(model.failover);
    let blue = &model.blue.health;
    assert_eq!(blue.path, "/ping");
    assert_eq!(blue.interval, Duration::from_millis(500));
    assert_eq!(blue.timeout, Duration::from_millis(200));
    assert_eq!((blue.healthy_after, blue.unhealthy_after), (1, 4));
    assert_eq!((blue.warm_connections, blue.eject_after), (0, 2));
    assert_eq!(blue.eject_backoff, Duration::from_secs(1));
    let green = &model.green.health;
    assert_eq!(
        green.interval,
        Duration::from_secs(5),
        "the pool's own key wins"
    );
    assert_eq!(green.path, "/ping", "other keys come from the model");
    assert_eq!(green.timeout, Duration::from_millis(200));
}

#[test]
fn a_probe_timeout_longer_than_the_interval_is_refused() {
    let src = model_with("health.interval = \"1s\"\nhealth.timeout = \"3s\"");
    // Both pools inherit the bad pair; it is reported once, on the
    // timeout's line, naming the model's table.
    assert_blames(
        &src,
        "health.timeout",
        &["models[0].health.timeout", "longer than the interval"],
    );
}

#[test]
fn zero_thresholds_are_refused_on_their_line() {
    for key in ["healthy_after", "unhealthy_after", "eject_after"] {
        let src = model_with(&format!("green.health.{key} = 0"));
        assert_blames(&src, &format!("{key} = 0"), &[key, "out of range", "1 to"]);
    }
    let src = model_with("blue.health.warm_connections = 1000");
    assert_blames(&src, "warm_connections", &["warm_connections", "0 to 64"]);
    let src = model_with("blue.health.interval = \"0s\"");
    assert_blames(&src, "interval", &["interval", "longer than zero"]);
}

#[test]
fn a_negative_threshold_is_a_shape_error_on_its_line() {
    let src = model_with("health.unhealthy_after = -1");
    let e = one_error(&src);
    assert_eq!(e.line, line_of(&src, "unhealthy_after"));
}

#[test]
fn a_bad_health_path_or_key_is_blamed_on_its_line() {
    let src = model_with("health.path = \"ready\"");
    assert_blames(&src, "health.path", &["models[0].health.path", "\"/\""]);
    let src = model_with("green.health.path = \"ready\"");
    assert_blames(&src, "health.path", &["models[0].green.health.path"]);
    let src = model_with("health.intervall = \"2s\"");
    assert_blames(&src, "intervall", &["intervall"]);
}

#[test]
fn worker_threads_default_to_one_per_core_and_are_range_checked() {
    assert_eq!(parse(MINIMAL).unwrap().proxy.worker_threads, None);
    let src = MINIMAL.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nworker_threads = 2",
    );
    assert_eq!(parse(&src).unwrap().proxy.worker_threads, Some(2));
    let src = MINIMAL.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nworker_threads = 0",
    );
    assert_blames(
        &src,
        "worker_threads",
        &["proxy.worker_threads", "1 to 1024"],
    );
}

#[test]
fn restart_needed_names_each_changed_key_and_nothing_a_reload_applies() {
    let running = parse(MINIMAL).unwrap();
    let with = |proxy_lines: &str, models: &str| {
        let src = MINIMAL
            .replace(
                "listen = \"127.0.0.1:8080\"",
                &format!("listen = \"127.0.0.1:8080\"\n{proxy_lines}"),
            )
            .replace("http://127.0.0.1:8001", models);
        running.restart_needed(&parse(&src).unwrap())
    };
    let none: Vec<&str> = Vec::new();
    assert_eq!(with("", "http://127.0.0.1:8001"), none);
    // Models and what every pool's client is built with: reloaded.
    let reloaded = "request_timeout = \"5s\"\nconnect_timeout = \"1s\"\nmax_idle_per_endpoint = 4";
    assert_eq!(with(reloaded, "http://127.0.0.1:9001"), none);
    assert_eq!(
        with("max_headers = 50", "http://127.0.0.1:8001"),
        ["proxy.max_headers"]
    );
    assert_eq!(
        with(
            "keepalive_timeout = \"5s\"\ndrain_timeout = \"1s\"",
            "http://127.0.0.1:8001"
        ),
        ["proxy.drain_timeout", "proxy.keepalive_timeout"]
    );
}

// `https://` endpoints and `tls.*`: in their own file, with their test certificates.
mod upstream_tls;

#[test]
fn the_preview_listener_and_header_are_read_and_checked() {
    let src = model_with("preview_header = true").replacen(
        "listen = \"127.0.0.1:8080\"\n",
        "listen = \"127.0.0.1:8080\"\npreview_listen = \"127.0.0.1:8081\"\n",
        1,
    );
    let c = parse(&src).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(
        c.proxy.preview_listen,
        Some("127.0.0.1:8081".parse().unwrap())
    );
    assert!(c.models[0].preview_header);
    assert!(!parse(MINIMAL).unwrap().models[0].preview_header);

    let taken = MINIMAL.replacen(
        "listen = \"127.0.0.1:8080\"\n",
        "listen = \"127.0.0.1:8080\"\npreview_listen = \"127.0.0.1:9901\"\n",
        1,
    );
    assert_blames(
        &taken,
        "preview_listen",
        &["proxy.preview_listen", "address of its own"],
    );
    let bad = MINIMAL.replacen(
        "listen = \"127.0.0.1:8080\"\n",
        "listen = \"127.0.0.1:8080\"\npreview_listen = \"nowhere\"\n",
        1,
    );
    assert_blames(
        &bad,
        "preview_listen",
        &["proxy.preview_listen", "invalid listen address"],
    );
}

// `[models.watch]`: in its own file.
mod watch;
// `[[models.validate]]`: in its own file.
mod validate;
// `[models.shadow]`: in its own file.
mod shadow;
// `[state]`: the file and etcd backends, in their own file.
mod state;
// `[models.rollout]` and `sticky`: in their own file.
mod rollout;
// `discover`, `resolve_interval` and `dns_servers`: in their own file.
mod discovery;
