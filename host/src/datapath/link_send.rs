//! Raw ESP sent through a packet socket (`[network] raw_esp_send =
//! "link"`, and with `"auto"` while nothing hooks the IP layer's output
//! path, `output_hooks`): each datagram gets its IPv4 header from us and leaves by the
//! interface and to the neighbour the kernel's tables name, without the IP
//! layer's per-datagram work (route lookup, `ip_append_data`'s copy with
//! checksum, the output hooks). On this machine kind that work was most of
//! the sending thread (README, "What limits raw ESP").
//!
//! The header is the one the IP layer would write: the namespace's default
//! TTL, DF set, the TOS byte the data path chose; and the datagram gets the
//! queueing priority the IP layer derives from that TOS (`tos::
//! queue_priority`), so that qdiscs sorting by it see both paths alike.
//!
//! The price, documented with the option: nftables rules in the `ip` and
//! `inet` families' output and postrouting hooks do not see these
//! datagrams (the `netdev` egress hook does), and the next hop is taken
//! from the tables, asked again every second (for a peer without one,
//! every 100 ms). Whatever cannot go that way goes through the IP socket
//! as before, in order with the rest: a peer without a usable next hop
//! (no route out of an Ethernet interface, no neighbour entry yet: the IP
//! layer then resolves it), one datagram per second to a peer whose
//! neighbour entry is unconfirmed (so that the kernel checks it again),
//! and a datagram the packet socket refuses (one larger than the
//! interface's MTU, which the IP layer fragments or refuses as before).
use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use wasmsec_wire::ipv4;

use crate::nexthop::{NextHop, Resolver};
use crate::output_hooks::OutputHooks;
use crate::sys::{LinkDatagram, PacketSocket, RAW_BATCH, RawEsp};

/// How long a peer's next hop is used before it is asked again.
const REFRESH: Duration = Duration::from_secs(1);
/// How long a peer without a next hop goes through the IP socket before
/// it is asked again: the IP layer's ARP usually answers within a round
/// trip, and the packet socket should be taken back soon after.
const RETRY: Duration = Duration::from_millis(100);
/// Next hops asked at most per batch: each is two netlink round trips on
/// the sending thread, and thousands of peers must not stall it.
const RESOLVES_PER_BATCH: usize = 8;
/// Peers whose next hop is kept before the stale ones are dropped.
const MAX_HOPS: usize = 16_384;
/// IPv4 header: no options.
const IP_HEADER: usize = 20;
/// IP protocol 50.
const ESP: u8 = 50;

/// `raw_esp_send = "auto"`: the packet socket only while nothing hooks the
/// IP layer's output path; looked at again every [`REFRESH`].
struct Gate {
    hooks: OutputHooks,
    /// Why the IP socket sends everything now, if it does.
    reason: Option<String>,
    until: Instant,
}

impl Gate {
    /// May the packet socket send now?
    fn open(&mut self, now: Instant) -> bool {
        if now >= self.until {
            let reason = self.hooks.reason();
            match (&self.reason, &reason) {
                (None, Some(r)) => {
                    info!(reason = %r, "raw ESP through the IP socket from now on (raw_esp_send = \"auto\")")
                }
                (Some(_), None) => {
                    info!(
                        "raw ESP through the packet socket again: nothing hooks the output path (raw_esp_send = \"auto\")"
                    )
                }
                _ => {}
            }
            self.reason = reason;
            self.until = now + REFRESH;
        }
        self.reason.is_none()
    }
}

/// What the last look-up found for a peer.
struct Hop {
    next: Option<NextHop>,
    until: Instant,
    /// An unconfirmed neighbour: the next datagram goes through the IP layer.
    probe: bool,
}

/// Where a batch's raw ESP went (for the counters).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkSent {
    /// Datagrams sent through the packet socket.
    pub link: u64,
    /// Datagrams sent through the IP socket instead.
    pub ip: u64,
}

pub struct LinkEsp {
    sock: PacketSocket,
    resolver: Resolver,
    /// By destination and source (with rules by source, a host with two
    /// uplinks routes each of its addresses out of its own).
    hops: HashMap<(Ipv4Addr, Ipv4Addr), Hop>,
    /// The IPv4 source: the address the daemon listens on, or (unspecified)
    /// the route's preferred source.
    bind: Ipv4Addr,
    /// Datagrams gathered for the packet socket: index into the batch's
    /// messages and next hop.
    run: Vec<(usize, NextHop)>,
    /// The TTL the IP layer gives a raw socket's datagrams: the
    /// namespace's `net.ipv4.ip_default_ttl` when the daemon started.
    ttl: u8,
    /// With `"auto"`: whether the packet socket may send.
    gate: Option<Gate>,
}

