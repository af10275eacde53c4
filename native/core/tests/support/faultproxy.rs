//! Fault-injecting TCP proxy placed between two DCs to take a link down and
//! bring it back without touching either side: `cut` closes every connection
//! and refuses new ones (as a dead DC would), `stall` holds bytes while
//! keeping sockets open (as a hung one would), `set_delay` slows each chunk.
//! Everything runs on the test's tokio runtime and stops when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    cut: AtomicBool,
    stalled: watch::Sender<bool>,
    delay: Mutex<Duration>,
    accepted: AtomicUsize,
    refused: AtomicUsize,
    active: AtomicUsize,
    /// The first bytes each connection carried, per direction (client →
    /// upstream, upstream → client), in the order connections were made:
    /// tests read handshakes from them.
    first_bytes: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    // Aborting a connection's task drops both of its sockets, which is how
    // `cut` and `Drop` close live connections.
    connections: Mutex<Vec<AbortHandle>>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1:0 and forwards each accepted connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            cut: AtomicBool::new(false),
            stalled: watch::channel(false).0,
            delay: Mutex::new(Duration::ZERO),
            accepted: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            first_bytes: Mutex::new(Vec::new()),
            connections: Mutex::new(Vec::new()),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        FaultProxy {
            addr,
            shared,
            accept_task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every current connection; new ones are accepted and closed at once.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.close_all();
    }

    /// Accepts and forwards new connections again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// `true`: stop forwarding bytes (connections stay open); `false`: resume.
    pub fn stall(&self, on: bool) {
        self.shared.stalled.send_replace(on);
    }

    /// Delay applied to every forwarded chunk from now on.
    pub fn set_delay(&self, delay: Duration) {
        *self.shared.delay.lock().unwrap() = delay;
    }

    /// Where new connections go; existing ones keep their upstream.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = upstream;
    }

    /// Connections accepted and forwarded (refused ones while cut not included).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections accepted and closed at once because the proxy was cut.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// The first bytes of each connection forwarded so far, per direction:
    /// (what the client sent, what the upstream answered), each up to
    /// 4 KiB.
    pub fn first_bytes(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.shared.first_bytes.lock().unwrap().clone()
    }

    /// Connections currently being forwarded.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.shared.close_all();
    }
}

impl Shared {
    fn close_all(&self) {
        for conn in self.connections.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    fn delay(&self) -> Duration {
        *self.delay.lock().unwrap()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if shared.cut.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let guard = ActiveGuard::new(shared.clone());
        let task = tokio::spawn(forward(client, shared.clone(), guard));
        let mut conns = shared.connections.lock().unwrap();
        conns.retain(|c| !c.is_finished());
        conns.push(task.abort_handle());
        // A `cut` between the check above and the push would have missed
        // this connection; under the lock the flag is settled.
        if shared.cut.load(Ordering::SeqCst) {
            task.abort();
        }
    }
}

/// Counts a connection as active for as long as its task lives, including
/// when the task is aborted by `cut`.
struct ActiveGuard(Arc<Shared>);

impl ActiveGuard {
    fn new(shared: Arc<Shared>) -> ActiveGuard {
        shared.active.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(shared)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn forward(client: TcpStream, shared: Arc<Shared>, _guard: ActiveGuard) {
    let upstream_addr = *shared.upstream.lock().unwrap();
    let Ok(upstream) = TcpStream::connect(upstream_addr).await else {
        return;
    };
    let (client_r, client_w) = client.into_split();
    let (up_r, up_w) = upstream.into_split();
    let index = {
        let mut first = shared.first_bytes.lock().unwrap();
        first.push((Vec::new(), Vec::new()));
        first.len() - 1
    };
    // An error in either direction ends both (dropping the sockets); a clean
    // EOF is passed on as a half-close so the other direction can finish.
    let _ = tokio::try_join!(
        pump(client_r, up_w, &shared, (index, true)),
        pump(up_r, client_w, &shared, (index, false))
    );
}

/// Bytes of each direction kept in `first_bytes`.
const FIRST_BYTES: usize = 4096;

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    (index, upstream): (usize, bool),
) -> std::io::Result<()> {
    let mut stalled = shared.stalled.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        {
            let mut first = shared.first_bytes.lock().unwrap();
            let kept = if upstream {
                &mut first[index].0
            } else {
                &mut first[index].1
            };
            let room = FIRST_BYTES.saturating_sub(kept.len()).min(n);
            kept.extend_from_slice(&buf[..room]);
        }
        if stalled.wait_for(|s| !*s).await.is_err() {
            return Ok(());
        }
        let delay = shared.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        to.write_all(&buf[..n]).await?;
    }
}
