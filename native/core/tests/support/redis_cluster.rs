//! A real Redis Cluster of three masters on free ports, for the cluster
//! tests: `redis-server --cluster-enabled yes` ×3 joined by
//! `redis-cli --cluster create`, a raw client that follows `MOVED`/`ASK`
//! to look at what was written, and a slot migration driven step by step
//! (`CLUSTER SETSLOT … IMPORTING/MIGRATING`, `MIGRATE … KEYS`,
//! `CLUSTER SETSLOT … NODE`). Every server is killed when the guard drops.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{RawClient, Resp};

const START_DEADLINE: Duration = Duration::from_secs(20);

/// Whether `redis-server` and `redis-cli` can be run; prints why not.
pub fn available(test: &str) -> bool {
    for tool in ["redis-server", "redis-cli"] {
        let ok = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED {test}: `{tool}` is not installed (needed for a Redis Cluster)");
            return false;
        }
    }
    true
}

struct Node {
    port: u16,
    child: Child,
}

pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Three masters owning all 16384 slots, `cluster_state:ok` on each;
    /// `None` (with a message) when redis-server or redis-cli is missing.
    pub fn start(test: &str) -> Option<Self> {
        if !available(test) {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = super::free_port();
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(&conf)
                .args(["--cluster-node-timeout", "2000"])
                .args(["--appendonly", "no", "--save", ""])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            nodes.push(Node { port, child });
        }
        let cluster = RedisCluster { nodes, _dir: dir };
        for port in cluster.ports() {
            wait(START_DEADLINE, &format!("redis-server on {port}"), || {
                RawClient::connect(port)
                    .and_then(|mut c| c.cmd(&["PING"]))
                    .is_ok_and(|r| r == Resp::Simple("PONG".into()))
            });
        }
        let addrs: Vec<String> = cluster
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_ok();
        Some(cluster)
    }

    /// Waits until every node says `cluster_state:ok` and knows every
    /// node as owning slots.
    pub fn wait_ok(&self) {
        for port in self.ports() {
            wait(
                START_DEADLINE,
                &format!("cluster_state:ok on {port}"),
                || {
                    let Ok(mut c) = RawClient::connect(port) else {
                        return false;
                    };
                    let info = c.cmd(&["CLUSTER", "INFO"]).ok().and_then(|r| r.bulk());
                    info.is_some_and(|i| {
                        i.contains("cluster_state:ok") && i.contains("cluster_slots_assigned:16384")
                    })
                },
            );
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Seed URLs for `redis.cluster`.
    pub fn seeds(&self) -> Vec<String> {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    pub fn node(&self, port: u16) -> RawClient {
        RawClient::connect(port).expect("connect to a cluster node")
    }

    /// The node's cluster id (`CLUSTER MYID`).
    pub fn id(&self, port: u16) -> String {
        self.node(port)
            .cmd(&["CLUSTER", "MYID"])
            .unwrap()
            .bulk()
            .unwrap()
    }

    pub fn slot_of(&self, key: &str) -> u16 {
        self.node(self.ports()[0])
            .cmd(&["CLUSTER", "KEYSLOT", key])
            .unwrap()
            .int() as u16
    }

    /// The port of the master owning `slot`, as the first node sees it.
    pub fn owner(&self, slot: u16) -> u16 {
        self.owner_seen_by(self.ports()[0], slot)
    }

    fn owner_seen_by(&self, port: u16, slot: u16) -> u16 {
        let Resp::Array(ranges) = self.node(port).cmd(&["CLUSTER", "SLOTS"]).unwrap() else {
            panic!("CLUSTER SLOTS: not an array");
        };
        for range in ranges {
            let Resp::Array(items) = range else { continue };
            let (Resp::Int(lo), Resp::Int(hi), Resp::Array(master)) =
                (&items[0], &items[1], &items[2])
            else {
                continue;
            };
            if (*lo..=*hi).contains(&i64::from(slot)) {
                return master[1].int() as u16;
            }
        }
        panic!("slot {slot} has no owner");
    }

    /// A master that does not own `slot`.
    pub fn other_than_owner(&self, slot: u16) -> u16 {
        let owner = self.owner(slot);
        self.ports().into_iter().find(|p| *p != owner).unwrap()
    }

    /// One command routed by hand: sent to the first node, following
    /// `MOVED` and `ASK` (with `ASKING`) as a cluster client would.
    pub fn cmd(&self, args: &[&str]) -> Resp {
        let mut port = self.ports()[0];
        let mut asking = false;
        for _ in 0..5 {
            let mut c = self.node(port);
            if asking {
                c.cmd(&["ASKING"]).unwrap();
            }
            match c.cmd(args).unwrap() {
                Resp::Error(e) if e.starts_with("MOVED ") || e.starts_with("ASK ") => {
                    asking = e.starts_with("ASK ");
                    let addr = e.rsplit(' ').next().unwrap();
                    port = addr.rsplit(':').next().unwrap().parse().unwrap();
                }
                r => return r,
            }
        }
        panic!("{args:?}: too many redirects");
    }

    /// Step 1 of moving `slot` from `from` to `to`: both sides know the
    /// slot is migrating (`to` IMPORTING, `from` MIGRATING).
    pub fn begin_migration(&self, slot: u16, from: u16, to: u16) {
        let s = slot.to_string();
        let ok = |r: Resp| assert_eq!(r, Resp::Simple("OK".into()));
        ok(self
            .node(to)
            .cmd(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &self.id(from)])
            .unwrap());
        ok(self
            .node(from)
            .cmd(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &self.id(to)])
            .unwrap());
    }

    /// Step 2: moves up to `n` keys of `slot` still on `from` to `to`;
    /// returns how many were moved (0: none left).
    pub fn migrate_some(&self, slot: u16, from: u16, to: u16, n: usize) -> usize {
        let mut c = self.node(from);
        let keys = c
            .cmd(&[
                "CLUSTER",
                "GETKEYSINSLOT",
                &slot.to_string(),
                &n.to_string(),
            ])
            .unwrap()
            .strings();
        if keys.is_empty() {
            return 0;
        }
        let port = to.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        let r = c.cmd(&args).unwrap();
        assert_eq!(r, Resp::Simple("OK".into()), "MIGRATE {keys:?}");
        keys.len()
    }

    /// Step 3: `slot` belongs to `to`, told to every master (the owner
    /// first, as redis-cli does).
    pub fn end_migration(&self, slot: u16, from: u16, to: u16) {
        let s = slot.to_string();
        let id = self.id(to);
        let mut order = vec![to, from];
        order.extend(self.ports().into_iter().filter(|p| *p != to && *p != from));
        for port in order {
            let r = self
                .node(port)
                .cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &id])
                .unwrap();
            assert_eq!(r, Resp::Simple("OK".into()), "SETSLOT NODE on {port}");
        }
        wait(START_DEADLINE, "every node agrees on the new owner", || {
            self.ports()
                .into_iter()
                .all(|p| self.owner_seen_by(p, slot) == to)
        });
    }

    /// The whole migration of `slot` to `to`, `batch` keys per `MIGRATE`.
    pub fn migrate_slot(&self, slot: u16, to: u16, batch: usize) {
        let from = self.owner(slot);
        self.begin_migration(slot, from, to);
        while self.migrate_some(slot, from, to, batch) > 0 {}
        self.end_migration(slot, from, to);
    }

    /// Number of keys held by one node (`DBSIZE`).
    pub fn keys_on(&self, port: u16) -> i64 {
        self.node(port).cmd(&["DBSIZE"]).unwrap().int()
    }
}

fn wait(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {deadline:?}");
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
    }
}
