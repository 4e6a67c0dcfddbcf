//! TUN -> ESP component (encap) -> UDP 4500 or raw ESP.
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use wasmsec_wire::ip::{Address, Selectors};

use super::channel::Report;
use super::group::Split;
use super::gso::{self, UdpOut};
use super::tos;
use super::{Direction, Loop, POLL_MS};
use crate::config::Encapsulation;
use crate::stats;
use crate::sys;
use crate::wasm::esp::{DropReason, EncapVerdict, EspInstance, Mark};

/// How often traffic without an SA may ask for a `trap` connection, per
/// routing domain (a tenant's traffic does not hold back another's).
const ACQUIRE_INTERVAL: Duration = Duration::from_millis(500);

/// When each domain's traffic last asked for a `trap` connection.
#[derive(Default)]
struct Acquires {
    last: HashMap<usize, Instant>,
}

impl Acquires {
    /// Whether `domain` may ask now (and then not again for a while).
    fn may(&mut self, domain: usize, now: Instant) -> bool {
        match self.last.get(&domain) {
            Some(t) if now.saturating_duration_since(*t) < ACQUIRE_INTERVAL => false,
            _ => {
                self.last.insert(domain, now);
                true
            }
        }
    }
}

impl Loop {
    /// Run until the daemon stops.
    pub fn run_outbound(mut self) {
        // The manual tunnels' peers are in the table from the start.
        self.count_peers();
        let mut fds = self.poll_fds();
        let mut acquires = Acquires::default();
        let mut last_expiry = Instant::now();
        let mut slots = vec![0usize; self.batch];
        let mut split = Split::default();
        let mut poll = sys::PollSet::default();
        while !sys::stop_requested() {
            self.report_expiries(&mut last_expiry);
            // A slice of a new instance's SAs between batches.
            let rebuilding = self.rebuilding();
            if rebuilding {
                self.advance_rebuilds();
            }
            // Segments still waiting, or a rebuild going: look, but do not wait.
            let wait = if self.cutter.has_pending() || rebuilding { 0 } else { POLL_MS };
            let ready = match poll.wait(&fds, wait) {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "poll on TUN failed");
                    continue;
                }
            };
            // Before the packets: an SA change sent quietly may be what
            // they need.
            self.apply_commands(ready[0]);
            if ready[0] {
                // A reload may have added or removed a tenant's TUN device
                // (sent with a wake-up).
                fds = self.poll_fds();
            }
            let n = self.read_tuns(&ready[1..]);
            for (((slot, p), &d), tos) in
                slots.iter_mut().zip(&self.staging[..n]).zip(&self.from_domain).zip(&mut self.inner_tos)
            {
                *slot = self.groups.route_out(d, p.data());
                *tos = tos::of_inner(p.data());
            }
            split.each(&slots[..n], |g, idx| self.outbound_group(g, idx, &mut acquires));
        }
    }

    /// Seal group `g`'s share `idx` of the staged packets and send what
    /// its guest sealed.
    fn outbound_group(&mut self, g: usize, idx: &[usize], acquires: &mut Acquires) {
        match self.call_group(g, idx, Direction::Outbound, EspInstance::encap) {
            Some(verdicts) => self.act_outbound(g, idx, verdicts, acquires),
            // A tenant's group without SAs has no instance to ask
            // (`call_group` dropped its packets as no policy), but its
            // traffic may be for a `trap` connection of its.
            None if self.groups.list[g].inst.is_none() => {
                if let Some(&i) = idx.first() {
                    self.acquire(acquires, self.groups.list[g].domain, self.staging[i].data());
                }
            }
            None => {}
        }
        self.take_back(g, idx);
    }

    /// Send what group `g`'s guest sealed; count the rest.
    fn act_outbound(&mut self, g: usize, idx: &[usize], verdicts: Vec<EncapVerdict>, acquires: &mut Acquires) {
        let domain = self.groups.list[g].domain;
        // Verdicts come from a call on the instance, so it is there.
        let Some(inst) = &self.groups.list[g].inst else { return };
        let st = inst.store.data();
        let mut lies = 0;
        for (k, ((p, mark), v)) in st.batch.iter().zip(&st.marks).zip(verdicts).enumerate() {
            match v {
                // Only what this call sealed leaves, and only to the peer of
                // the SA that sealed it: anything else would be LAN plaintext
                // on the WAN, or one tunnel's traffic sent to another's peer.
                EncapVerdict::Send(peer) if matches!(mark, Mark::Sealed { peer: to, .. } if *to == peer) => {
                    let &Mark::Sealed { spi: sealed_by, .. } = mark else { continue };
                    let spi = Some(sealed_by);
                    // The outer DSCP and ECN as the sealing SA's child says.
                    let inner = idx.get(k).and_then(|&i| self.inner_tos.get(i)).copied().unwrap_or(0);
                    let tos = tos::outer(inner, self.copy.of(sealed_by));
                    match self.peers.get(peer as usize) {
                        // ESP in UDP: gathered for one GSO send per run of
                        // same-sized datagrams (`gso`).
                        Some(to) if to.encapsulation == Encapsulation::Udp => {
                            let out = UdpOut { udp: &self.udp, stats: &self.stats, traffic: &self.traffic };
                            self.gso.push(&out, SocketAddrV4::new(to.address, to.port), to.source, tos, spi, p.data());
                        }
                        // Raw ESP: gathered for one `sendmmsg` (below).
                        Some(to) if self.raw.is_some() => self.raw_out.push((k, to.address, to.source, tos, spi)),
                        _ => {
                            if self.send(peer, p.data(), tos)
                                && let Some(t) = spi.and_then(|s| self.traffic.get(&s))
                            {
                                t.count(p.len());
                            }
                        }
                    }
                }
                EncapVerdict::Send(_) | EncapVerdict::Missing => lies += 1,
                EncapVerdict::Drop(r) => {
                    debug!(reason = r.name(), "outbound drop");
                    self.stats.out_drop(r);
                    // Traffic without an SA may start a `trap` connection.
                    if r == DropReason::NoPolicy {
                        self.acquire(acquires, domain, p.data());
                    }
                }
            }
        }
        let out = UdpOut { udp: &self.udp, stats: &self.stats, traffic: &self.traffic };
        self.gso.flush(&out);
        if let (Some(raw), false) = (&self.raw, self.raw_out.is_empty()) {
            let gathered = &self.raw_out;
            let msg = |i: usize| {
                let (k, to, from, tos, _) = gathered[i];
                (st.batch[k].data(), to, from, tos)
            };
            let sent = |i: usize, r: std::io::Result<()>| {
                let (k, _, _, _, spi) = gathered[i];
                match r {
                    Ok(()) => gso::sent(&out, spi, st.batch[k].len()),
                    Err(e) => {
                        debug!(error = %e, "ESP send failed");
                        stats::inc(&self.stats.tx_errors);
                    }
                }
            };
            match &mut self.link {
                Some(link) => {
                    let n = link.send_many(gathered.len(), msg, raw, sent);
                    stats::add(&self.stats.esp_tx_link, n.link);
                    stats::add(&self.stats.esp_tx_link_fallback, n.ip);
                }
                None => raw.send_many((0..gathered.len()).map(msg), sent),
            }
        }
        self.raw_out.clear();
        self.protocol_errors(g, Direction::Outbound, lies);
    }

    /// What the loop polls, in order: the inbox, then each domain's TUN
    /// device (-1, which poll skips, for a removed one).
    fn poll_fds(&self) -> Vec<i32> {
        let mut fds: Vec<i32> = vec![self.inbox.as_ref().map_or(-1, AsRawFd::as_raw_fd)];
        fds.extend(self.tuns.iter().map(|t| t.as_ref().map_or(-1, AsRawFd::as_raw_fd)));
        fds
    }

    /// Read up to a batch of inner packets from the ready TUN devices,
    /// noting each one's domain.
    fn read_tuns(&mut self, ready: &[bool]) -> usize {
        self.from_domain.clear();
        // Segments of a super-packet that did not fit the last batch first.
        let mut n = self.cut_pending(0);
        // Devices without offload headers first, then those with (cut into
        // segments as they are read).
        let ready_tun = |tuns: &[Option<sys::Tun>], d: usize, vnet: bool| {
            ready.get(d) == Some(&true) && tuns[d].as_ref().is_some_and(|t| t.vnet() == vnet)
        };
        for d in 0..self.tuns.len() {
            if !ready_tun(&self.tuns, d, false) {
                continue;
            }
            let Some(tun) = self.tuns[d].as_ref() else { continue };
            while n < self.staging.len() {
                match tun.recv(self.staging[n].recv_area()) {
                    Ok(len) => {
                        self.staging[n].set_received(len);
                        self.from_domain.push(d);
                        n += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        warn!(error = %e, domain = d, "TUN read failed");
                        break;
                    }
                }
            }
        }
        for d in 0..self.tuns.len() {
            if ready_tun(&self.tuns, d, true) {
                n = self.read_vnet(d, n);
            }
        }
        stats::add(&self.stats.tun_rx_packets, n as u64);
        n
    }

    /// Send a sealed packet to peer `peer` with outer TOS `tos`; true if
    /// it left.
    fn send(&self, peer: u32, data: &[u8], tos: u8) -> bool {
        let Some(p) = self.peers.get(peer as usize) else {
            stats::inc(&self.stats.guest_protocol_errors);
            return false;
        };
        let r = match (p.encapsulation, &self.raw) {
            (Encapsulation::Udp, _) => {
                sys::send_udp(&self.udp, SocketAddrV4::new(p.address, p.port), p.source, data, None, tos)
            }
            (Encapsulation::None, Some(raw)) => raw.send_to(data, p.address, p.source, tos),
            (Encapsulation::None, None) => Err(std::io::Error::other("no raw ESP socket")),
        };
        match r {
            Ok(_) => {
                stats::inc(&self.stats.esp_tx_packets);
                stats::add(&self.stats.esp_tx_bytes, data.len() as u64);
                true
            }
            Err(e) => {
                debug!(error = %e, "ESP send failed");
                stats::inc(&self.stats.tx_errors);
                false
            }
        }
    }
}

