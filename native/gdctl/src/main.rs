//! `gdctl`: the operator's tool for a global_distrib session table.
//!
//! It reads the store through the core's own code (`gd_core::store`: the
//! same backend, key layout and proxy-safe dialect as the runtime, so it
//! works through twemproxy) and never writes, except `evict-node`, which
//! says so and asks first. Every subcommand prints text for people, or one
//! JSON document with `--json` for scripts. Exit status: 0 done, 1 failed
//! (the message on stderr), 2 bad usage.

mod commands;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gd_core::config::{BackendKind, Config, ConfigError};
use gd_core::store::{backend_for, Store};
use serde_json::json;

/// Reads a global_distrib session table (Redis, directly or through
/// twemproxy): datacenters and their nodes, endpoints, where a JID is,
/// domains; checks a configuration file; evicts a dead node.
#[derive(Parser, Debug)]
#[command(name = "gdctl", version = gd_core::VERSION)]
struct Cli {
    /// The store: `redis://[[user]:password@]host[:port][/db]`.
    #[arg(long, value_name = "URL", global = true, conflicts_with_all = ["cluster", "config"])]
    redis: Option<String>,
    /// Redis Cluster seed nodes, comma-separated URLs. Read as the
    /// runtime's `redis.cluster` option: a build without the cluster
    /// backend says so.
    #[arg(
        long,
        value_name = "URL,...",
        global = true,
        value_delimiter = ',',
        conflicts_with = "config"
    )]
    cluster: Option<Vec<String>>,
    /// Take the store (its `redis` section) and `expire_after` from a
    /// runtime configuration file (TOML, or JSON for a `.json` file).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<String>,
    /// One JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds after which a node that has not refreshed counts as dead
    /// (the runtime's `redis.expire_after`; default 120, or the config's).
    #[arg(long, value_name = "SECS", global = true)]
    expire_after: Option<u64>,
    /// Bound on one store call, in milliseconds.
    #[arg(long, value_name = "MS", global = true, default_value_t = 1000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every datacenter (`hosts`) with its nodes and the age of their last
    /// refresh; nodes older than expire_after are marked dead.
    Hosts,
    /// The endpoints each node of datacenter DC advertises.
    Endpoints {
        /// The datacenter's local_host, e.g. dc1.example.com.
        dc: String,
    },
    /// Where a JID is: its full and bare entries, their TTL, the owner DC.
    Where {
        /// A full or bare JID, or a domain.
        jid: String,
    },
    /// The subdomains (components, MUC...) of every datacenter's nodes,
    /// with the DC owning each.
    Domains {
        /// Only the public ones (what disco lists).
        #[arg(long)]
        public: bool,
    },
    /// Reads a runtime configuration file as start does; exit status 1
    /// with the error (option path and problem) when it is invalid.
    CheckConfig {
        /// TOML (a whole mongooseim.toml or the module's keys), or JSON
        /// for a `.json` file.
        file: String,
    },
    /// WRITES: removes NODE's field from `<DC>#{nodes}` and deletes its
    /// per-node sets (domains, public domains, endpoints). Asks first on a
    /// terminal.
    EvictNode {
        dc: String,
        node: String,
        /// Do not ask (required when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
    },
}

/// A failure to report: the message, and for `check-config` the option.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub json: serde_json::Value,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Failure {
        let message = message.into();
        Failure {
            json: json!({ "error": message }),
            message,
        }
    }
}

impl From<gd_core::store::StoreError> for Failure {
    fn from(e: gd_core::store::StoreError) -> Failure {
        Failure::new(e.to_string())
    }
}

/// What a subcommand produced: JSON for scripts, text for people.
pub struct Output {
    pub json: serde_json::Value,
    pub text: String,
}

/// The store settings gdctl was given, read like a runtime's.
struct Target {
    config: Config,
}

const DEFAULT_EXPIRE_AFTER: u64 = 120;

impl Target {
    fn from_cli(cli: &Cli) -> Result<Target, Failure> {
        if let Some(path) = &cli.config {
            let config =
                read_config_file(path).map_err(|e| Failure::new(format!("{path}: {e}")))?;
            if config.backend != BackendKind::Redis {
                return Err(Failure::new(format!(
                    "{path}: the runtime uses the embedded store, which lives inside its process: nothing to read from outside"
                )));
            }
            return Ok(Target { config });
        }
        let redis = match (&cli.redis, &cli.cluster) {
            (Some(url), _) => json!({ "url": url }),
            (None, Some(seeds)) => json!({ "cluster": seeds }),
            (None, None) => {
                return Err(Failure::new(
                    "no store given: pass --redis URL, --cluster URL,... or --config FILE",
                ))
            }
        };
        let doc = json!({
            "global_host": "gdctl.invalid",
            "local_host": "gdctl.local.invalid",
            "backend": "redis",
            "redis": redis,
        });
        let config = Config::from_json_value(doc).map_err(|e| store_option_error(&e))?;
        Ok(Target { config })
    }

    fn store(&self, timeout: Duration) -> Result<Store, Failure> {
        let mut config = self.config.clone();
        config.redis.timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        Ok(Store::new(backend_for(&config)?))
    }
}

/// A store flag the runtime's configuration reader refused (`--cluster`
/// goes through its `redis.cluster` option, `--redis` through `redis.url`).
fn store_option_error(e: &ConfigError) -> Failure {
    Failure::new(format!("store settings: {e}"))
}

/// A runtime configuration file, read as `start` reads configuration text.
pub fn read_config_file(path: &str) -> Result<Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let json = path.ends_with(".json") || text.trim_start().starts_with('{');
    let config = if json {
        Config::from_json_str(&text)
    } else {
        Config::from_toml_str(&text)
    };
    config.map_err(|e| e.to_string())
}

fn run(cli: &Cli) -> Result<Output, Failure> {
    if let Command::CheckConfig { file } = &cli.command {
        return commands::check_config(file);
    }
    let target = Target::from_cli(cli)?;
    let expire_after = cli
        .expire_after
        .or(cli
            .config
            .as_ref()
            .map(|_| target.config.redis.expire_after))
        .unwrap_or(DEFAULT_EXPIRE_AFTER);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the I/O runtime: {e}")))?;
    // Dials nothing yet: the first command does, on the runtime below.
    let store = target.store(Duration::from_millis(cli.timeout_ms))?;
    rt.block_on(async {
        match &cli.command {
            Command::Hosts => commands::hosts(&store, expire_after).await,
            Command::Endpoints { dc } => commands::endpoints(&store, dc).await,
            Command::Where { jid } => commands::where_is(&store, jid, expire_after).await,
            Command::Domains { public } => commands::domains(&store, *public).await,
            Command::EvictNode { dc, node, yes } => {
                commands::evict_node(&store, dc, node, expire_after, confirm(*yes)).await
            }
            Command::CheckConfig { .. } => Err(Failure::new("unreachable")),
        }
    })
}

/// How `evict-node` gets its go-ahead.
pub enum Confirm {
    Given,
    Ask,
    Refused,
}

fn confirm(yes: bool) -> Confirm {
    if yes {
        Confirm::Given
    } else if std::io::stdin().is_terminal() {
        Confirm::Ask
    } else {
        Confirm::Refused
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(out) => {
            if cli.json {
                println!("{}", out.json);
            } else {
                print!("{}", out.text);
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            if cli.json {
                println!("{}", f.json);
            }
            eprintln!("gdctl: {}", f.message);
            ExitCode::FAILURE
        }
    }
}
