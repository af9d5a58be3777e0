//! The configuration from flags and files: what is accepted and how errors name the
//! bad value.

use super::build::build;
use super::*;
use crate::health::spec::HealthCheck;
use std::path::PathBuf;

fn flags(args: &[(&str, &str)]) -> FlagSettings {
    let mut f = FlagSettings::default();
    for (k, v) in args {
        let v = v.to_string();
        match *k {
            "iface" => f.ifaces.push(v),
            "vip" => f.vip = Some(v),
            "backend" => f.backends.push(v),
            "name" => f.name = Some(v),
            "mode" => f.mode = Some(v),
            "encap" => f.encap = Some(v),
            "gue-port" => f.gue_port = Some(v.parse().unwrap()),
            "xdp-mode" => f.xdp_mode = Some(v),
            "snat-ip" => f.snat_ips.push(v),
            "snat-ports" => f.snat_ports = Some(v),
            "idle-timeout" => f.idle_timeout = Some(v),
            "closed-timeout" => f.closed_timeout = Some(v),
            "half-open-timeout" => f.half_open_timeout = Some(v),
            "max-flows" => f.max_flows = Some(v.parse().unwrap()),
            "ring-size" => f.ring_size = Some(v.parse().unwrap()),
            "max-services" => f.max_services = Some(v.parse().unwrap()),
            "state-dir" => f.state_dir = Some(PathBuf::from(v)),
            "admin" => f.admin = Some(v),
            "drain-timeout" => f.drain_timeout = Some(v),
            "shutdown-timeout" => f.shutdown_timeout = Some(v),
            "health" => f.health.check = Some(v),
            "health-port" => f.health.port = Some(v.parse().unwrap()),
            "health-interval" => f.health.interval = Some(v),
            "health-timeout" => f.health.timeout = Some(v),
            "healthy-threshold" => f.health.rise = Some(v.parse().unwrap()),
            "unhealthy-threshold" => f.health.fall = Some(v.parse().unwrap()),
            "health-status" => f.health.status = Some(v),
            "health-host" => f.health.host = Some(v),
            "health-tls-verify" => f.health.tls_verify = Some(v == "true"),
            "health-tls-ca" => f.health.tls_ca = Some(v),
            "proxy-protocol" => f.proxy_protocol = Some(v),
            "proxy-tlv" => f.proxy_tlvs.push(v),
            "accept-proxy" => f.accept_proxy = v == "true",
            "connect-timeout" => f.connect_timeout = Some(v),
            "splice" => f.splice = Some(v),
            "max-conns" => f.max_conns = Some(v.parse().unwrap()),
            "source-rate" => f.source_rate = Some(v.parse().unwrap()),
            "source-burst" => f.source_burst = Some(v.parse().unwrap()),
            "syn-cookies" => f.syn_cookies = Some(v),
            "syn-cookie-rate" => f.syn_cookie_rate = Some(v.parse().unwrap()),
            "announce-table" => f.announce_table = Some(v.parse().unwrap()),
            "slow-start" => f.slow_start = Some(v),
            "backend-dns" => f.backend_dns = Some(v),
            "allow" => f.allow.push(v),
            "deny" => f.deny = Some(v),
            "admin-socket" => f.admin_socket = Some(v),
            "admin-group" => f.admin_group = Some(v),
            "admin-token-file" => f.admin_token_file = Some(v),
            "dns-interval" => f.dns_interval = Some(v),
            other => panic!("unknown test flag {other}"),
        }
    }
    f
}

const BASE: &[(&str, &str)] = &[
    ("iface", "lb0"),
    ("vip", "198.18.100.1:80"),
    ("backend", "198.18.1.11:80"),
    ("backend", "198.18.1.12:80@2"),
];

fn with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut all = BASE.to_vec();
    all.extend_from_slice(extra);
    build(&flags(&all), None)
}

fn err(extra: &[(&str, &str)]) -> ConfigError {
    with(extra).expect_err("config should be rejected")
}

