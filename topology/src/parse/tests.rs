use std::path::Path;
use std::time::Duration;

use crate::*;

const THREE_REGIONS: &str = include_str!("../../../examples/three-regions.toml");

fn parse(text: &str) -> Result<Topology, ConfigErrors> {
    Topology::parse(text, "test.toml", Path::new("/etc/meridian"))
}

/// The problems of `text`, as `line:column key: message` lines.
fn problems(text: &str) -> Vec<String> {
    let errors = parse(text).expect_err("the file should be refused");
    errors
        .problems
        .iter()
        .map(|p| {
            let at = p
                .location
                .map_or("-".to_owned(), |l| format!("{}:{}", l.line, l.column));
            format!("{at} {}: {}", p.key, p.message)
        })
        .collect()
}

fn dc(id: &str, port: u16) -> String {
    format!(
        "[[datacenter]]\nid = \"{id}\"\nclient = \"127.0.0.1:{port}\"\npeer = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n",
        port + 100,
        port + 200
    )
}

fn cluster(extra: &str) -> String {
    format!(
        "[cluster]\nname = \"t\"\n{extra}\n{}{}{}",
        dc("a", 7001),
        dc("b", 7002),
        dc("c", 7003)
    )
}

#[test]
fn the_reference_file_parses_with_every_setting() {
    let t = parse(THREE_REGIONS).unwrap();
    assert_eq!(t.cluster_name, "shop");
    let ids: Vec<&str> = t.datacenters.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["us-east", "eu-west", "ap-northeast"]);
    assert_eq!(
        t.kind,
        TopologyKind::Ring(vec![DcIdx(0), DcIdx(1), DcIdx(2)])
    );
    let eu = &t.datacenters[1];
    assert_eq!(eu.data_dir, Path::new("/etc/meridian/data/eu-west"));
    assert_eq!(eu.cert, Path::new("/etc/meridian/certs/eu-west.pem"));
    assert_eq!(eu.key, Path::new("/etc/meridian/certs/eu-west-key.pem"));
    assert_eq!(
        eu.backend,
        Backend::Redis {
            url: "redis://127.0.0.1:6390/0".into(),
            replicas: vec!["redis://127.0.0.1:6391/0".into()]
        }
    );
    assert_eq!(
        eu.client,
        Endpoint {
            host: "127.0.0.1".into(),
            port: 7002
        }
    );
    assert_eq!(t.homes.user, UserKey::HashTag);
    assert_eq!(
        t.homes.pins,
        vec![("alice".into(), DcIdx(1)), ("bob".into(), DcIdx(2))]
    );
    assert_eq!(t.homes.on_home_down, OnHomeDown::Reject);
    assert_eq!(t.session.read_wait, Duration::from_millis(100));
    assert_eq!(t.session.on_stale, OnStale::Forward);
    assert_eq!(
        t.replication.fsync,
        FsyncPolicy::Every(Duration::from_millis(10))
    );
    assert_eq!(t.replication.log_retention_bytes, 1 << 30);
    assert_eq!(t.replication.heartbeat, Duration::from_millis(500));
    assert_eq!(t.replication.peer_timeout, Duration::from_secs(3));
    assert_eq!(t.tls.ca, Path::new("/etc/meridian/certs/ca.pem"));
    let link = t.link(DcIdx(2), DcIdx(1)).unwrap();
    assert_eq!(
        (link.delay, link.jitter, link.loss),
        (Duration::from_millis(100), Duration::from_millis(2), 0.001)
    );
}

#[test]
fn defaults_fill_what_a_minimal_file_leaves_out() {
    let t = parse(&format!("[cluster]\nname = \"t\"\n{}", dc("solo", 7001))).unwrap();
    assert_eq!(t.kind, TopologyKind::AllToAll);
    assert_eq!(t.datacenters[0].backend, Backend::Embedded);
    assert_eq!(
        t.datacenters[0].data_dir,
        Path::new("/etc/meridian/data/solo")
    );
    assert_eq!(t.datacenters[0].weight, 1.0);
    assert_eq!(t.star_fallback, StarFallback::Direct);
    assert!(t.links.is_empty());
}

