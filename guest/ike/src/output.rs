//! What the engine hands the host, in three queues (quinn-proto's
//! `poll_transmit` / `poll_endpoint_events` split): datagrams to send, SA
//! changes for the data plane, and events for the log and the admin view.
//! The host applies SA changes before it sends the datagrams of the same
//! call, so an inbound SA is in place before the answer that lets the peer
//! use it leaves.
use std::collections::VecDeque;
use std::net::IpAddr;

use wasmsec_wire::SaLimits;
use wasmsec_wire::ike::TrafficSelector as Ts;

use crate::crypto::{ChildSuite, Handle};

/// A UDP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    /// The IP address.
    pub addr: IpAddr,
    /// The UDP port.
    pub port: u16,
}

pub const IKE_PORT: u16 = 500;
pub const NAT_T_PORT: u16 = 4500;

/// An IKE datagram (without the non-ESP marker on port 4500).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Datagram {
    /// Our end: where it arrived, or where it must leave from.
    pub local: Endpoint,
    /// The peer's end.
    pub remote: Endpoint,
    /// The IKE message, from its header on.
    pub data: Vec<u8>,
}

/// Something to put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    Datagram(Datagram),
    /// A NAT keepalive (one 0xFF byte, RFC 3948 section 2.3) on this path.
    Keepalive {
        local: Endpoint,
        remote: Endpoint,
    },
}

/// A CHILD SA to install in the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSa {
    /// The connection's name in the config.
    pub connection: String,
    /// The CHILD config's name within it.
    pub child: String,
    /// Our IKE SPI of the IKE SA this CHILD SA belongs to.
    pub ike_spi: u64,
    /// Ours: the peer writes it into the ESP it sends us.
    pub inbound_spi: u32,
    /// The peer's: we write it into the ESP we send.
    pub outbound_spi: u32,
    /// The host's handle on the inbound key (KEYMAT, RFC 7296 2.17).
    pub inbound_key: Handle,
    /// The host's handle on the outbound key.
    pub outbound_key: Handle,
    /// The negotiated ESP transforms.
    pub suite: ChildSuite,
    /// Narrowed selectors on our side (section 2.9).
    pub local_ts: Vec<Ts>,
    /// Narrowed selectors on the peer's side.
    pub remote_ts: Vec<Ts>,
    /// Our address and port for this IKE SA (where ESP-in-UDP leaves from).
    pub local: Endpoint,
    /// The peer's, as last seen (NAT may have moved it, RFC 7296 2.23).
    pub remote: Endpoint,
    /// ESP in UDP (RFC 3948) to the peer's port 4500.
    pub encap: bool,
    /// Install only the inbound SA now; the outbound one waits for
    /// [`SaChange::ActivateOutbound`] (the responder of a rekey must not
    /// send on the new SA before the initiator can receive on it, section 2.8).
    pub outbound_deferred: bool,
    /// Volume lifetimes; passing one is reported with `Engine::child_expired`.
    pub limits: SaLimits,
}

/// A change to the data plane's SAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaChange {
    /// A request offering this inbound SPI is about to leave. The peer may
    /// send ESP on it as soon as it has sent its answer, before we have
    /// processed that answer and installed the SA, so the data plane holds
    /// such packets briefly instead of dropping them. Only what the
    /// answer installs is ever opened.
    ExpectInbound {
        inbound_spi: u32,
    },
    Install(ChildSa),
    /// Start sending on the deferred outbound SA of the CHILD SA with
    /// this inbound SPI. The data plane names both halves of a CHILD SA by
    /// our inbound SPI: we chose it, so it is unique, where two peers may
    /// choose the same outbound SPI.
    ActivateOutbound {
        inbound_spi: u32,
    },
    /// The peer now sends from `remote` (its NAT mapping changed): the ESP
    /// of these CHILD SAs (by our inbound SPI, as above) must go there too.
    PeerMoved {
        inbound_spis: Vec<u32>,
        remote: Endpoint,
    },
    /// The CHILD SAs of IKE SA `from` (our SPI) now belong to its
    /// successor by a rekey, `to` (RFC 7296 section 2.8).
    ChildrenMoved {
        from: u64,
        to: u64,
    },
    /// The CHILD SA is gone: stop sending on it at once; keep accepting on
    /// its inbound half for `keep_inbound_ms` more (packets the peer sent
    /// before it processed the DELETE may still be on the way).
    Delete {
        ike_spi: u64,
        inbound_spi: u32,
        outbound_spi: u32,
        inbound_key: Handle,
        outbound_key: Handle,
        keep_inbound_ms: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}

/// Something that happened, for the log and the admin view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An IKE SA came up: connection, our SPI, the negotiated proposal
    /// (strongSwan's names), our role and the path.
    IkeUp {
        connection: String,
        ike_spi: u64,
        proposal: String,
        initiator: bool,
        local: Endpoint,
        remote: Endpoint,
        /// A NAT was detected in front of us (`local`) or the peer
        /// (`remote`), RFC 7296 section 2.23.
        nat_local: bool,
        nat_remote: bool,
        /// It replaces an IKE SA of the same peer by a rekey (section 1.3.2).
        rekeyed: bool,
        /// The peer's identity as IKE_AUTH authenticated it, shown as in
        /// the log (the peer chooses it: the host bounds what it keeps).
        remote_id: String,
    },
    /// An IKE SA is gone.
    IkeDown {
        connection: String,
        ike_spi: u64,
    },
    Log {
        level: Level,
        connection: String,
        message: String,
    },
}

/// The three queues.
#[derive(Debug, Default)]
pub(crate) struct Output {
    pub transmits: VecDeque<Transmit>,
    pub sa_changes: VecDeque<SaChange>,
    pub events: VecDeque<Event>,
}

impl Output {
    pub fn log(&mut self, level: Level, connection: &str, message: String) {
        self.events.push_back(Event::Log { level, connection: connection.to_string(), message });
    }
}
