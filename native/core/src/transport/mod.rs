//! Inter-datacenter transport: the frame codec (`frame`), mutual TLS
//! (`tls`), the receiving side (`listener`) and the sending side: the pools
//! and rebalancing per remote DC (`outgoing`), one connection's task
//! (`conn`) and its queue state machine (`queue`).
//! `known_hosts` is the set of datacenter names remote input may create
//! state for.

pub(crate) mod conn;
pub mod frame;
pub mod known_hosts;
pub mod listener;
pub mod outgoing;
pub(crate) mod queue;
pub mod tls;

use tokio::io::{AsyncRead, AsyncWrite};

/// A connection, plain TCP or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub(crate) type BoxedIo = Box<dyn Io>;

/// Why a connection between datacenters ended or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Frame(#[from] frame::FrameError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("timed out during {0}")]
    Timeout(&'static str),
    #[error(
        "written stanzas saw no acknowledgement for {0:?} (connections.ack_timeout): \
         the peer does not read, or its routing is stuck"
    )]
    AckTimeout(std::time::Duration),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("connection closed by the peer")]
    Closed,
}