#[test]
fn every_mistake_is_reported_with_its_place() {
    let text = r#"[cluster]
name = "shop"
topology = "star"
hub = "us-central"
colour = "blue"

[[datacenter]]
id = "us-east"
client = "127.0.0.1:7001"
peer = "127.0.0.1:7101"
admin = "127.0.0.1:7201"

[[datacenter]]
id = "us-east"
client = "127.0.0.1:7001"
peer = "localhost"
admin = "127.0.0.1:7202"
backend = { kind = "redis" }

[homes]
pins = { "alice" = "eu-wset" }
on_home_down = "next-in-lin"

[session]
read_wait_ms = -5

[links]
"us-east/mars" = { delay_ms = 20, jiter_ms = 1 }
"#;
    let found = problems(text);
    let expected = [
        "4:7 cluster.hub: \"us-central\" is not a datacenter; did you mean \"us-east\"?",
        "5:1 cluster: unknown key \"colour\"; known keys are name, topology, ring, hub, star_fallback",
        "14:6 datacenter \"us-east\".id: duplicate datacenter id \"us-east\" (first defined on line 8)",
        "15:10 datacenter \"us-east\".client: 127.0.0.1:7001 clashes with 127.0.0.1:7001 of datacenter \"us-east\".client (line 9): two listeners cannot share an address",
        "16:8 datacenter \"us-east\".peer: \"localhost\" has no port: write host:port, e.g. \"127.0.0.1:7001\"",
        "18:11 datacenter \"us-east\".backend: missing required key \"url\" (for example \"redis://127.0.0.1:6379/0\")",
        "21:20 homes.pins.\"alice\": \"eu-wset\" is not a datacenter; the datacenters are us-east",
        "22:16 homes.on_home_down: \"next-in-lin\" is not one of \"reject\", \"next-in-line\"; did you mean \"next-in-line\"?",
        "25:16 session.read_wait_ms: -5 ms is out of range: must be from 0 ms to 60000 ms",
        "28:1 links.\"us-east/mars\": \"mars\" is not a datacenter; the datacenters are us-east",
        "28:35 links.\"us-east/mars\": unknown key \"jiter_ms\"; did you mean \"jitter_ms\"?",
    ];
    assert_eq!(found, expected, "got:\n{}", found.join("\n"));
}

#[test]
fn ring_orders_must_name_each_datacenter_once() {
    let found = problems(&cluster(
        "topology = \"ring\"\nring = [\"a\", \"a\", \"x\"]",
    ));
    assert_eq!(
        found,
        [
            "4:8 cluster.ring: the ring misses \"b\", \"c\"; each datacenter must appear once",
            "4:14 cluster.ring: the ring lists \"a\" twice; each datacenter must appear once",
            "4:19 cluster.ring: \"x\" is not a datacenter; the datacenters are a, b, c",
        ]
    );
}

#[test]
fn a_star_needs_a_hub_that_is_a_datacenter() {
    let found = problems(&cluster("topology = \"star\""));
    assert_eq!(
        found,
        [
            "1:1 cluster: missing required key \"hub\" (a star needs the datacenter every change passes through)"
        ]
    );
    let found = problems(&cluster("topology = \"star\"\nhub = \"bb\""));
    assert_eq!(
        found,
        ["4:7 cluster.hub: \"bb\" is not a datacenter; did you mean \"b\"?"]
    );
    let found = problems(&cluster("ring = [\"a\", \"b\", \"c\"]"));
    assert_eq!(
        found,
        ["3:8 cluster.ring: only applies when topology = \"ring\""]
    );
}

