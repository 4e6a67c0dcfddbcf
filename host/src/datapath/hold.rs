//! ESP that arrives for an SA we asked for but have not installed yet.
//!
//! When we initiate a CHILD SA (IKE_AUTH or CREATE_CHILD_SA), the peer
//! installs it on sending its answer and may use it at once (RFC 7296
//! section 2.8 only holds back the responder of a rekey); our inbound SA is
//! installed only once the control thread has processed that answer, a
//! fraction of a millisecond later. ESP in that gap would be dropped as an
//! unknown SPI. The IKE engine names the SPI it offers before the request
//! leaves (`expect-inbound`); packets for such an SPI are held here, a few
//! and briefly, and handed back once the SA is there. Nothing is opened
//! here: a held packet goes through the guest like any other, so a forged
//! one fails its ICV then, and one whose SA never comes is counted as an
//! unknown SPI when its time is up.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::inbound::Arrival;
use crate::packet::PacketBuf;

/// How long an expected SPI stays expected: the whole exchange, with its
/// retransmissions (an answer that never comes leaves nothing behind).
pub const EXPECT_FOR: Duration = Duration::from_secs(60);
/// How long one packet is held for its SA. The gap it bridges is the
/// control thread's processing of one IKE answer.
pub const HOLD_FOR: Duration = Duration::from_millis(250);
/// At most this many packets are held in all (a flood with an expected
/// SPI costs a bounded amount of memory and is dropped as before).
pub const HOLD_MAX: usize = 64;
/// Expected SPIs at most. Each is settled by its SA's install, within
/// milliseconds, or ends after [`EXPECT_FOR`]; an IKE guest that announced
/// SPIs without end (a broken one) must not grow this table without end.
/// At the cap the expired ones go (at most once a second); a new SPI that
/// still finds no room is not expected, which costs only its first ESP
/// packets if it comes before its SA.
pub const EXPECT_MAX: usize = 65_536;

/// A held ESP packet.
pub struct Held {
    /// Its SPI.
    pub spi: u32,
    /// The packet as read (ESP from its header on).
    pub packet: PacketBuf,
    /// What its outer headers said, as the batch records it.
    pub source: Arrival,
    /// When it is dropped if its SA has not come.
    until: Instant,
}

/// The expected SPIs and the packets held for them.
#[derive(Default)]
pub struct Hold {
    /// SPI -> until when it is expected.
    expected: HashMap<u32, Instant>,
    /// Held packets, oldest first.
    held: Vec<Held>,
    /// When `expected` may be swept for expired SPIs again.
    next_sweep: Option<Instant>,
    /// Buffers to swap into the staging area in place of held packets.
    spare: Vec<PacketBuf>,
}

impl Hold {
    /// A request offering `spi` is leaving.
    pub fn expect(&mut self, spi: u32, now: Instant) {
        if self.expected.len() >= EXPECT_MAX && self.next_sweep.is_none_or(|t| now >= t) {
            self.expected.retain(|_, until| now < *until);
            self.next_sweep = Some(now + Duration::from_secs(1));
        }
        if self.expected.len() < EXPECT_MAX {
            self.expected.insert(spi, now + EXPECT_FOR);
        }
    }

    /// The SA with `spi` is installed (or will never be): no more holding
    /// for it. Its held packets wait for [`Hold::release`].
    pub fn settled(&mut self, spi: u32) {
        self.expected.remove(&spi);
    }

    /// Anything to release or expire?
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Should a packet for `spi`, for which no SA is installed, be held?
    pub fn wants(&self, spi: u32, now: Instant) -> bool {
        self.held.len() < HOLD_MAX && self.expected.get(&spi).is_some_and(|until| now < *until)
    }

    /// Hold `slot`'s packet: it is swapped for an empty buffer.
    pub fn hold(&mut self, spi: u32, slot: &mut PacketBuf, source: Arrival, now: Instant) {
        let mut packet = self.spare.pop().unwrap_or_default();
        std::mem::swap(&mut packet, slot);
        self.held.push(Held { spi, packet, source, until: now + HOLD_FOR });
    }

