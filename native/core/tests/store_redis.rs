#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Redis-only store tests: what a real server and a real proxy do that the
//! embedded backend cannot — restart mid-test, a proxy closing the
//! connection on a command it cannot parse, the connection handshake
//! (no `CLIENT SETINFO`), the pool, a stalled server, a db in the URL, an
//! ACL user and a database from MongooseIM's pool.

mod support;

use std::sync::Arc;
use std::time::Duration;

use gd_core::config::{Ownership, RedisConfig};
use gd_core::store::{
    Backend, Cmd, NodeId, OwnedState, RedisBackend, Refresher, Reply, Store, StoreError,
};
use support::redis::{Nutcracker, RedisServer, Resp};

fn config(url: String, pool_size: u32) -> RedisConfig {
    RedisConfig {
        url: Some(url),
        server: "127.0.0.1".into(),
        port: 0,
        username: String::new(),
        password: String::new(),
        database: 0,
        tls: None,
        pool_size,
        expire_after: 120,
        refresh_after: 60,
        timeout_ms: 1000,
        start_timeout_ms: 3000,
        cluster: Vec::new(),
        ownership: Ownership::PerKey,
        lease_safety_ttl: 86400,
        lease_check_interval_ms: 1000,
    }
}

fn get(key: &str) -> Cmd {
    Cmd::Get { key: key.into() }
}

