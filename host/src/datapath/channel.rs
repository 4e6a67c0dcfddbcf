//! Typed messages between the control thread and the data-path threads: a
//! channel whose receiver also has a file descriptor that becomes readable
//! when something was sent, so a thread blocked in `poll` on its sockets
//! wakes for it too.
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;

use std::sync::Arc;

use super::Peer;
use crate::stats::SaTraffic;
use crate::wasm::esp::{InboundSa, OutboundSa};

/// Changes to a data-path thread's SAs, sent by the control thread.
#[derive(Debug)]
pub enum SaCommand {
    /// Send on `sa` to `peer`, in guest group `group` (see `group`).
    AddOutbound {
        sa: OutboundSa,
        peer: Peer,
        group: usize,
        traffic: Arc<SaTraffic>,
    },
    /// A request offering this inbound SPI is leaving: hold ESP for it
    /// briefly until its `AddInbound` comes (see `hold`).
    ExpectInbound {
        spi: u32,
    },
    /// `outbound_spi` and `peer` name the SA pair's other half and where its
    /// ESP goes, so the peer's address can float (NAT-T).
    AddInbound {
        sa: InboundSa,
        outbound_spi: Option<u32>,
        peer: Option<SocketAddrV4>,
        group: usize,
        traffic: Arc<SaTraffic>,
    },
    /// Authenticated ESP for the SA pair came from a new address or port
    /// (the peer's NAT mapping changed): send there from now on.
    MovePeer {
        outbound_spi: u32,
        peer: Peer,
    },
    RemoveOutbound {
        spi: u32,
    },
    RemoveInbound {
        spi: u32,
    },
    /// A tenant's routing domain joins (a reload added it): this thread's
    /// descriptor of its TUN device; the thread makes its guest groups.
    AddDomain {
        domain: usize,
        tun: DomainTun,
    },
    /// A tenant's routing domain leaves (its connections are gone): its
    /// TUN device is closed, which removes it.
    RemoveDomain {
        domain: usize,
    },
}

/// A TUN device handed to a data-path thread.
pub struct DomainTun(pub crate::sys::Tun);

impl std::fmt::Debug for DomainTun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DomainTun({})", self.0.name())
    }
}

/// What a data-path thread reports to the control thread.
#[derive(Debug)]
pub enum Report {
    /// An IKE message that came in on the NAT-T port (behind the non-ESP
    /// marker, RFC 3948 section 2.2), marker removed.
    Ike { from: SocketAddrV4, data: Vec<u8> },
    /// Traffic for a destination no SA covers (may start a `trap` connection).
    Acquire { dst: Ipv4Addr },
    /// The SA with this SPI passed a soft (`hard` false) or hard limit.
    Expired { spi: u32, hard: bool },
}

/// The sending half.
pub struct Sender<T> {
    /// Where the messages go.
    tx: mpsc::Sender<T>,
    /// One byte is sent here per message, to wake the receiver's `poll`.
    wake: UnixDatagram,
}

/// The receiving half, with a descriptor for `poll`.
pub struct Receiver<T> {
    /// Where the messages come from.
    rx: mpsc::Receiver<T>,
    /// Readable when a message was sent; the descriptor for `poll`.
    wake: UnixDatagram,
}

pub fn channel<T>() -> std::io::Result<(Sender<T>, Receiver<T>)> {
    let (a, b) = UnixDatagram::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let (tx, rx) = mpsc::channel();
    Ok((Sender { tx, wake: a }, Receiver { rx, wake: b }))
}

impl<T> Sender<T> {
    pub fn try_clone(&self) -> std::io::Result<Sender<T>> {
        Ok(Sender { tx: self.tx.clone(), wake: self.wake.try_clone()? })
    }

    /// Send; false if the receiver is gone. A full wake socket is fine: the
    /// receiver drains the channel, not the wake bytes.
    pub fn send(&self, m: T) -> bool {
        if self.tx.send(m).is_err() {
            return false;
        }
        let _ = self.wake.send(&[1]);
        true
    }
}

impl<T> Receiver<T> {
    /// Everything sent so far, in order.
    pub fn drain(&self) -> Vec<T> {
        let mut buf = [0u8; 64];
        while self.wake.recv(&mut buf).is_ok() {}
        self.rx.try_iter().collect()
    }
}

impl<T> AsRawFd for Receiver<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}
