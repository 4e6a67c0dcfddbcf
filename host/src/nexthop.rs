//! A peer's next hop as the kernel would pick it: the route (RTM_GETROUTE)
//! and the neighbour entry of its gateway or of the peer itself
//! (RTM_GETNEIGH), asked over rtnetlink. This is what a packet socket
//! needs to send raw ESP around the IP layer (`[network] raw_esp_send =
//! "link"`, `datapath/link_send.rs`): the interface, the next hop's
//! link-layer address, and the source address the kernel would use.
//!
//! The route is asked as the IP layer looks it up for the raw ESP socket,
//! so that policy routing (`ip rule`) picks the same table: from the
//! address the socket is bound to (`[network] listen`; a multi-homed
//! gateway's source routing) and for our user id (the kernel takes the
//! asker's, which is the daemon's). Not for IP protocol 50:
//! the kernel answers only TCP, UDP and ICMP there ("Unsupported ip
//! proto"), so rules on `ipproto` are not seen (README, `raw_esp_send`).
use std::io;
use std::net::Ipv4Addr;

use crate::netlink::{self, Asker, NLM_F_REQUEST, attr};

/// Where a datagram to a peer leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    /// The outgoing interface.
    pub ifindex: i32,
    /// The next hop's Ethernet address.
    pub mac: [u8; 6],
    /// The source address the route names (its preferred source).
    pub src: Option<Ipv4Addr>,
    /// The neighbour entry is not confirmed (STALE, DELAY, PROBE): the IP
    /// layer should see a datagram now and then, so that it checks again.
    pub unconfirmed: bool,
}

// rtnetlink constants (linux/rtnetlink.h, linux/neighbour.h).
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const RTA_DST: u16 = 1;
const RTA_SRC: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const RTN_UNICAST: u8 = 1;
const NUD_REACHABLE: u16 = 0x02;
const NUD_STALE: u16 = 0x04;
const NUD_DELAY: u16 = 0x08;
const NUD_PROBE: u16 = 0x10;
const NUD_PERMANENT: u16 = 0x80;
/// rtmsg and ndmsg (both 12 bytes), after nlmsghdr.
const FAMILY_HDR: usize = 12;

/// An rtnetlink socket for one question at a time.
pub struct Resolver {
    asker: Asker,
}

impl Resolver {
    pub fn open() -> io::Result<Resolver> {
        Ok(Resolver { asker: Asker::open(libc::NETLINK_ROUTE)? })
    }

    /// The next hop to `dst` for ESP from `src` (the address the raw
    /// socket is bound to, if any), or `None` when the kernel would not
    /// send it out of an Ethernet interface to a known neighbour (no
    /// route, a local or unreachable route, no or an unresolved neighbour
    /// entry).
    pub fn resolve(&mut self, dst: Ipv4Addr, src: Option<Ipv4Addr>) -> io::Result<Option<NextHop>> {
        let Some(route) = self.route(dst, src)? else { return Ok(None) };
        let hop = route.gateway.unwrap_or(dst);
        let Some((state, mac)) = self.neighbour(route.oif, hop)? else { return Ok(None) };
        let confirmed = state & (NUD_REACHABLE | NUD_PERMANENT) != 0;
        let usable = confirmed || state & (NUD_STALE | NUD_DELAY | NUD_PROBE) != 0;
        Ok(usable.then_some(NextHop { ifindex: route.oif, mac, src: route.src, unconfirmed: !confirmed }))
    }

