//! The fault proxy itself, against a real echo server on loopback: it must
//! forward faithfully when healthy and fail exactly as told (cut, stall,
//! delay), or the link-failure scenarios built on it prove nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::faultproxy::FaultProxy;
use support::wait_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(10);

/// An upstream that prefixes every chunk it receives with `tag`, so a test
/// can tell which upstream answered.
async fn tagged_echo(tag: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let mut reply = tag.to_vec();
                            reply.extend_from_slice(&buf[..n]);
                            if sock.write_all(&reply).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn read_n(sock: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    timeout(DEADLINE, sock.read_exact(&mut buf))
        .await
        .expect("data within the deadline")
        .unwrap();
    buf
}

async fn round_trip(sock: &mut TcpStream, msg: &[u8], tag: &[u8]) {
    sock.write_all(msg).await.unwrap();
    let got = read_n(sock, tag.len() + msg.len()).await;
    assert_eq!(got, [tag, msg].concat());
}

/// True once the peer has closed (EOF or reset).
async fn closed(sock: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match timeout(DEADLINE, sock.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test]
async fn forwards_both_ways_and_counts_connections() {
    let proxy = FaultProxy::start(tagged_echo(b"A:").await).await;
    let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut b = TcpStream::connect(proxy.addr()).await.unwrap();

    round_trip(&mut a, b"hello", b"A:").await;
    round_trip(&mut b, b"world", b"A:").await;
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(proxy.active(), 2);

    drop(a);
    assert!(wait_until(DEADLINE, || proxy.active() == 1).await);
}

#[tokio::test]
async fn cut_closes_live_connections_and_refuses_new_ones_until_restored() {
    let proxy = FaultProxy::start(tagged_echo(b"A:").await).await;
    let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut live, b"before", b"A:").await;

    proxy.cut();
    assert!(closed(&mut live).await, "live connection closed by cut");
    assert!(wait_until(DEADLINE, || proxy.active() == 0).await);

    let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
    let _ = refused.write_all(b"anyone?").await;
    assert!(
        closed(&mut refused).await,
        "new connection closed while cut"
    );
    assert_eq!(proxy.refused(), 1);
    assert_eq!(proxy.accepted(), 1);

    proxy.restore();
    let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut again, b"after", b"A:").await;
    assert_eq!(proxy.accepted(), 2);
}

#[tokio::test]
async fn stall_holds_data_until_released() {
    let proxy = FaultProxy::start(tagged_echo(b"A:").await).await;
    let mut sock = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut sock, b"warm", b"A:").await;

    proxy.stall(true);
    sock.write_all(b"held").await.unwrap();
    // Being slow can only make this pass more surely if the stall works;
    // a proxy that ignores the stall answers well inside this window.
    let mut buf = [0u8; 16];
    let early = timeout(Duration::from_millis(300), sock.read(&mut buf)).await;
    assert!(early.is_err(), "nothing may pass while stalled: {early:?}");
    assert_eq!(proxy.active(), 1, "stall keeps the connection open");

    proxy.stall(false);
    assert_eq!(read_n(&mut sock, 6).await, b"A:held");
}

#[tokio::test]
async fn delay_applies_to_each_forwarded_chunk() {
    let proxy = FaultProxy::start(tagged_echo(b"A:").await).await;
    let mut sock = TcpStream::connect(proxy.addr()).await.unwrap();
    let delay = Duration::from_millis(150);

    proxy.set_delay(delay);
    let start = Instant::now();
    round_trip(&mut sock, b"slow", b"A:").await;
    // A lower bound only: the request and the reply are each held `delay`,
    // and no machine is fast enough to beat a sleep.
    assert!(start.elapsed() >= delay * 2, "{:?}", start.elapsed());

    proxy.set_delay(Duration::ZERO);
    round_trip(&mut sock, b"fast", b"A:").await;
}

#[tokio::test]
async fn set_upstream_redirects_new_connections_only() {
    let proxy = FaultProxy::start(tagged_echo(b"A:").await).await;
    let mut old = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut old, b"x", b"A:").await;

    proxy.set_upstream(tagged_echo(b"B:").await);
    let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut new, b"y", b"B:").await;
    round_trip(&mut old, b"z", b"A:").await;
}

#[tokio::test]
async fn drop_closes_connections() {
    let proxy = FaultProxy::start(tagged_echo(b"A:").await).await;
    let mut sock = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut sock, b"x", b"A:").await;

    drop(proxy);
    assert!(closed(&mut sock).await);
}
