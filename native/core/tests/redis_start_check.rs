//! The start-time store check (`store::start_check`) against real servers:
//! an ACL user holding exactly the grant docs/REDIS.md lists runs a node end
//! to end without one denied command, a user missing a command of it fails
//! `start` naming that command, wrong or missing credentials and a Redis
//! Cluster node configured as a single server fail `start` with the fix,
//! and the check passes through nutcracker without leaving a key behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use gd_core::mapping::Location;
use gd_core::runtime::Runtime;
use support::dc::{self, host, Inbox};
use support::redis::{Nutcracker, RawClient, RedisServer, Resp};
use support::redis_variants::TwoNodeCluster;

/// The `ACL SETUSER gd …` line of docs/REDIS.md, as arguments.
fn documented_grant() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/REDIS.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let line = doc
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("ACL SETUSER gd on >gd-secret "))
        .expect("docs/REDIS.md lists the exact grant");
    line.split_whitespace().map(str::to_owned).collect()
}

/// Creates `user` (password `gd-secret`) with the documented grant, minus
/// `without`, plus `with`.
fn grant(admin: &mut RawClient, user: &str, without: &[&str], with: &[&str]) {
    let mut args = documented_grant();
    args[2] = user.to_owned();
    args.retain(|a| !without.contains(&a.as_str()));
    args.extend(with.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(admin.cmd(&args).unwrap(), Resp::Simple("OK".into()));
}

fn start(n: u32, url: &str) -> Result<Runtime, String> {
    let cfg = dc::redis_config(n, url);
    Runtime::start(cfg, Arc::new(Inbox::default())).map_err(|e| e.to_string())
}

fn denied(admin: &mut RawClient) -> Vec<Resp> {
    match admin.cmd(&["ACL", "LOG"]).unwrap() {
        Resp::Array(entries) => entries,
        other => panic!("ACL LOG: {other:?}"),
    }
}

#[test]
fn a_user_with_exactly_the_documented_acl_runs_a_node_end_to_end() {
    let server = RedisServer::start();
    let mut admin = server.client();
    grant(&mut admin, "gd", &[], &[]);
    let url = format!("redis://gd:gd-secret@127.0.0.1:{}", server.port());
    let dc1 = start(1, &url).unwrap();
    let dc2 = start(2, &url).unwrap();
    let alice = dc::jid("alice@example.com/a");
    dc1.block_on(dc1.session_opened(&alice));
    dc1.block_on(dc1.register_subhost("muc.example.com", false));
    dc1.block_on(dc1.refresh_now());
    dc2.block_on(dc2.refresh_now());
    dc2.block_on(dc2.refresh_hosts_now());
    assert_eq!(
        dc2.block_on(dc2.lookup(&alice)).unwrap(),
        Location::Remote(Arc::from(host(1).as_str()))
    );
    dc1.block_on(dc1.session_closed(&alice));
    let gone = admin.cmd(&["GET", "alice@example.com/a"]).unwrap();
    assert_eq!(gone, Resp::Bulk(None));
    assert_eq!(denied(&mut admin), vec![], "a command outside the grant");

    // A non-zero database needs +select, and nothing more.
    grant(&mut admin, "gd3", &[], &["+select"]);
    let db3 = format!("redis://gd3:gd-secret@127.0.0.1:{}/3", server.port());
    let dc3 = start(3, &db3).unwrap();
    dc3.block_on(dc3.session_opened(&dc::jid("carol@example.com/c")));
    dc3.block_on(dc3.refresh_now());
    assert_eq!(denied(&mut admin), vec![]);
    let e = start(4, &db3.replace("gd3:", "gd:")).err().unwrap();
    assert!(
        e.contains("the Redis user lacks the permission to run select"),
        "{e}"
    );
}

#[test]
fn a_user_missing_a_granted_command_fails_at_start_naming_it() {
    let server = RedisServer::start();
    let mut admin = server.client();
    let url = |user: &str| format!("redis://{user}:gd-secret@127.0.0.1:{}", server.port());

    grant(&mut admin, "noeval", &["+eval"], &[]);
    let e = start(1, &url("noeval")).err().unwrap();
    assert!(
        e.starts_with("start: redis 127.0.0.1:")
            && e.contains(
                "the Redis user lacks the permission to run eval: grant it (docs/REDIS.md, ACL)"
            ),
        "{e}"
    );
    // Commands after EVAL in the check are named too.
    grant(&mut admin, "nohset", &["+hset"], &[]);
    let e = start(2, &url("nohset")).err().unwrap();
    assert!(e.contains("lacks the permission to run hset"), "{e}");
    // A command the ownership script calls.
    grant(&mut admin, "noset", &["+set"], &[]);
    let e = start(3, &url("noset")).err().unwrap();
    assert!(e.contains("the ownership script (eval) calls"), "{e}");
    // Keys outside the user's patterns.
    grant(&mut admin, "somekeys", &["~*"], &["~gd:*"]);
    let e = start(4, &url("somekeys")).err().unwrap();
    assert!(e.contains("grant ~*"), "{e}");
}

#[test]
fn wrong_or_missing_credentials_fail_at_start() {
    let server = RedisServer::start();
    let mut admin = server.client();
    grant(&mut admin, "gd", &[], &[]);
    let wrong = format!("redis://gd:nope@127.0.0.1:{}", server.port());
    let e = start(1, &wrong).err().unwrap();
    assert!(e.contains("authentication refused (WRONGPASS)"), "{e}");

    admin
        .cmd(&["CONFIG", "SET", "requirepass", "secret"])
        .unwrap();
    let e = start(2, &server.url()).err().unwrap();
    assert!(
        e.contains("requires authentication (NOAUTH): set redis.password"),
        "{e}"
    );
}

#[test]
fn a_redis_cluster_node_configured_as_a_single_server_fails_at_start() {
    let cluster = TwoNodeCluster::start();
    let e = start(1, &format!("redis://127.0.0.1:{}", cluster.ports[0]))
        .err()
        .unwrap();
    assert!(
        e.contains("this is a Redis Cluster node")
            && e.contains("MOVED")
            && e.ends_with("use redis.cluster"),
        "{e}"
    );
}

#[test]
fn the_check_passes_through_nutcracker_and_leaves_no_key() {
    let r1 = RedisServer::start();
    let r2 = RedisServer::start();
    let proxy = Nutcracker::start(&[&r1, &r2]);
    let dc1 = start(1, &proxy.url()).unwrap();
    dc1.block_on(dc1.session_opened(&dc::jid("alice@example.com/a")));
    for r in [&r1, &r2] {
        let keys = r.client().cmd(&["KEYS", "*probe*"]).unwrap().strings();
        assert_eq!(keys, Vec::<String>::new());
    }
}