#[test]
fn flags_build_a_service_with_defaults() {
    let c = with(&[]).unwrap();
    assert_eq!(c.ifaces, vec!["lb0"]);
    assert_eq!(c.xdp_mode, XdpModeChoice::Auto);
    assert_eq!(c.max_flows, DEFAULT_MAX_FLOWS);
    assert_eq!(c.ring_size, 65537);
    assert_eq!(c.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    assert_eq!(c.half_open_timeout, DEFAULT_HALF_OPEN_TIMEOUT);
    let several = with(&[
        ("snat-ip", "198.18.0.1"),
        ("snat-ip", "fd00::1"),
        ("snat-ip", "198.18.0.2"),
    ])
    .unwrap();
    assert_eq!(
        several.snat_ips,
        ["198.18.0.1", "fd00::1", "198.18.0.2"].map(|a| a.parse::<IpAddr>().unwrap()),
        "several SNAT addresses per family, in order"
    );
    assert_eq!(c.snat_ports, DEFAULT_SNAT_PORTS);
    assert_eq!(c.services.len(), 1);
    let s = &c.services[0];
    assert_eq!(s.name, "default");
    assert_eq!(s.mode, Mode::Nat);
    assert_eq!(
        s.backends[1],
        BackendConfig {
            addr: "198.18.1.12:80".parse().unwrap(),
            weight: 2
        }
    );
}

#[test]
fn ipv6_addresses_use_brackets() {
    let f = flags(&[
        ("iface", "lb0"),
        ("vip", "[fd00:100::1]:443"),
        ("backend", "[fd00:1::11]:443@3"),
    ]);
    let c = build(&f, None).unwrap();
    assert_eq!(c.services[0].backends[0].weight, 3);
    let e = build(
        &flags(&[
            ("iface", "lb0"),
            ("vip", "fd00:100::1:443"),
            ("backend", "[fd00:1::11]:443"),
        ]),
        None,
    )
    .unwrap_err();
    assert_eq!(e.location, "--vip");
    assert!(e.reason.contains("[fd00::10]:80"), "{e}");
}

#[test]
fn every_bad_flag_is_named_with_its_value() {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (&[("backend", "198.18.1.13")], "--backend[2]", "198.18.1.13"),
        (
            &[("backend", "198.18.1.13:80@x")],
            "--backend[2]",
            "198.18.1.13:80@x",
        ),
        (
            &[("backend", "198.18.1.13:80@70000")],
            "--backend[2]",
            "198.18.1.13:80@70000",
        ),
        (
            &[("backend", "198.18.1.11:80")],
            "--backend[2]",
            "198.18.1.11:80",
        ),
        (
            &[("backend", "[fd00::1]:80")],
            "--backend[2]",
            "[fd00::1]:80",
        ),
        (
            &[("backend", "127.0.0.1:80")],
            "--backend[2]",
            "127.0.0.1:80",
        ),
        (
            &[("backend", "198.18.1.13:0")],
            "--backend[2]",
            "198.18.1.13:0",
        ),
        (&[("mode", "tunnel")], "--mode", "tunnel"),
        (&[("encap", "ipip")], "--encap", "ipip"),
        (&[("mode", "dsr"), ("encap", "vxlan")], "--encap", "vxlan"),
        (
            &[("mode", "dsr"), ("gue-port", "7000")],
            "--gue-port",
            "7000",
        ),
        (
            &[("mode", "dnat"), ("gue-port", "7000")],
            "--gue-port",
            "7000",
        ),
        (
            &[("mode", "dsr"), ("encap", "gue"), ("gue-port", "0")],
            "--gue-port",
            "0",
        ),
        (
            &[("mode", "dsr"), ("backend", "198.18.1.13:8080")],
            "--backend[2]",
            "198.18.1.13:8080",
        ),
        (
            &[("mode", "dnat"), ("backend", "[fd00::13]:80")],
            "--backend[2]",
            "[fd00::13]:80",
        ),
        (&[("name", "bad name")], "--name", "bad name"),
        (&[("xdp-mode", "turbo")], "--xdp-mode", "turbo"),
        (&[("iface", "lb0")], "--iface", "lb0"),
        (&[("iface", "a/b")], "--iface", "a/b"),
        (&[("snat-ip", "nope")], "--snat-ip", "nope"),
        (
            &[("snat-ip", "198.18.0.1"), ("snat-ip", "198.18.0.1")],
            "--snat-ip",
            "198.18.0.1",
        ),
        (
            &[
                ("snat-ip", "198.18.0.1"),
                ("snat-ip", "198.18.0.2"),
                ("snat-ip", "198.18.0.3"),
                ("snat-ip", "198.18.0.4"),
                ("snat-ip", "198.18.0.5"),
                ("snat-ip", "198.18.0.6"),
                ("snat-ip", "198.18.0.7"),
                ("snat-ip", "198.18.0.8"),
                ("snat-ip", "198.18.0.9"),
            ],
            "--snat-ip",
            "198.18.0.9",
        ),
        (&[("snat-ip", "0.0.0.0")], "--snat-ip", "0.0.0.0"),
        (&[("snat-ports", "80-90")], "--snat-ports", "80-90"),
        (&[("snat-ports", "20000")], "--snat-ports", "20000"),
        (
            &[("idle-timeout", "5 parsecs")],
            "--idle-timeout",
            "5 parsecs",
        ),
        (&[("idle-timeout", "0s")], "--idle-timeout", "0s"),
        (&[("closed-timeout", "9d")], "--closed-timeout", "9d"),
        (
            &[("half-open-timeout", "soon")],
            "--half-open-timeout",
            "soon",
        ),
        (&[("half-open-timeout", "0s")], "--half-open-timeout", "0s"),
        (&[("max-flows", "0")], "--max-flows", "0"),
        (&[("ring-size", "65536")], "--ring-size", "65536"),
        (&[("max-services", "0")], "--max-services", "0"),
        (&[("max-services", "9999")], "--max-services", "9999"),
        (
            &[("state-dir", "sys/fs/bpf/lb")],
            "--state-dir",
            "sys/fs/bpf/lb",
        ),
    ];
    for (extra, location, value) in cases {
        let e = err(extra);
        assert_eq!(e.location, *location, "{extra:?}: {e}");
        assert_eq!(e.value, *value, "{extra:?}: {e}");
        let shown = e.to_string();
        assert!(shown.contains(location) && shown.contains(value), "{shown}");
    }
}

