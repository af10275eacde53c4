//! The benches that run in a BEAM: B4 (MongooseIM's transport pattern in
//! pure Erlang, `bench/erlang/gd_bench_b4.erl`) and B5/B6 (our NIF driven
//! from Erlang, `bench/erlang/gd_bench_nif.erl`).
//!
//! Each module is compiled with `erlc` into a temporary directory and run
//! once per repetition as `erl -noshell -run <module> main <args>`. It
//! prints one `GD_ROW\t<key>\t<number>` line per figure on stdout, or
//! `GD_ERROR\t<reason>` and a non-zero exit status. A run that outlives its
//! deadline is killed and reported as failed.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::BenchError;

/// The compiled bench modules and where the global_distrib app lives.
pub struct Erl {
    dir: tempfile::TempDir,
    app_ebin: PathBuf,
}

/// Figures of one run, by key.
pub type Figures = HashMap<String, f64>;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Erl {
    /// Compiles the bench modules. The global_distrib app must have been
    /// compiled already (`make bench` runs `rebar3 compile` first, which
    /// also builds the NIF in release mode).
    pub fn prepare() -> Result<Erl, BenchError> {
        let root = repo_root();
        // GD_BENCH_APP_EBIN points the Erlang rows at another build of the
        // app (its priv/ beside it holds the NIF): an A/B of the NIF alone.
        let app_ebin = std::env::var_os("GD_BENCH_APP_EBIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("_build/default/lib/global_distrib/ebin"));
        if !app_ebin.join("global_distrib.beam").exists() {
            return Err(BenchError::msg(format!(
                "{} has no global_distrib.beam: run `rebar3 compile` first (make bench does)",
                app_ebin.display()
            )));
        }
        let dir = tempfile::tempdir()?;
        for module in ["gd_bench_b4", "gd_bench_nif"] {
            let src = root.join("bench/erlang").join(format!("{module}.erl"));
            let out = Command::new("erlc")
                .arg("+warnings_as_errors")
                .arg("-o")
                .arg(dir.path())
                .arg(&src)
                .output()
                .map_err(|e| BenchError::msg(format!("cannot run erlc: {e}")))?;
            if !out.status.success() {
                return Err(BenchError::msg(format!(
                    "erlc {}: {}{}",
                    src.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        Ok(Erl { dir, app_ebin })
    }

    /// One run of `module:main(args)`; `distributed` names the node so that
    /// it can start peers.
    pub fn run(
        &self,
        module: &str,
        distributed: bool,
        args: &[String],
        deadline: Duration,
    ) -> Result<Figures, BenchError> {
        let mut cmd = Command::new("erl");
        cmd.arg("-noshell");
        if distributed {
            cmd.args(["-sname", &format!("gd_bench_{}", std::process::id())]);
        }
        cmd.arg("-pa")
            .arg(self.dir.path())
            .arg("-pa")
            .arg(&self.app_ebin)
            .args(["-run", module, "main"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|e| BenchError::msg(format!("cannot run erl: {e}")))?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::msg("erl: no stdout"))?;
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BenchError::msg(format!(
                    "{module} still running after {} s: killed",
                    deadline.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let text = reader
            .join()
            .map_err(|_| BenchError::msg("erl stdout reader panicked"))?;
        parse(module, &text, status.success())
    }
}

/// The figures of a run's stdout; any `GD_ERROR` line, a failed exit or a
/// malformed row fails the run.
fn parse(module: &str, text: &str, success: bool) -> Result<Figures, BenchError> {
    let mut figures = Figures::new();
    for line in text.lines() {
        let mut fields = line.split('\t');
        match fields.next() {
            Some("GD_ERROR") => {
                return Err(BenchError::msg(format!(
                    "{module}: {}",
                    fields.collect::<Vec<_>>().join(" ")
                )))
            }
            Some("GD_ROW") => {
                let (Some(key), Some(value), None) = (fields.next(), fields.next(), fields.next())
                else {
                    return Err(BenchError::msg(format!("{module}: malformed row {line:?}")));
                };
                let value: f64 = value.trim().parse().map_err(|_| {
                    BenchError::msg(format!("{module}: malformed number in {line:?}"))
                })?;
                figures.insert(key.to_owned(), value);
            }
            _ => {}
        }
    }
    if !success {
        return Err(BenchError::msg(format!(
            "{module} exited with failure and no GD_ERROR line"
        )));
    }
    Ok(figures)
}

/// The figures `keys` of a run, in that order, or an error naming the
/// first one missing.
pub fn figures<const K: usize>(
    figures: &Figures,
    module: &str,
    keys: [&str; K],
) -> Result<[f64; K], BenchError> {
    let mut out = [0.0; K];
    for (slot, key) in out.iter_mut().zip(keys) {
        *slot = figures
            .get(key)
            .copied()
            .ok_or_else(|| BenchError::msg(format!("{module} printed no {key} row")))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_read_and_errors_fail_the_run() {
        let ok = parse("m", "noise\nGD_ROW\ta\t1.5\nGD_ROW\tb\t2\n", true).unwrap();
        assert_eq!(ok.get("a"), Some(&1.5));
        assert_eq!(ok.get("b"), Some(&2.0));
        let err = parse("m", "GD_ROW\ta\t1\nGD_ERROR\tlost\t3\n", false).unwrap_err();
        assert!(format!("{err:?}").contains("lost 3"));
        assert!(parse("m", "GD_ROW\ta\tx\n", true).is_err());
        assert!(parse("m", "GD_ROW\ta\n", true).is_err());
        assert!(parse("m", "GD_ROW\ta\t1\n", false).is_err());
    }
}
