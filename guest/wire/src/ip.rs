//! What an IPsec policy looks at in an IP packet: the selector fields of
//! RFC 4301 section 4.4.1.1 (addresses, Next Layer Protocol, ports; for ICMP
//! the type and code stand in for the ports, section 4.4.1.3).
use crate::{Error, Result, be16, ipv4, ipv6};

/// An IPv4 or IPv6 address, network order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Address {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Address {
    /// From 4 or 16 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Address> {
        match b.len() {
            4 => Some(Address::V4([b[0], b[1], b[2], b[3]])),
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                Some(Address::V6(a))
            }
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Address::V4(a) => a,
            Address::V6(a) => a,
        }
    }
}

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ESP: u8 = 50;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// Selector fields of one packet.
#[derive(Debug, Clone, Copy, Eq)]
pub struct Selectors {
    /// Source address.
    pub src: Address,
    /// Destination address.
    pub dst: Address,
    /// The upper-layer protocol (IPv6: the first next-header value).
    pub protocol: u8,
    /// Source and destination port, both or neither: `None` when the packet
    /// has none (OPAQUE: a non-first fragment, or a protocol without ports).
    /// For ICMP both are the type in the high and the code in the low byte,
    /// as IKEv2 traffic selectors carry them (RFC 7296 section 3.13.1).
    pub ports: Option<(u16, u16)>,
    /// Total length the IP header claims.
    pub total_len: usize,
}

/// Field by field, as derived, but always inlined: the engine compares a
/// packet's flow with the last one it looked up on every packet, and the
/// out-of-line call was 1 % of the ESP component's time.
impl PartialEq for Selectors {
    #[inline(always)]
    fn eq(&self, other: &Selectors) -> bool {
        let same_addresses = match (self.src, self.dst, other.src, other.dst) {
            (Address::V4(a), Address::V4(b), Address::V4(c), Address::V4(d)) => a == c && b == d,
            (Address::V6(a), Address::V6(b), Address::V6(c), Address::V6(d)) => a == c && b == d,
            (a, b, c, d) => a == c && b == d,
        };
        same_addresses
            && self.protocol == other.protocol
            && self.ports == other.ports
            && self.total_len == other.total_len
    }
}

impl Selectors {
    /// The source port, if the packet has ports.
    pub fn src_port(&self) -> Option<u16> {
        self.ports.map(|p| p.0)
    }

    /// The destination port, if the packet has ports.
    pub fn dst_port(&self) -> Option<u16> {
        self.ports.map(|p| p.1)
    }

    /// Read the selector fields from the head of an IP packet (at least the
    /// IP header; the ports are read if they are in `head`).
    #[inline(always)]
    pub fn parse(head: &[u8]) -> Result<Selectors> {
        let (src, dst, protocol, ports, total_len) = match head.first().map(|b| b >> 4) {
            Some(4) => {
                let p = ipv4::Packet::new_checked(head)?;
                // Only the first fragment carries the ports (RFC 4301 7.1).
                let l4 = if p.is_non_first_fragment() { None } else { ports(p.protocol(), p.payload()) };
                (Address::V4(p.src_addr()), Address::V4(p.dst_addr()), p.protocol(), l4, usize::from(p.total_len()))
            }
            Some(6) => {
                let p = ipv6::Packet::new_checked(head)?;
                let len = usize::from(p.payload_len()) + ipv6::HEADER_LEN;
                (
                    Address::V6(p.src_addr()),
                    Address::V6(p.dst_addr()),
                    p.next_header(),
                    ports(p.next_header(), p.payload()),
                    len,
                )
            }
            Some(_) => return Err(Error::Malformed),
            None => return Err(Error::Truncated),
        };
        Ok(Selectors { src, dst, protocol, ports, total_len })
    }
}

/// Where an IPv4 header without options and the four bytes after it (the
/// ports) end.
const V4_PORTS_END: usize = ipv4::HEADER_LEN + 4;
/// Where an IPv6 fixed header and the four bytes after it end.
const V6_PORTS_END: usize = ipv6::HEADER_LEN + 4;

