//! A CHILD SA's traffic selectors as the host keeps them while the SA
//! lives: one shared copy for its inbound and outbound halves (each data
//! path thread keeps its SAs to rebuild a trapped guest) and the control
//! thread's admin view.
//!
//! The WIT record (`traffic-selector`) holds each address as a list, so
//! every selector kept in that form took two small allocations and each SA
//! half its own lists: about 700 bytes per CHILD SA of the whole daemon's
//! memory at 100,000 (`cargo xtask bench-memory`, issue #16). The WIT form
//! is made again only for the guest call that installs an SA.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::wasm::esp::TrafficSelector;

/// One traffic selector (RFC 7296 section 3.13.1): an address range of
/// one family, a protocol (0: any) and a port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selector {
    pub protocol: u8,
    pub start_port: u16,
    pub end_port: u16,
    pub start: IpAddr,
    pub end: IpAddr,
}

impl Selector {
    /// The WIT record's selector; none if its addresses are not both IPv4
    /// or both IPv6.
    pub fn of(t: &TrafficSelector) -> Option<Selector> {
        let addr = |a: &[u8]| match a.len() {
            4 => <[u8; 4]>::try_from(a).ok().map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            16 => <[u8; 16]>::try_from(a).ok().map(|b| IpAddr::V6(Ipv6Addr::from(b))),
            _ => None,
        };
        let (start, end) = (addr(&t.start_address)?, addr(&t.end_address)?);
        if start.is_ipv4() != end.is_ipv4() {
            return None;
        }
        Some(Selector { protocol: t.ip_protocol, start_port: t.start_port, end_port: t.end_port, start, end })
    }

    /// The WIT record again, for a guest call.
    pub fn wit(&self) -> TrafficSelector {
        let bytes = |a: IpAddr| match a {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        TrafficSelector {
            ip_protocol: self.protocol,
            start_port: self.start_port,
            end_port: self.end_port,
            start_address: bytes(self.start),
            end_address: bytes(self.end),
        }
    }

    /// Does it cover this address (its octets), protocol and port? An
    /// OPAQUE port (none) is covered only by the full range.
    pub fn covers(&self, addr: &[u8], protocol: u8, port: Option<u16>) -> bool {
        let in_range = match (self.start, self.end) {
            (IpAddr::V4(s), IpAddr::V4(e)) => {
                <[u8; 4]>::try_from(addr).is_ok_and(|a| s.octets() <= a && a <= e.octets())
            }
            (IpAddr::V6(s), IpAddr::V6(e)) => {
                <[u8; 16]>::try_from(addr).is_ok_and(|a| s.octets() <= a && a <= e.octets())
            }
            _ => false,
        };
        let proto_ok = self.protocol == 0 || self.protocol == protocol;
        let port_ok = match port {
            Some(p) => self.start_port <= p && p <= self.end_port,
            None => self.start_port == 0 && self.end_port == u16::MAX,
        };
        in_range && proto_ok && port_ok
    }
}

/// Both sides' selectors of one CHILD SA (or manual tunnel).
#[derive(Debug, PartialEq, Eq)]
pub struct SaSelectors {
    /// Our side's.
    pub local: Box<[Selector]>,
    /// The peer's side's.
    pub remote: Box<[Selector]>,
}

impl SaSelectors {
    /// From the WIT lists; none if any selector is malformed (see
    /// [`Selector::of`]).
    pub fn of(local: &[TrafficSelector], remote: &[TrafficSelector]) -> Option<Arc<SaSelectors>> {
        let list = |l: &[TrafficSelector]| l.iter().map(Selector::of).collect::<Option<Box<[Selector]>>>();
        Some(Arc::new(SaSelectors { local: list(local)?, remote: list(remote)? }))
    }

    pub fn local_wit(&self) -> Vec<TrafficSelector> {
        self.local.iter().map(Selector::wit).collect()
    }

    pub fn remote_wit(&self) -> Vec<TrafficSelector> {
        self.remote.iter().map(Selector::wit).collect()
    }
}

/// A selector list in strongSwan's notation, as the admin view shows it.
pub fn show(list: &[Selector]) -> Vec<String> {
    list.iter().map(|s| crate::config::show_ts(&s.wit())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use TrafficSelector as Ts;

    #[test]
    fn the_wit_record_comes_back_as_it_was() {
        for t in [
            Ts::addresses(vec![10, 1, 0, 0], vec![10, 1, 0, 255]),
            TrafficSelector {
                ip_protocol: 6,
                start_port: 443,
                end_port: 443,
                ..Ts::addresses(vec![1; 16], vec![2; 16])
            },
        ] {
            assert_eq!(Selector::of(&t).map(|s| s.wit()), Some(t));
        }
    }

    #[test]
    fn malformed_addresses_are_no_selector() {
        assert_eq!(Selector::of(&Ts::addresses(vec![10, 1, 0], vec![10, 1, 0, 255])), None);
        assert_eq!(Selector::of(&Ts::addresses(vec![10, 1, 0, 0], vec![0; 16])), None, "mixed families");
        let good = Ts::addresses(vec![10, 1, 0, 0], vec![10, 1, 0, 255]);
        assert!(SaSelectors::of(std::slice::from_ref(&good), &[good.clone(), Ts::addresses(vec![], vec![])]).is_none());
        let one = std::slice::from_ref(&good);
        let both = SaSelectors::of(one, one).expect("well-formed");
        assert_eq!((both.local_wit(), both.remote_wit()), (vec![good.clone()], vec![good]));
        assert_eq!(show(&both.local), ["10.1.0.0/24"]);
    }

    #[test]
    fn covers_addresses_protocols_and_ports() {
        let net = Selector::of(&Ts::addresses(vec![10, 1, 0, 0], vec![10, 1, 0, 255])).expect("selector");
        assert!(net.covers(&[10, 1, 0, 7], 6, Some(443)));
        assert!(!net.covers(&[10, 1, 1, 7], 6, Some(443)));
        assert!(!net.covers(&[0; 16], 6, Some(443)), "another family");
        let https = Selector { protocol: 6, start_port: 443, end_port: 443, ..net };
        assert!(https.covers(&[10, 1, 0, 7], 6, Some(443)));
        assert!(!https.covers(&[10, 1, 0, 7], 17, Some(443)));
        assert!(!https.covers(&[10, 1, 0, 7], 6, Some(80)));
        assert!(!https.covers(&[10, 1, 0, 7], 6, None), "a fragment is not known to be HTTPS");
        assert!(net.covers(&[10, 1, 0, 7], 1, None));
    }
}