#[test]
fn missing_pieces_are_reported() {
    let e = build(
        &flags(&[("vip", "198.18.100.1:80"), ("backend", "198.18.1.11:80")]),
        None,
    )
    .unwrap_err();
    assert_eq!(e.location, "--iface");
    let e = build(
        &flags(&[("iface", "lb0"), ("backend", "198.18.1.11:80")]),
        None,
    )
    .unwrap_err();
    assert_eq!(e.location, "--vip");
    let e = build(
        &flags(&[("iface", "lb0"), ("vip", "198.18.100.1:80")]),
        None,
    )
    .unwrap_err();
    assert!(e.reason.contains("no backend"), "{e}");
    let e = build(&flags(&[("iface", "lb0")]), None).unwrap_err();
    assert!(e.reason.contains("no service"), "{e}");
    let e = build(
        &flags(&[
            ("iface", "lb0"),
            ("vip", "198.18.100.1:80"),
            ("backend", "198.18.1.11:80@0"),
        ]),
        None,
    )
    .unwrap_err();
    assert!(e.reason.contains("weight 0"), "{e}");
}

#[test]
fn ring_must_be_larger_than_the_backend_set() {
    let e = err(&[("ring-size", "2")]);
    assert_eq!(e.location, "--ring-size");
    assert!(e.reason.contains("backends"), "{e}");
    assert!(with(&[("ring-size", "7")]).is_ok());
}

const FILE: &str = r#"
iface = ["lb0", "lb1"]
xdp_mode = "native"
max_flows = 1000
idle_timeout = "5m"
half_open_timeout = "2s"
snat_ip = ["198.18.1.1"]

[[service]]
name = "web4"
vip = "198.18.100.1:80"
backends = ["198.18.1.11:80", "198.18.1.12:80@2", { addr = "198.18.1.13:80", weight = 3 }]

[[service]]
name = "web6"
vip = "[fd00:100::1]:80"
mode = "nat"
backends = ["[fd00:1::11]:80"]
"#;

fn from_text(text: &str, f: &FlagSettings) -> Result<Config, ConfigError> {
    Config::from_text(text, std::path::Path::new("lb.toml"), f)
}

#[test]
fn config_file_builds_many_services_and_flags_override_globals() {
    let c = from_text(FILE, &FlagSettings::default()).unwrap();
    assert_eq!(c.ifaces, vec!["lb0", "lb1"]);
    assert_eq!(c.xdp_mode, XdpModeChoice::Native);
    assert_eq!(c.max_flows, 1000);
    assert_eq!(c.idle_timeout, Duration::from_secs(300));
    assert_eq!(c.half_open_timeout, Duration::from_secs(2));
    assert_eq!(c.services.len(), 2);
    assert_eq!(c.services[0].backends[2].weight, 3);
    assert_eq!(c.services[1].vip, "[fd00:100::1]:80".parse().unwrap());
    let c = from_text(
        FILE,
        &flags(&[("iface", "eth9"), ("xdp-mode", "skb"), ("max-flows", "5")]),
    )
    .unwrap();
    assert_eq!(
        (c.ifaces, c.xdp_mode, c.max_flows),
        (vec!["eth9".to_string()], XdpModeChoice::Skb, 5)
    );
}

#[test]
fn config_file_errors_name_the_file_service_and_field() {
    let bad_backend = FILE.replace("198.18.1.12:80@2", "198.18.1.12:http");
    let e = from_text(&bad_backend, &FlagSettings::default()).unwrap_err();
    assert_eq!(e.location, "lb.toml: service[0] (web4) backend[1]");
    assert_eq!(e.value, "198.18.1.12:http");
    let dup = FILE
        .replace("[fd00:100::1]:80", "198.18.100.1:80")
        .replace("[fd00:1::11]:80", "198.18.1.14:80");
    let e = from_text(&dup, &FlagSettings::default()).unwrap_err();
    assert!(e.reason.contains("same VIP"), "{e}");
    let unknown = FILE.replace("max_flows", "max_flow");
    let e = from_text(&unknown, &FlagSettings::default()).unwrap_err();
    assert!(e.reason.contains("max_flow"), "{e}");
    let e = from_text("iface = 3", &FlagSettings::default()).unwrap_err();
    assert_eq!(e.location, "--config");
    let e = from_text(
        FILE,
        &flags(&[("vip", "198.18.100.9:80"), ("backend", "198.18.1.11:80")]),
    )
    .unwrap_err();
    assert!(e.reason.contains("not both"), "{e}");
    let mode = FILE.replace("mode = \"nat\"", "mode = \"tunnel\"");
    let e = from_text(&mode, &FlagSettings::default()).unwrap_err();
    assert_eq!(
        (e.location.as_str(), e.value.as_str()),
        ("lb.toml: service[1] (web6) mode", "tunnel")
    );
    let port = FILE.replace("mode = \"nat\"", "mode = \"dsr\"\ngue_port = 7000");
    let e = from_text(&port, &FlagSettings::default()).unwrap_err();
    assert_eq!(
        (e.location.as_str(), e.value.as_str()),
        ("lb.toml: service[1] (web6) gue_port", "7000")
    );
}

#[test]
fn unreadable_config_file_is_named() {
    let f = FlagSettings {
        config: Some(PathBuf::from("/nonexistent/lb.toml")),
        ..Default::default()
    };
    let e = Config::from_flags(&f).unwrap_err();
    assert_eq!(
        (e.location.as_str(), e.value.as_str()),
        ("--config", "/nonexistent/lb.toml")
    );
}

