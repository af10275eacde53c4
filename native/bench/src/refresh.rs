//! B7: one node's periodic refresh of its owned sessions against a
//! `redis-server` the bench starts on a free port, directly and through
//! `nutcracker` (twemproxy, `hash_tag: "{}"`) in front of it, and against a
//! Redis Cluster of three masters (`redis.cluster`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gd_core::config::{Config, RedisConfig};
use gd_core::store::refresher::{OwnedState, RefreshStats, Refresher};
use gd_core::store::{Backend, NodeId, RedisBackend, RedisClusterBackend, Store};

use crate::dcs::{DC1, GLOBAL};
use crate::BenchError;

/// A child process killed when dropped (redis-server, nutcracker).
pub struct Process {
    child: Child,
    pub port: u16,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, BenchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// One RESP command on a fresh connection; the raw reply text.
pub(crate) fn resp(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(out.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    // Enough for the short replies read here (PING, GET, INFO stats).
    loop {
        let k = s.read(&mut buf[got..])?;
        got += k;
        let text = String::from_utf8_lossy(&buf[..got]);
        if k == 0 || text.ends_with("\r\n") && !text.starts_with('$') || bulk_done(&text) {
            return Ok(text.into_owned());
        }
    }
}

/// Whether a `$len\r\n...\r\n` bulk reply is complete.
fn bulk_done(text: &str) -> bool {
    let Some(rest) = text.strip_prefix('$') else {
        return false;
    };
    let Some((len, body)) = rest.split_once("\r\n") else {
        return false;
    };
    match len.parse::<i64>() {
        Ok(n) if n < 0 => true,
        Ok(n) => body.len() >= n as usize + 2,
        Err(_) => true,
    }
}

fn wait_until_up(port: u16, what: &str, probe: &[&str], want: &str) -> Result<(), BenchError> {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if resp(port, probe).is_ok_and(|r| r.starts_with(want)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BenchError::msg(format!(
        "{what} on port {port} did not come up"
    )))
}

pub fn start_redis() -> Result<Process, BenchError> {
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::msg(format!("cannot start redis-server: {e}")))?;
    let p = Process {
        child,
        port,
        _dir: None,
    };
    wait_until_up(port, "redis-server", &["PING"], "+PONG")?;
    Ok(p)
}

pub fn start_nutcracker(redis_port: u16) -> Result<Process, BenchError> {
    let port = free_port()?;
    let stats = free_port()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("nutcracker.yml");
    let yml = format!(
        "gd:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  hash_tag: \"{{}}\"\n  \
         distribution: ketama\n  redis: true\n  auto_eject_hosts: false\n  \
         timeout: 5000\n  preconnect: true\n  servers:\n   - 127.0.0.1:{redis_port}:1\n"
    );
    std::fs::write(&config, yml)?;
    let child = Command::new("nutcracker")
        .arg("-c")
        .arg(&config)
        .args(["-s", &stats.to_string(), "-a", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::msg(format!("cannot start nutcracker: {e}")))?;
    let p = Process {
        child,
        port,
        _dir: Some(dir),
    };
    wait_until_up(port, "nutcracker", &["GET", "probe"], "$-1")?;
    Ok(p)
}

/// A Redis Cluster of three masters on free ports (all killed when dropped).
pub struct Cluster {
    nodes: Vec<Process>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Seed URLs for `redis.cluster`.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }
}

/// Three `redis-server --cluster-enabled yes` joined by `redis-cli --cluster
/// create` (no replicas), each answering `cluster_state:ok`.
pub fn start_cluster() -> Result<Cluster, BenchError> {
    let dir = tempfile::tempdir()?;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file"])
            .arg(dir.path().join(format!("nodes-{port}.conf")))
            .args(["--cluster-node-timeout", "2000"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::msg(format!("cannot start redis-server: {e}")))?;
        nodes.push(Process {
            child,
            port,
            _dir: None,
        });
        wait_until_up(port, "redis-server (cluster)", &["PING"], "+PONG")?;
    }
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BenchError::msg(format!("cannot run redis-cli --cluster create: {e}")))?;
    if !out.status.success() {
        return Err(BenchError::msg(format!(
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        )));
    }
    for n in &nodes {
        wait_until_up(n.port, "cluster", &["CLUSTER", "INFO"], "$")?;
        let end = Instant::now() + Duration::from_secs(20);
        while !resp(n.port, &["CLUSTER", "INFO"]).is_ok_and(|i| i.contains("cluster_state:ok")) {
            if Instant::now() > end {
                return Err(BenchError::msg(
                    "the Redis Cluster never reached cluster_state:ok",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(Cluster { nodes, _dir: dir })
}

/// A refresher for `state` writing to the Redis Cluster `cluster`.
pub fn cluster_refresher(
    state: &Arc<OwnedState>,
    cluster: &Cluster,
    refresh_after: Duration,
) -> Result<Refresher, BenchError> {
    let mut redis: RedisConfig = Config::minimal(GLOBAL, DC1)?.redis;
    redis.cluster = cluster.seeds();
    let backend = RedisClusterBackend::with_timeout(&redis, Duration::from_secs(30))?;
    bench_refresher(Arc::new(backend), state, refresh_after)
}

/// The node the B7 refreshers write as, on `backend`.
fn bench_refresher(
    backend: Arc<dyn Backend>,
    state: &Arc<OwnedState>,
    refresh_after: Duration,
) -> Result<Refresher, BenchError> {
    Ok(Refresher::new(
        Store::new(backend),
        state.clone(),
        NodeId::new(DC1, "node1@bench")?,
        Duration::from_secs(3600),
        refresh_after,
    ))
}

/// `n` sessions, one resource each: 2n keys (full and bare JID).
pub fn owned_sessions(n: u64) -> Arc<OwnedState> {
    let state = Arc::new(OwnedState::new());
    for i in 0..n {
        let bare = format!("user{i}@{GLOBAL}");
        state.session_opened(&format!("{bare}/res"), &bare);
    }
    state
}

/// A refresher for `state` writing through `port`.
pub fn refresher(
    state: &Arc<OwnedState>,
    port: u16,
    refresh_after: Duration,
) -> Result<Refresher, BenchError> {
    let mut redis: RedisConfig = Config::minimal(GLOBAL, DC1)?.redis;
    redis.url = Some(format!("redis://127.0.0.1:{port}"));
    let backend = RedisBackend::with_timeout(&redis, Duration::from_secs(30))?;
    bench_refresher(Arc::new(backend), state, refresh_after)
}

/// What Redis alone does with the refresh script: `redis-benchmark`
/// pipelining `n` EVALs of it 1000 at a time over random keys (ops/s).
/// This is the ceiling of any refresh that must compare-and-set each key
/// (SPEC 3), whatever the client.
pub fn eval_ceiling(port: u16, n: u64) -> Result<f64, BenchError> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
        .args(["-n", &n.to_string(), "-P", "1000", "-r", "1000000"])
        .args([
            "eval",
            gd_core::store::redis::REFRESH_IF_OURS_LUA,
            "1",
            "key:__rand_int__",
        ])
        .args([DC1, "120"])
        .output()
        .map_err(|e| BenchError::msg(format!("cannot run redis-benchmark: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // With -q the last segment (after the progress lines' \r) reads
    // "<command>: 286041.19 requests per second, p50=…".
    text.rsplit('\r')
        .find_map(|seg| {
            let (before, _) = seg.split_once(" requests per second")?;
            before.rsplit(' ').next()?.trim().parse::<f64>().ok()
        })
        .ok_or_else(|| BenchError::msg(format!("redis-benchmark printed {text:?}")))
}

/// One unpaced pass: (wall seconds, Redis ops/s).
pub fn unpaced(rt: &tokio::runtime::Runtime, r: &Refresher) -> Result<(f64, f64), BenchError> {
    let stats = rt.block_on(r.run_once(false));
    check(&stats, r)?;
    let secs = stats.elapsed.as_secs_f64();
    Ok((secs, (stats.written + stats.foreign) as f64 / secs))
}

fn check(stats: &RefreshStats, r: &Refresher) -> Result<(), BenchError> {
    let keys = r.state().session_key_count();
    if stats.errors > 0 || stats.written + stats.foreign < keys {
        return Err(BenchError::msg(format!(
            "B7: refresh incomplete: {stats:?} for {keys} session keys"
        )));
    }
    Ok(())
}

/// What one paced pass did.
pub struct Paced {
    /// Pass duration ÷ `refresh_after`.
    pub share_of_period: f64,
    /// Busiest tenth of the pass ÷ an average tenth, by commands the server
    /// processed (1.0: perfectly even).
    pub peak_to_mean: f64,
}

/// One paced pass, sampling the server's command counter meanwhile.
pub fn paced(
    rt: &tokio::runtime::Runtime,
    r: &Refresher,
    redis_port: u16,
    refresh_after: Duration,
) -> Result<Paced, BenchError> {
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut samples = Vec::new();
            while !done.load(Ordering::Acquire) {
                if let Some(c) = commands_processed(redis_port) {
                    samples.push((t0.elapsed().as_secs_f64(), c));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        })
    };
    let stats = rt.block_on(r.run_once(true));
    done.store(true, Ordering::Release);
    let samples = sampler
        .join()
        .map_err(|_| BenchError::msg("B7: sampler thread panicked"))?;
    check(&stats, r)?;
    let secs = stats.elapsed.as_secs_f64();
    Ok(Paced {
        share_of_period: secs / refresh_after.as_secs_f64(),
        peak_to_mean: peak_to_mean(&samples, secs, 10),
    })
}

fn commands_processed(port: u16) -> Option<f64> {
    let info = resp(port, &["INFO", "stats"]).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Splits `[0, span]` into `slices` and compares the busiest slice with the
/// mean, reading the counter at each boundary from the nearest sample.
fn peak_to_mean(samples: &[(f64, f64)], span: f64, slices: usize) -> f64 {
    if samples.len() < 2 || span <= 0.0 {
        return f64::NAN;
    }
    let at = |t: f64| {
        samples
            .iter()
            .min_by(|a, b| (a.0 - t).abs().total_cmp(&(b.0 - t).abs()))
            .map_or(0.0, |s| s.1)
    };
    let per: Vec<f64> = (0..slices)
        .map(|i| {
            let a = span * i as f64 / slices as f64;
            let b = span * (i + 1) as f64 / slices as f64;
            at(b) - at(a)
        })
        .collect();
    let mean = per.iter().sum::<f64>() / slices as f64;
    let peak = per.iter().copied().fold(0.0, f64::max);
    if mean > 0.0 {
        peak / mean
    } else {
        f64::NAN
    }
}
