//! UDP 4500 or raw ESP -> ESP component (decap) -> TUN. IKE on port 4500
//! (behind the non-ESP marker) and NAT keepalives are set aside.
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::Instant;

use tracing::{debug, warn};
use wasmsec_wire::udp_encap::Datagram;
use wasmsec_wire::{esp, ipv4};

use super::channel::{NotSent, Report, SaCommand, Sender};
use super::group::Split;
use super::{Direction, Loop, POLL_MS, tos};
use crate::control::sockets::MAX_IKE_MESSAGE;
use crate::keys::usage::Deliveries;
use crate::packet::PacketBuf;
use crate::stats;
use crate::sys;
use crate::wasm::esp::{DecapVerdict, DropReason, EspInstance, Mark};

/// Datagrams read per batch and socket at most, in batches: keepalives, IKE, runts
/// and SPI 0 do not fill a batch, so a flood of them would keep this thread
/// reading while the ESP already read, SA changes and expiries wait. Past
/// the budget the batch goes on as it is, and what the socket cannot hold
/// meanwhile the kernel drops, as it does ESP beyond line rate.
pub(super) const READS_PER_BATCH: usize = 4;

/// What a received ESP packet's outer headers said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Arrival {
    /// ESP in UDP: its SPI and source, for NAT-T port floating.
    pub float: Option<(u32, SocketAddrV4)>,
    /// The outer IPv4 header's TOS byte (DSCP and ECN, `tos.rs`).
    pub tos: u8,
}

/// The slot of a packet set aside by `hold`: no group's.
const HELD: usize = usize::MAX;
/// Poll timeout while packets are held, so they are dropped near their time.
const HELD_POLL_MS: i32 = 50;

/// Reports (IKE datagrams from UDP 4500 among them) that may wait for
/// the IKE thread before an IKE datagram is refused. Its rate is
/// thousands of messages a second; 1,024 waiting is a fraction of a
/// second of work, and at most ~10 MB. Beyond it IKE datagrams are
/// dropped and counted, as the kernel drops what a full socket buffer
/// cannot take.
pub const MAX_QUEUED_IKE: usize = 1024;

