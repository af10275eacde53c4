//! Wire frames between datacenters (docs/PROTOCOL.md): codec only, no I/O.
