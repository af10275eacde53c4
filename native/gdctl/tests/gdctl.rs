//! `gdctl` end to end: a real `redis-server`, two datacenters running in
//! this process (gd_core runtimes on that Redis), and the built binary run
//! for every subcommand, with and without `--json`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gd_core::config::{BackendKind, Config, Endpoint};
use gd_core::envelope::Envelope;
use gd_core::jid::Jid;
use gd_core::routing::{Delivered, Delivery, Reason};
use gd_core::runtime::Runtime;
use gd_core::store::{Cmd, Reply};
use serde_json::Value;

/// A `redis-server` on a free port, killed on drop.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed?)");
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < end, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Nobody;

impl Delivery for Nobody {
    fn deliver(&self, _: Delivered) {}
    fn undeliverable(&self, _: Envelope, _: Reason) {}
}

fn start_dc(n: u32, url: &str) -> Runtime {
    let mut c = Config::minimal("example.com", &format!("dc{n}.example.com")).unwrap();
    c.node_name = format!("node{n}@localhost");
    c.backend = BackendKind::Redis;
    c.redis.url = Some(url.to_owned());
    c.connections.endpoints = vec![Endpoint {
        host: "127.0.0.1".into(),
        port: 0,
    }];
    Runtime::start(c, Arc::new(Nobody)).expect("runtime starts")
}

fn jid(s: &str) -> Jid {
    Jid::parse(s).unwrap()
}

fn exec(rt: &Runtime, cmds: Vec<Cmd>) -> Vec<Reply> {
    rt.block_on(rt.store().backend().exec(&cmds)).unwrap()
}

fn gdctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gdctl"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run gdctl")
}