/// Whether [`Selectors::parse`] of `head` succeeds with the same fields as
/// it did for `prev`, all but `total_len`: a shortcut for the packets of one
/// flow that follow each other in a batch, where parsing again costs the
/// ESP guest more than the comparison (#16). `false` says nothing: parse.
/// `prev` must be a head that parsed. Both heads must hold the four bytes
/// after the IP header (the ports, or what stands in for them), and:
/// - IPv4: headers without options, neither a non-first fragment, the
///   total length at least the header's; then version, header length,
///   protocol, addresses and those four bytes agreeing byte for byte means
///   the same selectors;
/// - IPv6: the first Next Header, the addresses and those four bytes
///   agreeing (the parse walks no extension header, so that is all it
///   reads).
///
/// Stricter than needed (ICMP's checksum is in those bytes, other protocols
/// have no ports).
#[inline(always)]
pub fn same_selectors(prev: &[u8], head: &[u8]) -> bool {
    match (prev.first(), head.first()) {
        (Some(0x45), Some(0x45)) => same_v4(prev, head),
        (Some(p), Some(h)) if p >> 4 == 6 && h >> 4 == 6 => same_v6(prev, head),
        _ => false,
    }
}

#[inline(always)]
fn same_v4(prev: &[u8], head: &[u8]) -> bool {
    let (Some(p), Some(h)) = (prev.get(..V4_PORTS_END), head.get(..V4_PORTS_END)) else {
        return false;
    };
    let whole_or_first = |b: &[u8]| be16(b, 6) & 0x1fff == 0;
    usize::from(be16(h, 2)) >= ipv4::HEADER_LEN
        && whole_or_first(h)
        && whole_or_first(p)
        && h[9] == p[9]
        && h[12..V4_PORTS_END] == p[12..V4_PORTS_END]
}

#[inline(always)]
fn same_v6(prev: &[u8], head: &[u8]) -> bool {
    let (Some(p), Some(h)) = (prev.get(..V6_PORTS_END), head.get(..V6_PORTS_END)) else {
        return false;
    };
    h[6] == p[6] && h[8..V6_PORTS_END] == p[8..V6_PORTS_END]
}

/// The length the IP header of `head` claims for its packet, as
/// [`Selectors::parse`] would put it in `total_len`, for a head that
/// [`same_selectors`] took (so its IP header is whole).
#[inline(always)]
pub fn claimed_len(head: &[u8]) -> usize {
    match head[0] >> 4 {
        6 => usize::from(be16(head, 4)) + ipv6::HEADER_LEN,
        _ => usize::from(be16(head, 2)),
    }
}