impl Loop {
    /// Run until the daemon stops.
    pub fn run_inbound(mut self) {
        // Order in `fds`: UDP, then raw ESP if any, then the inbox.
        let mut fds = vec![self.udp.as_raw_fd(), self.raw.as_ref().map_or(-1, |r| r.as_raw_fd())];
        fds.extend(self.inbox.as_ref().map(AsRawFd::as_raw_fd));
        let mut last_expiry = Instant::now();
        let mut slots = vec![0usize; self.batch];
        let mut split = Split::default();
        let mut poll = sys::PollSet::default();
        while !sys::stop_requested() {
            self.report_expiries(&mut last_expiry);
            self.expire_held();
            // A slice of a new instance's SAs between batches.
            let rebuilding = self.rebuilding();
            if rebuilding {
                self.advance_rebuilds();
            }
            // Datagrams of the last GRO read still waiting, or a rebuild
            // going: look, but do not wait; held packets: wake in time to
            // drop them.
            let pending = self.gro.has_pending();
            let wait = match (pending || rebuilding, self.hold.is_empty()) {
                (true, _) => 0,
                (false, false) => HELD_POLL_MS,
                (false, true) => POLL_MS,
            };
            let ready = match poll.wait(&fds, wait) {
                Ok(r) if pending || r.iter().any(|x| *x) => r,
                Ok(_) => {
                    // The timeout: SA changes sent quietly wait no longer.
                    self.apply_commands(false);
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "poll on sockets failed");
                    continue;
                }
            };
            // Before the packets: an SA change sent quietly (an inbound SA,
            // its expected SPI) may be what they need.
            self.apply_commands(ready.get(2) == Some(&true));
            // Held packets whose SA has come go first, then what is waiting.
            self.sources.clear();
            let by_spi = &self.groups.by_spi;
            let released = self.hold.release(|spi| by_spi.contains_key(&spi), &mut self.staging, &mut self.sources);
            let n = self.read_batch(ready, released);
            let now = Instant::now();
            for (i, slot) in slots.iter_mut().enumerate().take(n) {
                let spi = esp::Packet::new_checked(self.staging[i].data()).map(|e| e.spi()).ok();
                // One lookup per packet: a known SPI goes to its group; an
                // unknown one is held if an SA for it is on its way, else it
                // goes to group 0, which counts it.
                *slot = match spi.map(|s| (s, self.groups.by_spi.get(&s).copied())) {
                    Some((_, Some(g))) => g,
                    Some((spi, None)) if self.hold.wants(spi, now) => {
                        let source = self.sources.get(i).copied().unwrap_or_default();
                        self.hold.hold(spi, &mut self.staging[i], source, now);
                        stats::inc(&self.stats.esp_rx_held);
                        HELD
                    }
                    _ => 0,
                };
            }
            split.each(&slots[..n], |g, idx| {
                if g == HELD {
                    return;
                }
                if let Some(verdicts) = self.call_group(g, idx, Direction::Inbound, EspInstance::decap) {
                    self.act_inbound(g, idx, verdicts);
                }
                self.take_back(g, idx);
            });
        }
    }

    /// Drop the held packets whose SA did not come in time, as packets
    /// for an unknown SPI.
    fn expire_held(&mut self) {
        if self.hold.is_empty() {
            return;
        }
        for _ in 0..self.hold.expire(Instant::now()) {
            self.stats.in_drop(DropReason::UnknownSpi);
        }
    }

    /// Deliver what group `g`'s guest opened; count the rest.
    fn act_inbound(&mut self, g: usize, idx: &[usize], verdicts: Vec<DecapVerdict>) {
        let domain = self.groups.list[g].domain;
        // Verdicts come from a call on the instance, so it is there.
        let Some(inst) = &mut self.groups.list[g].inst else { return };
        let st = inst.store.data_mut();
        let mut lies = 0;
        let mut counts = Deliveries::default();
        for (k, ((p, mark), v)) in st.batch.iter_mut().zip(&st.marks).zip(verdicts).enumerate() {
            match v {
                // Only what this call opened reaches the LAN, and no more of
                // it than the plaintext before the ESP trailer: anything else
                // would be a forged packet injected into the LAN.
                DecapVerdict::Deliver(len)
                    if len > 0
                        && matches!(mark, Mark::Opened { len: opened, .. } if u64::from(len) + 2 <= u64::from(*opened)) =>
                {
                    let &Mark::Opened { spi, esp_len, counted, .. } = mark else { continue };
                    // Past its SA's hard limit: not delivered, whatever the
                    // guest counted (an honest one drops it too).
                    if !counts.pass(&st.keys, counted, spi, len as usize, &mut st.limits_reached) {
                        self.stats.in_drop(DropReason::SaExpired);
                        continue;
                    }
                    if let Some(t) = self.traffic.get(&spi) {
                        t.count(esp_len as usize);
                    }
                    let arrival = idx.get(k).and_then(|&i| self.sources.get(i)).copied().unwrap_or_default();
                    if let Some((spi, src)) = arrival.float {
                        follow_peer(&mut self.floats, self.to_outbound.as_ref(), spi, src);
                    }
                    p.truncate(len as usize);
                    if tos::decap(arrival.tos, p.data_mut(), self.copy.of(spi).dscp_in).is_err() {
                        // RFC 6040 section 4.2: a congestion mark the inner
                        // packet cannot carry.
                        stats::inc(&self.stats.rx_ecn_drops);
                        continue;
                    }
                    self.tun_out.deliver(&self.tuns, domain, p.data(), &self.stats);
                }
                DecapVerdict::Deliver(_) | DecapVerdict::Missing => lies += 1,
                DecapVerdict::Drop(r) => {
                    debug!(reason = r.name(), "inbound drop");
                    self.stats.in_drop(r);
                }
            }
        }
        counts.finish(&mut st.limits_reached);
        self.tun_out.flush(&self.tuns, &self.stats);
        self.protocol_errors(g, Direction::Inbound, lies);
    }

    /// Fill the batch with ESP packets from the ready sockets; keepalives
    /// and IKE are counted and set aside.
    /// Slots `..start` are taken already; returns the end of the batch.
    /// Each socket is read at most [`READS_PER_BATCH`] times the batch's
    /// datagrams, ESP or not, and the two take turns at being read first:
    /// a flood on one (non-ESP datagrams, or ESP filling every batch) does
    /// not keep the other's peers from being read.
    pub(super) fn read_batch(&mut self, ready: &[bool], start: usize) -> usize {
        let udp = ready[0] || self.gro.has_pending();
        let raw = self.raw.is_some() && ready.get(1) == Some(&true);
        self.raw_first = !self.raw_first;
        let mut n = start;
        if raw && self.raw_first {
            n = self.read_raw(n);
        }
        if udp {
            let mut budget = READS_PER_BATCH * self.staging.len();
            n = self.read_udp(n, &mut budget);
        }
        if raw && !self.raw_first {
            n = self.read_raw(n);
        }
        n
    }

    /// Fill slots `n..` from the raw ESP socket, within its own budget;
    /// returns the end of the batch.
    fn read_raw(&mut self, mut n: usize) -> usize {
        let Some(raw) = &self.raw else { return n };
        let batch = self.staging.len();
        let mut budget = READS_PER_BATCH * batch;
        let mut lens = [0usize; sys::RAW_BATCH];
        while n < batch && budget > 0 {
            let want = (batch - n).min(sys::RAW_BATCH).min(budget);
            budget -= want;
            let got = match raw.recv_many(self.staging[n..].iter_mut().map(PacketBuf::recv_area), &mut lens[..want]) {
                Ok(got) => got,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!(error = %e, "raw ESP receive failed");
                    break;
                }
            };
            // Datagrams landed in slots n..n + got; runts are counted
            // and the rest moved down over them.
            let mut kept = n;
            for (k, &len) in lens[..got].iter().enumerate() {
                let p = &mut self.staging[n + k];
                // A raw socket hands us the IP header too.
                let (ihl, tos) = ipv4::Packet::new_checked(&p.recv_area()[..len])
                    .map_or((0, 0), |ip| (ip.header_len(), ip.dscp_ecn()));
                p.set_received_skip(len, ihl);
                if ihl == 0 || esp::Packet::new_checked(p.data()).is_err() {
                    stats::inc(&self.stats.rx_runts);
                    continue;
                }
                stats::inc(&self.stats.esp_rx_packets);
                stats::add(&self.stats.esp_rx_bytes, p.len() as u64);
                self.staging.swap(kept, n + k);
                self.sources.push(Arrival { float: None, tos });
                kept += 1;
            }
            n = kept;
            if got < want {
                break;
            }
        }
        n
    }
}