#[test]
fn numbers_out_of_range_are_refused() {
    let text = format!(
        "{}[links]\n\"a/b\" = {{ delay_ms = 20000, loss = 1.5 }}\n\"b/a\" = {{ delay_ms = 5 }}\n\"c/c\" = {{ delay_ms = 5 }}\n",
        cluster("")
    );
    assert_eq!(
        problems(&text),
        [
            "20:22 links.\"a/b\".delay_ms: 20000 ms is out of range: must be from 0 ms to 10000 ms",
            "20:36 links.\"a/b\".loss: 1.5 is out of range: must be from 0 to 1",
            "22:1 links.\"c/c\": a link joins two different datacenters",
        ]
    );
    let text = format!(
        "{}[replication]\nfsync = \"every-0ms\"\nlog_retention = \"12 parsecs\"\n",
        cluster("")
    );
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("\"every-0ms\" is not \"always\", \"never\" or \"every-<N>ms\""));
    assert!(found[1].contains("\"12 parsecs\" is not a size"));
    let text = format!(
        "{}[replication]\nheartbeat_ms = 1000\npeer_timeout_ms = 1500\n",
        cluster("")
    );
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains(
            "replication.peer_timeout_ms: 1500 ms is less than two heartbeats (1000 ms each)"
        ),
        "{found:?}"
    );
    let text = format!("{}[replication]\nheartbeat_ms = 5\n", cluster(""));
    assert!(problems(&text)[0].contains("5 ms is out of range: must be from 10 ms to 60000 ms"));
}

#[test]
fn a_link_given_twice_is_refused() {
    let text = format!(
        "{}[links]\n\"a/b\" = {{ delay_ms = 5 }}\n\"b/a\" = {{ delay_ms = 6 }}\n",
        cluster("")
    );
    assert_eq!(
        problems(&text),
        ["21:1 links.\"b/a\": the link between these datacenters is already given on line 20"]
    );
}

#[test]
fn wildcard_listeners_clash_with_any_host_on_their_port() {
    let text = cluster("").replace("client = \"127.0.0.1:7002\"", "client = \"0.0.0.0:7001\"");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("0.0.0.0:7001 clashes with 127.0.0.1:7001"),
        "{found:?}"
    );
}

#[test]
fn a_file_without_datacenters_is_refused() {
    assert_eq!(
        problems("[cluster]\nname = \"t\"\n"),
        ["- datacenter: the file defines no datacenters: add at least one [[datacenter]] table"]
    );
}

#[test]
fn text_that_is_not_toml_gets_one_clear_line() {
    let errors = parse("[cluster\nname = 1").unwrap_err();
    assert_eq!(errors.problems.len(), 1);
    let p = &errors.problems[0];
    assert!(p.message.starts_with("not valid TOML: "), "{}", p.message);
    assert_eq!(p.location.map(|l| l.line), Some(1));
    let rendered = errors.to_string();
    assert!(
        rendered.starts_with("test.toml:1:9: not valid TOML: unclosed table"),
        "{rendered}"
    );
    assert_eq!(rendered.lines().count(), 1, "{rendered}");
    assert!(!rendered.contains("panicked"));
}

#[test]
fn wrong_types_are_named() {
    let text = cluster("").replace("name = \"t\"", "name = 5\ntopology = [\"ring\"]");
    assert_eq!(
        problems(&text),
        [
            "2:8 cluster.name: expected a string, found integer",
            "3:12 cluster.topology: expected a string, found array"
        ]
    );
}

#[test]
fn backends_are_checked() {
    let text = cluster("")
        .replacen(
            "admin = \"127.0.0.1:7201\"",
            "admin = \"127.0.0.1:7201\"\nbackend = { kind = \"embedded\", url = \"redis://x:1\" }",
            1,
        )
        .replacen(
            "admin = \"127.0.0.1:7202\"",
            "admin = \"127.0.0.1:7202\"\nbackend = { kind = \"postgres\" }",
            1,
        )
        .replacen(
            "admin = \"127.0.0.1:7203\"",
            "admin = \"127.0.0.1:7203\"\nbackend = { kind = \"redis\", url = \"http://x\" }",
            1,
        );
    let found = problems(&text);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found[0].ends_with("backend.url: only a redis backend takes this key"),
        "{found:?}"
    );
    assert!(
        found[1].ends_with("\"postgres\" is not one of \"embedded\", \"redis\""),
        "{found:?}"
    );
    assert!(
        found[2].contains("\"http://x\" is not a Redis URL"),
        "{found:?}"
    );
}

