//! Traffic selectors (RFC 7296 section 3.13.1, RFC 4301 section 4.4.1.1).
use wasmsec_wire::ip::{Address, Selectors};

/// An address range with a protocol and a port range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficSelector {
    /// IP protocol, 0 for any.
    pub protocol: u8,
    /// Lowest port, inclusive (0 with `end_port` 65535: any port).
    pub start_port: u16,
    /// Highest port, inclusive.
    pub end_port: u16,
    /// Lowest address, inclusive; same family as `end`.
    pub start: Address,
    /// Highest address, inclusive.
    pub end: Address,
}

/// An SA's selectors on one side. Nearly every SA has exactly one (a
/// subnet), and that one is kept inline: checking a packet against a cold
/// SA (a PoP's 100,000) then does not miss the cache again for a heap block
/// of one selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TsList {
    One(TrafficSelector),
    Many(Vec<TrafficSelector>),
}

impl From<Vec<TrafficSelector>> for TsList {
    fn from(v: Vec<TrafficSelector>) -> TsList {
        match <[TrafficSelector; 1]>::try_from(v) {
            Ok([one]) => TsList::One(one),
            Err(v) => TsList::Many(v),
        }
    }
}

impl std::ops::Deref for TsList {
    type Target = [TrafficSelector];

    fn deref(&self) -> &[TrafficSelector] {
        match self {
            TsList::One(t) => std::slice::from_ref(t),
            TsList::Many(v) => v,
        }
    }
}

impl TrafficSelector {
    /// Every address of one family, any protocol, any port.
    pub fn any_v4() -> TrafficSelector {
        TrafficSelector {
            protocol: 0,
            start_port: 0,
            end_port: u16::MAX,
            start: Address::V4([0; 4]),
            end: Address::V4([0xff; 4]),
        }
    }

    /// A CIDR prefix, any protocol, any port.
    pub fn from_prefix(addr: Address, prefix_len: u8) -> Option<TrafficSelector> {
        let (start, end) = match addr {
            Address::V4(a) if prefix_len <= 32 => {
                let v = u32::from_be_bytes(a);
                let mask = if prefix_len == 0 { 0 } else { u32::MAX << (32 - prefix_len) };
                (Address::V4((v & mask).to_be_bytes()), Address::V4((v | !mask).to_be_bytes()))
            }
            Address::V6(a) if prefix_len <= 128 => {
                let v = u128::from_be_bytes(a);
                let mask = if prefix_len == 0 { 0 } else { u128::MAX << (128 - prefix_len) };
                (Address::V6((v & mask).to_be_bytes()), Address::V6((v | !mask).to_be_bytes()))
            }
            _ => return None,
        };
        Some(TrafficSelector { protocol: 0, start_port: 0, end_port: u16::MAX, start, end })
    }

    /// Well-formed: one address family, start <= end for addresses and ports.
    pub fn is_valid(&self) -> bool {
        let same_family =
            matches!((self.start, self.end), (Address::V4(_), Address::V4(_)) | (Address::V6(_), Address::V6(_)));
        same_family && self.start <= self.end && self.start_port <= self.end_port
    }

    fn contains_addr(&self, a: &Address) -> bool {
        // As integers: one compare each way, where the derived order
        // compares byte by byte (a loop in the wasm guest, per packet).
        match (self.start, *a, self.end) {
            (Address::V4(s), Address::V4(a), Address::V4(e)) => {
                (u32::from_be_bytes(s)..=u32::from_be_bytes(e)).contains(&u32::from_be_bytes(a))
            }
            (Address::V6(s), Address::V6(a), Address::V6(e)) => {
                (u128::from_be_bytes(s)..=u128::from_be_bytes(e)).contains(&u128::from_be_bytes(a))
            }
            _ => false,
        }
    }

    fn any_port(&self) -> bool {
        self.start_port == 0 && self.end_port == u16::MAX
    }

