//! The envelope: a stanza with what route() needs to carry it between
//! datacenters (`Meta`), what route() answers (`RouteResult`, `Reason`) and
//! how stanzas reach the host (`Delivered`, `Delivery`).
//!
//! Plain data below every layer that carries a stanza: routing, bounce and
//! the transport all speak these types, and this module imports none of them.

use std::sync::Arc;

use bytes::Bytes;
use rand::RngCore;

use crate::credits::Credits;
use crate::jid::Jid;
use crate::transport::frame::{PayloadKind, Prior};

/// Metadata travelling with a stanza between datacenters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Unique id (128-bit random), kept across reroutes.
    pub message_id: u128,
    /// local_host of the DC where the stanza entered global routing.
    pub origin: Arc<str>,
    /// Remaining reroutes; decremented on each forward.
    pub ttl: u8,
    /// Route to this DC without looking the recipient up (bounce flushes).
    pub target: Option<Arc<str>>,
}

impl Meta {
    /// Metadata of a stanza entering global routing at this DC.
    pub fn new(origin: Arc<str>, ttl: u8) -> Meta {
        Meta {
            message_id: new_message_id(),
            origin,
            ttl,
            target: None,
        }
    }
}

/// A 128-bit random message id.
pub fn new_message_id() -> u128 {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    u128::from_be_bytes(b)
}

/// A stanza with everything route() needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub from: Jid,
    pub to: Jid,
    pub kind: PayloadKind,
    pub payload: Bytes,
    pub meta: Meta,
    /// Bounce retries left at this DC (None: never bounced here). Local
    /// state, not sent on the wire: each DC gives a stanza its own budget.
    pub bounce_ttl: Option<u32>,
    /// The session (and its token, for a version-2 one) and seq it was
    /// written under before its connection was given up; travels so that
    /// the receiver can drop a second copy.
    /// Boxed: rare (only after a connection was given up), and a stanza is
    /// moved by value along the routing path.
    pub prior: Option<Box<Prior>>,
}

impl Envelope {
    pub fn new(from: Jid, to: Jid, kind: PayloadKind, payload: Bytes, meta: Meta) -> Envelope {
        Envelope {
            from,
            to,
            kind,
            payload,
            meta,
            bounce_ttl: None,
            prior: None,
        }
    }
}

/// What route() decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteResult {
    /// The host continues its own routing: the recipient is here, or it is
    /// known in no datacenter and bounce cannot hold the stanza (disabled
    /// or full), so the host routes it as MongooseIM does (offline storage,
    /// or its own error for a user that does not exist).
    Local,
    /// Queued towards that datacenter.
    Forwarded(Arc<str>),
    /// Held by bounce; the host hears of it again through [`Delivery`].
    Stored,
    /// Given up: the host should answer with an error (service-unavailable).
    Undeliverable(Reason),
}

/// Why a stanza could not be delivered, or (in [`Delivered::unrouted`])
/// why global routing handed it back to the host's local routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Bounce retried it `bounce.max_retries` times without a route that
    /// took it.
    RetriesExhausted,
    /// The recipient is known in no datacenter.
    NoRoute,
    /// The recipient's datacenter is known but cannot be reached (no
    /// endpoint, every connection failing).
    Unreachable,
    /// The bounce store is full (`bounce.max_stored`).
    BounceFull,
    /// The queue towards the remote DC is full (`connections.outgoing_queue_size`).
    QueueFull,
    /// The runtime stopped before the stanza could be delivered.
    Stopped,
    /// The metadata store could not be read during a lookup (why bounce
    /// holds a stanza; like `NoRoute`, the recipient counts as found nowhere).
    StoreUnavailable,
    /// The stanza exceeds `connections.max_frame_size`.
    TooLarge,
    /// The receiving datacenter refused this stanza (protocol version 2
    /// `Nack`: an address its JID parser refuses, a frame above its
    /// `max_frame_size`); sending it again would not help.
    Rejected,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RetriesExhausted => "retries_exhausted",
            Reason::NoRoute => "no_route",
            Reason::Unreachable => "unreachable",
            Reason::BounceFull => "bounce_full",
            Reason::QueueFull => "queue_full",
            Reason::Stopped => "stopped",
            Reason::StoreUnavailable => "store_unavailable",
            Reason::TooLarge => "too_large",
            Reason::Rejected => "rejected",
        }
    }
}

/// A stanza handed to the host for local delivery.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub envelope: Envelope,
    /// local_host of the DC it came from (None: it was held by bounce here).
    pub from_host: Option<Arc<str>>,
    /// Sender wall clock to receiver wall clock, µs (0 when not from the wire).
    pub transfer_time_us: u64,
    /// `Some` when global routing gave up on the stanza because its
    /// recipient is known in no datacenter: the host routes it locally like
    /// any stanza of its own (MongooseIM's bounce does the same: offline
    /// storage, or the host's error for a user that does not exist). The
    /// reason says when: `RetriesExhausted` (bounce's retries ran out),
    /// `NoRoute` (bounce is disabled), `BounceFull` (bounce could not hold
    /// it again), `Stopped` (the runtime stopped while bounce held it).
    /// `None` for every other delivery.
    pub unrouted: Option<Reason>,
}

impl Delivered {
    /// A stanza delivered here that did not come over the wire.
    pub fn here(envelope: Envelope, unrouted: Option<Reason>) -> Delivered {
        Delivered {
            envelope,
            from_host: None,
            transfer_time_us: 0,
            unrouted,
        }
    }
}

/// How stanzas reach the host. Called on runtime threads: implementations
/// must not block (hand over to a queue, `enif_send`, a C callback that
/// returns quickly) and must not call back into the runtime synchronously.
pub trait Delivery: Send + Sync + 'static {
    /// A stanza whose recipient is local: deliver it, do not route it globally again.
    fn deliver(&self, delivered: Delivered);
    /// A stanza given up on: answer the sender with an error. Only for a
    /// known datacenter that stayed unreachable, a full queue, a stanza too
    /// large, a stop: a recipient known nowhere goes to [`Delivery::deliver`]
    /// with [`Delivered::unrouted`] set instead.
    fn undeliverable(&self, envelope: Envelope, reason: Reason);
    /// Several stanzas for local recipients, in arrival order, from one
    /// read of the network: a host that pays per hand-over (a process
    /// wake-up, a message) can take them at once. Drains `batch`.
    fn deliver_many(&self, batch: &mut Vec<Delivered>) {
        for d in batch.drain(..) {
            self.deliver(d);
        }
    }
    /// What the host holds and has not finished with, when it counts it:
    /// received stanzas then wait while the host is at its limit (see
    /// [`Credits`]). `None`: the host takes everything at once (it must
    /// not block).
    fn credits(&self) -> Option<&Credits> {
        None
    }
}

/// The ordering key: the sender's full JID if it is in the global domain,
/// otherwise its domain (components, other servers). Borrowed: it is
/// computed for every stanza sent.
pub fn sender_key<'a>(from: &'a Jid, global_host: &str) -> &'a str {
    if from.domain() == global_host {
        from.as_full_str()
    } else {
        from.domain()
    }
}