#[test]
fn auth_users_are_read_and_checked() {
    let t = parse(&format!(
        "{}[auth]\nusers = {{ default = \"long-enough\", app = \"also-long-enough\" }}\n",
        cluster("")
    ))
    .unwrap();
    assert_eq!(
        t.users,
        vec![
            ("default".into(), "long-enough".into()),
            ("app".into(), "also-long-enough".into())
        ]
    );
    let found = problems(&format!(
        "{}[auth]\nusers = {{ app = \"short\", ops = 5 }}\n",
        cluster("")
    ));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].ends_with("auth.users.\"app\": a password needs at least 8 characters"),
        "{found:?}"
    );
    assert!(
        found[1].ends_with("expected a password string, found integer"),
        "{found:?}"
    );
}

#[test]
fn thousands_of_datacenters_are_refused_after_checking_only_the_first_64() {
    // Entry 100 is also wrong: past the limit it is not read, so validation stays
    // short however long the file is.
    let mut text = "[cluster]\nname = \"t\"\n".to_owned();
    for i in 0..4000u16 {
        text += &dc(&format!("dc{i}"), 1000 + (i % 50) * 300 + i / 50);
        if i == 100 {
            text += "bogus = 1\n";
        }
    }
    let found = problems(&text);
    assert!(
        found
            .iter()
            .any(|p| p.contains("4000 datacenters, more than the limit of 64")),
        "{found:?}"
    );
    assert!(!found.iter().any(|p| p.contains("bogus")), "{found:?}");
}

#[test]
fn a_cluster_name_too_long_for_the_handshake_is_refused() {
    let long = "x".repeat(70_000);
    let text = cluster("").replace("name = \"t\"", &format!("name = \"{long}\""));
    let found = problems(&text);
    assert!(
        found.iter().any(|p| p.contains("cluster.name")
            && p.contains("70000 bytes long, more than the limit of 255")),
        "{found:?}"
    );
}

#[test]
fn writes_run_at_home_unless_the_file_says_local() {
    let t = parse(&cluster("")).unwrap();
    assert_eq!(t.homes.writes, Writes::Home);
    let t = parse(&format!("{}[homes]\nwrites = \"local\"\n", cluster(""))).unwrap();
    assert_eq!(t.homes.writes, Writes::Local);
    let found = problems(&format!("{}[homes]\nwrites = \"anywhere\"\n", cluster("")));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("homes.writes"), "{found:?}");
}

#[test]
fn requests_go_straight_to_the_home_where_a_link_may_exist_else_through_the_hub() {
    let ids = |t: &Topology, path: Option<Vec<DcIdx>>| -> Vec<String> {
        path.unwrap()
            .into_iter()
            .map(|i| t.dc(i).id.clone())
            .collect()
    };
    let star = format!(
        "{}[links]\n\"a/b\" = {{ delay_ms = 10 }}\n\"a/c\" = {{ delay_ms = 30 }}\n",
        cluster("topology = \"star\"\nhub = \"a\"\nstar_fallback = \"none\"")
    );
    let t = parse(&star).unwrap();
    assert_eq!(ids(&t, t.forward_path(DcIdx(1), DcIdx(2))), ["b", "a", "c"]);
    assert_eq!(ids(&t, t.forward_path(DcIdx(2), DcIdx(0))), ["c", "a"]);
    assert_eq!(
        t.path_delay(&t.forward_path(DcIdx(1), DcIdx(2)).unwrap()),
        Some(Duration::from_millis(40))
    );
    for shape in [
        "",
        "topology = \"ring\"",
        "topology = \"star\"\nhub = \"a\"",
    ] {
        let t = parse(&cluster(shape)).unwrap();
        assert_eq!(
            ids(&t, t.forward_path(DcIdx(1), DcIdx(2))),
            ["b", "c"],
            "{shape}"
        );
        assert_eq!(t.path_delay(&[DcIdx(1), DcIdx(2)]), None);
    }
}

