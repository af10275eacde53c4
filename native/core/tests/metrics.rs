//! Metrics registry (SPEC 8): atomic counters under concurrency, histogram
//! accuracy against exact percentiles, the snapshot and its JSON, and the
//! Prometheus exposition (well-formed lines, the `host` label).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use gd_core::metrics::{names, HistogramSummary, MetricValue, Metrics};

/// The nearest-rank percentile of sorted `v`: what the histogram estimates.
fn exact_percentile(sorted: &[u64], per_mille: usize) -> u64 {
    let rank = (sorted.len() * per_mille).div_ceil(1000).max(1);
    sorted[rank - 1]
}

fn assert_close(what: &str, got: u64, want: u64) {
    let err = (got as f64 - want as f64).abs() / (want.max(1) as f64);
    assert!(
        err <= 0.02,
        "{what}: got {got}, exact {want}, error {:.4}",
        err
    );
}

fn check_accuracy(values: &[u64]) {
    let m = Metrics::new();
    let h = m.histogram("test.latency");
    for &v in values {
        h.record(v);
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let s = h.summary();
    assert_eq!(s.count, values.len() as u64);
    assert_eq!(s.min, sorted[0]);
    assert_eq!(s.max, *sorted.last().unwrap());
    assert_eq!(s.sum, values.iter().sum::<u64>());
    let mean = values.iter().sum::<u64>() as f64 / values.len() as f64;
    assert!((s.mean - mean).abs() < 1e-6 * mean.max(1.0));
    assert_close("p50", s.p50, exact_percentile(&sorted, 500));
    assert_close("p95", s.p95, exact_percentile(&sorted, 950));
    assert_close("p99", s.p99, exact_percentile(&sorted, 990));
}

#[test]
fn concurrent_increments_add_up() {
    let m = Arc::new(Metrics::new());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                // Half the threads resolve the name each time, half cache the
                // Arc: both must land in the same counter.
                let cached = m.counter("test.hits");
                for i in 0..10_000u64 {
                    if t % 2 == 0 {
                        cached.inc();
                    } else {
                        m.counter("test.hits").add(1);
                    }
                    m.gauge("test.level").add(if i % 2 == 0 { 2 } else { -1 });
                    m.histogram("test.h").record(i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let snap = m.snapshot();
    assert_eq!(snap.counter("test.hits"), Some(80_000));
    assert_eq!(snap.gauge("test.level"), Some(8 * 5_000));
    assert_eq!(snap.histogram("test.h").unwrap().count, 80_000);
}

#[test]
fn gauge_set_add_sub() {
    let m = Metrics::new();
    let g = m.gauge(names::BOUNCE_QUEUE_SIZE);
    g.set(10);
    g.add(5);
    g.sub(20);
    assert_eq!(g.get(), -5);
    assert_eq!(m.snapshot().gauge(names::BOUNCE_QUEUE_SIZE), Some(-5));
}

#[test]
fn percentiles_of_a_uniform_range() {
    let values: Vec<u64> = (1..=100_000).collect();
    check_accuracy(&values);
}

#[test]
fn percentiles_of_a_skewed_distribution() {
    // Mostly fast, a long tail of slow ones: latency-like.
    let mut values = Vec::new();
    for i in 0..10_000u64 {
        values.push(100 + i % 50);
    }
    for i in 0..600u64 {
        values.push(50_000 + i * 1_000);
    }
    for i in 0..50u64 {
        values.push(10_000_000_000 + i * 12_345_678);
    }
    check_accuracy(&values);
}

#[test]
fn percentiles_of_small_exact_values_and_extremes() {
    check_accuracy(&[0, 1, 2, 3, 5, 8, 13, 21, 31]);
    check_accuracy(&[7]);
    check_accuracy(&[1 << 40, (1 << 50) + 12_345, (1 << 60) - 1]);
    let m = Metrics::new();
    let h = m.histogram("x");
    h.record(u64::MAX);
    let s = h.summary();
    assert_eq!((s.min, s.max, s.p99), (u64::MAX, u64::MAX, u64::MAX));
}

#[test]
fn empty_histogram_summary_is_zero() {
    let m = Metrics::new();
    let s = m.histogram("test.empty").summary();
    assert_eq!(s, HistogramSummary::default());
    assert_eq!((s.count, s.min, s.max, s.p50, s.p99), (0, 0, 0, 0, 0));
    assert_eq!(s.mean, 0.0);
}

#[test]
fn new_registers_the_host_less_metrics_at_zero() {
    let snap = Metrics::new().snapshot();
    for c in [
        names::INCOMING_ESTABLISHED,
        names::MAPPING_FETCHES,
        names::MAPPING_CACHE_MISSES,
        names::STOP_TTL_ZERO,
        names::INCOMING_UNKNOWN_HOST,
        names::INCOMING_REFUSED,
        names::INCOMING_TIMED_OUT,
        names::INCOMING_BUFFER_FULL,
        names::METRICS_HOST_OVERFLOW,
        names::ROUTE_TIMED_OUT,
    ] {
        assert_eq!(snap.counter(c), Some(0), "{c}");
    }
    for h in [
        names::INCOMING_QUEUE_TIME,
        names::MAPPING_FETCH_TIME,
        names::DELIVERED_WITH_TTL,
    ] {
        assert_eq!(snap.histogram(h).map(|s| s.count), Some(0), "{h}");
    }
    assert_eq!(snap.gauge(names::BOUNCE_QUEUE_SIZE), Some(0));
    assert_eq!(snap.0.len(), 14);
}

#[test]
fn names_follow_the_seed() {
    let h = "dc2.example.com";
    assert_eq!(
        names::outgoing_messages(h),
        "global.mod_global_distrib.outgoing.messages.dc2.example.com"
    );
    assert_eq!(
        names::incoming_transfer_time(h),
        "global.mod_global_distrib.incoming.transfer_time.dc2.example.com"
    );
    assert_eq!(
        names::outgoing_errored(h),
        "global.mod_global_distrib.outgoing.errored.dc2.example.com"
    );
    assert_eq!(
        names::MAPPING_CACHE_MISSES,
        "global.mod_global_distrib.mapping_cache_misses"
    );
    assert_eq!(
        names::INCOMING_QUEUE_TIME,
        "global.mod_global_distrib.incoming.queue_time"
    );
}

#[test]
fn a_name_of_another_kind_does_not_corrupt_the_registered_one() {
    let m = Metrics::new();
    m.counter("test.x").add(3);
    m.gauge("test.x").set(99);
    assert_eq!(m.snapshot().counter("test.x"), Some(3));
}

#[test]
fn snapshot_json() {
    let m = Metrics::new();
    m.counter(&names::outgoing_messages("dc2.example.com"))
        .add(7);
    m.gauge(names::BOUNCE_QUEUE_SIZE).set(-2);
    m.histogram(names::MAPPING_FETCH_TIME).record(40);
    let json: serde_json::Value = serde_json::from_str(&m.snapshot().to_json()).unwrap();
    assert_eq!(
        json["global.mod_global_distrib.outgoing.messages.dc2.example.com"],
        7
    );
    assert_eq!(json[names::BOUNCE_QUEUE_SIZE], -2);
    let h = &json[names::MAPPING_FETCH_TIME];
    assert_eq!(h["count"], 1);
    assert_eq!(h["min"], 40);
    assert_eq!(h["max"], 40);
    assert_eq!(h["p99"], 40);
    assert_eq!(h["mean"], 40.0);
    assert_eq!(json[names::DELIVERED_WITH_TTL]["count"], 0);
    assert!(matches!(
        m.snapshot().get(names::STOP_TTL_ZERO),
        Some(MetricValue::Counter(0))
    ));
}

/// Checks every line against the 0.0.4 grammar we produce and returns the
/// samples as (name, labels, value).
fn parse_exposition(text: &str) -> Vec<(String, String, String)> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'));
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "summary"].contains(&kind), "{line}");
            assert!(typed.insert(name.to_owned()), "duplicate TYPE: {line}");
            continue;
        }
        assert!(!line.starts_with('#'), "{line}");
        let (head, value) = line.rsplit_once(' ').unwrap();
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("value of {line}"));
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => {
                let l = l.strip_suffix('}').unwrap();
                for pair in l.split(',') {
                    let (k, v) = pair.split_once('=').unwrap();
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                }
                (n, l)
            }
            None => (head, ""),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        let family = name
            .strip_suffix("_sum")
            .or_else(|| name.strip_suffix("_count"))
            .filter(|f| typed.contains(*f))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample before its TYPE: {line}");
        samples.push((name.to_owned(), labels.to_owned(), value.to_owned()));
    }
    samples
}

