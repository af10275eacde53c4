//! Fault-injecting TCP proxy: cut, stall or delay a link (filled by the TLS work item).