#[tokio::test]
async fn restart_mid_test_then_refresh_restores_everything() {
    let mut server = RedisServer::start();
    let store = Store::new(Arc::new(
        RedisBackend::new(&config(server.url(), 2)).unwrap(),
    ));
    let me = NodeId::new("dc1", "n1").unwrap();
    let r = Refresher::new(
        store.clone(),
        Arc::new(OwnedState::new()),
        me,
        Duration::from_secs(120),
        Duration::from_secs(60),
    );
    r.open_session("a@g/r", "a@g").await.unwrap();
    r.register_domain("c.g", false).await.unwrap();
    r.set_endpoints(vec![("127.0.0.1".into(), 5555)])
        .await
        .unwrap();
    assert_eq!(r.run_once(false).await.errors, 0);

    server.stop();
    assert!(matches!(
        store.get("a@g/r").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(r.open_session("b@g/r", "b@g").await.is_err());
    assert_eq!(r.state().pending_count(), 2);
    let down = r.run_once(false).await;
    assert!(down.errors > 0, "{down:?}");
    assert!(store.backend().health().await.is_err());

    server.restart();
    let mut raw = server.client();
    assert_eq!(raw.cmd(&["GET", "a@g/r"]).unwrap(), Resp::Bulk(None));
    let up = r.run_once(false).await;
    assert_eq!(up.errors, 0, "{up:?}");
    assert_eq!(r.state().pending_count(), 0);
    store.backend().health().await.unwrap();
    for key in ["a@g/r", "a@g", "b@g/r", "b@g", "c.g"] {
        assert_eq!(
            raw.cmd(&["GET", key]).unwrap().bulk().as_deref(),
            Some("dc1"),
            "{key}"
        );
    }
    assert_eq!(
        raw.cmd(&["SMEMBERS", "dc1#n1#{domains}"])
            .unwrap()
            .strings(),
        vec!["c.g"]
    );
    assert_eq!(
        raw.cmd(&["SMEMBERS", "dc1#n1#{endpoints}"])
            .unwrap()
            .strings(),
        vec!["127.0.0.1#5555"]
    );
    assert_eq!(raw.cmd(&["HEXISTS", "dc1#{nodes}", "n1"]).unwrap().int(), 1);
    assert_eq!(raw.cmd(&["SISMEMBER", "hosts", "dc1"]).unwrap().int(), 1);
}

#[tokio::test]
async fn proxy_closing_the_connection_does_not_wedge_the_client() {
    let servers = [RedisServer::start(), RedisServer::start()];
    let proxy = Nutcracker::start(&[&servers[0], &servers[1]]);
    let backend = RedisBackend::new(&config(proxy.url(), 1)).unwrap();
    backend.exec(&[get("k")]).await.unwrap();
    for unparsable in [&["CLIENT", "LIST"][..], &["KEYS", "*"][..]] {
        let r = backend.raw(unparsable).await;
        assert!(
            matches!(r, Err(StoreError::Unavailable(_))),
            "{unparsable:?}: {r:?}"
        );
        let next = backend
            .exec(&[
                Cmd::SetEx {
                    key: "k".into(),
                    value: "v".into(),
                    ttl_secs: 60,
                },
                get("k"),
            ])
            .await
            .unwrap();
        assert_eq!(next, vec![Reply::Ok, Reply::Str("v".into())]);
    }
    backend.health().await.unwrap();
}

/// redis-rs sends `CLIENT SETINFO` on connect unless told not to; nutcracker
/// drops such a connection. The control half shows the proxy really does.
#[tokio::test]
async fn handshake_sends_no_client_setinfo() {
    let servers = [RedisServer::start(), RedisServer::start()];
    let proxy = Nutcracker::start(&[&servers[0], &servers[1]]);

    let default_client = redis::Client::open(proxy.url()).unwrap();
    let control = async {
        let mut c = default_client.get_multiplexed_async_connection().await?;
        redis::cmd("GET")
            .arg("k")
            .query_async::<Option<String>>(&mut c)
            .await
    };
    let control = tokio::time::timeout(Duration::from_secs(10), control)
        .await
        .unwrap();
    assert!(
        control.is_err(),
        "nutcracker accepted CLIENT SETINFO: {control:?}"
    );

    let ours = RedisBackend::new(&config(proxy.url(), 1)).unwrap();
    assert_eq!(ours.exec(&[get("k")]).await.unwrap(), vec![Reply::Nil]);

    // On a plain server, the connection carries no library name either.
    let plain = RedisServer::start();
    let ours = RedisBackend::new(&config(plain.url(), 1)).unwrap();
    ours.exec(&[get("k")]).await.unwrap();
    let list = plain
        .client()
        .cmd(&["CLIENT", "LIST"])
        .unwrap()
        .bulk()
        .unwrap();
    assert!(!list.contains("lib-name=redis-rs"), "{list}");
}

#[tokio::test]
async fn pool_size_above_one_uses_every_connection() {
    let server = RedisServer::start();
    let backend = Arc::new(RedisBackend::new(&config(server.url(), 4)).unwrap());
    let writes = (0..64).map(|i| {
        let b = backend.clone();
        async move {
            let k = format!("k{i}");
            let v = i.to_string();
            let set = Cmd::SetEx {
                key: k.clone(),
                value: v.clone(),
                ttl_secs: 60,
            };
            assert_eq!(
                b.exec(&[set, get(&k)]).await.unwrap(),
                vec![Reply::Ok, Reply::Str(v)]
            );
        }
    });
    futures::future::join_all(writes).await;
    let list = server
        .client()
        .cmd(&["CLIENT", "LIST"])
        .unwrap()
        .bulk()
        .unwrap();
    // Four pooled connections plus the inspecting one.
    assert_eq!(list.lines().count(), 5, "{list}");
}

#[tokio::test]
async fn stalled_server_times_out_instead_of_hanging() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and reads, never answers.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let cfg = config(format!("redis://127.0.0.1:{port}"), 1);
    let backend = RedisBackend::with_timeout(&cfg, Duration::from_millis(300)).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), backend.exec(&[get("k")]))
        .await
        .expect("the batch must give up by itself");
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
}

#[tokio::test]
async fn db_named_in_the_url_is_selected() {
    let server = RedisServer::start();
    let backend = RedisBackend::new(&config(format!("{}/3", server.url()), 1)).unwrap();
    let set = Cmd::SetEx {
        key: "k".into(),
        value: "v".into(),
        ttl_secs: 60,
    };
    backend.exec(&[set]).await.unwrap();
    let mut raw = server.client();
    assert_eq!(raw.cmd(&["GET", "k"]).unwrap(), Resp::Bulk(None));
    raw.cmd(&["SELECT", "3"]).unwrap();
    assert_eq!(raw.cmd(&["GET", "k"]).unwrap().bulk().as_deref(), Some("v"));
}

