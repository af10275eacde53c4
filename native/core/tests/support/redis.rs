//! Starts real `redis-server` and `nutcracker` (twemproxy) processes on free
//! ports for the store tests, and a raw RESP client to look at what was
//! written without going through the code under test. Every process is
//! killed when its guard is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_DEADLINE: Duration = Duration::from_secs(10);

/// A reply as read by [`RawClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Vec<Resp>),
}

impl Resp {
    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(i) => *i,
            other => panic!("expected an integer, got {other:?}"),
        }
    }
    pub fn bulk(&self) -> Option<String> {
        match self {
            Resp::Bulk(b) => b.clone(),
            other => panic!("expected a bulk string, got {other:?}"),
        }
    }
    pub fn strings(&self) -> Vec<String> {
        match self {
            Resp::Array(items) => items.iter().filter_map(|i| i.bulk()).collect(),
            other => panic!("expected an array, got {other:?}"),
        }
    }
}

/// Blocking RESP2 client, independent of the `redis` crate.
pub struct RawClient {
    reader: BufReader<TcpStream>,
}

impl RawClient {
    pub fn connect(port: u16) -> std::io::Result<Self> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(RawClient {
            reader: BufReader::new(s),
        })
    }

    pub fn cmd(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.reader.get_mut().write_all(out.as_bytes())?;
        self.read()
    }

    /// The next reply without sending anything: what a `MONITOR` or
    /// `SUBSCRIBE` connection receives.
    pub fn next_reply(&mut self) -> std::io::Result<Resp> {
        self.read()
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut l = String::new();
        if self.reader.read_line(&mut l)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(l.trim_end_matches("\r\n").to_owned())
    }

    fn read(&mut self) -> std::io::Result<Resp> {
        let l = self.line()?;
        let (kind, rest) = l.split_at(1);
        let bad = |_| std::io::Error::other(format!("bad RESP line {l:?}"));
        Ok(match kind {
            "+" => Resp::Simple(rest.into()),
            "-" => Resp::Error(rest.into()),
            ":" => Resp::Int(rest.parse().map_err(bad)?),
            "$" => {
                let n: i64 = rest.parse().map_err(bad)?;
                if n < 0 {
                    Resp::Bulk(None)
                } else {
                    let mut buf = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut buf)?;
                    buf.truncate(n as usize);
                    Resp::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
                }
            }
            "*" => {
                let n: i64 = rest.parse().map_err(bad)?;
                let mut items = Vec::new();
                for _ in 0..n.max(0) {
                    items.push(self.read()?);
                }
                Resp::Array(items)
            }
            _ => return Err(std::io::Error::other(format!("bad RESP line {l:?}"))),
        })
    }
}

fn wait_for_port(port: u16, what: &str, probe: impl Fn(u16) -> bool) {
    let end = Instant::now() + START_DEADLINE;
    while Instant::now() < end {
        if probe(port) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} on port {port} did not come up within {START_DEADLINE:?}");
}

fn answers_ping(port: u16) -> bool {
    RawClient::connect(port)
        .and_then(|mut c| c.cmd(&["PING"]))
        .is_ok_and(|r| r == Resp::Simple("PONG".into()))
}

/// A `redis-server` on a free port, without persistence.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut s = RedisServer {
            port: super::free_port(),
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed?)");
        self.child = Some(child);
        wait_for_port(self.port, "redis-server", answers_ping);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> RawClient {
        RawClient::connect(self.port).expect("connect to redis-server")
    }

    /// Kills the server (all data is lost: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A paused server would not die of SIGKILL any later, but make
            // sure it is not left stopped either.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections are still accepted by the
    /// kernel, nothing is ever answered, as with a stalled Redis.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a [`RedisServer::pause`]d server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// Starts again, empty, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `nutcracker` in front of some redis servers, with `hash_tag: "{}"`.
pub struct Nutcracker {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Nutcracker {
    pub fn start(servers: &[&RedisServer]) -> Self {
        let port = super::free_port();
        let stats = super::free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("nutcracker.yml");
        let mut yml = format!(
            "gd:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  hash_tag: \"{{}}\"\n  \
             distribution: ketama\n  redis: true\n  auto_eject_hosts: false\n  \
             timeout: 2000\n  preconnect: true\n  servers:\n"
        );
        for s in servers {
            yml.push_str(&format!("   - 127.0.0.1:{}:1\n", s.port()));
        }
        std::fs::write(&config, yml).expect("write nutcracker config");
        let child = Command::new("nutcracker")
            .arg("-c")
            .arg(&config)
            .args(["-s", &stats.to_string(), "-a", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nutcracker (is it installed?)");
        // nutcracker answers PING itself; a GET proves the backends are wired.
        wait_for_port(port, "nutcracker", |p| {
            RawClient::connect(p)
                .and_then(|mut c| c.cmd(&["GET", "probe"]))
                .is_ok_and(|r| r == Resp::Bulk(None))
        });
        Nutcracker {
            port,
            child,
            _dir: dir,
            config,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> RawClient {
        RawClient::connect(self.port).expect("connect to nutcracker")
    }
}

impl Drop for Nutcracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
