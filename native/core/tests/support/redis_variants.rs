//! `redis-server` started the ways the start-time check must tell apart:
//! with TLS (certificates generated for the test), and as Redis Cluster
//! nodes. Each process is killed when its guard is dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::certs::TestCa;
use super::redis::{RawClient, Resp};

const START_DEADLINE: Duration = Duration::from_secs(10);

/// One `redis-server` with the given arguments; no persistence, its log in
/// `dir/redis.log`.
pub struct RedisProcess {
    child: Child,
    log: PathBuf,
}

impl RedisProcess {
    /// Starts it and waits until `port` accepts connections; `Err` with the
    /// end of its log if it exits first.
    pub fn start(dir: &std::path::Path, port: u16, args: &[String]) -> Result<Self, String> {
        let log = dir.join(format!("redis-{port}.log"));
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &dir.display().to_string()])
            .args(["--logfile", &log.display().to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server (is it installed?): {e}"))?;
        let mut p = RedisProcess { child, log };
        let end = Instant::now() + START_DEADLINE;
        while Instant::now() < end {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("redis-server exited ({status}): {}", p.log_tail()));
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(p);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "redis-server did not listen on {port}: {}",
            p.log_tail()
        ))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` with a plain port and a TLS port, its certificate (for
/// DNS `redis.internal` and IP 127.0.0.1) issued by a test CA, client
/// certificates checked against the same CA.
pub struct TlsRedis {
    pub plain_port: u16,
    pub tls_port: u16,
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
    _process: RedisProcess,
}

impl TlsRedis {
    /// `auth_clients`: redis' `tls-auth-clients` (`no`, `optional`, `yes`).
    /// `None`, after printing why, when this `redis-server` has no TLS.
    pub fn start(auth_clients: &str) -> Option<TlsRedis> {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new("redis test CA");
        let server = ca.issue(&["redis.internal"]);
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write a certificate file");
            path.display().to_string()
        };
        let cert = write("server.crt", &server.cert_pem);
        let key = write("server.key", &server.key_pem);
        let ca_file = write("ca.crt", &ca.cert_pem());
        let plain_port = super::free_port();
        let tls_port = super::free_port();
        let args: Vec<String> = [
            "--port",
            &plain_port.to_string(),
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca_file,
            "--tls-auth-clients",
            auth_clients,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match RedisProcess::start(dir.path(), tls_port, &args) {
            Ok(process) => Some(TlsRedis {
                plain_port,
                tls_port,
                ca,
                dir,
                _process: process,
            }),
            Err(why) => {
                eprintln!(
                    "SKIPPED: this redis-server cannot serve TLS (`--tls-port` failed): {why}"
                );
                None
            }
        }
    }

    /// The test CA's certificate, as a file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A client certificate and key issued by the test CA, as files.
    pub fn client_files(&self, name: &str) -> (PathBuf, PathBuf) {
        let issued = self.ca.issue(&[name]);
        let cert = self.dir.path().join(format!("{name}.crt"));
        let key = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert, &issued.cert_pem).expect("write client cert");
        std::fs::write(&key, &issued.key_pem).expect("write client key");
        (cert, key)
    }

    /// A raw client on the plain port, to look at what was written.
    pub fn client(&self) -> RawClient {
        RawClient::connect(self.plain_port).expect("connect to the plain port")
    }
}

/// Two Redis Cluster masters sharing the slots half and half, met and
/// agreeing that the cluster is up.
pub struct TwoNodeCluster {
    pub ports: [u16; 2],
    _dir: tempfile::TempDir,
    _nodes: Vec<RedisProcess>,
}

impl TwoNodeCluster {
    pub fn start() -> TwoNodeCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = [super::free_port(), super::free_port()];
        // Explicit bus ports: the default, port + 10000, may not exist.
        let bus = [super::free_port(), super::free_port()];
        let mut nodes = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus[i].to_string(),
                "--cluster-config-file",
                &format!("nodes-{i}.conf"),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            nodes.push(RedisProcess::start(dir.path(), *port, &args).expect("cluster node"));
        }
        let mut a = RawClient::connect(ports[0]).expect("node a");
        let mut b = RawClient::connect(ports[1]).expect("node b");
        a.cmd(&["CLUSTER", "ADDSLOTSRANGE", "0", "8191"]).unwrap();
        b.cmd(&["CLUSTER", "ADDSLOTSRANGE", "8192", "16383"])
            .unwrap();
        let meet = [
            "CLUSTER",
            "MEET",
            "127.0.0.1",
            &ports[1].to_string(),
            &bus[1].to_string(),
        ];
        assert_eq!(a.cmd(&meet).unwrap(), Resp::Simple("OK".into()));
        let up = super::wait_for(START_DEADLINE, || {
            [&mut a, &mut b].into_iter().all(|c| {
                matches!(c.cmd(&["CLUSTER", "INFO"]), Ok(Resp::Bulk(Some(info)))
                    if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:2"))
            })
        });
        assert!(up, "the two cluster nodes never agreed the cluster is up");
        TwoNodeCluster {
            ports,
            _dir: dir,
            _nodes: nodes,
        }
    }
}