#[test]
fn durations_and_port_ranges() {
    assert_eq!(parse_duration("350s"), Ok(Duration::from_secs(350)));
    assert_eq!(parse_duration("350"), Ok(Duration::from_secs(350)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert!(parse_duration("s").is_err() && parse_duration("1y").is_err());
    assert_eq!(parse_port_range("10000-32767"), Ok((10000, 32767)));
    assert!(parse_port_range("2000-1000").is_err());
    assert!(parse_port_range("1000-2000").is_err());
}

#[test]
fn health_defaults_are_tcp_like_an_nlb() {
    let c = with(&[]).unwrap();
    let h = &c.services[0].health;
    assert_eq!(h.check, HealthCheck::Tcp);
    assert_eq!(
        (h.interval, h.timeout),
        (Duration::from_secs(5), Duration::from_secs(2))
    );
    assert_eq!((h.rise, h.fall), (2, 2));
    assert_eq!(c.admin, Some("127.0.0.1:9100".parse().unwrap()));
    assert_eq!(c.drain_timeout, Duration::from_secs(300));
    assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
}

#[test]
fn http_health_flags_are_parsed() {
    let c = with(&[
        ("health", "http:/health/instance"),
        ("health-status", "200-299"),
        ("health-host", "registry.example"),
        ("health-port", "8080"),
        ("health-interval", "1s"),
        ("health-timeout", "500ms"),
        ("healthy-threshold", "3"),
        ("unhealthy-threshold", "4"),
        ("admin", "off"),
        ("drain-timeout", "0s"),
        ("shutdown-timeout", "5s"),
    ])
    .unwrap();
    let h = &c.services[0].health;
    assert_eq!(
        h.check,
        HealthCheck::Http {
            path: "/health/instance".into(),
            host: Some("registry.example".into()),
            status: (200, 299),
            tls: None,
        }
    );
    assert_eq!(h.port, Some(8080));
    assert_eq!((h.rise, h.fall), (3, 4));
    assert_eq!(h.timeout, Duration::from_millis(500));
    assert_eq!(c.admin, None);
    assert_eq!(c.drain_timeout, Duration::ZERO);
    assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
}

#[test]
fn bad_health_settings_name_the_flag() {
    for (extra, loc) in [
        (vec![("health", "udp")], "--health"),
        (vec![("health", "http:health")], "--health"),
        (
            vec![("health-interval", "1s"), ("health-timeout", "1s")],
            "--health-timeout",
        ),
        (
            vec![("health", "http:/h"), ("health-status", "700")],
            "--health-status",
        ),
        (vec![("health-status", "200")], "--health-status"),
        (vec![("unhealthy-threshold", "0")], "--unhealthy-threshold"),
        (vec![("admin", "localhost")], "--admin"),
        (vec![("drain-timeout", "soon")], "--drain-timeout"),
        (vec![("shutdown-timeout", "soon")], "--shutdown-timeout"),
    ] {
        let e = err(&extra);
        assert_eq!(e.location, loc, "{extra:?}: {e}");
    }
}

#[test]
fn file_health_table_is_per_service() {
    let text = r#"
iface = ["lb0"]
admin = "127.0.0.1:9200"
drain_timeout = "30s"
shutdown_timeout = "2m"
[[service]]
name = "registry"
vip = "198.18.100.1:443"
backends = ["198.18.1.11:443"]
[service.health]
check = "http:/health/instance"
port = 8080
interval = "2s"
timeout = "1s"
healthy_threshold = 3
unhealthy_threshold = 5
[[service]]
name = "ws"
vip = "198.18.100.2:80"
backends = ["198.18.1.12:80"]
"#;
    let file = parse_file(text).unwrap();
    let c = build(
        &FlagSettings::default(),
        Some((PathBuf::from("lb.toml"), file)),
    )
    .unwrap();
    assert_eq!(c.admin, Some("127.0.0.1:9200".parse().unwrap()));
    assert_eq!(c.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.shutdown_timeout, Duration::from_secs(120));
    let h = &c.services[0].health;
    assert!(matches!(h.check, HealthCheck::Http { .. }));
    assert_eq!((h.port, h.rise, h.fall), (Some(8080), 3, 5));
    assert_eq!(c.services[1].health, HealthConfig::default());

    let bad =
        parse_file(&text.replace("unhealthy_threshold = 5", "unhealthy_threshold = 0")).unwrap();
    let e = build(
        &FlagSettings::default(),
        Some((PathBuf::from("lb.toml"), bad)),
    )
    .unwrap_err();
    assert_eq!(
        e.location,
        "lb.toml: service[0] (registry) health.unhealthy_threshold"
    );
    let mut flags = FlagSettings::default();
    flags.health.check = Some("tcp".into());
    let e = build(
        &flags,
        Some((PathBuf::from("lb.toml"), parse_file(text).unwrap())),
    )
    .unwrap_err();
    assert_eq!(e.location, "--health");
}

#[test]
fn proxy_services_take_proxy_settings() {
    let c = with(&[
        ("mode", "proxy-v2"),
        ("proxy-tlv", "unique-id"),
        ("proxy-tlv", "authority"),
        ("accept-proxy", "true"),
        ("connect-timeout", "1s"),
        ("splice", "pipe"),
        ("max-conns", "100"),
    ])
    .unwrap();
    let s = &c.services[0];
    assert_eq!(s.mode, Mode::ProxyV2);
    assert_eq!(s.proxy.version, ProxyVersion::V2);
    assert!(s.proxy.tlvs.unique_id && s.proxy.tlvs.authority && !s.proxy.tlvs.crc32c);
    assert!(s.proxy.accept_proxy);
    assert_eq!(c.connect_timeout, Duration::from_secs(1));
    assert_eq!(c.splice, SpliceChoice::Pipe);
    assert_eq!(c.max_conns, 100);
    // A proxy may reach a backend of the other family; NAT may not.
    let mixed = [("vip", "[fd00:100::1]:80")];
    assert!(with(&[mixed[0], ("mode", "proxy-v2")]).is_ok());
    assert_eq!(err(&mixed).location, "--backend[0]");
}

#[test]
fn proxy_settings_are_checked() {
    assert_eq!(
        err(&[("proxy-protocol", "v2")]).location,
        "--proxy-protocol"
    );
    assert_eq!(
        err(&[("mode", "proxy-v2"), ("proxy-protocol", "v3")]).location,
        "--proxy-protocol"
    );
    let e = err(&[
        ("mode", "proxy-v2"),
        ("proxy-protocol", "v1"),
        ("proxy-tlv", "crc32c"),
    ]);
    assert_eq!(e.location, "--proxy-tlv-*");
    assert_eq!(err(&[("splice", "copy")]).location, "--splice");
    assert_eq!(err(&[("max-conns", "0")]).location, "--max-conns");
}

#[test]
fn a_flag_wins_over_the_file_and_errors_name_where_the_value_was() {
    let file = FileConfig::default();
    let f = FlagSettings::default();
    let src = flags::Layered::new(&f, &file, Some("lb.toml".into()));
    assert_eq!(
        src.text("idle_timeout", Some("1s"), Some("2s")),
        Some(("--idle-timeout".to_string(), "1s"))
    );
    assert_eq!(
        src.text("idle_timeout", None, Some("2s")),
        Some(("lb.toml: idle_timeout".to_string(), "2s"))
    );
    assert_eq!(src.text("idle_timeout", None, None), None);
    assert_eq!(src.loc(true, "max_flows"), "--max-flows");
    assert_eq!(src.loc(false, "max_flows"), "lb.toml: max_flows");
    let no_file = flags::Layered::new(&f, &file, None);
    assert_eq!(no_file.at("x"), "x");
}

#[test]
fn backends_short_and_long_share_their_checks() {
    let b = parse_backend("198.18.1.11:80@7").unwrap();
    assert_eq!((b.addr.port(), b.weight), (80, 7));
    assert_eq!(
        values::backend_of("198.18.1.11:80", None).unwrap().weight,
        1
    );
    assert_eq!(
        values::backend_of("198.18.1.11:80", Some(70000)),
        parse_backend("198.18.1.11:80@70000")
    );
    assert!(
        parse_backend("198.18.1.11")
            .unwrap_err()
            .contains("not IP:PORT")
    );
    assert_eq!(parse_status_range("200-299"), Ok((200, 299)));
    assert!(parse_status_range("299-200").is_err() && parse_status_range("600").is_err());
}

#[test]
fn health_defaults_come_from_the_engine() {
    let loc = |field: &str| field.to_string();
    let h = health::health(&HealthFlags::default(), &loc).unwrap();
    assert_eq!(h, HealthConfig::default());
    // A short interval halves the default timeout.
    let short = HealthFlags {
        interval: Some("1s".into()),
        ..HealthFlags::default()
    };
    let h = health::health(&short, &loc).unwrap();
    assert_eq!(h.timeout, Duration::from_millis(500));
    let tiny = HealthFlags {
        timeout: Some("5ms".into()),
        ..HealthFlags::default()
    };
    let e = health::health(&tiny, &loc).unwrap_err();
    assert_eq!(
        (e.location.as_str(), e.reason.as_str()),
        ("timeout", "must be at least 10ms")
    );
}

#[test]
fn source_limit_is_off_by_default_and_its_burst_defaults_to_the_rate() {
    let c = with(&[]).unwrap();
    assert_eq!((c.source_rate, c.source_burst), (0, 1));
    let c = with(&[("source-rate", "10")]).unwrap();
    assert_eq!((c.source_rate, c.source_burst), (10, 10));
    let c = with(&[("source-rate", "10"), ("source-burst", "3")]).unwrap();
    assert_eq!((c.source_rate, c.source_burst), (10, 3));
    let c = with(&[("source-rate", "0")]).unwrap();
    assert_eq!((c.source_rate, c.source_burst), (0, 1));
    let file = "source_rate = 20\nsource_burst = 40\n".to_string() + FILE;
    let c = from_text(&file, &FlagSettings::default()).unwrap();
    assert_eq!((c.source_rate, c.source_burst), (20, 40));
    let c = from_text(&file, &flags(&[("source-rate", "5")])).unwrap();
    assert_eq!((c.source_rate, c.source_burst), (5, 40), "the flag wins");
}

#[test]
fn syn_cookies_default_to_auto_at_5000_and_take_flags_over_the_file() {
    let c = with(&[]).unwrap();
    assert_eq!(
        (c.syn_cookies, c.syn_cookie_rate),
        (SynCookies::Auto, 5_000)
    );
    let c = with(&[("syn-cookies", "always")]).unwrap();
    assert_eq!(c.syn_cookies, SynCookies::Always);
    let c = with(&[("syn-cookies", "off"), ("syn-cookie-rate", "7")]).unwrap();
    assert_eq!((c.syn_cookies, c.syn_cookie_rate), (SynCookies::Off, 7));
    let file = "syn_cookies = \"always\"\nsyn_cookie_rate = 100\n".to_string() + FILE;
    let c = from_text(&file, &FlagSettings::default()).unwrap();
    assert_eq!(
        (c.syn_cookies, c.syn_cookie_rate),
        (SynCookies::Always, 100)
    );
    let c = from_text(&file, &flags(&[("syn-cookies", "auto")])).unwrap();
    assert_eq!((c.syn_cookies, c.syn_cookie_rate), (SynCookies::Auto, 100));
}

#[test]
fn bad_syn_cookie_settings_name_the_flag_or_key() {
    let e = err(&[("syn-cookies", "sometimes")]);
    assert_eq!(
        (e.location.as_str(), e.value.as_str()),
        ("--syn-cookies", "sometimes")
    );
    assert!(e.reason.contains("auto, always or off"), "{e}");
    let e = err(&[("syn-cookie-rate", "0")]);
    assert_eq!(e.location, "--syn-cookie-rate");
    assert!(e.reason.contains("--syn-cookies always"), "{e}");
    let file = "syn_cookie_rate = 0\n".to_string() + FILE;
    let e = from_text(&file, &FlagSettings::default()).unwrap_err();
    assert!(e.to_string().contains("syn_cookie_rate"), "{e}");
}

#[test]
fn bad_source_limits_name_the_flag_or_key() {
    let e = err(&[("source-rate", "1000001")]);
    assert_eq!(
        (e.location.as_str(), e.value.as_str()),
        ("--source-rate", "1000001")
    );
    assert!(e.reason.contains("0 (no limit) up to 1000000"), "{e}");
    let e = err(&[("source-rate", "10"), ("source-burst", "0")]);
    assert_eq!(
        (e.location.as_str(), e.value.as_str()),
        ("--source-burst", "0")
    );
    assert!(e.reason.contains("1..=1000000"), "{e}");
    let e = err(&[("source-rate", "10"), ("source-burst", "2000000")]);
    assert_eq!(e.location, "--source-burst");
    let e = err(&[("source-burst", "5")]);
    assert_eq!(e.location, "--source-burst");
    assert!(e.reason.contains("needs a source rate"), "{e}");
    let file = "source_rate = 2000000\n".to_string() + FILE;
    let e = from_text(&file, &FlagSettings::default()).unwrap_err();
    assert_eq!(
        (e.location.as_str(), e.value.as_str()),
        ("lb.toml: source_rate", "2000000")
    );
    let file = "source_rate = 1\nsource_burst = 0\n".to_string() + FILE;
    let e = from_text(&file, &FlagSettings::default()).unwrap_err();
    assert_eq!(e.location, "lb.toml: source_burst");
    let file = "source_rate = -1\n".to_string() + FILE;
    let e = from_text(&file, &FlagSettings::default()).unwrap_err();
    assert_eq!(e.location, "--config");
    assert!(e.reason.contains("source_rate"), "{e}");
}

#[test]
fn dsr_and_dnat_services_take_their_encapsulation_and_keep_ports_and_families() {
    let c = with(&[("mode", "dsr")]).unwrap();
    let s = &c.services[0];
    assert_eq!(s.mode, Mode::Dsr);
    assert_eq!(
        s.encap,
        Some(Encap {
            kind: EncapKind::Ipip,
            gue_port: 0
        }),
        "ipip by default"
    );
    let c = with(&[("mode", "dsr"), ("encap", "gue")]).unwrap();
    assert_eq!(
        c.services[0].encap,
        Some(Encap {
            kind: EncapKind::Gue,
            gue_port: lb_common::encap::DEFAULT_GUE_PORT
        })
    );
    let c = with(&[("mode", "dsr"), ("encap", "gue"), ("gue-port", "7001")]).unwrap();
    assert_eq!(c.services[0].encap.unwrap().gue_port, 7001);
    let c = with(&[("mode", "dsr"), ("encap", "l2")]).unwrap();
    assert_eq!(c.services[0].encap.unwrap().kind, EncapKind::L2);
    assert!(!c.has_dnat());
    let c = with(&[("mode", "dnat"), ("backend", "198.18.1.13:8080")]).unwrap();
    assert_eq!(c.services[0].mode, Mode::Dnat);
    assert_eq!(c.services[0].encap, None);
    assert!(c.has_dnat(), "a DNAT backend may listen on another port");
    let e = err(&[("mode", "dsr"), ("backend", "198.18.1.13:8080")]);
    assert!(e.reason.contains("VIP's port"), "{e}");
}

#[test]
fn the_announce_table_is_off_by_default_and_never_one_of_the_kernels() {
    assert_eq!(with(&[]).unwrap().announce_table, None);
    assert_eq!(
        with(&[("announce-table", "100")]).unwrap().announce_table,
        Some(100)
    );
    let file = "announce_table = 7\n".to_string() + FILE;
    let c = from_text(&file, &FlagSettings::default()).unwrap();
    assert_eq!(c.announce_table, Some(7));
    let c = from_text(&file, &flags(&[("announce-table", "9")])).unwrap();
    assert_eq!(c.announce_table, Some(9), "the flag wins over the file");
    for bad in ["0", "253", "254", "255", "1000"] {
        let e = err(&[("announce-table", bad)]);
        assert_eq!(
            (e.location.as_str(), e.value.as_str()),
            ("--announce-table", bad)
        );
        assert!(e.reason.contains("1 to 252"), "{e}");
    }
    let file = "announce_table = 254\n".to_string() + FILE;
    let e = from_text(&file, &FlagSettings::default()).unwrap_err();
    assert!(e.to_string().contains("announce_table"), "{e}");
}

#[test]
fn https_checks_verify_only_when_asked_and_read_the_ca_file_at_once() {
    use crate::health::spec::TlsCheck;
    let c = with(&[("health", "https:/health/instance")]).unwrap();
    assert!(matches!(
        &c.services[0].health.check,
        HealthCheck::Http {
            tls: Some(TlsCheck {
                verify: false,
                ca: None
            }),
            ..
        }
    ));
    assert_eq!(
        c.services[0].health.check.to_string(),
        "https:/health/instance"
    );
    let e = err(&[("health", "http:/x"), ("health-tls-verify", "true")]);
    assert_eq!(e.location, "--health-tls-verify");
    assert!(e.reason.contains("only an https check"), "{e}");
    let e = err(&[("health", "https:/x"), ("health-tls-ca", "/etc/hostname")]);
    assert_eq!(e.location, "--health-tls-ca");
    assert!(e.reason.contains("set tls_verify"), "{e}");
    let e = err(&[
        ("health", "https:/x"),
        ("health-tls-verify", "true"),
        ("health-tls-ca", "/nonexistent/ca.pem"),
    ]);
    assert_eq!(
        (e.location.as_str(), e.value.as_str()),
        ("--health-tls-ca", "/nonexistent/ca.pem")
    );
    let e = err(&[("health", "https:health")]);
    assert!(e.reason.contains("https:/health/instance"), "{e}");
    let file = FILE.to_string() + "[service.health]\ncheck = \"https:/h\"\ntls_ca = \"/x.pem\"\n";
    let e = from_text(&file, &FlagSettings::default()).unwrap_err();
    assert!(e.to_string().contains("health.tls_ca"), "{e}");
}

#[test]
fn slow_start_is_off_by_default_and_a_duration_of_at_most_an_hour() {
    assert_eq!(with(&[]).unwrap().services[0].slow_start, Duration::ZERO);
    let c = with(&[("slow-start", "30s")]).unwrap();
    assert_eq!(c.services[0].slow_start, Duration::from_secs(30));
    let e = err(&[("slow-start", "soon")]);
    assert_eq!(
        (e.location.as_str(), e.value.as_str()),
        ("--slow-start", "soon")
    );
    let e = err(&[("slow-start", "2h")]);
    assert!(e.reason.contains("at most"), "{e}");
    let e = from_text(FILE, &flags(&[("slow-start", "5s")])).unwrap_err();
    assert_eq!(e.location, "--slow-start", "{e}");
    let file = FILE.to_string() + "slow_start = \"bad\"\n";
    let e = from_text(&file, &FlagSettings::default()).unwrap_err();
    assert!(e.to_string().contains("slow_start"), "{e}");
}

#[test]
fn backends_from_dns_need_a_name_and_port_or_an_srv_name() {
    let only_dns = |extra: &[(&str, &str)]| {
        let mut all = vec![("iface", "lb0"), ("vip", "198.18.100.1:80")];
        all.extend_from_slice(extra);
        build(&flags(&all), None)
    };
    let c = only_dns(&[("backend-dns", "web.lb.test:8080")]).unwrap();
    let s = &c.services[0];
    assert!(s.backends.is_empty(), "DNS alone gives the backends");
    assert_eq!(
        s.dns,
        Some(DnsBackends {
            query: DnsQuery::Host {
                name: "web.lb.test".into(),
                port: 8080
            },
            interval: None
        })
    );
    let c = with(&[
        ("backend-dns", "srv:_http._tcp.lb.test."),
        ("dns-interval", "10s"),
    ])
    .unwrap();
    assert_eq!(
        c.services[0].backends.len(),
        2,
        "beside configured backends"
    );
    assert_eq!(
        c.services[0].dns,
        Some(DnsBackends {
            query: DnsQuery::Srv {
                name: "_http._tcp.lb.test.".into()
            },
            interval: Some(Duration::from_secs(10))
        })
    );
    for (bad, why) in [
        ("web.lb.test", "NAME:PORT"),
        ("web.lb.test:0", "port"),
        ("198.18.1.11:80", "an address"),
        ("web..test:80", "not a DNS name"),
        ("srv:", "not a DNS name"),
    ] {
        let e = only_dns(&[("backend-dns", bad)]).unwrap_err();
        assert_eq!(
            (e.location.as_str(), e.value.as_str()),
            ("--backend-dns", bad)
        );
        assert!(e.reason.contains(why), "{bad}: {e}");
    }
    let e = err(&[("dns-interval", "5s")]);
    assert_eq!(e.location, "--dns-interval", "{e}");
    assert!(e.reason.contains("needs backends from DNS"), "{e}");
    let e = with(&[("backend-dns", "web.lb.test:80"), ("dns-interval", "0s")]).unwrap_err();
    assert!(e.reason.contains("between 1s and 3600s"), "{e}");
    let e = only_dns(&[]).unwrap_err();
    assert!(e.reason.contains("--backend-dns"), "{e}");

    let file = FILE.to_string() + "backends_dns = \"web.lb.test:80\"\ndns_interval = \"30s\"\n";
    let c = from_text(&file, &FlagSettings::default()).unwrap();
    let last = c.services.last().unwrap();
    assert_eq!(
        last.dns.as_ref().unwrap().interval,
        Some(Duration::from_secs(30))
    );
    let file = FILE.to_string() + "backends_dns = \"web\"\n";
    let e = from_text(&file, &FlagSettings::default()).unwrap_err();
    assert!(e.to_string().contains("backends_dns"), "{e}");
    let e = from_text(FILE, &flags(&[("dns-interval", "5s")])).unwrap_err();
    assert_eq!(e.location, "--dns-interval", "{e}");
}

#[test]
fn the_admin_socket_and_token_file_are_checked_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let c = with(&[]).unwrap();
    assert_eq!(
        (&c.admin_socket, &c.admin_group, &c.admin_token),
        (&AdminSocket::Default, &None, &None)
    );
    let c = with(&[("admin-socket", "/run/lb/a.sock"), ("admin-group", "root")]).unwrap();
    assert_eq!(c.admin_socket, AdminSocket::At("/run/lb/a.sock".into()));
    assert_eq!(c.admin_group, Some(("root".to_string(), 0)));
    assert_eq!(
        with(&[("admin-socket", "off")]).unwrap().admin_socket,
        AdminSocket::Off
    );
    let e = err(&[("admin-socket", "lb.sock")]);
    assert_eq!(e.location, "--admin-socket", "{e}");
    let e = err(&[("admin-group", "no-such-group-lb")]);
    assert!(e.reason.contains("no such group"), "{e}");
    let e = err(&[("admin-socket", "off"), ("admin-group", "root")]);
    assert!(e.reason.contains("socket is off"), "{e}");

    let dir = std::env::temp_dir().join(format!("lb-cfg-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    let path = file.display().to_string();
    let write = |text: &str, mode: u32| {
        std::fs::write(&file, text).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("0123456789abcdef-token\n", 0o640);
    let c = with(&[("admin-token-file", &path)]).unwrap();
    let t = c.admin_token.unwrap();
    assert!(t.matches(b"0123456789abcdef-token"));
    assert!(!t.matches(b"0123456789abcdef-toke"));
    assert_eq!(format!("{t:?}"), "AdminToken(..)", "Debug hides it");
    write("0123456789abcdef-token\n", 0o644);
    let e = err(&[("admin-token-file", &path)]);
    assert_eq!(
        (e.location.as_str(), e.value.as_str()),
        ("--admin-token-file", path.as_str())
    );
    assert!(e.reason.contains("anyone on the host can read it"), "{e}");
    write("short\n", 0o600);
    assert!(
        err(&[("admin-token-file", &path)])
            .reason
            .contains("at least 16")
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let e = err(&[("admin-token-file", &path)]);
    assert!(e.reason.contains("cannot read it"), "{e}");
}

#[test]
fn allowlists_are_ranges_of_the_vips_family() {
    let c = with(&[
        ("allow", "198.18.5.7/16"),
        ("allow", "198.18.0.9"),
        ("deny", "reset"),
    ])
    .unwrap();
    let a = &c.services[0].access;
    let list: Vec<String> = a.allow.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        list,
        ["198.18.0.0/16", "198.18.0.9/32"],
        "host bits cleared, sorted"
    );
    assert!(a.reset && !a.cut_established);
    assert!(a.allow[0].contains("198.18.200.1".parse().unwrap()));
    assert!(!a.allow[0].contains("198.19.0.1".parse().unwrap()));
    assert_eq!(
        with(&[]).unwrap().services[0].access,
        AccessConfig::default()
    );

    for (bad, why) in [
        ("fd00::/8", "other family"),
        ("198.18.0.0/33", "prefix length"),
        ("somewhere", "not an address range"),
    ] {
        let e = err(&[("allow", bad)]);
        assert_eq!(
            (e.location.as_str(), e.value.as_str()),
            ("--allow[0]", bad),
            "{e}"
        );
        assert!(e.reason.contains(why), "{bad}: {e}");
    }
    let e = err(&[("allow", "198.18.0.0/24"), ("allow", "198.18.0.7/24")]);
    assert!(e.reason.contains("twice"), "{e}");
    let e = err(&[("deny", "reject")]);
    assert_eq!(e.location, "--deny", "{e}");
    let e = err(&[("deny", "reset")]);
    assert!(e.reason.contains("give allow ranges"), "{e}");

    let file =
        FILE.to_string() + "allow = [\"fd00:2::/64\"]\ndeny = \"reset\"\ndeny_established = true\n";
    let c = from_text(&file, &FlagSettings::default()).unwrap();
    let a = &c.services.last().unwrap().access;
    assert_eq!(a.allow, ["fd00:2::/64".parse::<Cidr>().unwrap()]);
    assert!(a.reset && a.cut_established);
    let file = FILE.to_string() + "allow = [\"198.18.0.0/15\"]\n";
    let e = from_text(&file, &FlagSettings::default()).unwrap_err();
    assert!(e.to_string().contains("allow[0]"), "{e}");
    let e = from_text(FILE, &flags(&[("allow", "198.18.0.0/15")])).unwrap_err();
    assert_eq!(e.location, "--allow", "{e}");
}