#[inline(always)]
fn ports(protocol: u8, l4: &[u8]) -> Option<(u16, u16)> {
    match protocol {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP if l4.len() >= 4 => Some((be16(l4, 0), be16(l4, 2))),
        // RFC 7296 section 3.13.1: ICMP type (high byte) and code (low byte)
        // stand in for both ports.
        PROTO_ICMP | PROTO_ICMPV6 if l4.len() >= 2 => Some((be16(l4, 0), be16(l4, 0))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    #[test]
    fn selectors_equal_only_when_every_field_is() {
        let v4 = |a: u8| Address::V4([10, 0, 0, a]);
        let v6 = |a: u8| Address::V6([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, a]);
        let base = Selectors { src: v4(1), dst: v4(2), protocol: PROTO_UDP, ports: Some((1, 2)), total_len: 40 };
        assert_eq!(base, base);
        let others = [
            Selectors { src: v4(3), ..base },
            Selectors { dst: v4(3), ..base },
            Selectors { src: v6(1), ..base },
            Selectors { dst: v6(2), ..base },
            Selectors { src: v6(1), dst: v6(2), ..base },
            Selectors { protocol: PROTO_TCP, ..base },
            Selectors { ports: None, ..base },
            Selectors { ports: Some((2, 1)), ..base },
            Selectors { total_len: 41, ..base },
        ];
        for o in others {
            assert_ne!(base, o);
            assert_ne!(o, base);
            assert_eq!(o, o);
        }
        let six = Selectors { src: v6(1), dst: v6(2), ..base };
        assert_ne!(six, Selectors { dst: v6(3), ..six });
    }

    #[test]
    fn ipv4_udp_ports_and_icmp_type_code() {
        let mut b = [0u8; 28];
        ipv4::Repr {
            src_addr: [10, 0, 0, 1],
            dst_addr: [10, 0, 1, 1],
            protocol: PROTO_UDP,
            payload_len: 8,
            ttl: 64,
            dscp_ecn: 0,
        }
        .emit(&mut b)
        .unwrap();
        b[20..22].copy_from_slice(&53u16.to_be_bytes());
        b[22..24].copy_from_slice(&4500u16.to_be_bytes());
        let s = Selectors::parse(&b).unwrap();
        assert_eq!((s.src, s.dst), (Address::V4([10, 0, 0, 1]), Address::V4([10, 0, 1, 1])));
        assert_eq!((s.ports, s.total_len), (Some((53, 4500)), 28));
        b[9] = PROTO_ICMP;
        b[20] = 8;
        b[21] = 0;
        let s = Selectors::parse(&b).unwrap();
        assert_eq!(s.ports, Some((0x0800, 0x0800)));
        // Ports cut off: still a valid packet head, ports unknown.
        let s = Selectors::parse(&b[..21]).unwrap();
        assert_eq!(s.ports, None);
    }

    /// A small deterministic generator, so the property test needs no crate.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn same_selectors_only_when_parse_agrees() {
        // Heads built to be alike in most bytes, so that both answers come
        // up often: whenever the shortcut says "same", parsing both must
        // succeed with equal fields but for the total length, and give the
        // total length `claimed_len` reads. IPv4 and IPv6 heads, and pairs
        // of one of each.
        let mut state = 0x2545_f491_4f6c_dd1d;
        let v4: &[u8] =
            &[0x45, 0, 0, 28, 0, 0, 0, 0, 64, PROTO_UDP, 0, 0, 10, 0, 0, 1, 10, 0, 1, 1, 0, 53, 0x11, 0x94, 0, 8, 0, 0];
        let mut v6 = vec![0x60, 0, 0, 0, 0, 8, PROTO_UDP, 64];
        v6.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        v6.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        v6.extend_from_slice(&[0, 53, 0x11, 0x94, 0, 8, 0, 0]);
        let values = [0, 1, 0x45, 0x46, 0x20, 6, 17, 0xff, 0x60, 0x61, PROTO_ICMPV6, 44];
        let (mut same, mut differ, mut same_v6) = (0, 0, 0);
        for _ in 0..400_000 {
            // Mostly both of one version; now and then one of each.
            let first = next(&mut state).is_multiple_of(2);
            let second = if next(&mut state).is_multiple_of(8) { !first } else { first };
            let pick = |v6_head: bool| if v6_head { v6.clone() } else { v4.to_vec() };
            let (mut a, mut b) = (pick(first), pick(second));
            for h in [&mut a, &mut b] {
                // Change a few bytes to one of a few values, then cut the
                // head somewhere in its last eight bytes.
                for _ in 0..(next(&mut state) % 3) {
                    let at = (next(&mut state) % h.len() as u64) as usize;
                    h[at] = values[(next(&mut state) % values.len() as u64) as usize];
                }
                let keep = h.len() - (next(&mut state) % 9) as usize;
                h.truncate(keep);
            }
            let Ok(pa) = Selectors::parse(&a) else { continue };
            if same_selectors(&a, &b) {
                same += 1;
                same_v6 += usize::from(b[0] >> 4 == 6);
                let pb = Selectors::parse(&b).expect("the shortcut said it parses");
                assert_eq!(Selectors { total_len: 0, ..pa }, Selectors { total_len: 0, ..pb }, "{a:?} {b:?}");
                assert_eq!(claimed_len(&b), pb.total_len, "{b:?}");
            } else {
                differ += 1;
            }
        }
        assert!(same > 20_000 && differ > 20_000 && same_v6 > 10_000, "{same} {differ} {same_v6}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(Selectors::parse(&[]), Err(Error::Truncated));
        assert_eq!(Selectors::parse(&[0x50; 40]), Err(Error::Malformed));
        for n in 0..40 {
            let _ = Selectors::parse(&[0x45; 64][..n]);
            let _ = Selectors::parse(&[0x60; 64][..n]);
        }
    }
}
