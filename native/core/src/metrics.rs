//! Metrics registry with the seed's names (SPEC 8): counters, gauges and
//! histograms, a snapshot API and Prometheus text exposition.
