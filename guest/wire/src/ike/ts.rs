//! Traffic selectors (RFC 7296 section 3.13).
use alloc::vec::Vec;

use super::registry::TsType;
use crate::{Error, Result, be16};

/// One traffic selector (section 3.13.1): an address range, a protocol
/// (0: any) and a port range.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrafficSelector {
    /// TS Type: an IPv4 or IPv6 address range.
    pub ts_type: TsType,
    /// IP protocol (0: any).
    pub ip_protocol: u8,
    /// Lowest port, inclusive.
    pub start_port: u16,
    /// Highest port, inclusive.
    pub end_port: u16,
    /// Lowest address, inclusive, in network byte order (4 or 16 bytes).
    pub start: Vec<u8>,
    /// Highest address, inclusive, in network byte order.
    pub end: Vec<u8>,
}

/// The selectors of a TSi or TSr payload's body.
pub fn parse(b: &[u8]) -> Result<Vec<TrafficSelector>> {
    if b.len() < 4 {
        return Err(Error::Truncated);
    }
    let n = usize::from(b[0]);
    let mut t = &b[4..];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if t.len() < 8 {
            return Err(Error::Truncated);
        }
        let len = usize::from(be16(t, 2));
        let alen = match TsType::from(t[0]) {
            TsType::Ipv4AddrRange => 4,
            TsType::Ipv6AddrRange => 16,
            TsType::Unknown(_) => len.saturating_sub(8) / 2,
        };
        if len != 8 + 2 * alen || len > t.len() {
            return Err(Error::Malformed);
        }
        out.push(TrafficSelector {
            ts_type: t[0].into(),
            ip_protocol: t[1],
            start_port: be16(t, 4),
            end_port: be16(t, 6),
            start: t[8..8 + alen].to_vec(),
            end: t[8 + alen..len].to_vec(),
        });
        t = &t[len..];
    }
    if !t.is_empty() {
        return Err(Error::Malformed);
    }
    Ok(out)
}

/// Append the selectors as a TSi or TSr payload's body.
pub fn emit(ts: &[TrafficSelector], out: &mut Vec<u8>) {
    out.extend_from_slice(&[ts.len() as u8, 0, 0, 0]);
    for t in ts {
        let len = 8 + t.start.len() + t.end.len();
        out.extend_from_slice(&[t.ts_type.raw(), t.ip_protocol]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&t.start_port.to_be_bytes());
        out.extend_from_slice(&t.end_port.to_be_bytes());
        out.extend_from_slice(&t.start);
        out.extend_from_slice(&t.end);
    }
}