/// Runs gdctl, expects success, returns stdout.
fn ok(args: &[&str]) -> String {
    let out = gdctl(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("$ gdctl {}\n{stdout}", args.join(" "));
    assert!(
        out.status.success(),
        "gdctl {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs gdctl, expects exit status 1, returns stderr.
fn fails(args: &[&str]) -> String {
    let out = gdctl(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("$ gdctl {} (fails)\n{stderr}", args.join(" "));
    assert_eq!(out.status.code(), Some(1), "gdctl {args:?}: {stderr}");
    stderr
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&ok(&all)).expect("one JSON document")
}

fn node_names(hosts: &Value, host: &str) -> Vec<String> {
    hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .map(|h| {
            h["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["node"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_subcommand_against_two_running_datacenters() {
    let redis = Redis::start();
    let url = redis.url();
    let dc1 = start_dc(1, &url);
    let dc2 = start_dc(2, &url);
    dc1.block_on(dc1.session_opened(&jid("alice@example.com/a")));
    dc2.block_on(dc2.session_opened(&jid("bob@example.com/b")));
    dc1.block_on(dc1.register_subhost("muc.example.com", true));
    dc1.block_on(dc1.register_subhost("hidden.example.com", false));
    // A node of dc2 that stopped refreshing 1000 s ago, with its sets.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    exec(
        &dc2,
        vec![
            Cmd::HSet {
                key: "dc2.example.com#{nodes}".into(),
                field: "node9@old".into(),
                value: (now - 1000).to_string(),
            },
            Cmd::SAdd {
                key: "dc2.example.com#node9@old#{endpoints}".into(),
                members: vec!["10.0.0.9#5555".into()],
            },
            Cmd::SAdd {
                key: "dc2.example.com#node9@old#{domains}".into(),
                members: vec!["old.example.com".into()],
            },
        ],
    );
    let r = ["--redis", url.as_str()];
    let with = |more: &[&'static str]| -> Vec<&str> {
        r.iter().copied().chain(more.iter().copied()).collect()
    };

    // hosts
    let text = ok(&with(&["hosts"]));
    assert!(text.contains("dc1.example.com\n"), "{text}");
    assert!(text.contains("node1@localhost"), "{text}");
    assert!(text.contains("refreshed "), "{text}");
    let dead_line = text.lines().find(|l| l.contains("node9@old")).unwrap();
    assert!(
        dead_line.contains("refreshed 1000 s ago") || dead_line.contains("refreshed 1001 s ago")
    );
    assert!(dead_line.contains("DEAD"), "{dead_line}");
    assert!(!text
        .lines()
        .find(|l| l.contains("node2@localhost"))
        .unwrap()
        .contains("DEAD"));
    let hosts = json(&with(&["hosts"]));
    assert_eq!(hosts["expire_after_secs"], 120);
    assert_eq!(node_names(&hosts, "dc1.example.com"), ["node1@localhost"]);
    assert_eq!(
        node_names(&hosts, "dc2.example.com"),
        ["node2@localhost", "node9@old"]
    );
    let dc2_nodes = &hosts["hosts"][1]["nodes"];
    assert_eq!(dc2_nodes[0]["dead"], false);
    assert_eq!(dc2_nodes[1]["dead"], true);
    assert_eq!(dc2_nodes[1]["refreshed_at"], now - 1000);
    // expire_after decides what is dead.
    let lenient = json(&with(&["hosts", "--expire-after", "5000"]));
    assert_eq!(lenient["hosts"][1]["nodes"][1]["dead"], false);

    // endpoints
    let port = dc1.listen_addrs()[0].port();
    let text = ok(&with(&["endpoints", "dc1.example.com"]));
    assert!(text.starts_with("node1@localhost  127.0.0.1:"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("expires in "), "{text}");
    let eps = json(&with(&["endpoints", "dc1.example.com"]));
    assert_eq!(eps["nodes"][0]["endpoints"][0]["port"], port);
    assert_eq!(eps["nodes"][0]["endpoints"][0]["addr"], "127.0.0.1");
    assert!(eps["nodes"][0]["ttl_secs"].as_u64().unwrap() > 100);
    let e = fails(&with(&["endpoints", "dc9.example.com"]));
    assert!(e.contains("dc9.example.com: no nodes"), "{e}");

    // where
    let text = ok(&with(&["where", "alice@example.com/a"]));
    assert!(
        text.contains("alice@example.com/a  ->  dc1.example.com  (expires in "),
        "{text}"
    );
    assert!(
        text.contains("alice@example.com    ->  dc1.example.com  (expires in "),
        "{text}"
    );
    assert!(
        text.contains("owner: dc1.example.com (full JID entry)"),
        "{text}"
    );
    let w = json(&with(&["where", "Bob@Example.com/b"]));
    assert_eq!(w["jid"], "bob@example.com/b");
    assert_eq!(w["owner"], "dc2.example.com");
    assert_eq!(w["entries"].as_array().unwrap().len(), 2);
    assert_eq!(w["entries"][1]["key"], "bob@example.com");
    assert!(w["entries"][0]["ttl_secs"].as_u64().unwrap() > 100);
    let text = ok(&with(&["where", "bob@example.com/other"]));
    assert!(
        text.contains("bob@example.com/other  ->  (no entry)  (absent)"),
        "{text}"
    );
    assert!(
        text.contains("owner: dc2.example.com (bare JID entry)"),
        "{text}"
    );
    let nowhere = json(&with(&["where", "nobody@example.com"]));
    assert_eq!(nowhere["owner"], Value::Null);
    assert_eq!(nowhere["entries"][0]["ttl_secs"], Value::Null);
    let e = fails(&with(&["where", "@bad"]));
    assert!(e.contains("not a JID"), "{e}");

    // domains
    let text = ok(&with(&["domains"]));
    assert!(text.contains("muc.example.com "), "{text}");
    assert!(
        text.contains("hidden.example.com  dc1.example.com"),
        "{text}"
    );
    let public = json(&with(&["domains", "--public"]));
    let names: Vec<&str> = public["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["domain"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["muc.example.com"]);
    assert_eq!(public["domains"][0]["owner"], "dc1.example.com");
    let all = json(&with(&["domains"]));
    assert!(all["domains"].as_array().unwrap().len() >= 4, "{all}");

    // check-config
    let dir = std::env::temp_dir().join(format!("gdctl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "global_host = \"example.com\"\nlocal_host = \"dc1.example.com\"\n",
    )
    .unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "global_host = \"example.com\"\nlocal_host = \"dc1.example.com\"\n\
         [connections]\nconnections_per_endpoint = -1\n",
    )
    .unwrap();
    let (good, bad) = (good.to_str().unwrap(), bad.to_str().unwrap());
    let text = ok(&["check-config", good]);
    assert!(
        text.contains("ok (global_host example.com, local_host dc1.example.com"),
        "{text}"
    );
    assert_eq!(json(&["check-config", good])["config"]["message_ttl"], 4);
    let e = fails(&["check-config", bad]);
    assert!(
        e.contains("connections.connections_per_endpoint: expected a non-negative integer, got -1"),
        "{e}"
    );
    let out = gdctl(&["check-config", bad, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["error"]
        .as_str()
        .unwrap()
        .starts_with("connections.connections_per_endpoint"));
    // --config takes the store from a runtime configuration.
    let cfg = dir.join("redis.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"global_host": "example.com", "local_host": "dc1.example.com",
                 "redis": {{"url": "{url}", "expire_after": 5000}}}}"#
        ),
    )
    .unwrap();
    let from_cfg = json(&["--config", cfg.to_str().unwrap(), "hosts"]);
    assert_eq!(from_cfg["expire_after_secs"], 5000);
    assert_eq!(from_cfg["hosts"][1]["nodes"][1]["dead"], false);

    // usage errors
    let e = fails(&["hosts"]);
    assert!(e.contains("no store given"), "{e}");
    let e = fails(&[
        "--cluster",
        "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
        "hosts",
    ]);
    // Through the runtime's own cluster backend: nothing listens there.
    assert!(
        e.contains("redis cluster 127.0.0.1:7000,127.0.0.1:7001: cannot connect"),
        "{e}"
    );
    let e = fails(&["--cluster", "127.0.0.1:7000", "hosts"]);
    assert!(
        e.contains("redis.cluster[0]: expected redis://host[:port]"),
        "{e}"
    );

    // evict-node: refused without a terminal or --yes, then exactly that node.
    let e = fails(&with(&["evict-node", "dc2.example.com", "node9@old"]));
    assert!(e.contains("pass --yes"), "{e}");
    assert_eq!(
        node_names(&json(&with(&["hosts"])), "dc2.example.com").len(),
        2
    );
    let text = ok(&with(&[
        "evict-node",
        "dc2.example.com",
        "node9@old",
        "--yes",
    ]));
    assert!(
        text.contains("evicted node9@old from dc2.example.com"),
        "{text}"
    );
    assert!(text.contains("2 per-node set(s) deleted"), "{text}");
    let after = json(&with(&["hosts"]));
    assert_eq!(node_names(&after, "dc2.example.com"), ["node2@localhost"]);
    assert_eq!(node_names(&after, "dc1.example.com"), ["node1@localhost"]);
    let left = exec(
        &dc2,
        vec![
            Cmd::SMembers {
                key: "dc2.example.com#node9@old#{endpoints}".into(),
            },
            Cmd::SMembers {
                key: "dc2.example.com#node2@localhost#{endpoints}".into(),
            },
            Cmd::Get {
                key: "bob@example.com/b".into(),
            },
        ],
    );
    assert_eq!(left[0], Reply::List(vec![]));
    assert!(
        matches!(&left[1], Reply::List(l) if l.len() == 1),
        "{left:?}"
    );
    assert_eq!(left[2], Reply::Str("dc2.example.com".into()));
    let e = fails(&with(&[
        "evict-node",
        "dc2.example.com",
        "node9@old",
        "--yes",
    ]));
    assert!(e.contains("nothing to evict"), "{e}");
    let v = json(&with(&[
        "evict-node",
        "dc1.example.com",
        "node1@localhost",
        "--yes",
    ]));
    assert_eq!(v["field_removed"], true);
    assert_eq!(v["sets_removed"], 3);

    let _ = std::fs::remove_dir_all(&dir);
    dc1.stop(Duration::from_millis(200));
    dc2.stop(Duration::from_millis(200));
}
