//! The performance targets (issue 14, docs/PERFORMANCE.md "Targets"),
//! checked against the rows of this run and printed under the table with
//! met or missed. A target whose rows did not run (`--only`, a failed
//! bench) says so instead of a verdict.

use crate::stats::Stat;
use crate::table::Table;

#[derive(Clone, Copy)]
enum Cmp {
    AtLeast,
    AtMost,
}

/// Which figure of the table a target reads.
#[derive(Clone, Copy)]
enum Source {
    /// One row: bench, and a test on the metric's name.
    Row(&'static str, fn(&str) -> bool),
    /// Row ÷ row, paired as [`Table::ratio`] pairs them.
    Ratio(
        (&'static str, fn(&str) -> bool),
        (&'static str, fn(&str) -> bool),
    ),
}

struct Target {
    what: &'static str,
    source: Source,
    cmp: Cmp,
    limit: f64,
    /// "In every run": judged on the worst of the runs, not the median.
    every_run: bool,
}

const TARGETS: &[Target] = &[
    Target {
        what: "B1 TLS 1 conn ÷ Erlang pattern (B4), every run",
        source: Source::Row("B4", |m| m == "ours ÷ Erlang, TLS (1 conn)"),
        cmp: Cmp::AtLeast,
        limit: 10.0,
        every_run: true,
    },
    Target {
        what: "B1 TLS 1 conn ÷ raw TLS (B3)",
        source: Source::Row("B3", |m| m == "ours ÷ raw, TLS (1 conn)"),
        cmp: Cmp::AtLeast,
        limit: 0.70,
        every_run: false,
    },
    Target {
        what: "B1 TLS CPU per stanza (CPU-µs)",
        source: Source::Row("B1", |m| m == "TLS, 1 conn: CPU"),
        cmp: Cmp::AtMost,
        limit: 0.8,
        every_run: false,
    },
    Target {
        what: "B1 TLS CPU per stanza ÷ raw TLS's",
        source: Source::Ratio(
            ("B1", |m| m == "TLS, 1 conn: CPU"),
            ("B3", |m| m == "raw TLS: CPU"),
        ),
        cmp: Cmp::AtMost,
        limit: 1.4,
        every_run: false,
    },
    Target {
        what: "B2 p99 TLS (µs), every run",
        source: Source::Row("B2", |m| {
            m.starts_with("TLS ") && m.ends_with(": p99") && !m.contains("worker")
        }),
        cmp: Cmp::AtMost,
        limit: 1000.0,
        every_run: true,
    },
    Target {
        what: "B2 p99 ÷ raw TLS p99, every run",
        source: Source::Ratio(
            ("B2", |m| {
                m.starts_with("TLS ") && m.ends_with(": p99") && !m.contains("worker")
            }),
            ("B3", |m| m.starts_with("raw TLS ") && m.ends_with(": p99")),
        ),
        cmp: Cmp::AtMost,
        limit: 2.0,
        every_run: true,
    },
    Target {
        what: "B5 NIF path ÷ Erlang pattern (B4), TLS",
        source: Source::Row("B5", |m| m == "NIF path ÷ Erlang baseline, TLS"),
        cmp: Cmp::AtLeast,
        limit: 5.0,
        every_run: false,
    },
    Target {
        what: "B6 lookup/2 ÷ ets:lookup/2",
        source: Source::Row("B6", |m| m == "lookup() ÷ ets:lookup"),
        cmp: Cmp::AtMost,
        limit: 2.0,
        every_run: false,
    },
    Target {
        what: "B6 forwarded route/5 from Erlang (ns)",
        source: Source::Row("B6", |m| m == "route() from Erlang, cached, forwarded"),
        cmp: Cmp::AtMost,
        limit: 500.0,
        every_run: false,
    },
    Target {
        what: "B8 RSS per cached JID (B)",
        source: Source::Row("B8", |m| m.starts_with("RSS per cached JID")),
        cmp: Cmp::AtMost,
        limit: 200.0,
        every_run: false,
    },
    Target {
        what: "B6 route, one pair held ÷ bounce empty",
        source: Source::Row("B6", |m| {
            m.starts_with("route(), one pair held ÷ bounce empty")
        }),
        cmp: Cmp::AtMost,
        limit: 1.2,
        every_run: false,
    },
];

/// One target's verdict in this run.
pub struct Verdict {
    pub what: &'static str,
    /// `≥ 10` or `≤ 0.8`.
    pub target: String,
    /// None when its rows did not run.
    pub value: Option<Stat>,
    pub every_run: bool,
    at_least: bool,
    /// met, missed, "missed in a run" (median met, worst run not), or not run.
    pub state: &'static str,
}

impl Verdict {
    /// The worst of the runs for this target's direction.
    pub fn worst(&self) -> f64 {
        match (self.value, self.at_least) {
            (Some(s), true) => s.min,
            (Some(s), false) => s.max,
            (None, _) => f64::NAN,
        }
    }
}

pub fn judge(table: &Table) -> Vec<Verdict> {
    TARGETS.iter().map(|t| judge_one(table, t)).collect()
}

fn judge_one(table: &Table, t: &Target) -> Verdict {
    let value = match t.source {
        Source::Row(bench, metric) => table.find(bench, metric),
        Source::Ratio((b1, m1), (b2, m2)) => match (table.find(b1, m1), table.find(b2, m2)) {
            (Some(a), Some(b)) => Some(Stat {
                median: a.median / b.median,
                min: a.min / b.max,
                max: a.max / b.min,
            }),
            _ => None,
        },
    }
    .filter(|s| s.median.is_finite());
    let meets = |v: f64| match t.cmp {
        Cmp::AtLeast => v >= t.limit,
        Cmp::AtMost => v <= t.limit,
    };
    let state = match value {
        None => "not run",
        Some(s) => {
            let worst = match t.cmp {
                Cmp::AtLeast => s.min,
                Cmp::AtMost => s.max,
            };
            match (meets(s.median), meets(worst)) {
                (true, true) => "met",
                (true, false) if t.every_run => "missed in a run",
                (true, false) => "met",
                (false, _) => "missed",
            }
        }
    };
    let sign = match t.cmp {
        Cmp::AtLeast => "≥",
        Cmp::AtMost => "≤",
    };
    Verdict {
        what: t.what,
        target: format!("{sign} {}", t.limit),
        value,
        every_run: t.every_run,
        at_least: matches!(t.cmp, Cmp::AtLeast),
        state,
    }
}