impl Loop {
    /// Classify the UDP payload in staging slot `n`: ESP stays there (the
    /// next free slot is `n + 1`); keepalives are counted and IKE goes to
    /// the control thread (the slot is free again).
    pub(super) fn take_datagram(
        &mut self,
        n: usize,
        from: Option<SocketAddrV4>,
        tos: u8,
        to: Option<Ipv4Addr>,
    ) -> usize {
        let p = &self.staging[n];
        match Datagram::classify(p.data()) {
            Ok(Datagram::Esp(e)) => {
                stats::inc(&self.stats.esp_rx_packets);
                stats::add(&self.stats.esp_rx_bytes, p.len() as u64);
                let spi = esp::Packet::new_checked(e).map(|e| e.spi()).ok();
                self.sources.push(Arrival { float: spi.zip(from), tos });
                return n + 1;
            }
            Ok(Datagram::Keepalive) => stats::inc(&self.stats.keepalives_rx),
            Ok(Datagram::Ike(ike)) => match (&self.up, from) {
                // Refused here, before a copy, as the IKE thread would.
                _ if ike.len() > MAX_IKE_MESSAGE => stats::inc(&self.stats.ike_oversize),
                // This thread reads UDP 4500 at line rate and the IKE thread
                // takes one message at a time: without a bound, a flood of
                // small IKE messages would queue in memory without end
                // instead of being dropped at the socket.
                (Some(up), Some(from)) => {
                    match up.send_within(Report::Ike { from, to, data: ike.to_vec() }, MAX_QUEUED_IKE) {
                        Ok(()) => {}
                        Err(NotSent::Full) => stats::inc(&self.stats.ike_queue_full),
                        Err(NotSent::Gone) => stats::inc(&self.stats.ike_rx_unhandled),
                    }
                }
                _ => stats::inc(&self.stats.ike_rx_unhandled),
            },
            Err(_) => stats::inc(&self.stats.rx_runts),
        }
        n
    }
}

/// NAT-T port floating (RFC 3948, RFC 7296 section 2.23): authenticated ESP
/// from a new address or port means the peer's NAT mapping changed, so its
/// outbound SA follows. Only called for packets that passed the ICV check.
fn follow_peer(
    floats: &mut HashMap<u32, SocketAddrV4>,
    to_outbound: Option<&Sender<SaCommand>>,
    spi: u32,
    src: SocketAddrV4,
) {
    let Some(peer) = floats.get_mut(&spi) else { return };
    if *peer == src {
        return;
    }
    *peer = src;
    if let Some(link) = to_outbound {
        // The outbound half is named by this inbound SPI (`Kept::wire_spi`).
        link.send(SaCommand::MovePeer { spi, to: src });
    }
}