/// The namespace's default TTL (64 if it cannot be read).
fn default_ttl() -> u8 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_default_ttl")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(64)
}

impl LinkEsp {
    /// With `auto`, only while nothing hooks the IP layer's output path.
    pub fn open(bind: Ipv4Addr, auto: bool) -> io::Result<LinkEsp> {
        let gate = if auto {
            let mut hooks = OutputHooks::open()?;
            let reason = hooks.reason();
            match &reason {
                None => {
                    info!("raw ESP through the packet socket: nothing hooks the output path (raw_esp_send = \"auto\")")
                }
                Some(r) => info!(reason = %r, "raw ESP through the IP socket (raw_esp_send = \"auto\")"),
            }
            Some(Gate { hooks, reason, until: Instant::now() + REFRESH })
        } else {
            None
        };
        Ok(LinkEsp {
            sock: PacketSocket::open()?,
            resolver: Resolver::open()?,
            hops: HashMap::new(),
            bind,
            run: Vec::with_capacity(RAW_BATCH),
            ttl: default_ttl(),
            gate,
        })
    }

    /// Send `n` ESP datagrams in order, `msg(i)` being the `i`th and its
    /// peer: those with a usable next hop through the packet socket, the
    /// rest through `ip`. `sent(i, result)` hears what became of the `i`th.
    pub fn send_many<'a>(
        &mut self,
        n: usize,
        msg: impl Fn(usize) -> (&'a [u8], Ipv4Addr, Ipv4Addr, u8),
        ip: &RawEsp,
        mut sent: impl FnMut(usize, io::Result<()>),
    ) -> LinkSent {
        let now = Instant::now();
        if let Some(g) = &mut self.gate
            && !g.open(now)
        {
            ip.send_many((0..n).map(&msg), sent);
            return LinkSent { link: 0, ip: n as u64 };
        }
        let mut resolves = 0;
        let mut counts = LinkSent::default();
        for i in 0..n {
            let (data, to, from, tos) = msg(i);
            match self.hop(to, from, now, &mut resolves) {
                Some(next) if data.len() + IP_HEADER <= usize::from(u16::MAX) => {
                    self.run.push((i, next));
                    if self.run.len() == RAW_BATCH {
                        self.flush(&msg, ip, &mut sent, &mut counts);
                    }
                }
                _ => {
                    // Through the IP layer; what was gathered before it
                    // goes first, so a peer's datagrams keep their order.
                    self.flush(&msg, ip, &mut sent, &mut counts);
                    counts.ip += 1;
                    sent(i, ip.send_to(data, to, from, tos).map(drop));
                }
            }
        }
        self.flush(&msg, ip, &mut sent, &mut counts);
        counts
    }

    /// The source a datagram from `from` (an SA's address, or
    /// unspecified) leaves with: the bound address, else the SA's.
    fn source(bind: Ipv4Addr, from: Ipv4Addr) -> Ipv4Addr {
        if bind.is_unspecified() { from } else { bind }
    }

    /// The next hop for a datagram to `to` from `from` now, or `None` to
    /// send it through the IP layer.
    fn hop(&mut self, to: Ipv4Addr, from: Ipv4Addr, now: Instant, resolves: &mut usize) -> Option<NextHop> {
        let key = (to, Self::source(self.bind, from));
        let fresh = self.hops.get(&key).is_some_and(|h| h.until > now);
        if !fresh {
            if *resolves >= RESOLVES_PER_BATCH {
                return None;
            }
            *resolves += 1;
            let src = (!key.1.is_unspecified()).then_some(key.1);
            let next = self.resolver.resolve(to, src).unwrap_or_else(|e| {
                debug!(peer = %to, error = %e, "next hop look-up failed");
                None
            });
            let probe = next.is_some_and(|n| n.unconfirmed);
            if self.hops.len() >= MAX_HOPS {
                // Peers come and go (a PoP's thousands): forget the stale.
                self.hops.retain(|_, h| h.until > now);
            }
            let until = now + if next.is_some() { REFRESH } else { RETRY };
            self.hops.insert(key, Hop { next, until, probe });
        }
        let h = self.hops.get_mut(&key)?;
        if std::mem::take(&mut h.probe) {
            return None;
        }
        h.next
    }