/// The destination of an inner IPv4 or IPv6 packet (what a `trap`
/// connection's remote subnets are matched against), as the selectors'
/// parse reads it.
impl Loop {
    /// Traffic of routing domain `domain`, inner packet `p`, met no SA:
    /// ask the control thread for a `trap` connection of that domain (only
    /// of that domain: a tenant's traffic never starts another domain's
    /// negotiation), at most once per [`ACQUIRE_INTERVAL`] per domain.
    fn acquire(&self, acquires: &mut Acquires, domain: usize, p: &[u8]) {
        if let (Some(up), Some(dst)) = (&self.up, destination(p))
            && acquires.may(domain, Instant::now())
        {
            up.send(Report::Acquire { domain, dst });
        }
    }
}

fn destination(p: &[u8]) -> Option<std::net::IpAddr> {
    match Selectors::parse(p).ok()?.dst {
        Address::V4(a) => Some(a.into()),
        Address::V6(a) => Some(a.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_without_an_sa_asks_for_a_trap_connection_of_its_own_domain() {
        use super::super::install_tests::{udp_to_net, wired_loop};
        let (mut l, _ks, _to_loop, reports) = wired_loop();
        let mut acquires = Acquires::default();
        let asked = |reports: &super::super::channel::Receiver<Report>| -> Vec<(usize, std::net::IpAddr)> {
            reports
                .drain()
                .into_iter()
                .filter_map(|r| match r {
                    Report::Acquire { domain, dst } => Some((domain, dst)),
                    _ => None,
                })
                .collect()
        };
        // The group's guest has no SA for it (no policy): the host asks,
        // naming the group's domain.
        l.groups.list[0].domain = 2;
        l.staging[0] = udp_to_net(7);
        l.outbound_group(0, &[0], &mut acquires);
        assert_eq!(asked(&reports), [(2, "10.0.7.9".parse().unwrap())]);
        // A tenant's group with no SA yet has no instance: the host asks
        // all the same, once per interval.
        l.groups.list[0].inst = None;
        l.groups.list[0].domain = 3;
        for _ in 0..2 {
            l.staging[0] = udp_to_net(8);
            l.outbound_group(0, &[0], &mut acquires);
        }
        assert_eq!(asked(&reports), [(3, "10.0.8.9".parse().unwrap())]);
        assert_eq!(l.stats.out_drops(DropReason::NoPolicy), 3, "each dropped and counted");
    }

    #[test]
    fn each_domain_may_ask_for_a_trap_connection_twice_a_second() {
        let mut a = Acquires::default();
        let t0 = Instant::now();
        assert!(a.may(0, t0) && a.may(3, t0), "each domain its own first");
        assert!(!a.may(0, t0 + Duration::from_millis(100)) && !a.may(3, t0 + Duration::from_millis(499)));
        assert!(a.may(0, t0 + ACQUIRE_INTERVAL), "and again after the interval");
        assert!(!a.may(0, t0 + ACQUIRE_INTERVAL + Duration::from_millis(1)));
        assert!(a.may(3, t0 + ACQUIRE_INTERVAL));
    }

    #[test]
    fn a_trap_is_matched_on_either_family_s_destination() {
        let mut v4 = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 1, 10, 198, 18, 2, 10];
        assert_eq!(destination(&v4), Some("198.18.2.10".parse().unwrap()));
        let mut v6 = vec![0u8; 40];
        v6[0] = 0x60;
        v6[24..26].copy_from_slice(&[0xfd, 0]);
        v6[27] = 2;
        v6[39] = 0x10;
        assert_eq!(destination(&v6), Some("fd00:2::10".parse().unwrap()));
        // Short or of another version: none.
        v4.truncate(19);
        v6.truncate(39);
        assert_eq!(
            (destination(&v4), destination(&v6), destination(&[0x50; 40]), destination(&[])),
            (None, None, None, None)
        );
    }
}
