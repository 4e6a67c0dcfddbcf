//! Typed messages between the control thread and the data-path threads: a
//! channel whose receiver also has a file descriptor that becomes readable
//! when something was sent, so a thread blocked in `poll` on its sockets
//! wakes for it too.
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::Kept;
use super::Peer;
use crate::stats::SaTraffic;
use crate::wasm::esp::{InboundSa, OutboundSa};

/// Changes to a data-path thread's SAs, sent by the control thread.
#[derive(Debug)]
pub enum SaCommand {
    /// Send on `sa` to `peer`, in guest group `group` (see `group`).
    AddOutbound {
        sa: Kept<OutboundSa>,
        peer: Peer,
        group: usize,
        traffic: Arc<SaTraffic>,
    },
    /// A request offering this inbound SPI is leaving: hold ESP for it
    /// briefly until its `AddInbound` comes (see `hold`).
    ExpectInbound {
        spi: u32,
    },
    /// `peer` is where the SA pair's outbound half sends ESP in UDP, so the
    /// peer's address can float (NAT-T); that half is named by this SA's
    /// SPI (`Kept::wire_spi`).
    AddInbound {
        sa: Kept<InboundSa>,
        peer: Option<SocketAddrV4>,
        group: usize,
        traffic: Arc<SaTraffic>,
    },
    /// Authenticated ESP for the SA pair came from a new address or port
    /// (the peer's NAT mapping changed): send there from now on.
    MovePeer {
        /// The outbound SA's name (its CHILD SA's inbound SPI).
        spi: u32,
        /// The peer's new address and port (ESP in UDP: only a NAT moves).
        to: SocketAddrV4,
    },
    /// Remove the SA installed with this name (outbound: its CHILD SA's
    /// inbound SPI) and key (another SA with the name, whose install
    /// refused this one's, stays).
    RemoveOutbound {
        spi: u32,
        key: u64,
    },
    RemoveInbound {
        spi: u32,
        key: u64,
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
    /// marker, RFC 3948 section 2.2), marker removed; `to`: our address
    /// it was sent to, where the socket listens on every one.
    Ike { from: SocketAddrV4, to: Option<Ipv4Addr>, data: Vec<u8> },
    /// Traffic of routing domain `domain` (0: the daemon's own, else a
    /// tenant's) for a destination no SA covers (may start a `trap`
    /// connection of that domain).
    Acquire { domain: usize, dst: IpAddr },
    /// The SA with this SPI passed a soft (`hard` false) or hard limit.
    Expired { spi: u32, hard: bool },
    /// The SA with this SPI could not be installed (see
    /// `Loop::not_installed`): its CHILD SA must go.
    NotInstalled { spi: u32, error: String },
}

/// The sending half.
pub struct Sender<T> {
    /// Where the messages go.
    tx: mpsc::Sender<T>,
    /// A byte is sent here to wake the receiver's `poll`, when none is
    /// pending yet.
    wake: UnixDatagram,
    /// Messages wait that the receiver has not been woken for: set by the
    /// sender that writes the wake byte, cleared by the receiver before it
    /// drains. A burst (a CHILD SA's install is three messages) costs one
    /// system call and one wake-up instead of one each.
    pending: Arc<AtomicBool>,
    /// Messages sent and not yet taken by the receiver: raised before a
    /// message goes in, lowered when a drain takes it, so it is never
    /// below what waits. `send_within` bounds it.
    level: Arc<AtomicUsize>,
}

/// Why `send_within` did not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSent {
    /// `max` messages already wait.
    Full,
    /// The receiver is gone.
    Gone,
}

/// The receiving half, with a descriptor for `poll`.
pub struct Receiver<T> {
    /// Where the messages come from.
    rx: mpsc::Receiver<T>,
    /// Readable when a message was sent; the descriptor for `poll`.
    wake: UnixDatagram,
    pending: Arc<AtomicBool>,
    level: Arc<AtomicUsize>,
}

pub fn channel<T>() -> std::io::Result<(Sender<T>, Receiver<T>)> {
    let (a, b) = UnixDatagram::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let (tx, rx) = mpsc::channel();
    let pending = Arc::new(AtomicBool::new(false));
    let level = Arc::new(AtomicUsize::new(0));
    Ok((
        Sender { tx, wake: a, pending: pending.clone(), level: level.clone() },
        Receiver { rx, wake: b, pending, level },
    ))
}

impl<T> Sender<T> {
    pub fn try_clone(&self) -> std::io::Result<Sender<T>> {
        Ok(Sender {
            tx: self.tx.clone(),
            wake: self.wake.try_clone()?,
            pending: self.pending.clone(),
            level: self.level.clone(),
        })
    }

    /// Send; false if the receiver is gone. A full wake socket is fine: the
    /// receiver drains the channel, not the wake bytes.
    pub fn send(&self, m: T) -> bool {
        self.level.fetch_add(1, Ordering::AcqRel);
        let sent = self.enqueue(m);
        if sent {
            self.wake();
        }
        sent
    }