    fn contains_port(&self, port: Option<u16>) -> bool {
        match port {
            _ if self.any_port() => true,
            Some(p) => self.start_port <= p && p <= self.end_port,
            // An OPAQUE port (fragment, no ports) matches only ANY.
            None => false,
        }
    }

    fn contains_protocol(&self, protocol: u8) -> bool {
        self.protocol == 0 || self.protocol == protocol
    }
}

/// True if a packet from `src` side to `dst` side matches: its source lies
/// in one of `src_ts`, its destination in one of `dst_ts`.
pub fn matches(s: &Selectors, src_ts: &[TrafficSelector], dst_ts: &[TrafficSelector]) -> bool {
    let side = |ts: &[TrafficSelector], addr: &Address, port: Option<u16>| {
        ts.iter().any(|t| t.contains_addr(addr) && t.contains_protocol(s.protocol) && t.contains_port(port))
    };
    side(src_ts, &s.src, s.src_port()) && side(dst_ts, &s.dst, s.dst_port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmsec_wire::ip::{PROTO_TCP, PROTO_UDP};

    fn sel(src: [u8; 4], dst: [u8; 4], protocol: u8, ports: Option<(u16, u16)>) -> Selectors {
        Selectors { src: Address::V4(src), dst: Address::V4(dst), protocol, ports, total_len: 40 }
    }

    #[test]
    fn prefix_ranges() {
        let t = TrafficSelector::from_prefix(Address::V4([198, 18, 1, 77]), 24).unwrap();
        assert_eq!(t.start, Address::V4([198, 18, 1, 0]));
        assert_eq!(t.end, Address::V4([198, 18, 1, 255]));
        assert!(t.is_valid());
        let all = TrafficSelector::from_prefix(Address::V4([1, 2, 3, 4]), 0).unwrap();
        assert_eq!(all, TrafficSelector::any_v4());
        assert!(TrafficSelector::from_prefix(Address::V4([1, 2, 3, 4]), 33).is_none());
        let v6 = TrafficSelector::from_prefix(Address::V6([0x20; 16]), 64).unwrap();
        assert!(v6.is_valid());
    }

    #[test]
    fn address_protocol_and_port_matching() {
        let a = TrafficSelector::from_prefix(Address::V4([10, 0, 1, 0]), 24).unwrap();
        let b = TrafficSelector::from_prefix(Address::V4([10, 0, 2, 0]), 24).unwrap();
        let s = sel([10, 0, 1, 5], [10, 0, 2, 9], PROTO_TCP, Some((1000, 443)));
        assert!(matches(&s, std::slice::from_ref(&a), std::slice::from_ref(&b)));
        assert!(!matches(&s, std::slice::from_ref(&b), std::slice::from_ref(&a)));
        let https = TrafficSelector { protocol: PROTO_TCP, start_port: 443, end_port: 443, ..b.clone() };
        assert!(matches(&s, std::slice::from_ref(&a), std::slice::from_ref(&https)));
        let udp = sel([10, 0, 1, 5], [10, 0, 2, 9], PROTO_UDP, Some((1000, 443)));
        assert!(!matches(&udp, std::slice::from_ref(&a), std::slice::from_ref(&https)));
        let frag = sel([10, 0, 1, 5], [10, 0, 2, 9], PROTO_TCP, None);
        assert!(!matches(&frag, std::slice::from_ref(&a), &[https]));
        assert!(matches(&frag, &[a], &[b]));
    }

    #[test]
    fn families_do_not_mix() {
        let v6 = TrafficSelector::from_prefix(Address::V6([0; 16]), 0).unwrap();
        let s = sel([10, 0, 1, 5], [10, 0, 2, 9], PROTO_TCP, None);
        assert!(!matches(&s, std::slice::from_ref(&v6), std::slice::from_ref(&v6)));
        let bad = TrafficSelector { end: Address::V6([0; 16]), ..TrafficSelector::any_v4() };
        assert!(!bad.is_valid());
    }
}