#[test]
fn sessions_live_in_the_connection_unless_the_file_says_user() {
    let t = parse(&cluster("")).unwrap();
    assert_eq!(t.session.scope, SessionScope::Connection);
    let text = format!(
        "{}[session]\nscope = \"user\"\nsession_ttl_ms = 60000\nmax_users = 5000\n",
        cluster("")
    );
    let t = parse(&text).unwrap();
    assert_eq!(t.session.scope, SessionScope::User);
    assert_eq!(t.session.ttl, Duration::from_secs(60));
    assert_eq!(t.session.max_users, 5000);
    let found = problems(&format!(
        "{}[session]\nscope = \"device\"\nsession_ttl_ms = 5\n",
        cluster("")
    ));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("session.scope"), "{found:?}");
    assert!(found[1].contains("session.session_ttl_ms"), "{found:?}");
}

#[test]
fn next_in_line_needs_three_datacenters() {
    let two = format!(
        "[cluster]\nname = \"t\"\n{}{}[homes]\non_home_down = \"next-in-line\"\n",
        dc("a", 7001),
        dc("b", 7002)
    );
    let found = problems(&two);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("homes.on_home_down: \"next-in-line\" needs at least three datacenters, and this topology has 2"),
        "{found:?}"
    );
    let three = format!("{}[homes]\non_home_down = \"next-in-line\"\n", cluster(""));
    assert!(parse(&three).is_ok());
}

#[test]
fn flush_is_refused_unless_allowed() {
    assert_eq!(
        parse(&cluster("")).unwrap().clients.flush,
        FlushPolicy::Refuse
    );
    let allowed = parse(&cluster("[clients]\nflush = \"allow\"\n")).unwrap();
    assert_eq!(allowed.clients.flush, FlushPolicy::Allow);
    let bad = problems(&cluster("[clients]\nflush = \"yes\"\n"));
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].contains("clients.flush") && bad[0].contains("\"refuse\", \"allow\""),
        "{bad:?}"
    );
}

#[test]
fn homes_follow_their_users_when_asked_and_bad_settings_are_named() {
    assert_eq!(parse(&cluster("")).unwrap().homes.follow, None);
    let on = parse(&format!("{}[homes]\nfollow = true\n", cluster(""))).unwrap();
    assert_eq!(on.homes.follow, Some(Follow::default()));
    let off = parse(&format!("{}[homes]\nfollow = false\n", cluster(""))).unwrap();
    assert_eq!(off.homes.follow, None);
    let tuned = format!(
        "{}[homes.follow]\nshare = 0.9\nmin_writes = 5\nwindow_ms = 2000\nmin_interval_ms = 30000\n",
        cluster("")
    );
    let follow = parse(&tuned).unwrap().homes.follow.unwrap();
    assert_eq!(follow.share_milli, 900);
    assert_eq!(follow.min_writes, 5);
    assert_eq!(follow.window, Duration::from_secs(2));
    assert_eq!(follow.min_interval, Duration::from_secs(30));
    let bad = format!(
        "{}[homes.follow]\nshare = 0.4\nwindow_ms = 20000\nmin_interval_ms = 1000\nspan = 3\n",
        cluster("")
    );
    let found = problems(&bad);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found
            .iter()
            .any(|p| p.contains("homes.follow.share: 0.4 is out of range")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.contains("unknown key \"span\"")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("min_interval_ms: 1000 ms is shorter than the window")),
        "{found:?}"
    );
    let first = format!("{}[homes]\ndefault = \"first-write\"\n", cluster(""));
    assert_eq!(
        parse(&first).unwrap().homes.default,
        DefaultHome::FirstWrite
    );
    assert_eq!(
        parse(&cluster("")).unwrap().homes.default,
        DefaultHome::Rendezvous
    );
    let both = format!(
        "{}[homes]\nwrites = \"local\"\ndefault = \"first-write\"\n",
        cluster("")
    );
    assert!(problems(&both)[0].contains("homes.default: \"first-write\" places users at homes"));
    let local = format!(
        "{}[homes]\nwrites = \"local\"\nfollow = true\n",
        cluster("")
    );
    assert!(
        problems(&local)[0]
            .contains("homes.follow: homes follow their users only where writes run at homes")
    );
}