    fn route(&mut self, dst: Ipv4Addr, src: Option<Ipv4Addr>) -> io::Result<Option<Route>> {
        let mut m = header(RTM_GETROUTE);
        // rtmsg: AF_INET, a /32 destination (and source), the rest zero.
        let src_len = if src.is_some() { 32 } else { 0 };
        m.extend_from_slice(&[libc::AF_INET as u8, 32, src_len, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        attr(&mut m, RTA_DST, &dst.octets());
        if let Some(src) = src {
            attr(&mut m, RTA_SRC, &src.octets());
        }
        let Some(reply) = self.asker.ask(m, RTM_NEWROUTE)? else { return Ok(None) };
        Ok(parse_route(reply))
    }

    fn neighbour(&mut self, oif: i32, hop: Ipv4Addr) -> io::Result<Option<(u16, [u8; 6])>> {
        let mut m = header(RTM_GETNEIGH);
        // ndmsg: AF_INET, padding, the interface, state, flags, type.
        m.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        m.extend_from_slice(&oif.to_ne_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        attr(&mut m, NDA_DST, &hop.octets());
        let Some(reply) = self.asker.ask(m, RTM_NEWNEIGH)? else { return Ok(None) };
        Ok(parse_neighbour(reply))
    }
}

struct Route {
    oif: i32,
    gateway: Option<Ipv4Addr>,
    src: Option<Ipv4Addr>,
}

/// A request's nlmsghdr.
fn header(kind: u16) -> Vec<u8> {
    netlink::request(kind, NLM_F_REQUEST)
}

/// The attributes after a 12-byte family header, as (type, data).
fn attrs(payload: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    netlink::attrs(payload.get(FAMILY_HDR..).unwrap_or_default())
}

fn ipv4(data: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(data).ok().map(Ipv4Addr::from)
}

/// A unicast route's interface, gateway and preferred source.
fn parse_route(payload: &[u8]) -> Option<Route> {
    if payload.get(7) != Some(&RTN_UNICAST) {
        return None;
    }
    let mut r = Route { oif: 0, gateway: None, src: None };
    for (kind, data) in attrs(payload) {
        match kind {
            RTA_OIF => r.oif = i32::from_ne_bytes(data.try_into().ok()?),
            RTA_GATEWAY => r.gateway = ipv4(data),
            RTA_PREFSRC => r.src = ipv4(data),
            _ => {}
        }
    }
    (r.oif > 0).then_some(r)
}

/// A neighbour entry's state and Ethernet address.
fn parse_neighbour(payload: &[u8]) -> Option<(u16, [u8; 6])> {
    let state = u16::from_ne_bytes([*payload.get(8)?, *payload.get(9)?]);
    let mac = attrs(payload).find(|(k, _)| *k == NDA_LLADDR)?.1;
    Some((state, mac.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_payload(kind: u8, attrs_: &[(u16, &[u8])]) -> Vec<u8> {
        let mut p = vec![libc::AF_INET as u8, 32, 0, 0, 254, 3, 0, kind, 0, 0, 0, 0];
        for (k, d) in attrs_ {
            attr(&mut p, *k, d);
        }
        p
    }

    #[test]
    fn a_unicast_route_names_its_interface_gateway_and_source() {
        let p = route_payload(
            RTN_UNICAST,
            &[
                (RTA_DST, &[198, 18, 0, 1]),
                (RTA_OIF, &7i32.to_ne_bytes()),
                (RTA_GATEWAY, &[10, 0, 0, 1]),
                (RTA_PREFSRC, &[10, 0, 0, 2]),
            ],
        );
        let r = parse_route(&p).expect("a unicast route");
        assert_eq!((r.oif, r.gateway, r.src), (7, Some(Ipv4Addr::new(10, 0, 0, 1)), Some(Ipv4Addr::new(10, 0, 0, 2))));
        // A local route (RTN_LOCAL, 2) or one without an interface is none.
        assert!(parse_route(&route_payload(2, &[(RTA_OIF, &1i32.to_ne_bytes())])).is_none());
        assert!(parse_route(&route_payload(RTN_UNICAST, &[(RTA_DST, &[1, 2, 3, 4])])).is_none());
        // Attributes that run past the end are not read.
        let mut cut = p.clone();
        cut.truncate(p.len() - 2);
        assert_eq!(parse_route(&cut).map(|r| r.src), Some(None));
    }

    #[test]
    fn a_neighbour_entry_gives_its_state_and_address() {
        let mut p = vec![libc::AF_INET as u8, 0, 0, 0, 7, 0, 0, 0];
        p.extend_from_slice(&NUD_STALE.to_ne_bytes());
        p.extend_from_slice(&[0, 1]);
        attr(&mut p, NDA_DST, &[10, 0, 0, 1]);
        attr(&mut p, NDA_LLADDR, &[2, 0, 0, 0, 0, 9]);
        assert_eq!(parse_neighbour(&p), Some((NUD_STALE, [2, 0, 0, 0, 0, 9])));
        // An entry without an address (INCOMPLETE) is none.
        p.truncate(FAMILY_HDR + 8);
        assert_eq!(parse_neighbour(&p), None);
    }

    #[test]
    fn the_kernel_answers_for_loopback_with_no_next_hop() {
        // Loopback is a local route: never a packet socket's to send.
        let mut r = Resolver::open().expect("rtnetlink socket");
        assert_eq!(r.resolve(Ipv4Addr::LOCALHOST, None).expect("an answer"), None);
    }

    /// In a network namespace of its own (this thread's): two Ethernet
    /// links, each with a gateway, the main table's default route out of
    /// the first, table 100's out of the second.
    fn policy_routed() -> (i32, i32) {
        crate::sys::unshare_net().expect("a network namespace for this thread (root)");
        let ip = |args: &str| crate::sys::ip(&args.split(' ').collect::<Vec<_>>()).expect(args);
        ip("link add ws-a type veth peer name ws-a-peer");
        ip("link add ws-b type veth peer name ws-b-peer");
        for dev in ["ws-a", "ws-a-peer", "ws-b", "ws-b-peer"] {
            ip(&format!("link set {dev} up"));
        }
        ip("addr add 10.9.0.2/24 dev ws-a");
        ip("addr add 10.9.1.2/24 dev ws-b");
        ip("neigh replace 10.9.0.1 lladdr 02:00:00:00:00:0a dev ws-a nud permanent");
        ip("neigh replace 10.9.1.1 lladdr 02:00:00:00:00:0b dev ws-b nud permanent");
        ip("route add default via 10.9.0.1 dev ws-a");
        ip("route add default via 10.9.1.1 dev ws-b table 100");
        // Not /sys/class/net: sysfs shows the process's first namespace.
        let index = |dev: &str| {
            let out = std::process::Command::new("ip").args(["-o", "link", "show", "dev", dev]).output().unwrap();
            let line = String::from_utf8(out.stdout).unwrap();
            line.split(':').next().unwrap().trim().parse().unwrap()
        };
        (index("ws-a"), index("ws-b"))
    }

    #[test]
    fn the_route_is_the_one_policy_routing_picks_for_our_esp() {
        // A thread of its own: its network namespace goes with it.
        std::thread::spawn(|| {
            let (a, b) = policy_routed();
            let ip = |args: &str| crate::sys::ip(&args.split(' ').collect::<Vec<_>>()).expect(args);
            let mut r = Resolver::open().expect("rtnetlink socket");
            let peer = Ipv4Addr::new(198, 51, 100, 7);
            let via = |r: &mut Resolver, src| r.resolve(peer, src).unwrap().map(|h| (h.ifindex, h.mac, h.src));
            let (out_a, out_b) = ((a, [2, 0, 0, 0, 0, 0x0a]), (b, [2, 0, 0, 0, 0, 0x0b]));
            assert_eq!(via(&mut r, None), Some((out_a.0, out_a.1, Some(Ipv4Addr::new(10, 9, 0, 2)))));
            // Source routing: ESP from the second link's address leaves by it.
            ip("rule add from 10.9.1.2 table 100");
            let from_b = Some(Ipv4Addr::new(10, 9, 1, 2));
            assert_eq!(via(&mut r, from_b).map(|h| (h.0, h.1)), Some(out_b));
            assert_eq!(via(&mut r, None).map(|h| (h.0, h.1)), Some(out_a), "no source: the main table");
            ip("rule del from 10.9.1.2 table 100");
            assert_eq!(via(&mut r, from_b).map(|h| (h.0, h.1)), Some(out_a));
            // A rule for our user id (root: unshare needs it).
            ip("rule add uidrange 0-0 table 100");
            assert_eq!(via(&mut r, None).map(|h| (h.0, h.1)), Some(out_b), "our uid");
        })
        .join()
        .unwrap();
    }
}