#[test]
fn prometheus_output_is_well_formed_with_host_labels() {
    let m = Metrics::new();
    m.counter(&names::outgoing_messages("dc2.example.com"))
        .add(5);
    m.counter(&names::outgoing_messages("dc3.example.com"))
        .add(1);
    let t = m.histogram(&names::incoming_transfer_time("dc2.example.com"));
    // Below 32 every value has its own bucket: quantiles are exact.
    for v in [10, 20, 30] {
        t.record(v);
    }
    m.gauge(names::BOUNCE_QUEUE_SIZE).set(4);
    let text = m.prometheus();
    let samples = parse_exposition(&text);
    let has = |name: &str, labels: &str, value: &str| {
        samples
            .iter()
            .any(|(n, l, v)| n == name && l == labels && v == value)
    };
    let fam = "global_mod_global_distrib_outgoing_messages";
    assert!(has(fam, r#"host="dc2.example.com""#, "5"), "{text}");
    assert!(has(fam, r#"host="dc3.example.com""#, "1"), "{text}");
    assert_eq!(text.matches(&format!("# TYPE {fam} counter\n")).count(), 1);

    let fam = "global_mod_global_distrib_incoming_transfer_time";
    assert!(text.contains(&format!("# TYPE {fam} summary\n")), "{text}");
    assert!(
        has(fam, r#"host="dc2.example.com",quantile="0.5""#, "20"),
        "{text}"
    );
    assert!(
        has(fam, r#"host="dc2.example.com",quantile="0.99""#, "30"),
        "{text}"
    );
    assert!(has(
        &format!("{fam}_sum"),
        r#"host="dc2.example.com""#,
        "60"
    ));
    assert!(has(
        &format!("{fam}_count"),
        r#"host="dc2.example.com""#,
        "3"
    ));

    assert!(text.contains("# TYPE global_mod_global_distrib_bounce_queue_size gauge\n"));
    assert!(has("global_mod_global_distrib_bounce_queue_size", "", "4"));
    assert!(has("global_mod_global_distrib_mapping_fetches", "", "0"));
    // Host-less metrics whose name resembles a per-host one keep no label.
    assert!(has(
        "global_mod_global_distrib_incoming_queue_time_count",
        "",
        "0"
    ));
    assert!(has(
        "global_mod_global_distrib_incoming_established",
        "",
        "0"
    ));
}

#[test]
fn prometheus_escapes_label_values_and_sanitises_names() {
    let m = Metrics::new();
    m.counter(&names::incoming_errored("we\"ird\\host")).inc();
    m.counter("9lives-and.more").inc();
    let text = m.prometheus();
    let samples = parse_exposition(&text);
    assert!(
        text.contains(r#"global_mod_global_distrib_incoming_errored{host="we\"ird\\host"} 1"#),
        "{text}"
    );
    assert!(
        samples.iter().any(|(n, _, _)| n == "_9lives_and_more"),
        "{text}"
    );
}
