//! Inter-datacenter transport: frame codec, listeners, outgoing pools.

pub mod frame;
pub mod tls;