    /// Send the gathered run with the packet socket; a datagram it refuses
    /// goes through the IP socket at once, before those after it.
    fn flush<'a>(
        &mut self,
        msg: &impl Fn(usize) -> (&'a [u8], Ipv4Addr, Ipv4Addr, u8),
        ip: &RawEsp,
        sent: &mut impl FnMut(usize, io::Result<()>),
        counts: &mut LinkSent,
    ) {
        if self.run.is_empty() {
            return;
        }
        let LinkEsp { sock, hops, bind, run, ttl, .. } = self;
        let mut heads = [[0u8; IP_HEADER]; RAW_BATCH];
        // Each datagram's payload and queueing priority, taken with its head.
        let mut parts: [(&[u8], u32); RAW_BATCH] = [(&[], 0); RAW_BATCH];
        for ((head, part), &(i, next)) in heads.iter_mut().zip(parts.iter_mut()).zip(run.iter()) {
            let (data, to, from, tos) = msg(i);
            *part = (data, super::tos::queue_priority(tos));
            let src = match Self::source(*bind, from) {
                a if a.is_unspecified() => next.src.unwrap_or(a),
                a => a,
            };
            // As the IP layer writes it for a raw socket with path MTU
            // discovery: DF set, so the identification means nothing
            // (RFC 6864 section 4) and stays zero. The length was checked.
            let repr = ipv4::Repr {
                src_addr: src.octets(),
                dst_addr: to.octets(),
                protocol: ESP,
                payload_len: data.len(),
                ttl: *ttl,
                dscp_ecn: tos,
            };
            let _ = repr.emit(head);
        }
        let dgrams = heads.iter().zip(&parts).zip(run.iter()).map(|((head, &(data, priority)), &(_, next))| {
            LinkDatagram { head, data, ifindex: next.ifindex, mac: next.mac, priority }
        });
        let priorities = sock.priorities();
        sock.send_many(dgrams, |j, r| {
            let i = run[j].0;
            match r {
                Ok(()) => {
                    counts.link += 1;
                    sent(i, Ok(()));
                }
                Err(e) => {
                    let (data, to, from, tos) = msg(i);
                    debug!(peer = %to, error = %e, "the packet socket refused an ESP datagram: through the IP layer");
                    // Ask again next time: the route or neighbour may have
                    // moved. (Not for a refused priority: that is the
                    // kernel's, and the socket no longer sends one.)
                    let priority_refused = priorities && !sock.priorities() && e.raw_os_error() == Some(libc::EINVAL);
                    if !priority_refused {
                        hops.remove(&(to, Self::source(*bind, from)));
                    }
                    counts.ip += 1;
                    sent(i, ip.send_to(data, to, from, tos).map(drop));
                }
            }
        });
        run.clear();
        if priorities && !sock.priorities() {
            warn!(
                "this kernel takes no SO_PRIORITY control message: raw ESP through the packet socket goes without the queueing priority its TOS would give"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a network namespace of this thread's own, a kernel that refuses
    /// the priority's control message (`EINVAL`, here for a type it does
    /// not know, as one before Linux 6.14 refuses `SO_PRIORITY`): the
    /// datagram it refused goes through the IP socket at once and is
    /// counted there, the peer's next hop is kept (the refusal was the
    /// kernel's, not the route's), and the next datagram takes the packet
    /// socket again, without a priority.
    #[test]
    fn a_refused_priority_sends_that_datagram_through_ip_and_keeps_the_hop() {
        std::thread::spawn(|| {
            crate::sys::unshare_net().expect("a network namespace for this thread (root)");
            let ip = |args: &str| crate::sys::ip(&args.split(' ').collect::<Vec<_>>()).expect(args);
            ip("link add ws-l type veth peer name ws-l-peer");
            ip("link set ws-l up");
            ip("link set ws-l-peer up");
            ip("addr add 10.9.0.2/24 dev ws-l");
            ip("neigh replace 10.9.0.1 lladdr 02:00:00:00:00:0a dev ws-l nud permanent");
            crate::sys::PRIORITY_TYPE.set(0x7ff0);
            let (local, peer) = (Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 1));
            let mut link = LinkEsp::open(local, false).expect("a packet socket (root)");
            let ip_sock = RawEsp::open(local).expect("a raw ESP socket (root)");
            let data = [0u8; 40];
            // TOS 0x10 (low delay) gives queueing priority 6.
            let send = |link: &mut LinkEsp| {
                let mut results = Vec::new();
                let counts = link.send_many(
                    1,
                    |_| (&data[..], peer, Ipv4Addr::UNSPECIFIED, 0x10),
                    &ip_sock,
                    |i, r| results.push((i, r.map_err(|e| e.to_string()))),
                );
                (counts, results)
            };
            assert_eq!(send(&mut link), (LinkSent { link: 0, ip: 1 }, vec![(0, Ok(()))]));
            assert!(!link.sock.priorities(), "no more priorities on this socket");
            assert!(link.hops.get(&(peer, local)).is_some_and(|h| h.next.is_some()), "the next hop is kept");
            assert_eq!(send(&mut link), (LinkSent { link: 1, ip: 0 }, vec![(0, Ok(()))]));
        })
        .join()
        .unwrap();
    }
}