    /// Put the held packets whose SA is now installed (`installed`) into
    /// `staging` from slot 0 on, at most `staging.len()`, with their sources
    /// in `sources`; returns how many.
    pub fn release(
        &mut self,
        installed: impl Fn(u32) -> bool,
        staging: &mut [PacketBuf],
        sources: &mut Vec<Arrival>,
    ) -> usize {
        let mut n = 0;
        let mut k = 0;
        while k < self.held.len() && n < staging.len() {
            if !installed(self.held[k].spi) {
                k += 1;
                continue;
            }
            let mut h = self.held.remove(k);
            std::mem::swap(&mut h.packet, &mut staging[n]);
            self.spare.push(h.packet);
            sources.push(h.source);
            n += 1;
        }
        n
    }

    /// Drop the packets held past their time and forget SPIs expected past
    /// theirs; returns how many packets were dropped.
    pub fn expire(&mut self, now: Instant) -> usize {
        self.expected.retain(|_, until| now < *until);
        let before = self.held.len();
        let (gone, kept): (Vec<Held>, Vec<Held>) =
            std::mem::take(&mut self.held).into_iter().partition(|h| now >= h.until);
        self.held = kept;
        self.spare.extend(gone.into_iter().map(|h| h.packet));
        self.spare.truncate(HOLD_MAX);
        before - self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(spi: u32) -> PacketBuf {
        PacketBuf::with_payload(&[spi.to_be_bytes().as_slice(), &[0, 0, 0, 1]].concat())
    }

    #[test]
    fn holds_only_expected_spis_and_releases_them_once_installed() {
        let now = Instant::now();
        let mut h = Hold::default();
        h.expect(0xc000_0001, now);
        assert!(h.wants(0xc000_0001, now));
        assert!(!h.wants(0xc000_0002, now), "an SPI nobody asked for is not held");
        let mut slot = packet(0xc000_0001);
        h.hold(0xc000_0001, &mut slot, Arrival::default(), now);
        assert!(slot.is_empty(), "the slot gets an empty buffer");
        let mut staging = vec![PacketBuf::new(), PacketBuf::new()];
        let mut sources = Vec::new();
        assert_eq!(h.release(|_| false, &mut staging, &mut sources), 0, "not installed yet");
        h.settled(0xc000_0001);
        assert!(!h.wants(0xc000_0001, now), "installed: the normal path takes it");
        assert_eq!(h.release(|s| s == 0xc000_0001, &mut staging, &mut sources), 1);
        assert_eq!(&staging[0].data()[..4], &0xc000_0001u32.to_be_bytes());
        assert_eq!(sources.len(), 1);
        assert!(h.is_empty());
    }

    #[test]
    fn expected_spis_are_bounded_and_the_expired_ones_make_room() {
        let now = Instant::now();
        let mut h = Hold::default();
        for spi in 0..EXPECT_MAX as u32 {
            h.expect(spi, now);
        }
        h.expect(u32::MAX, now);
        assert!(!h.wants(u32::MAX, now), "full: not expected");
        assert_eq!(h.expected.len(), EXPECT_MAX);
        let later = now + EXPECT_FOR;
        h.expect(u32::MAX, later);
        assert!(h.wants(u32::MAX, later), "the expired ones made room");
        assert_eq!(h.expected.len(), 1);
    }

    #[test]
    fn drops_what_waits_too_long_and_is_bounded() {
        let now = Instant::now();
        let mut h = Hold::default();
        h.expect(7, now);
        for _ in 0..HOLD_MAX {
            assert!(h.wants(7, now));
            h.hold(7, &mut packet(7), Arrival::default(), now);
        }
        assert!(!h.wants(7, now), "full: no more held");
        assert_eq!(h.expire(now + HOLD_FOR / 2), 0);
        assert_eq!(h.expire(now + HOLD_FOR), HOLD_MAX);
        assert!(h.is_empty());
        assert!(h.wants(7, now + HOLD_FOR), "still expected");
        assert!(!h.wants(7, now + EXPECT_FOR), "an answer that never came is forgotten");
        h.expire(now + EXPECT_FOR);
        assert!(h.expected.is_empty());
    }
}