    /// Send unless `max` messages already wait (of any kind): for what a
    /// peer can send at line rate, which must be dropped, not held in
    /// memory without end, when the receiver falls behind.
    pub fn send_within(&self, m: T, max: usize) -> Result<(), NotSent> {
        let room = self.level.fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| (l < max).then_some(l + 1));
        if room.is_err() {
            return Err(NotSent::Full);
        }
        if !self.enqueue(m) {
            return Err(NotSent::Gone);
        }
        self.wake();
        Ok(())
    }

    /// Queue without waking the receiver; false if it is gone. It takes
    /// the message the next time it wakes for anything: a packet, a woken
    /// `send`, or its poll timeout. For changes only a packet can see (an
    /// SA added or removed: the packet that needs the change wakes the
    /// thread, which takes its messages before the packet), so a setup at
    /// thousands a second costs no wake-ups of idle data-path threads.
    pub fn send_quiet(&self, m: T) -> bool {
        self.level.fetch_add(1, Ordering::AcqRel);
        self.enqueue(m)
    }

    /// Queue `m`, already counted in the level; false (and uncounted) if
    /// the receiver is gone.
    fn enqueue(&self, m: T) -> bool {
        let sent = self.tx.send(m).is_ok();
        if !sent {
            self.level.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }

    /// Wake the receiver unless a wake already pends. The swap orders the
    /// message before the flag: a receiver that clears the flag after this
    /// sees the message in its drain; one that cleared it before gets a
    /// new wake byte.
    fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            let _ = self.wake.send(&[1]);
        }
    }
}

impl<T> Receiver<T> {
    /// Everything sent so far, in order.
    pub fn drain(&self) -> Vec<T> {
        let mut buf = [0u8; 64];
        while self.wake.recv(&mut buf).is_ok() {}
        // Cleared after the wake bytes are read, before the messages are:
        // a sender that finds it set knows this drain will see its message;
        // one that finds it clear writes a byte that stays for next time.
        self.pending.swap(false, Ordering::AcqRel);
        self.take_queued()
    }

    /// What was sent so far, in order, without reading wake bytes (no
    /// system call): for a thread that woke for something else.
    pub fn take_queued(&self) -> Vec<T> {
        let taken: Vec<T> = self.rx.try_iter().collect();
        // All off the level before the caller handles any: one it cannot
        // handle (a guest trap) must not stay counted as waiting.
        self.level.fetch_sub(taken.len(), Ordering::AcqRel);
        taken
    }
}

impl<T> AsRawFd for Receiver<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message wakes the receiver's `poll`, or lands in a drain
    /// that a wake already pends for, however sends and drains interleave:
    /// a message left without a wake would wait for the next one.
    #[test]
    fn no_message_waits_without_a_wake() {
        const N: u32 = 20_000;
        let (tx, rx) = channel::<u32>().unwrap();
        let receiver = std::thread::spawn(move || {
            let mut next = 0;
            while next < N {
                let ready = crate::sys::poll_readable(&[rx.as_raw_fd()], 2000).unwrap();
                assert!(ready[0], "message {next} sent, but no wake for 2 s");
                for m in rx.drain() {
                    assert_eq!(m, next);
                    next += 1;
                }
            }
        });
        for i in 0..N {
            assert!(tx.send(i));
            if i % 7 == 0 {
                std::thread::yield_now();
            }
        }
        receiver.join().unwrap();
    }

    /// The bound counts what waits, whatever its kind, and room comes
    /// back when the receiver takes them.
    #[test]
    fn send_within_refuses_at_the_bound_until_a_drain() {
        let (tx, rx) = channel::<u32>().unwrap();
        assert!(tx.send(0));
        assert_eq!(tx.send_within(1, 3), Ok(()));
        assert!(tx.send_quiet(2));
        assert_eq!(tx.send_within(3, 3), Err(NotSent::Full));
        assert_eq!(rx.drain(), [0, 1, 2]);
        assert_eq!(tx.send_within(4, 3), Ok(()));
        assert_eq!(rx.take_queued(), [4]);
        drop(rx);
        assert_eq!(tx.send_within(5, 3), Err(NotSent::Gone));
        assert!(!tx.send(6));
        assert_eq!(tx.level.load(Ordering::Acquire), 0, "nothing counted that did not go in");
    }

    /// A quiet message wakes nobody but waits in order for the next drain,
    /// woken or not.
    #[test]
    fn quiet_messages_wait_in_order_for_the_next_look() {
        let (tx, rx) = channel::<u32>().unwrap();
        assert!(tx.send_quiet(1));
        assert!(!crate::sys::poll_readable(&[rx.as_raw_fd()], 0).unwrap()[0], "no wake byte");
        assert_eq!(rx.take_queued(), [1]);
        assert!(tx.send_quiet(2));
        assert!(tx.send(3));
        assert!(crate::sys::poll_readable(&[rx.as_raw_fd()], 0).unwrap()[0]);
        assert_eq!(rx.drain(), [2, 3]);
        drop(rx);
        assert!(!tx.send_quiet(4), "the receiver is gone");
    }
}