#[tokio::test]
async fn password_is_sent_only_when_set() {
    let server = RedisServer::start();
    server
        .client()
        .cmd(&["CONFIG", "SET", "requirepass", "s3cret"])
        .unwrap();
    let url = format!("redis://:s3cret@127.0.0.1:{}", server.port());
    let ok = RedisBackend::new(&config(url, 1)).unwrap();
    assert_eq!(ok.exec(&[get("k")]).await.unwrap(), vec![Reply::Nil]);
    let mut plain = config(String::new(), 1);
    plain.url = None;
    plain.port = server.port();
    plain.password = "s3cret".into();
    let ok = RedisBackend::new(&plain).unwrap();
    assert_eq!(ok.exec(&[get("k")]).await.unwrap(), vec![Reply::Nil]);
    plain.password = String::new();
    let unauthenticated = RedisBackend::new(&plain).unwrap();
    let r = unauthenticated.exec(&[get("k")]).await.unwrap();
    assert!(
        matches!(&r[0], Reply::Error(e) if e.contains("NOAUTH")),
        "{r:?}"
    );
}

/// MongooseIM's pool with an ACL user and a non-zero database, read by the
/// config reader from the processed map and honoured by the backend:
/// `AUTH gd <password>` then `SELECT 5`.
#[tokio::test]
async fn acl_user_and_database_from_the_mongooseim_pool_are_honoured() {
    let server = RedisServer::start();
    let mut admin = server.client();
    admin
        .cmd(&["ACL", "SETUSER", "gd", "on", ">gd-secret", "~*", "+@all"])
        .unwrap();
    admin.cmd(&["ACL", "SETUSER", "default", "off"]).unwrap();
    let document = serde_json::json!({
        "modules": {"mod_global_distrib": {
            "global_host": "example.com",
            "local_host": "dc1.example.com",
            "redis": {"pool": "global_distrib", "expire_after": 120, "refresh_after": 60}
        }},
        "outgoing_pools": {"redis": {"global_distrib": {
            "type": "redis", "scope": "global", "tag": "global_distrib",
            "opts": {"workers": 2, "strategy": "best_worker", "call_timeout": 5000},
            "conn_opts": {"host": "127.0.0.1", "port": server.port(), "database": 5,
                          "username": "gd", "password": "gd-secret"}
        }}}
    });
    let cfg = gd_core::config::Config::from_json_value(document).unwrap();
    let backend = RedisBackend::new(&cfg.redis).unwrap();
    let set = Cmd::SetEx {
        key: "k".into(),
        value: "v".into(),
        ttl_secs: 60,
    };
    assert_eq!(backend.exec(&[set]).await.unwrap(), vec![Reply::Ok]);

    // The default user is off now: look as gd, in database 5 only.
    let mut raw = server.client();
    raw.cmd(&["AUTH", "gd", "gd-secret"]).unwrap();
    assert_eq!(raw.cmd(&["GET", "k"]).unwrap(), Resp::Bulk(None));
    raw.cmd(&["SELECT", "5"]).unwrap();
    assert_eq!(raw.cmd(&["GET", "k"]).unwrap().bulk().as_deref(), Some("v"));
    let who = raw.cmd(&["CLIENT", "LIST"]).unwrap().bulk().unwrap();
    assert!(
        who.lines().filter(|l| l.contains(" user=gd ")).count() >= 2,
        "{who}"
    );

    // A wrong password is a per-command error, not a hang.
    let mut wrong = cfg.redis.clone();
    wrong.password = "nope".into();
    let r = RedisBackend::new(&wrong).unwrap().exec(&[get("k")]).await;
    assert!(
        r.is_err() || matches!(&r.as_ref().unwrap()[0], Reply::Error(_)),
        "{r:?}"
    );
}
